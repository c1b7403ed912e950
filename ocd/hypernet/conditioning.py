"""The conditioning I(x): its statistics over a store's rows and the encoders that read it.

I(x) is the layer's input i_L, its output a_L and the base model's output f(x)
(ocd.delta.COND), each standardised with the fit rows' mean and SD. The
denoiser embeds it (:class:`Conditioner`, one linear layer per part); the
scale model and the regressor read it with an MLP (:class:`ConditionedMLP`).
Nothing here knows how a delta is generated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ocd.delta import COND

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


class Conditioner(nn.Module):
    """e_cond = E_i(i_L) + E_a(a_L) + E_o(f(x)) (+ E_n(retrieved), :func:`cond_names`): one
    linear layer per part."""

    def __init__(self, stats: dict, emb_dim: int, names: tuple[str, ...] = COND):
        super().__init__()
        self.norms = nn.ModuleList([Standardise(*stats[n]) for n in names])
        self.encoders = nn.ModuleList([nn.Linear(len(stats[n][0]), emb_dim) for n in names])

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
