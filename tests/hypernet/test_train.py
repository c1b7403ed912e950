"""The one training loop of the denoiser, scale model and regressor (ocd.hypernet.train)."""

import numpy as np
import pytest
import torch
from synthetic import synthetic_store
from torch import nn

from ocd.delta import COND
from ocd.hypernet import train
from ocd.store import ChunkReader


def reader_of(tmp_path):
    root = synthetic_store(tmp_path / "s.zarr")
    return ChunkReader(root["train"], ("rho", *COND), list(range(root["train/done"].shape[0])))


def test_the_loop_learns_and_its_ema_trails_the_model(tmp_path):
    reader = reader_of(tmp_path)
    torch.manual_seed(0)
    model = nn.Linear(6, 1)
    ema = train.EMA(model, 0.9)
    start = [p.clone() for p in ema.model.parameters()]

    def tensors_of(rows, span):
        assert span == (16, 0, 16)  # one process: the whole global minibatch
        return [torch.as_tensor(rows[n], dtype=torch.float32) for n in ("cond/layer_input", "rho")]

    def loss_of(x, rho):
        return ((model(x).squeeze(1) - rho) ** 2).mean()

    history = train.fit(model, reader, 200, 16, 0.05, np.random.default_rng(0), tensors_of, loss_of, "fit", "cpu",
                        progress=False, grad_clip=1.0, ema=ema)
    assert [s for s, _ in history] == list(range(1, 201))
    assert np.mean([v for _, v in history[-20:]]) < 0.2 * np.mean([v for _, v in history[:20]])
    moved = [not torch.equal(a, b) for a, b in zip(start, ema.model.parameters())]
    assert all(moved) and not any(p.requires_grad for p in ema.model.parameters())
    # the EMA lies between its start and the model: it trails, it does not copy
    gap = sum(float((e - p.detach()).abs().sum()) for e, p in zip(ema.model.parameters(), model.parameters()))
    assert gap > 0


def test_a_gradient_clip_bounds_each_step(tmp_path):
    reader = reader_of(tmp_path)
    torch.manual_seed(0)
    model = nn.Linear(6, 1)
    before = [p.detach().clone() for p in model.parameters()]

    def tensors_of(rows, span):
        return [torch.as_tensor(rows["cond/layer_input"], dtype=torch.float32)]

    def loss_of(x):  # a huge gradient: without the clip, Adam's first step is still lr per entry
        return 1e6 * model(x).mean()

    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    loss = train.step(model, loss_of, opt, 0.5, None, *tensors_of(reader.read([0]), None))
    assert torch.isfinite(loss)
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert float(step.norm()) == pytest.approx(0.5, rel=1e-4)  # SGD with lr 1: the step is the clipped gradient


def test_a_loss_that_is_not_finite_stops_with_the_step(tmp_path):
    reader = reader_of(tmp_path)
    model = nn.Linear(6, 1)

    def tensors_of(rows, span):
        return [torch.as_tensor(rows["cond/layer_input"], dtype=torch.float32)]

    calls = []

    def loss_of(x):
        calls.append(1)
        return model(x).mean() * (float("nan") if len(calls) == 3 else 1.0)

    with pytest.raises(FloatingPointError, match="fit: the training loss is nan at step 3 of 5"):
        train.fit(model, reader, 5, 16, 1e-3, np.random.default_rng(0), tensors_of, loss_of, "fit", "cpu",
                  progress=False)


def test_the_ema_warm_up_forgets_the_random_start():
    """Issue 40: without a warm-up, an EMA of decay 0.999 still holds 0.999^s of its random
    start after s steps; warmed up (min(decay, (1 + n) / (10 + n))) it holds almost none."""
    model = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    plain, warm = train.EMA(model, 0.999), train.EMA(model, 0.999, warmup=True)
    with torch.no_grad():
        model.weight.fill_(1.0)  # the trained weights, far from the start
    for _ in range(1500):
        plain.update(model)
        warm.update(model)
    assert float(plain.model.weight[0, 0]) == pytest.approx(1 - 0.999 ** 1500, rel=1e-3)  # 22% of the start left
    assert float(warm.model.weight[0, 0]) > 0.999
    assert int(warm.updates) == 1500
