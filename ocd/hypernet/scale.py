"""The scale model rho(I(x)): how large the overfit delta of a sample is.

An MLP on the same standardised conditioning as the diffusion model, with
output ``rho_hat = mean_rho * exp(mlp(I(x)))`` (positive, starting at the mean).
Trained with the paper's loss, ``10 log10((rho_hat - rho)^2 / rho^2)`` averaged
over samples (a tiny constant inside the log keeps it finite at a perfect fit),
or with ``logmse``, ``(log rho_hat - log rho)^2``. The paper's loss rewards
driving a few samples' errors to zero (its log goes to -infinity) more than
shrinking large errors, and its gradient grows as an error shrinks; on a toy
store where rho takes two values it left a 22% median error where ``logmse``
fits exactly (tests/hypernet/test_diffusion.py).

Both losses take logs of rho, and a delta can be exactly zero: a sample the
base model already fits to float32 precision (its loss underflows to 0, as for
a fifth of Fashion-MNIST's train rows after 30 epochs) gives no gradient to
overfit with. Every rho below a thousandth of the fit rows' median positive
rho, zero included, is trained as that floor (:func:`rho_floor`): a delta
that small leaves the prediction as it was, and the floor keeps both losses'
logs, and rho^2 in the paper's, finite. On the stores of the default
pipelines no row is below it (the smallest rho is 0.2 of the median on mnist5k).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ocd.artifacts import CheckpointError, load_checkpoint, save_checkpoint
from ocd.delta import COND, StoreError
from ocd.distributed import Group
from ocd.hypernet.conditioning import ConditionedMLP, read_stats, stats_config
from ocd.hypernet.train import fit
from ocd.params import ComputeParams, ScaleParams, training_steps

if TYPE_CHECKING:  # the reader of a store's rows (ocd.store): the models need no Zarr
    from ocd.store import ChunkReader

LOG_FLOOR = 1e-12
# The minibatch order's stream: scale.seed + 1, so that equal seeds give the denoiser (diffusion.seed),
# this model and the regressor (ocd.hypernet.regressor) different orders.
ORDER_STREAM = 1
FLOOR_SHARE = 1e-3  # rho_floor: this share of the median positive rho


class ScaleModel(nn.Module):
    def __init__(self, stats: dict, hidden: list[int], mean_rho: float):
        super().__init__()
        self.net = ConditionedMLP(stats, hidden, 1)
        self.register_buffer("mean_rho", torch.tensor(float(mean_rho)))

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return self.mean_rho * torch.exp(self.net(parts)[:, 0])


def scale_loss(rho_hat: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """The paper's L_scale: 10 log10((rho_hat - rho)^2 / rho^2), mean over samples."""
    return (10 * torch.log10((rho_hat - rho) ** 2 / rho**2 + LOG_FLOOR)).mean()


def logmse_loss(rho_hat: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """(log rho_hat - log rho)^2, mean over samples."""
    return ((rho_hat.log() - rho.log()) ** 2).mean()


LOSSES = {"paper": scale_loss, "logmse": logmse_loss}


def rhos(reader: ChunkReader) -> np.ndarray:
    """Every fit row's rho."""
    return np.concatenate([reader.read([c])["rho"] for c in reader.chunks])


def mean_rho(reader: ChunkReader) -> float:
    return float(np.mean(rhos(reader)))


def rho_floor(rho: np.ndarray) -> float:
    """FLOOR_SHARE of the fit rows' (:func:`rhos`) median positive rho: what a smaller rho,
    or a zero delta, is trained as."""
    positive = rho[rho > 0]
    if positive.size == 0:
        raise StoreError(f"every one of the {rho.size:,} fit rows has a zero delta (rho = 0): overfitting moved "
                         "nothing, so there is no scale to learn. Either each sample's loss is 0 in float32 (train "
                         "the base model less, base.epochs) or the loss does not depend on the layer (its "
                         "gradient is zero: check the base model or pick another layer); the store's loss_before "
                         "says which (`ocd inspect`)")
    return float(FLOOR_SHARE * np.median(positive))


def train(model: ScaleModel, reader: ChunkReader, sp: ScaleParams, compute: ComputeParams, device,
          progress: bool = True, group: Group = Group(), floor: float = 0.0) -> list[tuple[int, float]]:
    """Adam on ``sp.loss`` for ``training_steps`` of ``sp`` (ocd.hypernet.train.fit);
    returns [(step, loss)]. ``floor``: rho below it (a zero delta) is trained as
    ``floor`` (:func:`rho_floor`)."""
    loss_fn = LOSSES[sp.loss]
    torch.manual_seed(sp.seed)
    model.to(device)

    def tensors_of(batch, span):
        rho, *parts = [torch.as_tensor(batch[n], dtype=torch.float32, device=device) for n in ("rho", *COND)]
        return [rho.clamp_min(floor), *parts]

    def loss_of(rho, *parts):
        return loss_fn(model(list(parts)), rho)

    return fit(model, reader, training_steps(sp.steps, sp.epochs, reader.rows, sp.batch_size), sp.batch_size,
               sp.lr, np.random.default_rng(sp.seed + ORDER_STREAM), tensors_of, loss_of, "train scale", device,
               progress, compute.graphs, group)


@torch.no_grad()
def diagnose(model: ScaleModel, data: dict, train_mean: float, device, floor: float = 0.0) -> dict[str, float]:
    """Median relative error of rho_hat on held-out rows, beside the constant mean predictor's,
    against rho floored as in training (``zero_rows``: how many held-out deltas are zero)."""
    parts = [torch.as_tensor(data[n], dtype=torch.float32, device=device) for n in COND]
    raw = torch.as_tensor(data["rho"], dtype=torch.float32, device=device)
    rho = raw.clamp_min(floor)
    rel = ((model(parts) - rho).abs() / rho).cpu().numpy()
    rel_mean = (np.abs(train_mean - rho.cpu().numpy()) / rho.cpu().numpy())
    return {"median_rel_error": float(np.median(rel)), "median_rel_error_mean_rho": float(np.median(rel_mean)),
            "loss": float(scale_loss(model(parts), rho)),
            "loss_mean_rho": float(scale_loss(torch.full_like(rho, train_mean), rho)),
            "zero_rows": int((raw == 0).sum())}


def save(path, model: ScaleModel, stats: dict, hidden: list[int], extra: dict) -> None:
    save_checkpoint(path, model.state_dict(), {"stats": stats_config(stats), "hidden": list(hidden),
                                               "mean_rho": float(model.mean_rho), **extra})


def load(path) -> tuple[ScaleModel, dict]:
    state, config = load_checkpoint(path)
    try:
        model = ScaleModel(read_stats(config), config["hidden"], config["mean_rho"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: its configuration lacks or mangles {exc}; rerun train_scale") from None
    model.load_state_dict(state)
    return model.eval(), config
