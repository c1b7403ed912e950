"""Overfit every sample: a few optimizer steps on one sample's loss, updating
only the selected layer's weight, for a whole batch of samples at once.

The vectorised path (:func:`overfit_batch`) cuts the model at the layer: the
layer's input ``h = prefix(x)`` is fixed per sample and computed once; each
step evaluates only the suffix for every sample's own delta, with per-sample
gradients from ``torch.func.vmap(grad(...))`` and a hand-written batched
optimizer update that matches ``torch.optim`` exactly.
The delta is accumulated over the steps (never computed as W' - W, which
loses precision for tiny updates).

:func:`overfit_naive` is what research code does (a model copy and a
``torch.optim`` optimizer per sample, full forward each step): the reference
the vectorised path is tested and benchmarked against.
"""

from __future__ import annotations

import copy
import hashlib
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ocd.models import LayerCut, ModelError, cut_at, layer_io
from ocd.store import DeltaStore, rho_of
from ocd.tasks import Task

OPTIMIZERS = ("adam", "sgd")
# torch.optim.Adam's defaults, used by both paths.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def code_digest() -> str:
    """sha256 of the code that computes the rows (this module, ocd.models and
    ocd.store, which derives u and rank1_share).

    Part of a store's fingerprint: with DVC's ``persist``, a rerun after a
    code change would otherwise resume, or reuse, rows of the old code.
    """
    import ocd.models
    import ocd.store

    h = hashlib.sha256()
    for module in (sys.modules[__name__], ocd.models, ocd.store):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()


@dataclass
class Overfit:
    """Per-sample results of one batch."""

    delta: torch.Tensor  # [B, out, in]: W' - W, accumulated
    loss_before: torch.Tensor  # [B]: the sample's loss with the base weights
    loss_after: torch.Tensor  # [B]: the loss with W + delta


def linear_cut(model: nn.Sequential, name: str) -> LayerCut:
    """Cut at ``name``, which must be a Linear layer (a matrix applied to a vector)."""
    cut = cut_at(model, name)
    if not isinstance(cut.layer, nn.Linear):
        raise ModelError(f"layer {name!r} is a {type(cut.layer).__name__}; the overfit stage "
                         "needs a Linear layer (a 2-D weight applied to one input vector per sample)")
    return cut


def overfit_batch(cut: LayerCut, task: Task, h: torch.Tensor, y: torch.Tensor,
                  steps: int, optimizer: str, lr: float) -> Overfit:
    """Overfit each sample (h[b], y[b]) on the cut layer; ``h`` is the layer's input.

    For a linear layer the gradient of one sample's loss is an outer product
    ``u_t h^T`` with ``u_t = dL/dz`` (z the layer's output) and ``h`` fixed over
    the steps. So per-sample gradients are needed with respect to z alone
    ([B, out] numbers instead of [B, out, in]), and Adam's moments stay outer
    products too: ``m_t = mu_t h^T`` and ``v_t = nu_t (h^2)^T``. Only the
    update itself and the accumulated delta are full matrices. The arithmetic
    is torch.optim's, so the result equals the naive loop's (tested to 1e-5).

    The suffix runs in eval mode, where samples do not interact, so the
    gradient of the summed loss with respect to z is exactly the stack of
    per-sample gradients: one batched backward pass. (``vmap(grad)`` gives the
    same numbers but costs ~35 ms of overhead per step here, 4x the step.)
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    weight = cut.layer.weight.detach()
    bias = None if cut.layer.bias is None else cut.layer.bias.detach()

    def grad_z(z, y):
        """Per-sample dL/dz and losses, for the batch at once."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            loss = task.per_sample_loss(cut.suffix(z), y)
            (u,) = torch.autograd.grad(loss.sum(), z)
        return u, loss.detach()

    with torch.no_grad():
        z0 = F.linear(h, weight, bias)  # the base output of the layer, [B, out]
        delta = torch.zeros((len(h), *weight.shape), dtype=weight.dtype, device=weight.device)
        mu = torch.zeros_like(z0)  # Adam's first moment is mu (x) h
        nu = torch.zeros_like(z0)  # and its second moment nu (x) h^2
        h_abs = h.abs()[:, None, :]
        eps = torch.tensor(ADAM_EPS, dtype=weight.dtype, device=weight.device)
        beta1, beta2 = ADAM_BETAS
        z = z0
        loss_before = None
        for t in range(1, steps + 1):
            u, loss = grad_z(z, y)
            if loss_before is None:
                loss_before = loss
            if optimizer == "sgd":
                delta.sub_(lr * u[:, :, None] * h[:, None, :])
            else:
                mu.lerp_(u, 1 - beta1)
                nu.mul_(beta2).add_(u * u, alpha=1 - beta2)
                # torch.optim.Adam: delta -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps),
                # with m = mu h^T and sqrt(v) = sqrt(nu) |h|^T; the [B, out] factors
                # first, then three passes over the [B, out, in] matrices.
                step = (lr / (1 - beta1**t)) * mu
                scale = nu.sqrt() / (1 - beta2**t) ** 0.5
                update = torch.addcmul(eps, scale[:, :, None], h_abs)
                update = torch.div(step[:, :, None] * h[:, None, :], update, out=update)
                delta.sub_(update)
            z = z0 + torch.einsum("boi,bi->bo", delta, h)
        loss_after = task.per_sample_loss(cut.suffix(z), y)
        if loss_before is None:  # steps == 0
            loss_before = loss_after
    return Overfit(delta, loss_before, loss_after)


def overfit_naive(model: nn.Sequential, name: str, task: Task, x: torch.Tensor, y: torch.Tensor,
                  steps: int, optimizer: str, lr: float) -> Overfit:
    """The reference loop: one model copy and one torch.optim optimizer per sample."""
    deltas, before, after = [], [], []
    for i in range(len(x)):
        m = copy.deepcopy(model).eval()
        for p in m.parameters():
            p.requires_grad_(False)
        w = getattr(m, name).weight
        w.requires_grad_(True)
        w0 = w.detach().clone()
        opt = (torch.optim.Adam([w], lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS) if optimizer == "adam"
               else torch.optim.SGD([w], lr=lr))
        xi, yi = x[i:i + 1], y[i:i + 1]
        for t in range(steps):
            loss = task.loss(m(xi), yi)
            if t == 0:
                before.append(loss.detach())
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            after.append(task.loss(m(xi), yi))
        deltas.append(w.detach() - w0)
    return Overfit(torch.stack(deltas), torch.stack(before), torch.stack(after))


def fill_store(store: DeltaStore, cut: LayerCut, task: Task, splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
               steps: int, optimizer: str, lr: float, rho: str, on_chunk=None) -> None:
    """Overfit every pending chunk of every split and write it to ``store``.

    ``splits`` maps a split name to its (x, y); a chunk is one batch.
    ``on_chunk(split, rows)`` is called after each chunk is written.

    One writer thread writes chunk c while chunk c + 1 is computed (file
    writes and torch kernels both release the GIL); at most one chunk is in
    flight, and chunks are still written, and marked done, in order.
    """
    def write(split: str, c: int, rows: dict) -> None:
        store.write_chunk(split, c, rows)
        if on_chunk is not None:
            on_chunk(split, len(rows["index"]))

    # Leave one core to the writer thread (on 2 cores: one torch thread).
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads - 1))
    try:
        _fill(store, cut, task, splits, steps, optimizer, lr, rho, write)
    finally:
        torch.set_num_threads(threads)


def _fill(store, cut, task, splits, steps, optimizer, lr, rho, write) -> None:
    device = cut.layer.weight.device
    rows_per_chunk = store.layout.chunk
    dtype = store.layout.dtype
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = None
        for split, (x, y) in splits.items():
            for c in store.pending_chunks(split):
                idx = torch.arange(c * rows_per_chunk, min((c + 1) * rows_per_chunk, len(y)))
                xb, yb = x[idx].to(device), y[idx].to(device)
                h, a, out = layer_io(cut, xb)
                r = overfit_batch(cut, task, h, yb, steps, optimizer, lr)
                cpu = lambda t: t.detach().cpu().numpy()  # noqa: E731
                rows = {
                    "delta": cpu(r.delta).astype(dtype, copy=False),
                    "rho": cpu(rho_of(r.delta, rho)),
                    "cond/layer_input": cpu(h),
                    "cond/layer_activation": cpu(a),
                    "cond/output": cpu(out),
                    "label": cpu(yb),
                    "loss_before": cpu(r.loss_before),
                    "loss_after": cpu(r.loss_after),
                    "index": idx.numpy(),
                }
                if pending is not None:
                    pending.result()  # raises the writer's error, if any
                pending = writer.submit(write, split, c, rows)
        if pending is not None:
            pending.result()
