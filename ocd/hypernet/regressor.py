"""The non-diffusion baseline: a regressor from I(x) straight to the delta.

It answers "is diffusion needed at all?". Same conditioning, same target
representation (``matrix``, ``rank1`` or ``flat``, see :mod:`ocd.hypernet.targets`) and the same
scale model as the diffusion model; trained with MSE on the unit-scale target.
MSE makes it predict the conditional mean, whose norm shrinks where samples
disagree, so its output is used as a direction only: rescaled to unit scale
(``rho_of(omega / unit) == 1``) and sized by the scale model.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ocd.artifacts import CheckpointError, load_checkpoint, save_checkpoint
from ocd.distributed import Group
from ocd.hypernet.conditioning import ConditionedMLP, read_stats, stats_config
from ocd.hypernet.targets import (
    TargetMeta,
    batch_tensors,
    cond_names,
    cosine_summary,
    normalised,
    to_matrix,
    true_omega,
)
from ocd.hypernet.train import fit
from ocd.params import ComputeParams, RegressorParams, training_steps

if TYPE_CHECKING:  # the reader of a store's rows (ocd.store): the models need no Zarr
    from ocd.store import ChunkReader


# The minibatch order's stream: regressor.seed + 2 (the scale model's is + 1, the denoiser's + 0).
ORDER_STREAM = 2


class DeltaRegressor(nn.Module):
    def __init__(self, meta: TargetMeta, stats: dict, hidden: list[int]):
        super().__init__()
        self.meta, self.hidden = meta, list(hidden)
        self.net = ConditionedMLP(stats, hidden, math.prod(meta.rep_shape), cond_names(meta))

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The predicted unit-scale target [B, *rep_shape] (not normalised)."""
        return self.net(parts).view(-1, *self.meta.rep_shape)

    @torch.no_grad()
    def omega(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Unit-scale deltas [B, out, in]: the prediction's direction at unit scale."""
        return normalised(to_matrix(self(parts), parts[0], self.meta), self.meta)


def train(model: DeltaRegressor, reader: ChunkReader, rp: RegressorParams, compute: ComputeParams, device,
          progress: bool = True, group: Group = Group()) -> list[tuple[int, float]]:
    """Adam on the mean squared error per entry of the unit-scale target, for
    ``training_steps`` of ``rp`` (ocd.hypernet.train.fit); returns [(step, loss)]."""
    torch.manual_seed(rp.seed)
    model.to(device)

    def tensors_of(batch, span):
        target, parts, _ = batch_tensors(batch, model.meta, device)
        return [target, *parts]

    def loss_of(target, *parts):
        return ((model(list(parts)) - target) ** 2).mean()

    return fit(model, reader, training_steps(rp.steps, rp.epochs, reader.rows, rp.batch_size), rp.batch_size,
               rp.lr, np.random.default_rng(rp.seed + ORDER_STREAM), tensors_of, loss_of, "train regressor", device,
               progress, compute.graphs, group)


@torch.no_grad()
def diagnose(model: DeltaRegressor, data: dict, device) -> dict[str, float]:
    """Held-out MSE on the target and the cosine to the true deltas (``data`` holds ``delta``)."""
    model.eval().to(device)
    target, parts, _ = batch_tensors(data, model.meta, device)
    return {"mse": float(((model(parts) - target) ** 2).mean()),
            **cosine_summary(model.omega(parts), true_omega(data, model.meta, device))}


def save(path, model: DeltaRegressor, stats: dict, extra: dict) -> None:
    save_checkpoint(path, model.state_dict(), {"meta": asdict(model.meta), "stats": stats_config(stats),
                                               "hidden": model.hidden, **extra})


def load(path) -> tuple[DeltaRegressor, dict]:
    state, config = load_checkpoint(path)
    try:
        meta, stats, hidden = TargetMeta.from_config(config["meta"]), read_stats(config), config["hidden"]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: its configuration lacks or mangles {exc}; rerun train_regressor") from None
    model = DeltaRegressor(meta, stats, hidden)
    model.load_state_dict(state)
    return model.eval(), config
