"""The conditional diffusion model over weight deltas, and its training.

Pieces, each separately testable:

- :class:`Conditioner`: I(x) -> embedding, ``E_i(i_L) + E_a(a_L) + E_o(f(x))``
  (one linear layer each, on standardised inputs), computed once per sample;
- :class:`TimeEmbedding`: PE(t), the sinusoidal encoding and a small MLP;
- the denoiser :class:`ocd.unet.UNet`, given ``e = PE(t) + conditioning``;
- the schedule :class:`ocd.schedule.Schedule` (noising and DDIM sampling).

The diffusion target is the delta at unit scale: ``x0 = delta / rho * unit``,
with ``unit = sqrt(out * in)`` when rho is the Frobenius norm (so x0's entries
have unit mean square, like the noise) and 1 when rho is the std. A delta is
rebuilt as ``rho * x0 / unit``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ocd.schedule import Schedule, sinusoidal
from ocd.store import COND, ChunkReader
from ocd.unet import PRESETS, UNet, crop, pad, padded_shape


def unit_factor(rho: str, shape: tuple[int, int]) -> float:
    return math.sqrt(shape[0] * shape[1]) if rho == "fro" else 1.0


def cond_stats(reader: ChunkReader) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Mean and std of each conditioning array over the reader's rows (one pass)."""
    sums = {n: 0.0 for n in COND}
    squares = {n: 0.0 for n in COND}
    count = 0
    for c in reader.chunks:
        block = reader.read([c])
        count += len(block[COND[0]])
        for n in COND:
            v = block[n].astype(np.float64)
            sums[n] = sums[n] + v.sum(0)
            squares[n] = squares[n] + (v**2).sum(0)
    out = {}
    for n in COND:
        mean = sums[n] / count
        std = np.sqrt(np.maximum(squares[n] / count - mean**2, 0.0))
        out[n] = (mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32))
    return out


class Standardise(nn.Module):
    """(v - mean) / std with train-set statistics kept as buffers."""

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, v):
        return (v - self.mean) / self.std


class Conditioner(nn.Module):
    """e_cond = E_i(i_L) + E_a(a_L) + E_o(f(x)): one linear layer per part."""

    def __init__(self, stats: dict, emb_dim: int):
        super().__init__()
        self.norms = nn.ModuleList([Standardise(*stats[n]) for n in COND])
        self.encoders = nn.ModuleList([nn.Linear(len(stats[n][0]), emb_dim) for n in COND])

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return sum(enc(norm(p)) for p, norm, enc in zip(parts, self.norms, self.encoders))


class TimeEmbedding(nn.Module):
    def __init__(self, channels: int, emb_dim: int):
        super().__init__()
        self.channels = channels
        self.mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, t):
        return self.mlp(sinusoidal(t, self.channels))


@dataclass(frozen=True)
class ModelMeta:
    """What a checkpoint needs besides weights to rebuild and apply the model."""

    preset: str
    shape: tuple[int, int]  # the layer's weight [out, in]
    padded: tuple[int, int]
    target: str  # eps | x0
    unit: float
    schedule: str
    T: int


class DeltaDiffusion(nn.Module):
    def __init__(self, meta: ModelMeta, stats: dict):
        super().__init__()
        self.meta = meta
        config = PRESETS[meta.preset]
        self.net = UNet(config)
        self.cond = Conditioner(stats, config.emb_dim)
        self.time = TimeEmbedding(config.channels, config.emb_dim)
        mask = torch.zeros(1, 1, *meta.padded)
        mask[..., : meta.shape[0], : meta.shape[1]] = 1
        self.register_buffer("mask", mask)
        self._schedule = Schedule(meta.T, meta.schedule)

    def schedule(self) -> Schedule:
        return self._schedule

    def embed(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return self.cond(parts)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.net(x_t, self.time(t) + c)

    def loss(self, x0: torch.Tensor, c: torch.Tensor, schedule: Schedule,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """The denoising loss on the matrix entries (padding excluded), per sample."""
        x0 = pad(x0, self.meta.padded)
        t = torch.randint(0, schedule.T, (len(x0),), generator=generator).to(x0.device)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device) * self.mask
        x_t = schedule.add_noise(x0, eps, t)
        target = eps if self.meta.target == "eps" else x0
        err = (self.predict(x_t, t, c) - target) ** 2 * self.mask
        return err.flatten(1).sum(1) / self.mask.sum()

    @torch.no_grad()
    def sample(self, c: torch.Tensor, steps: int = 10, eta: float = 0.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Unit-scale deltas [B, out, in] by DDIM from pure noise, conditioned on c."""
        x = self.schedule().sample(lambda x_t, t: self.predict(x_t, t, c), (len(c), 1, *self.meta.padded),
                                   self.meta.target, steps=steps, eta=eta, mask=self.mask,
                                   generator=generator, device=c.device)
        return crop(x, self.meta.shape)


def build(meta: ModelMeta, stats: dict) -> DeltaDiffusion:
    return DeltaDiffusion(meta, stats)


def make_meta(preset: str, shape, square: bool, pad_to: int, target: str, rho: str,
              schedule: str, T: int) -> ModelMeta:
    if preset not in PRESETS:
        raise ValueError(f"unknown diffusion preset {preset!r}; valid: {', '.join(PRESETS)}")
    shape = (int(shape[0]), int(shape[1]))
    padded = padded_shape(shape, PRESETS[preset].factor, square, pad_to)
    return ModelMeta(preset, shape, padded, target, unit_factor(rho, shape), schedule, T)


def batch_tensors(batch: dict, unit: float, device) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """(unit-scale x0, conditioning parts, rho) of a store minibatch."""
    rho = torch.as_tensor(batch["rho"], dtype=torch.float32, device=device)
    delta = torch.as_tensor(batch["delta"], dtype=torch.float32, device=device)
    x0 = delta / rho.clamp_min(1e-12)[:, None, None] * unit
    parts = [torch.as_tensor(batch[n], dtype=torch.float32, device=device) for n in COND]
    return x0, parts, rho


class EMA:
    """Exponential moving average of a model's parameters (the sampled model)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p, 1 - self.decay)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


def train(model: DeltaDiffusion, reader: ChunkReader, steps: int, batch_size: int, lr: float,
          ema_decay: float, grad_clip: float, seed: int, device, progress: bool = True):
    """Adam on the denoising loss; returns (EMA model, [(step, loss)])."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    ema = EMA(model, ema_decay)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batches = reader.batches(min(batch_size, reader.rows), rng)
    history, running = [], None
    bar = tqdm(range(1, steps + 1), desc="train diffusion", disable=not progress, mininterval=1.0)
    for step in bar:
        x0, parts, _ = batch_tensors(next(batches), model.meta.unit, device)
        loss = model.loss(x0, model.embed(parts), model.schedule(), gen).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        ema.update(model)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        history.append((step, loss.item()))
        bar.set_postfix(loss=f"{running:.4f}", refresh=False)
    model.eval()
    return ema.model, history


@torch.no_grad()
def diagnose(model: DeltaDiffusion, data: dict, sample_steps: int, eta: float, seed: int,
             max_samples: int, device) -> dict[str, float]:
    """Held-out denoising loss, and the cosine between sampled and true deltas.

    The cosine is the plainest sign of whether the denoiser learned to use
    the conditioning: sampled from pure noise given a sample's I(x), near 0
    means it did not.
    """
    model.eval().to(device)
    x0, parts, _ = batch_tensors(data, model.meta.unit, device)
    gen = torch.Generator().manual_seed(seed)
    c = model.embed(parts)
    losses = torch.cat([model.loss(x0[i:i + 64], c[i:i + 64], model.schedule(), gen)
                        for i in range(0, len(x0), 64)])
    n = min(max_samples, len(x0))
    sampled = model.sample(c[:n], steps=sample_steps, eta=eta, generator=gen)
    cos = F.cosine_similarity(sampled.flatten(1), x0[:n].flatten(1), dim=1)
    return {"denoise_loss": float(losses.mean()), "cosine_mean": float(cos.mean()),
            "cosine_sd": float(cos.std()) if n > 1 else 0.0, "cosine_samples": n}


def save(path, model: DeltaDiffusion, stats: dict, extra: dict) -> None:
    torch.save({"meta": asdict(model.meta), "stats": {k: [v[0], v[1]] for k, v in stats.items()},
                "state": model.state_dict(), **extra}, path)


def load(path, device=None) -> tuple[DeltaDiffusion, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    meta = ckpt["meta"]
    meta = ModelMeta(**{**meta, "shape": tuple(meta["shape"]), "padded": tuple(meta["padded"])})
    stats = {k: (np.asarray(v[0]), np.asarray(v[1])) for k, v in ckpt["stats"].items()}
    model = DeltaDiffusion(meta, stats)
    model.load_state_dict(ckpt["state"])
    return model.eval().to(device or "cpu"), ckpt
