"""Noise schedule, apart from any network (like diffusers' schedulers).

DDPM noising for training (:meth:`Schedule.add_noise`) and DDIM sampling for
inference (:meth:`Schedule.sample`). Betas are linear; two ranges:

- ``paper``: 1e-4 .. 1e-2 over T steps (the paper, Alg. 1);
- ``reference``: 1e-6 .. 1e-2 over T (the authors' code: 1000 steps). Note:
  with 1000 steps it keeps ~0.7% of the signal at t = T (abar_T ~ 0.0067).

The sampler works through the clean-sample estimate x0_hat whatever the
network predicts (``eps`` or ``x0``), so a known part of x0 (the zero padding
around a weight matrix) can be imposed at every step by ``mask``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

RANGES = {"paper": (1e-4, 1e-2), "reference": (1e-6, 1e-2)}
PREDICTIONS = ("eps", "x0")


class Schedule:
    def __init__(self, T: int = 1000, kind: str = "paper"):
        if kind not in RANGES:
            raise ValueError(f"unknown schedule {kind!r}; valid: {', '.join(RANGES)}")
        self.T, self.kind = T, kind
        lo, hi = RANGES[kind]
        self.betas = torch.linspace(lo, hi, T, dtype=torch.float64)
        self.alphas = 1.0 - self.betas
        self.abar = torch.cumprod(self.alphas, dim=0)
        self._abar_on = {self.abar.device: self.abar}  # the table on each device that asked (no copy per step)

    def abar_at(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """abar_t per integer timestep of t (-1: before the first step, 1.0), shaped to broadcast over
        ``like``'s rows."""
        if t.device not in self._abar_on:
            self._abar_on[t.device] = self.abar.to(t.device)
        one = torch.ones((), dtype=torch.float64, device=t.device)
        a = torch.where(t >= 0, self._abar_on[t.device][t.clamp_min(0)], one)
        return a.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (t: one timestep per sample)."""
        a = self.abar_at(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    def split(self, x_t, pred, t, prediction: str):
        """(x0_hat, eps_hat) from the network's output, a prediction of ``prediction``."""
        a = self.abar_at(t, x_t)
        if prediction == "eps":
            return (x_t - (1 - a).sqrt() * pred) / a.sqrt(), pred
        if prediction == "x0":
            return pred, (x_t - a.sqrt() * pred) / (1 - a).sqrt()
        raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")

    def timesteps(self, steps: int) -> list[int]:
        """DDIM's decreasing subsequence of ``steps`` timesteps, from T-1 to 0."""
        if not 1 <= steps <= self.T:
            raise ValueError(f"DDIM steps must lie in 1..{self.T}, got {steps}")
        return sorted({round(v) for v in torch.linspace(0, self.T - 1, steps).tolist()}, reverse=True)

    @torch.no_grad()
    def sample(self, predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape,
               prediction: str, steps: int = 10, eta: float = 0.0, mask: torch.Tensor | None = None,
               generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """DDIM from x_T ~ N(0, I). ``predict(x_t, t)`` returns the network's output.

        ``mask`` (broadcastable to ``shape``) is 1 where x0 is unknown and 0
        where it is known to be zero; x0_hat is masked at every step.
        """
        # drawn on the CPU (the generator's device) and moved: a seed gives the
        # same noise whatever device the model runs on
        x = torch.randn(shape, generator=generator).to(device)
        ts = self.timesteps(steps)
        for i, t_now in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            t = torch.full((shape[0],), t_now, dtype=torch.long, device=x.device)
            x0, eps = self.split(x, predict(x, t), t, prediction)
            a = self.abar_at(t, x)
            if mask is not None:
                x0 = x0 * mask
                eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            a_prev = self.abar_at(torch.full_like(t, t_prev), x)
            sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).clamp_min(0).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
            if eta > 0 and t_prev >= 0:
                x = x + sigma * torch.randn(shape, generator=generator).to(x.device)
        return x


def sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    """The transformer's sine/cosine positional encoding of timesteps t: [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / max(half - 1, 1))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([args.sin(), args.cos()], dim=1)
    return torch.nn.functional.pad(emb, (0, dim % 2))
