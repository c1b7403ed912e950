"""The scale model rho(I(x)): how large the overfit delta of a sample is.

An MLP on the same standardised conditioning as the diffusion model, with
output ``rho_hat = mean_rho * exp(mlp(I(x)))`` (positive, starting at the mean).
Trained with the paper's loss, ``10 log10((rho_hat - rho)^2 / rho^2)`` averaged
over samples (a tiny constant inside the log keeps it finite at a perfect fit),
or with ``logmse``, ``(log rho_hat - log rho)^2``. The paper's loss rewards
driving a few samples' errors to zero (its log goes to -infinity) more than
shrinking large errors, and its gradient grows as an error shrinks; on a toy
store where rho takes two values it left a 22% median error where ``logmse``
fits exactly (tests/test_diffusion.py).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ocd.artifacts import CheckpointError, load_checkpoint, save_checkpoint
from ocd.diffusion import ConditionedMLP, fit_adam, read_stats, stats_config
from ocd.distributed import Group
from ocd.store import COND, ChunkReader

LOG_FLOOR = 1e-12


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


def mean_rho(reader: ChunkReader) -> float:
    return float(np.mean(np.concatenate([reader.read([c])["rho"] for c in reader.chunks])))


def train(model: ScaleModel, reader: ChunkReader, steps: int, batch_size: int, lr: float, seed: int,
          device, progress: bool = True, loss: str = "paper", graphs: bool = False,
          group: Group = Group()) -> list[tuple[int, float]]:
    loss_fn = LOSSES[loss]
    torch.manual_seed(seed)
    model.to(device)

    def tensors(batch):
        return [torch.as_tensor(batch[n], dtype=torch.float32, device=device) for n in ("rho", *COND)]

    def loss_of(rho, *parts):
        return loss_fn(model(list(parts)), rho)

    return fit_adam(model, reader, steps, batch_size, lr, np.random.default_rng(seed + 1), tensors, loss_of,
                    "train scale", device, progress, graphs, group)


@torch.no_grad()
def diagnose(model: ScaleModel, data: dict, train_mean: float, device) -> dict[str, float]:
    """Median relative error of rho_hat on held-out rows, beside the constant mean predictor's."""
    parts = [torch.as_tensor(data[n], dtype=torch.float32, device=device) for n in COND]
    rho = torch.as_tensor(data["rho"], dtype=torch.float32, device=device)
    rel = ((model(parts) - rho).abs() / rho).cpu().numpy()
    rel_mean = (np.abs(train_mean - rho.cpu().numpy()) / rho.cpu().numpy())
    return {"median_rel_error": float(np.median(rel)), "median_rel_error_mean_rho": float(np.median(rel_mean)),
            "loss": float(scale_loss(model(parts), rho)),
            "loss_mean_rho": float(scale_loss(torch.full_like(rho, train_mean), rho))}


def save(path, model: ScaleModel, stats: dict, hidden: list[int], extra: dict) -> None:
    save_checkpoint(path, model.state_dict(), {"stats": stats_config(stats), "hidden": list(hidden),
                                               "mean_rho": float(model.mean_rho), **extra})


def load(path) -> tuple[ScaleModel, dict]:
    state, config = load_checkpoint(path)
    try:
        model = ScaleModel(read_stats(config), config["hidden"], config["mean_rho"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: its configuration lacks or mangles {exc}; rerun train_diffusion") from None
    model.load_state_dict(state)
    return model.eval(), config
