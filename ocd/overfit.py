"""Overfit every sample: a few optimizer steps on one sample's loss, updating
only the selected layer's weight, for a whole batch of samples at once.

The vectorised path (:func:`overfit_batch`) cuts the model at the layer
(ocd.models.cut's layer contract): the layer's input set ``cut.enter(x)`` is fixed
per sample and computed once; each step evaluates only the rest of the model
for every sample's own delta, with per-sample gradients from one batched
backward pass and a hand-written batched optimizer update that matches
``torch.optim`` exactly.
The delta is accumulated over the steps (never computed as W' - W, which
loses precision for tiny updates).

:func:`overfit_naive` is what research code does (a model copy and a
``torch.optim`` optimizer per sample, full forward each step): the reference
the vectorised path is tested and benchmarked against.
"""

from __future__ import annotations

import copy
import hashlib
import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ocd.delta import COND, StoreError, rho_of
from ocd.models.cut import LayerCut, LayerInput, layer_io
from ocd.store import DeltaStore
from ocd.tasks import Task

OPTIMIZERS = ("adam", "sgd")
# torch.optim.Adam's defaults, used by both paths.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def code_digest(model: nn.Module | None = None, spec=None) -> str:
    """sha256 of the code that computes the rows: this module, ocd.store (which
    derives u and rank1_share), the layer contract (ocd.models.cut), the module
    that builds ``spec``'s family (ocd.models.sequential for lenet5 and mlp) and
    the module that defines ``model``'s class (e.g. ocd.models.nerf).

    Part of a store's fingerprint: with DVC's ``persist``, a rerun after a
    code change would otherwise resume, or reuse, rows of the old code. The
    registry itself is left out: registering another family changes no row of
    this one, and rebuilt every store.
    """
    import ocd.models.cut
    import ocd.store

    modules = [sys.modules[__name__], ocd.store, ocd.models.cut]
    own = [] if spec is None else [sys.modules[spec.family_module()]]
    own += [] if model is None else [sys.modules.get(type(model).__module__)]
    for module in own:
        if module is not None and module.__name__.startswith("ocd.") and module not in modules:
            modules.append(module)
    h = hashlib.sha256()
    for module in modules:
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()


@dataclass
class Overfit:
    """Per-sample results of one batch."""

    delta: torch.Tensor  # [B, out, in]: W' - W, accumulated
    loss_before: torch.Tensor  # [B]: the sample's loss with the base weights
    loss_after: torch.Tensor  # [B]: the loss with W + delta


def overfit_batch(cut: LayerCut, task: Task, inp: LayerInput, y: torch.Tensor,
                  steps: int, optimizer: str, lr: float) -> Overfit:
    """Overfit each sample (inp[b], y[b]) on the cut layer; ``inp`` is the layer's input (``cut.enter(x)``).

    The layer's input is fixed over the steps, so each step runs only the layer
    and what follows it. The suffix runs in eval mode, where samples do not
    interact, so the gradient of the summed loss with respect to the layer's
    output z is exactly the stack of per-sample gradients: one batched
    backward pass. (``vmap(grad)`` gives the same numbers but costs ~35 ms of
    overhead per step here, 4x the step.) The arithmetic is torch.optim's, so
    the result equals the naive loop's (tested to 1e-5).

    One input per sample (P = 1): the gradient of a sample's loss is an outer
    product ``u_t h^T`` (``u_t = dL/dz``), and Adam's moments stay outer
    products too, ``m_t = mu_t h^T`` and ``v_t = nu_t (h^2)^T``, so only the
    update and the delta are full matrices (:func:`_overfit_one_input`). A set
    of P inputs (a NeRF view's points): the gradient is the sum of P outer
    products ``sum_p u_p h_p^T``, a full matrix, and so are Adam's moments
    (:func:`_overfit_input_set`).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    weight = cut.layer.weight.detach()
    bias = None if cut.layer.bias is None else cut.layer.bias.detach()
    inp = inp.detach()

    def grad_z(z):
        """Per-sample dL/dz [B, P, out] and losses, for the batch at once."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            loss = task.per_sample_loss(cut.leave(z, inp.ctx), y)
            (u,) = torch.autograd.grad(loss.sum(), z)
        return u, loss.detach()

    with torch.no_grad():
        z0 = F.linear(inp.h, weight, bias)  # the base output of the layer, [B, P, out]
        run = _overfit_one_input if inp.points == 1 else _overfit_input_set
        delta, z, loss_before = run(inp.h, z0, grad_z, weight, steps, optimizer, lr)
        loss_after = task.per_sample_loss(cut.leave(z, inp.ctx), y)
        if loss_before is None:  # steps == 0
            loss_before = loss_after
    return Overfit(delta, loss_before, loss_after)


def _overfit_one_input(h3, z0, grad_z, weight, steps, optimizer, lr):
    """P = 1: factored Adam moments; returns (delta, the layer's output, loss before)."""
    h, z0 = h3[:, 0], z0[:, 0]  # [B, in], [B, out]
    delta = torch.zeros((len(h), *weight.shape), dtype=weight.dtype, device=weight.device)
    mu = torch.zeros_like(z0)  # Adam's first moment is mu (x) h
    nu = torch.zeros_like(z0)  # and its second moment nu (x) h^2
    h_abs = h.abs()[:, None, :]
    eps = torch.tensor(ADAM_EPS, dtype=weight.dtype, device=weight.device)
    beta1, beta2 = ADAM_BETAS
    z = z0
    loss_before = None
    for t in range(1, steps + 1):
        u, loss = grad_z(z[:, None])
        u = u[:, 0]
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
    return delta, z[:, None], loss_before


def _overfit_input_set(h, z0, grad_z, weight, steps, optimizer, lr):
    """P > 1: the per-sample gradient sum_p u_p h_p^T and full-matrix Adam moments."""
    delta = torch.zeros((len(h), *weight.shape), dtype=weight.dtype, device=weight.device)
    m, v = torch.zeros_like(delta), torch.zeros_like(delta)
    beta1, beta2 = ADAM_BETAS
    z = z0
    loss_before = None
    for t in range(1, steps + 1):
        u, loss = grad_z(z)
        if loss_before is None:
            loss_before = loss
        g = torch.einsum("bpo,bpi->boi", u, h)
        if optimizer == "sgd":
            delta.sub_(lr * g)
        else:  # torch.optim.Adam's update, entry by entry
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / (1 - beta2**t) ** 0.5).add_(ADAM_EPS)
            delta.addcdiv_(m, denom, value=-lr / (1 - beta1**t))
        z = z0 + torch.einsum("boi,bpi->bpo", delta, h)
    return delta, z, loss_before


def overfit_naive(model: nn.Module, name: str, task: Task, x: torch.Tensor, y: torch.Tensor,
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
               steps: int, optimizer: str, lr: float, rho: str, on_chunk=None,
               chunks: list[tuple[str, int]] | None = None, writers: int | None = None) -> None:
    """Overfit every pending chunk of every split and write it to ``store``.

    ``splits`` maps a split name to its (x, y); a chunk is one batch.
    ``on_chunk(split, rows)`` is called after each chunk is written.
    ``chunks``: only these (split, chunk) pairs (a rank's share of
    :func:`pending_work`); by default every pending chunk. A chunk's rows
    depend on that chunk alone, so any division of the work gives the same store.

    Writer threads write finished chunks while the next is computed (file
    writes and torch kernels both release the GIL); at most ``writers``
    chunks are in flight (default :func:`default_writers`). A chunk is marked
    done once all of it is written, so with several writers chunks may finish
    out of order; a resumed run recomputes whatever is not marked.
    """
    def write(split: str, c: int, rows: dict) -> None:
        store.write_chunk(split, c, rows)
        if on_chunk is not None:
            on_chunk(split, len(rows["index"]))

    threads = torch.get_num_threads()
    work = pending_work(store, splits) if chunks is None else chunks
    try:
        _fill(store, cut, task, splits, work, steps, optimizer, lr, rho, write, threads,
              writers or default_writers(cut.layer.weight.device))
    finally:
        torch.set_num_threads(threads)


def check_moved(r: Overfit, layer: str, split: str, chunk: int) -> None:
    """Stop on a first chunk whose every delta is zero: the whole store would be zeros
    (minutes of work for nothing, refused downstream), and the cause is upstream."""
    if bool(r.delta.any()):
        return
    n = len(r.delta)
    if bool((r.loss_before == 0).all()):
        why = ("the loss of each is already 0 in float32 (a base model this confident has nothing to "
               "overfit: train it less, base.epochs)")
    else:
        why = (f"the loss does not depend on {layer}'s weight at these samples, though it is not 0 (mean "
               f"{float(r.loss_before.mean()):.4g}): its gradient is zero (units that never fire, or a base "
               "model whose output is constant); check the base model, or force another layer (layers.force)")
    raise StoreError(f"overfitting moved nothing: all {n} deltas of {split} chunk {chunk} on layer {layer} "
                     f"are zero; {why}")


def pending_work(store: DeltaStore, splits) -> list[tuple[str, int]]:
    """Every (split, chunk) not yet done, in order: what a run (or its ranks, dealt out) computes."""
    return [(split, c) for split in splits for c in store.pending_chunks(split)]


def default_writers(device) -> int:
    """Writer threads for the overfit store: one where the CPU computes the
    deltas (it needs the other cores), several where a GPU does, since one
    writer thread bounds the store path there (docs/RESULTS.md "GPU")."""
    if torch.device(device).type == "cpu":
        return 1
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def _fill(store, cut, task, splits, work, steps, optimizer, lr, rho, write, threads, writers) -> None:
    device = cut.layer.weight.device
    rows_per_chunk = store.layout.chunk
    dtype = store.layout.dtype
    with ThreadPoolExecutor(max_workers=writers) as writer:
        pending: deque = deque()
        for split, c in work:
            x, y = splits[split]
            idx = torch.arange(c * rows_per_chunk, min((c + 1) * rows_per_chunk, len(y)))
            xb, yb = x[idx].to(device), y[idx].to(device)
            io = layer_io(cut, xb)
            # One input per sample: a chunk computes in a fraction of its write
            # time (the write rate bounds the stage), so leave one core to the
            # writer thread. A set of inputs (a NeRF view: 131,072 points for a
            # 32 KB row): the compute bounds it, and gets every thread.
            torch.set_num_threads(max(1, threads - 1) if io.inp.points == 1 else threads)
            r = overfit_batch(cut, task, io.inp, yb, steps, optimizer, lr)
            if (split, c) == work[0]:
                check_moved(r, cut.name, split, c)
            cpu = lambda t: t.detach().cpu().numpy()  # noqa: E731
            rows = {
                "delta": cpu(r.delta).astype(dtype, copy=False),
                "rho": cpu(rho_of(r.delta, rho)),
                **{name: cpu(part) for name, part in zip(COND, io.cond)},
                "label": cpu(yb),
                "loss_before": cpu(r.loss_before),
                "loss_after": cpu(r.loss_after),
                "index": idx.numpy(),
            }
            while len(pending) >= writers:
                pending.popleft().result()  # raises the writer's error, if any
            pending.append(writer.submit(write, split, c, rows))
        while pending:
            pending.popleft().result()
