"""The conditioning I(x): its statistics over a store's rows and the encoders that read it.

I(x) is the layer's input i_L, its output a_L and the base model's output f(x)
(ocd.delta.COND), each standardised with the fit rows' mean and SD. The
denoiser embeds it (:class:`Conditioner`, one linear layer per part, and
where the output part is a picture and ``diffusion.output_encoder`` is conv,
a small CNN beside that part's linear layer: :class:`PictureEncoder`); the
scale model and the regressor read it with an MLP (:class:`ConditionedMLP`).
Nothing here knows how a delta is generated.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ocd.delta import COND, StoreError

OUTPUT = COND[2]  # the base model's output part, as the cut encodes it (LayerCut.output_grid: maybe a picture)
# How the denoiser embeds the output part (diffusion.output_encoder)
OUTPUT_ENCODERS = ("linear", "conv")

if TYPE_CHECKING:  # the reader of a store's rows (ocd.store): the models need no Zarr
    from ocd.store import ChunkReader


def cond_stats(reader: ChunkReader, names: tuple[str, ...] = COND) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Mean and std of each conditioning array in ``names`` over the reader's rows (one pass)."""
    sums = {n: 0.0 for n in names}
    squares = {n: 0.0 for n in names}
    count = 0
    for c in reader.chunks:
        block = reader.read([c])
        count += len(block[names[0]])
        for n in names:
            v = block[n].astype(np.float64)
            sums[n] = sums[n] + v.sum(0)
            squares[n] = squares[n] + (v**2).sum(0)
    out = {}
    for n in names:
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


class PictureEncoder(nn.Module):
    """A picture given flat, ``[B, C * H * W]`` with ``grid = (C, H, W)``, to ``emb_dim``: a
    linear layer on its values plus a small CNN (a 3x3 convolution, two more with stride 2,
    SiLU after each, averaged to 4 x 4 cells, then a linear layer that starts at zero: at
    initialisation the encoder is the linear one, and training adds what the CNN sees).
    The paper's is a VGG-11 over each output's spectrogram; this one is trained with the
    denoiser, on the store's few hundred rows."""

    def __init__(self, grid: tuple[int, ...], emb_dim: int, channels: int = 32):
        super().__init__()
        if len(grid) != 3:
            raise ValueError(f"a picture's grid is (channels, height, width); got {tuple(grid)}")
        self.grid = tuple(int(g) for g in grid)
        self.linear = nn.Linear(math.prod(self.grid), emb_dim)
        last = nn.Linear(2 * channels * 16, emb_dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.cnn = nn.Sequential(
            nn.Conv2d(self.grid[0], channels, 3, padding=1), nn.SiLU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * channels, 2 * channels, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), last)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.linear(v) + self.cnn(v.reshape(len(v), *self.grid))


def output_encoder(kind: str, grid: tuple[int, ...], width: int, emb_dim: int) -> nn.Module:
    """The denoiser's encoder of the output part (``width`` values): ``kind`` linear, or conv
    where the cut gave the part as a picture of ``grid`` (else a clear refusal)."""
    if kind not in OUTPUT_ENCODERS:
        raise ValueError(f"unknown diffusion.output_encoder {kind!r}; valid: {', '.join(OUTPUT_ENCODERS)}")
    if kind == "linear":
        return nn.Linear(width, emb_dim)
    if len(grid) != 3 or math.prod(grid) != width:
        raise StoreError(f"diffusion.output_encoder conv reads the base model's output part as a picture, but "
                         f"this store's is a plain vector of {width} values (its model's cut names no picture "
                         f"shape, LayerCut.output_grid); use diffusion.output_encoder: linear")
    return PictureEncoder(grid, emb_dim)


class Conditioner(nn.Module):
    """e_cond = E_i(i_L) + E_a(a_L) + E_o(f(x)) (+ E_n(retrieved), :func:`cond_names`): one
    linear layer per part, or for the output part the encoder ``output_kind`` names
    (:func:`output_encoder`, ``grid``: the part as a picture, from the store)."""

    def __init__(self, stats: dict, emb_dim: int, names: tuple[str, ...] = COND, output_kind: str = "linear",
                 grid: tuple[int, ...] = ()):
        super().__init__()
        self.norms = nn.ModuleList([Standardise(*stats[n]) for n in names])
        self.encoders = nn.ModuleList([
            output_encoder(output_kind, grid, len(stats[n][0]), emb_dim) if n == OUTPUT
            else nn.Linear(len(stats[n][0]), emb_dim) for n in names])

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return sum(enc(norm(p)) for p, norm, enc in zip(parts, self.norms, self.encoders))


class ConditionedMLP(nn.Module):
    """An MLP on the standardised, concatenated conditioning I(x) (the scale
    model and the regressor), the parts ``names``; given more parts (the
    retrieved one, last), it reads the first ``len(names)``. The last layer
    starts at zero."""

    def __init__(self, stats: dict, hidden: list[int], out_dim: int, names: tuple[str, ...] = COND):
        super().__init__()
        self.norms = nn.ModuleList([Standardise(*stats[n]) for n in names])
        width = sum(len(stats[n][0]) for n in names)
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.SiLU()]
            width = h
        last = nn.Linear(width, out_dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(*layers, last)

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return self.mlp(torch.cat([norm(p) for p, norm in zip(parts[:len(self.norms)], self.norms)], dim=1))


def stats_config(stats: dict) -> dict:
    """Conditioning statistics as JSON-able lists (for a checkpoint's configuration)."""
    return {k: [np.asarray(v[0]).tolist(), np.asarray(v[1]).tolist()] for k, v in stats.items()}


def read_stats(config: dict) -> dict:
    return {k: (np.asarray(v[0], dtype=np.float32), np.asarray(v[1], dtype=np.float32))
            for k, v in config["stats"].items()}
