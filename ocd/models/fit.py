"""The minibatch loop every base-model family trains with (ocd.models.base.train, and the
families that train their own way: TinyNeRF on rays, SetFit's head)."""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from ocd.device import generator
from ocd.params import BaseParams

SCHEDULES = ("constant", "cosine")  # base.schedule: the learning rate over all steps


def fit_minibatches(model: nn.Module, params: BaseParams, n: int, loss_of, desc: str,
                    progress: bool = True, clip: float | None = None) -> list[float]:
    """Adam (``params.lr``, ``params.weight_decay``) for ``params.epochs`` passes over
    ``n`` examples in minibatches of ``params.batch_size``, shuffled with
    ``params.seed``, under the constant or cosine schedule. ``loss_of(idx)`` is
    the mean loss of the examples ``idx``; ``clip``: the gradient's norm is clipped to it
    before each step (a family's choice, e.g. Conv-TasNet's 5). Returns the mean loss of each epoch."""
    order = generator(params.seed)
    opt = torch.optim.Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    steps = (n + params.batch_size - 1) // params.batch_size
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=params.epochs * steps)
             if params.schedule == "cosine" else None)  # base.schedule: SCHEDULES
    history = []
    bar = tqdm(total=params.epochs * steps, desc=desc, disable=not progress, mininterval=1.0, unit="step")
    for epoch in range(params.epochs):
        model.train()
        perm = torch.randperm(n, generator=order)
        total = 0.0
        for i in range(steps):
            idx = perm[i * params.batch_size:(i + 1) * params.batch_size]
            loss = loss_of(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            if sched is not None:
                sched.step()
            total += loss.item() * len(idx)
            bar.update()
        history.append(total / n)
        bar.set_postfix(epoch=epoch + 1, loss=f"{history[-1]:.4g}", refresh=False)
    bar.close()
    model.eval()
    return history
