"""The one training loop of the hypernetwork's models: the denoiser
(ocd.hypernet.diffusion), the scale model and the regressor.

Adam over shuffled minibatches of the store's fit rows, with what each model
asks for as options: gradient clipping and an EMA copy (the denoiser), CUDA
graphs (``compute.graphs``: one replayed graph a step, ocd.device.Steps), and
data parallelism over ranks (``group``: each rank takes its share of every
global minibatch, DistributedDataParallel averages the gradients, so every
rank takes the same step). A model brings two functions: the tensors of a
minibatch, and the mean loss of those tensors.
"""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ocd.device import Steps, adam
from ocd.distributed import Group

if TYPE_CHECKING:  # the reader is passed in: training never imports the store
    from ocd.store import ChunkReader

Span = tuple[int, int, int]  # (the global minibatch's rows, this rank's first row, its end)


class Objective(nn.Module):
    """A training loss as the forward of a module that holds the trained model, so
    that DistributedDataParallel (:meth:`ocd.distributed.Group.data_parallel`)
    can average the model's gradients over the ranks in the backward pass.

    A rank holds ``share`` of the ``batch`` rows of a global minibatch; its
    mean loss is weighted by ``share * world / batch``, so that DDP's average
    over the ranks is the mean over the global minibatch whatever the shares
    (the weight is exactly 1 in one process)."""

    def __init__(self, model: nn.Module, loss_of, share: int, batch: int, world: int):
        super().__init__()
        self.model, self.loss_of = model, loss_of
        self.weight = share * world / batch

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        loss = self.loss_of(*tensors)
        return loss if self.weight == 1 else loss * self.weight


class EMA:
    """Exponential moving average of a model's parameters (the denoiser's sampled model).

    ``warmup``: the decay of the n-th update is min(decay, (1 + n) / (10 + n)), as
    common EMA implementations warm it up, so that the copy forgets the random
    initial weights within the first steps; without it, after s steps the copy
    still holds decay^s of them (22% after 1,500 steps at 0.999, 86% at 0.9999).
    The count and the decay live on the model's device, so a replayed CUDA
    graph (ocd.device.Steps) warms up as the Python loop does."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        self.decay, self.warmup = decay, warmup
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        first = next(iter(self.model.parameters()), None)
        self.updates = torch.zeros((), device=first.device if first is not None else "cpu")

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if self.warmup:
            weight = 1 - torch.clamp((1 + self.updates) / (10 + self.updates), max=self.decay)
            self.updates.add_(1)
        else:
            weight = 1 - self.decay
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p, weight)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


def step(model: nn.Module, loss_of: Callable[..., torch.Tensor], opt: torch.optim.Optimizer, grad_clip: float,
         ema: EMA | None, *tensors: torch.Tensor) -> torch.Tensor:
    """One Adam step on a minibatch's loss (``loss_of(*tensors)``), clipped to the
    gradient norm ``grad_clip`` (0: none), then the EMA; returns the loss, on
    the device. Everything stays on the device, so that CUDA can replay it as a
    graph (ocd.device.Steps)."""
    opt.zero_grad(set_to_none=True)
    loss = loss_of(*tensors)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    if ema is not None:
        ema.update(model)
    return loss.detach()


def fit(model: nn.Module, reader: ChunkReader, steps: int, batch_size: int, lr: float, rng: np.random.Generator,
        tensors_of: Callable[[dict, Span], Sequence[torch.Tensor]], loss_of: Callable[..., torch.Tensor],
        desc: str, device, progress: bool = True, graphs: bool = False, group: Group = Group(),
        grad_clip: float = 0.0, ema: EMA | None = None) -> list[tuple[int, float]]:
    """Train ``model`` for ``steps`` Adam steps; returns [(step, the global minibatch's loss)].

    Each step reads the next minibatch of ``batch_size`` rows (at most the
    reader's rows) shuffled by ``rng`` (ChunkReader.batches: on several ranks,
    this rank's share), turns it into tensors on the device with
    ``tensors_of(rows, span)`` and takes one :func:`step` on
    ``loss_of(*tensors)``, the mean over the rank's rows. The losses stay on
    the device until the end (a GPU runs ahead of the Python loop; the
    progress bar reads them every 100 steps)."""
    model.train()
    batch = min(batch_size, reader.rows)
    lo, hi = group.span(batch)
    objective = group.data_parallel(Objective(model, loss_of, hi - lo, batch, group.world))
    if graphs and group.world > 1:
        warnings.warn("compute.graphs: a step that all-reduces gradients across ranks is run as written")
    runner = Steps(lambda *tensors: step(model, objective, opt, grad_clip, ema, *tensors), device,
                   graphs and group.world == 1)
    opt = adam(model.parameters(), lr, runner.graphs)
    batches = reader.batches(batch, rng, group)
    losses = []
    bar = tqdm(range(1, steps + 1), desc=desc, disable=not (progress and group.main), mininterval=1.0)
    for s in bar:
        losses.append(runner(*tensors_of(next(batches), (batch, lo, hi))))
        if progress and s % 100 == 0:
            bar.set_postfix(loss=f"{torch.stack(losses[-100:]).mean().item():.4f}", refresh=False)
    model.eval()
    return history(losses, group, desc)


def history(losses: list[torch.Tensor], group: Group, desc: str) -> list[tuple[int, float]]:
    """[(step, the global minibatch's loss)]: the mean over the ranks of their weighted shares.

    Raises FloatingPointError when a loss is not finite: after it, Adam has made
    the weights NaN, and a model saved so would turn every later row into NaN."""
    rows = list(enumerate(group.mean(torch.stack(losses)).cpu().tolist(), start=1)) if losses else []
    bad = next(((s, v) for s, v in rows if not np.isfinite(v)), None)
    if bad is not None:
        raise FloatingPointError(f"{desc}: the training loss is {bad[1]} at step {bad[0]} of {len(rows)}, so the "
                                 "model's weights are no longer finite; nothing was written. Look for non-finite or "
                                 "zero values among the store's rows (`ocd inspect`) or lower the learning rate")
    return rows
