import math

import pytest
import torch

from ocd.hypernet.schedule import Schedule, sinusoidal


@pytest.mark.parametrize("kind, lo, hi", [("paper", 1e-4, 1e-2), ("reference", 1e-6, 1e-2)])
def test_abar_is_the_product_of_alphas(kind, lo, hi):
    s = Schedule(1000, kind)
    assert s.betas[0].item() == pytest.approx(lo) and s.betas[-1].item() == pytest.approx(hi)
    for t in (0, 1, 499, 999):
        closed = math.prod(1 - (lo + (hi - lo) * k / 999) for k in range(t + 1))
        assert s.abar[t].item() == pytest.approx(closed, rel=1e-9)


def test_reference_schedule_keeps_under_one_percent_of_the_signal():
    # the fact behind method.md's warning: abar_T ~ 0.0067 with 1e-6..1e-2 over 1000 steps
    assert Schedule(1000, "reference").abar[-1].item() == pytest.approx(0.0067, abs=5e-4)


def test_add_noise_closed_form():
    s = Schedule(100, "paper")
    x0, eps = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    t = torch.tensor([0, 50, 99])
    xt = s.add_noise(x0, eps, t)
    for i in range(3):
        a = s.abar[t[i]].item()
        torch.testing.assert_close(xt[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * eps[i])


@pytest.mark.parametrize("target", ["eps", "x0"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_with_a_perfect_predictor_returns_x0(target, eta):
    s = Schedule(1000, "paper")
    x0 = torch.randn(4, 1, 6, 6)

    def perfect(x_t, t):
        a = s.abar_at(t, x_t)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt() if target == "eps" else x0

    out = s.sample(perfect, x0.shape, target, steps=10, eta=eta, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, rtol=1e-4, atol=1e-4)


def test_mask_imposes_the_known_zeros():
    s = Schedule(100, "paper")
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :3] = 1
    out = s.sample(lambda x, t: torch.ones_like(x), (2, 1, 4, 4), "x0", steps=5, mask=mask)
    assert out[..., 2:, :].abs().max() == 0 and out[..., :, 3:].abs().max() == 0
    torch.testing.assert_close(out[..., :2, :3], torch.ones(2, 1, 2, 3))


def test_timesteps_and_encoding():
    s = Schedule(1000, "paper")
    assert s.timesteps(10)[0] == 999 and s.timesteps(10)[-1] == 0 and len(s.timesteps(10)) == 10
    with pytest.raises(ValueError):
        s.timesteps(0)
    e = sinusoidal(torch.tensor([0, 5, 999]), 33)
    assert e.shape == (3, 33) and not torch.allclose(e[0], e[1])
