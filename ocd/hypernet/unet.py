"""The denoiser: a DDPM U-Net (Ho et al.) over a zero-padded weight matrix.

Block vocabulary after ermongroup/ddim: :class:`ResnetBlock` (GroupNorm, SiLU,
conv, the embedding added in between), :class:`AttnBlock` (single-head
self-attention over positions), :class:`Downsample`, :class:`Upsample`.
Attention sits at the configured levels, and the bottleneck holds two
attention layers. The embedding ``e`` (timestep encoding plus conditioning) is
given by the caller, so the network knows nothing of what conditions it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    channels: int = 32
    mults: tuple[int, ...] = (1, 2, 2)
    res_blocks: int = 1
    attn_levels: tuple[int, ...] = (2,)  # indices into mults
    dropout: float = 0.0

    @property
    def emb_dim(self) -> int:
        return 4 * self.channels

    @property
    def factor(self) -> int:
        """The padded side must be a multiple of this (one halving per level but the last)."""
        return 2 ** (len(self.mults) - 1)


PRESETS = {
    # The paper: 128 channels, five downsamplings, 128x128 (GPU only: ~34 s per
    # forward+backward of a batch of 8 on a 2-core CPU).
    "paper": UNetConfig(channels=128, mults=(1, 1, 2, 2, 4, 4), res_blocks=2, attn_levels=(3, 4, 5)),
    # Small enough to train on a CPU in minutes (~0.15 s per step of 32 LeNet5
    # fc2 deltas, padded to 12x84, on 2 cores).
    "cpu": UNetConfig(channels=16, mults=(1, 2, 2), res_blocks=1, attn_levels=(2,)),
    # For tests.
    "tiny": UNetConfig(channels=8, mults=(1, 2), res_blocks=1, attn_levels=(1,)),
}


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, ch // 4) if ch >= 8 else 1, ch)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, e):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(e))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.norm = _norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        b, c, hh, ww = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, hh * ww).unbind(1)
        h = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.out(h.transpose(1, 2).reshape(b, c, hh, ww))


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """eps_Omega(x_t, e): [B, 1, R, C] -> [B, 1, R, C], R and C multiples of ``config.factor``."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        ch, emb = c.channels, c.emb_dim
        self.conv_in = nn.Conv2d(1, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skips, cur = [ch], ch
        for level, mult in enumerate(c.mults):
            for _ in range(c.res_blocks):
                self.down.append(ResnetBlock(cur, ch * mult, emb, c.dropout))
                cur = ch * mult
                if level in c.attn_levels:
                    self.down.append(AttnBlock(cur))
                skips.append(cur)
            if level < len(c.mults) - 1:
                self.down.append(Downsample(cur))
                skips.append(cur)
        self.mid = nn.ModuleList([ResnetBlock(cur, cur, emb, c.dropout), AttnBlock(cur),
                                  ResnetBlock(cur, cur, emb, c.dropout), AttnBlock(cur),
                                  ResnetBlock(cur, cur, emb, c.dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.mults))):
            for _ in range(c.res_blocks + 1):
                self.up.append(ResnetBlock(cur + skips.pop(), ch * mult, emb, c.dropout))
                cur = ch * mult
                if level in c.attn_levels:
                    self.up.append(AttnBlock(cur))
            if level > 0:
                self.up.append(Upsample(cur))
        self.norm_out, self.conv_out = _norm(cur), nn.Conv2d(cur, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.config.factor or x.shape[-2] % self.config.factor:
            raise ValueError(f"input sides {tuple(x.shape[-2:])} are not multiples of {self.config.factor}")
        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            if isinstance(block, ResnetBlock):
                h = block(h, e)
                hs.append(h)
            elif isinstance(block, AttnBlock):
                h = block(h)
                hs[-1] = h
            else:
                h = block(h)
                hs.append(h)
        for block in self.mid:
            h = block(h, e) if isinstance(block, ResnetBlock) else block(h)
        for block in self.up:
            if isinstance(block, ResnetBlock):
                h = block(torch.cat([h, hs.pop()], dim=1), e)
            else:
                h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def padded_shape(shape: tuple[int, int], factor: int, square: bool, pad_to: int = 0) -> tuple[int, int]:
    """The [rows, cols] a [out, in] matrix is zero-padded to.

    ``square``: the paper's square of side max(out, in) (or ``pad_to``, as the
    authors' code's 128); otherwise each side is only rounded up, which costs
    far less for a flat matrix (LeNet5's fc2 is 10x84). Sides are rounded up to
    a multiple of ``factor`` so every level of the U-Net halves evenly.
    """
    need = max(shape)
    if pad_to and pad_to < need:
        raise ValueError(f"diffusion.pad={pad_to} is smaller than the weight matrix {tuple(shape)}")
    up = lambda n: -(-n // factor) * factor  # noqa: E731
    if square:
        side = up(pad_to or need)
        return side, side
    if pad_to:
        raise ValueError("diffusion.pad sets the side of the square; it needs diffusion.square: true")
    return up(shape[0]), up(shape[1])


def pad(m: torch.Tensor, padded: tuple[int, int]) -> torch.Tensor:
    """[B, out, in] -> [B, 1, rows, cols], the matrix in the top-left corner, zeros elsewhere."""
    out, inn = m.shape[-2:]
    return F.pad(m, (0, padded[1] - inn, 0, padded[0] - out)).unsqueeze(1)


def crop(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """[B, 1, rows, cols] -> [B, out, in]."""
    return x[:, 0, : shape[0], : shape[1]]
