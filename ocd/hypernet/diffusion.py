"""The conditional diffusion model over weight deltas, and its training.

Pieces, each separately testable:

- :class:`Conditioner`: I(x) -> embedding, ``E_i(i_L) + E_a(a_L) + E_o(f(x))``
  (one linear layer each, on standardised inputs), computed once per sample;
- :class:`TimeEmbedding`: PE(t), the sinusoidal encoding and a small MLP;
- the denoiser: :class:`ocd.hypernet.unet.UNet` over the matrix, or
  :class:`ocd.hypernet.vecnet.VecNet` over a vector (the rank-one factor, or the
  flattened matrix), given ``e = PE(t) + conditioning``;
- the schedule :class:`ocd.hypernet.schedule.Schedule` (noising and DDIM sampling).

What the network generates from a delta (the matrix, its rank-one factor,
or the flattened matrix) and at what scale: ocd/hypernet/targets.py. The
conditioning's statistics and encoders: ocd/hypernet/conditioning.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ocd.artifacts import CheckpointError, load_checkpoint, save_checkpoint
from ocd.delta import StoreError
from ocd.device import PRECISIONS, autocast, generator
from ocd.distributed import Group
from ocd.hypernet import vecnet
from ocd.hypernet.conditioning import Conditioner, read_stats, stats_config
from ocd.hypernet.schedule import Schedule, sinusoidal
from ocd.hypernet.targets import (
    TARGETS,
    TargetMeta,
    batch_tensors,
    cond_names,
    cosine_summary,
    to_matrix,
    true_omega,
    unit_factor,
)
from ocd.hypernet.train import EMA, fit
from ocd.hypernet.unet import PRESETS, UNet, crop, pad, padded_shape
from ocd.params import ComputeParams, DiffusionParams, training_steps

if TYPE_CHECKING:  # the reader of a store's rows (ocd.store): the models need no Zarr
    from ocd.store import ChunkReader


class TimeEmbedding(nn.Module):
    def __init__(self, channels: int, emb_dim: int):
        super().__init__()
        self.channels = channels
        self.mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, t):
        return self.mlp(sinusoidal(t, self.channels))


@dataclass(frozen=True, kw_only=True)
class ModelMeta(TargetMeta):
    """What a denoiser's checkpoint needs besides weights: its target (:class:`TargetMeta`),
    the network and its padding, what it predicts, and the schedule."""

    preset: str
    padded: tuple[int, int]  # the U-Net's input (matrix target)
    prediction: str  # eps | x0
    schedule: str
    T: int
    output_encoder: str = "linear"  # how the output part of I(x) is embedded (ocd.hypernet.conditioning)
    output_grid: tuple[int, ...] = ()  # that part as a picture (channels, height, width); (): a vector


class DeltaDiffusion(nn.Module):
    def __init__(self, meta: ModelMeta, stats: dict):
        super().__init__()
        self.meta = meta
        if meta.target == "matrix":
            config = PRESETS[meta.preset]
            self.net = UNet(config)
            mask = torch.zeros(1, 1, *meta.padded)
            mask[..., : meta.shape[0], : meta.shape[1]] = 1
        else:
            config = vecnet.PRESETS[meta.preset]
            self.net = vecnet.VecNet(meta.rep_shape[0], config)
            mask = torch.ones(1, meta.rep_shape[0])
        self.register_buffer("mask", mask)  # 1 where x0 is unknown, 0 on the padding
        self.cond = Conditioner(stats, config.emb_dim, cond_names(meta), meta.output_encoder, meta.output_grid)
        self.time = TimeEmbedding(config.channels, config.emb_dim)
        self._schedule = Schedule(meta.T, meta.schedule)
        self.precision = "fp32"  # how the denoiser runs (compute.precision: at_precision), not saved with the weights

    def at_precision(self, precision: str) -> "DeltaDiffusion":
        """Run the denoiser at ``precision`` (compute.precision; bf16: under bfloat16 autocast)
        from now on; returns itself."""
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        self.precision = precision
        return self

    def _net_shape(self, rep: torch.Tensor) -> torch.Tensor:
        return pad(rep, self.meta.padded) if self.meta.target == "matrix" else rep

    def schedule(self) -> Schedule:
        return self._schedule

    def embed(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return self.cond(parts)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        with autocast(x_t.device, self.precision):  # bf16: the network's products in bfloat16
            out = self.net(x_t, self.time(t) + c)
        return out.float()

    def draw(self, x0: torch.Tensor, generator: torch.Generator | None = None,
             rows: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A timestep and a noise per target of x0 [B, *rep_shape], drawn on the CPU (the
        generator's device: a seed gives the same draws on every device) and moved to x0's.
        ``rows = (n, lo, hi)``: draw for n targets and keep rows lo:hi (a rank's share)."""
        n, lo, hi = rows or (len(x0), 0, len(x0))
        t = torch.randint(0, self.schedule().T, (n,), generator=generator)[lo:hi]
        eps = torch.randn((n, *self.mask.shape[1:]), generator=generator)[lo:hi]
        return t.to(x0.device), eps.to(x0.device)

    def loss(self, x0: torch.Tensor, c: torch.Tensor, schedule: Schedule,
             generator: torch.Generator | None = None, noise: tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> torch.Tensor:
        """The denoising loss on the target's entries (padding excluded), per sample;
        ``noise``: (t, eps) from :meth:`draw`, else drawn here from ``generator``."""
        t, eps = noise if noise is not None else self.draw(x0, generator)
        x0 = self._net_shape(x0)
        eps = eps * self.mask
        x_t = schedule.add_noise(x0, eps, t)
        target = eps if self.meta.prediction == "eps" else x0
        err = (self.predict(x_t, t, c) - target) ** 2 * self.mask
        return err.flatten(1).sum(1) / self.mask.sum()

    @torch.no_grad()
    def sample(self, c: torch.Tensor, steps: int = 10, eta: float = 0.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Unit-scale targets [B, *rep_shape] by DDIM from pure noise, conditioned on c."""
        shape = (len(c), *self.mask.shape[1:])
        x = self.schedule().sample(lambda x_t, t: self.predict(x_t, t, c), shape, self.meta.prediction,
                                   steps=steps, eta=eta, mask=self.mask, generator=generator, device=c.device)
        return crop(x, self.meta.shape) if self.meta.target == "matrix" else x

    def omega(self, rep: torch.Tensor, layer_input: torch.Tensor) -> torch.Tensor:
        """Sampled targets -> unit-scale deltas [B, out, in]."""
        return to_matrix(rep, layer_input, self.meta)


def build(meta: ModelMeta, stats: dict, precision: str = "fp32") -> DeltaDiffusion:
    return DeltaDiffusion(meta, stats).at_precision(precision)


# Positions the U-Net may attend over at its finest attention level: 16,384 (a
# 128 x 128 grid) is a 1 GiB attention map per sample and head.
MAX_ATTENTION_POSITIONS = 1 << 14


def _check_attention(preset: str, shape, padded) -> None:
    """Refuse a matrix target whose U-Net attention would not fit in memory (SetFit's ffn_out
    delta, 384 x 1536, asked the tiny U-Net for 348 GB), before any training."""
    levels = PRESETS[preset].attn_levels
    if not levels:
        return
    positions = padded[0] * padded[1] // 4 ** min(levels)
    if positions > MAX_ATTENTION_POSITIONS:
        raise StoreError(f"diffusion.target matrix: the {preset} U-Net would attend over {positions:,} positions "
                         f"of the layer's {shape[0]} x {shape[1]} delta ({4 * positions**2 / 2**30:,.0f} GiB per "
                         f"sample); use diffusion.target rank1 or flat for a layer this large")


def make_meta(preset: str, shape, square: bool, pad_to: int, prediction: str, rho: str,
              schedule: str, T: int, target: str = "matrix", basis: str = "input", neighbours: int = 0,
              output_encoder: str = "linear", output_grid: tuple[int, ...] = ()) -> ModelMeta:
    if preset not in PRESETS:
        raise ValueError(f"unknown diffusion preset {preset!r}; valid: {', '.join(PRESETS)}")
    if target not in TARGETS:
        raise ValueError(f"unknown diffusion target {target!r}; valid: {', '.join(TARGETS)}")
    shape = (int(shape[0]), int(shape[1]))
    padded = padded_shape(shape, PRESETS[preset].factor, square, pad_to) if target == "matrix" else shape
    if target == "matrix":
        _check_attention(preset, shape, padded)
    return ModelMeta(shape=shape, unit=unit_factor(rho, shape), target=target, rho=rho, basis=basis,
                     neighbours=neighbours, preset=preset, padded=padded, prediction=prediction,
                     schedule=schedule, T=T, output_encoder=output_encoder, output_grid=tuple(output_grid))


def meta_of(target: TargetMeta, dp: DiffusionParams, output_grid: tuple[int, ...] = ()) -> ModelMeta:
    """The denoiser's meta for ``target``: its network, padding, prediction, schedule and output
    encoder from ``dp`` (``output_grid``: the store's picture of the output part, if any)."""
    return make_meta(dp.preset, target.shape, dp.square, dp.pad, dp.prediction, target.rho, dp.schedule, dp.T,
                     target.target, target.basis, target.neighbours, dp.output_encoder, output_grid)


def denoising_loss(model: DeltaDiffusion):
    """``(x0, t, eps, *parts) -> the mean denoising loss`` of ``model`` on a minibatch."""
    return lambda x0, t, eps, *parts: model.loss(x0, model.embed(list(parts)), model.schedule(), noise=(t, eps)).mean()


def train(model: DeltaDiffusion, reader: ChunkReader, dp: DiffusionParams, compute: ComputeParams, device,
          progress: bool = True, group: Group = Group()) -> tuple[DeltaDiffusion, list[tuple[int, float]]]:
    """Adam on the denoising loss for ``training_steps`` of ``dp`` (ocd.hypernet.train.fit,
    with ``dp.grad_clip`` and an EMA of decay ``dp.ema``); returns (the EMA model, [(step, loss)]).

    ``compute.graphs``: on CUDA each step is one replayed CUDA graph, unless
    ``compute.compile``: the training network through ``torch.compile`` (the
    EMA copy, which samples, is not compiled). On several ranks (``group``,
    every rank with the same seed) each rank also draws its share of the
    minibatch's noise.
    """
    torch.manual_seed(dp.seed)
    rng = np.random.default_rng(dp.seed)
    gen = generator(dp.seed)
    model.to(device).train()
    ema = EMA(model, dp.ema, dp.ema_warmup)  # a deep copy: it samples at the model's precision
    if compute.compile:
        model.net.compile()

    def tensors_of(rows: dict, span) -> list[torch.Tensor]:
        x0, parts, _ = batch_tensors(rows, model.meta, device)
        return [x0, *model.draw(x0, gen, span), *parts]

    history = fit(model, reader, training_steps(dp.steps, dp.epochs, reader.rows, dp.batch_size), dp.batch_size,
                  dp.lr, rng, tensors_of, denoising_loss(model), "train diffusion", device, progress,
                  compute.graphs and not compute.compile, group, grad_clip=dp.grad_clip, ema=ema)
    return ema.model, history


@torch.no_grad()
def diagnose(model: DeltaDiffusion, data: dict, sample_steps: int, eta: float, seed: int,
             max_samples: int, device) -> dict[str, float]:
    """Held-out denoising loss beside two references, and the cosine between sampled and true deltas.

    The references are scored on the same rows, timesteps and noise as the
    model (:func:`reference_losses`): ``denoise_loss_zero`` (a prediction of
    zero noise, or for x0 the mean target) and ``denoise_loss_linear`` (the
    best predictor linear in x_t alone). A denoiser that does not beat the
    second has learned nothing a formula does not know (``learned`` false).
    The cosine is the plainest sign of whether the denoiser learned to use
    the conditioning: sampled from pure noise given a sample's I(x), near 0
    means it did not. It compares whole matrices whatever the target, so the
    targets' figures compare; ``data`` must hold ``delta``.
    """
    model.eval().to(device)
    x0, parts, _ = batch_tensors(data, model.meta, device)
    gen = generator(seed)
    c = model.embed(parts)
    losses, draws = [], []
    for i in range(0, len(x0), 64):
        draws.append(model.draw(x0[i:i + 64], gen))  # what model.loss would draw from gen itself
        losses.append(model.loss(x0[i:i + 64], c[i:i + 64], model.schedule(), noise=draws[-1]))
    t, eps = (torch.cat(v) for v in zip(*draws))
    refs = reference_losses(model, x0, t, eps)
    loss = float(torch.cat(losses).mean())
    n = min(max_samples, len(x0))
    sampled = model.omega(model.sample(c[:n], steps=sample_steps, eta=eta, generator=gen), parts[0][:n])
    return {"denoise_loss": loss, **refs, "learned": learned(loss, refs),
            **cosine_summary(sampled, true_omega(data, model.meta, device)[:n])}


@torch.no_grad()
def reference_losses(model: DeltaDiffusion, x0: torch.Tensor, t: torch.Tensor,
                     eps: torch.Tensor) -> dict[str, float]:
    """The denoising loss (:meth:`DeltaDiffusion.loss`) of two predictors that never look
    at the conditioning, on targets ``x0`` noised at timesteps ``t`` with noise ``eps``:

    - ``denoise_loss_zero``: a constant, the best one: zero noise (eps prediction) or
      mu, the mean target per entry over these rows (x0 prediction);
    - ``denoise_loss_linear``: per timestep, the best predictor linear in x_t,
      ``mu + c_t (x_t - sqrt(abar_t) mu)`` for x0 (``c_t = sqrt(abar_t) v / (abar_t v + 1 - abar_t)``)
      and ``c_t (x_t - sqrt(abar_t) mu)`` for eps (``c_t = sqrt(1 - abar_t) / (abar_t v + 1 - abar_t)``),
      v the mean variance of an entry about mu: what the schedule alone tells of the answer.
      For unit-variance targets and eps it scores the mean of abar_t over the timesteps drawn.

    Both are fitted on the rows they are scored on, so they are bars a model must
    clear, not rivals fitted elsewhere."""
    mask = model.mask
    x0 = model._net_shape(x0)
    eps = eps * mask
    mu = x0.mean(0, keepdim=True)
    v = float(((x0 - mu) ** 2 * mask).sum() / (mask.sum() * len(x0)))
    schedule = model.schedule()
    x_t = schedule.add_noise(x0, eps, t)
    a = schedule.abar_at(t, x0)
    centred = x_t - a.sqrt() * mu
    if model.meta.prediction == "eps":
        target, zero = eps, torch.zeros_like(eps)
        linear = (1 - a).sqrt() / (a * v + 1 - a) * centred
    else:
        target, zero = x0, mu.expand_as(x0)
        linear = mu + a.sqrt() * v / (a * v + 1 - a) * centred

    def loss(pred: torch.Tensor) -> float:
        return float(((pred - target) ** 2 * mask).flatten(1).sum(1).div(mask.sum()).mean())

    return {"denoise_loss_zero": loss(zero), "denoise_loss_linear": loss(linear)}


def learned(loss: float, refs: dict[str, float]) -> bool:
    """Whether a held-out denoising loss beats both references of :func:`reference_losses`."""
    return loss < min(refs["denoise_loss_zero"], refs["denoise_loss_linear"])


def not_learned_warning(diag: dict, prediction: str) -> str:
    """The one line a stage prints for a denoiser that did not beat the references."""
    return (f"warning: the denoiser did not learn: held-out denoising loss {diag['denoise_loss']:.4f}, "
            f"not below predicting {'zero noise' if prediction == 'eps' else 'the mean target'} "
            f"({diag['denoise_loss_zero']:.4f}) and the best predictor linear in x_t alone "
            f"({diag['denoise_loss_linear']:.4f}); its OCD rows are marked in the results")


def save(path, model: DeltaDiffusion, stats: dict, extra: dict) -> None:
    save_checkpoint(path, model.state_dict(), {"meta": asdict(model.meta), "stats": stats_config(stats), **extra})


def read_checkpoint(path) -> tuple[dict, dict, ModelMeta, dict]:
    """A checkpoint saved with a ModelMeta and conditioning stats: (state, config, meta, stats)."""
    state, config = load_checkpoint(path)
    try:
        meta = ModelMeta.from_config(config["meta"])
        stats = read_stats(config)
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: its configuration lacks or mangles {exc}; rerun train_diffusion") from None
    return state, config, meta, stats


def load(path, device=None, precision: str = "fp32") -> tuple[DeltaDiffusion, dict]:
    state, config, meta, stats = read_checkpoint(path)
    model = DeltaDiffusion(meta, stats).at_precision(precision)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # weights of another denoiser (an older one: before the flat target's skip path)
        raise CheckpointError(f"{path}: its weights do not fit this code's denoiser "
                              f"({str(exc).splitlines()[0]}); rerun train_diffusion") from None
    return model.eval().to(device or "cpu"), config
