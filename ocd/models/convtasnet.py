"""A second speech separator (``convtasnet``): Conv-TasNet (Luo and Mesgarani, 2019),
small, beside the paper's MulCat (ocd/models/mulcat.py). On the speech preset's
budget it separates far better per second of training (docs/RESULTS.md, issue 43).

A sample is one mixture ``x [1, T]``; its output is the ``speakers`` separated
signals, flattened to ``[speakers * T]``. The network (``model.width`` = N = B,
H = 2 N):

- ``encoder``: a 1-D convolution of ``window`` samples and hop ``window / 2`` to N
  channels, with a ReLU: the mixture's frames ``w [N, F]``;
- a global layer norm (gLN) and ``bottleneck``, a Linear layer N -> B on every frame;
- a temporal convolutional network of ``model.repeats`` repeats of ``model.blocks``
  blocks, block j of a repeat dilated 2**j. Block i: ``block{i}_in`` (Linear B -> H),
  PReLU, gLN, a depthwise convolution over 3 frames, PReLU, gLN, ``block{i}_out``
  (Linear H -> B), with a residual connection around the block;
- a PReLU and ``mask``: a Linear layer B -> speakers N with a sigmoid, one mask per
  speaker over the encoder's channels; ``decoder``: a transposed convolution from each
  masked ``w`` back to a signal.

The original's 1x1 convolutions are Linear layers on channels-last frames: the same
maps, and a layer the overfit stage can cut (a matrix applied to each of a mixture's F
frames, P = F). The original's skip-connection paths are left out (each block's output
goes to the residual stream only), as in the probe that measured it
(scripts/convtasnet_probe.py). Training clips the gradient's norm to 5, as the
original does. The conditioning, training with dynamic mixing and ``ocd predict``
are every separator's (ocd.models.separator).
"""

from __future__ import annotations

import torch
from torch import nn

from ocd.models import separator
from ocd.models.cut import LayerCut, LayerInput, ModelError
from ocd.models.separator import SPECTRUM_GRID, Separator


class GlobalNorm(nn.Module):
    """Conv-TasNet's global layer norm (gLN) on channels-last frames ``[B, F, C]``: each
    sample normalised over all its frames and channels, then a gain and bias per channel."""

    def __init__(self, channels: int, eps: float = 1e-8):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        mean = v.mean((1, 2), keepdim=True)
        var = (v - mean).pow(2).mean((1, 2), keepdim=True)
        return (v - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class ConvTasNet(Separator):
    family = "convtasnet"
    grad_clip = 5.0  # Luo and Mesgarani's

    def __init__(self, in_shape: tuple[int, ...], n_outputs: int, speakers: int, width: int, blocks: int,
                 repeats: int, window: int, sample_rate: int = 8000, level: float = 0.0,
                 time_scales: tuple[int, ...] = (1,), spectrum_grid: int = SPECTRUM_GRID):
        # no defaults for the network's shape: they are params.yaml's (model.width, ...), in one place
        super().__init__(in_shape, n_outputs, speakers, window, sample_rate, level, time_scales, spectrum_grid)
        if blocks < 1 or repeats < 1:
            raise ModelError(f"convtasnet needs at least one block and one repeat; got model.blocks={blocks}, "
                             f"model.repeats={repeats}")
        self.width, self.blocks, self.repeats = width, blocks, repeats
        hidden = 2 * width
        self.encoder = nn.Conv1d(1, width, window, stride=self.hop, bias=False)
        self.norm_in = GlobalNorm(width)
        self.bottleneck = nn.Linear(width, width)
        dilations = [2 ** j for _ in range(repeats) for j in range(blocks)]
        for i in range(1, len(dilations) + 1):
            self.add_module(f"block{i}_in", nn.Linear(width, hidden))
            self.add_module(f"block{i}_out", nn.Linear(hidden, width))
        self.depthwise = nn.ModuleList(nn.Conv1d(hidden, hidden, 3, padding=d, dilation=d, groups=hidden)
                                       for d in dilations)
        self.prelus = nn.ModuleList(nn.PReLU() for _ in range(2 * len(dilations)))  # two per block
        self.norms = nn.ModuleList(GlobalNorm(hidden) for _ in range(2 * len(dilations)))
        self.prelu_out = nn.PReLU()
        self.mask = nn.Linear(width, speakers * width)
        self.decoder = nn.ConvTranspose1d(width, 1, window, stride=self.hop, bias=False)
        self.rows_per_pass = 32

    @property
    def n_blocks(self) -> int:
        return self.blocks * self.repeats

    def layer_names(self) -> list[str]:
        return ["encoder", "bottleneck", *(f"block{i}_{end}" for i in range(1, self.n_blocks + 1)
                                           for end in ("in", "out")), "mask", "decoder"]

    # ---- the forward pass in steps, so that it can be cut before any Linear layer

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.encoder(x))  # [B, N, F]

    def _inner(self, u: torch.Tensor, i: int) -> torch.Tensor:
        """Block i's part between its two Linear layers: ``block{i}_in``'s output [B, F, H] ->
        ``block{i}_out``'s input [B, F, H]."""
        u = self.norms[2 * i - 2](self.prelus[2 * i - 2](u))
        u = self.depthwise[i - 1](u.transpose(1, 2)).transpose(1, 2)
        return self.norms[2 * i - 1](self.prelus[2 * i - 1](u))

    def _block(self, v: torch.Tensor, i: int) -> torch.Tensor:
        """Block i (from 1) with its residual connection: frames [batch, F, width] -> the same shape."""
        return v + getattr(self, f"block{i}_out")(self._inner(getattr(self, f"block{i}_in")(v), i))

    def _blocks(self, v: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """Blocks first..last (from 1, both included)."""
        for i in range(first, last + 1):
            v = self._block(v, i)
        return v

    def _from_stream(self, v: torch.Tensor, w: torch.Tensor, first: int) -> torch.Tensor:
        """The residual stream before block ``first`` [batch, F, width] -> signals."""
        v = self._blocks(v, first, self.n_blocks)
        return self._decode_masks(torch.sigmoid(self.mask(self.prelu_out(v))), w)

    def _stream(self, x: torch.Tensor, before: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual stream before block ``before`` [batch, F, width], and the encoder's frames w."""
        w = self._encode(x)
        return self._blocks(self.bottleneck(self.norm_in(w.transpose(1, 2))), 1, before - 1), w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v, w = self._stream(x, 1)
        return self._from_stream(v, w, 1)

    # ---- the layer contract

    def cut(self, name: str) -> LayerCut:
        if name not in self.layer_names():
            raise ModelError(f"convtasnet cannot be cut at {name!r}: its weight layers are "
                             f"{', '.join(self.layer_names())}")
        layer = getattr(self, name)
        size = self.width * self.frames  # w's and the residual stream's, in ctx

        def unpack(ctx):
            w = ctx[:, :size].reshape(-1, self.width, self.frames)
            return w, ctx[:, size:].reshape(-1, self.frames, self.width)

        def pack(w, v=None):
            return torch.cat([w.flatten(1)] + ([] if v is None else [v.flatten(1)]), dim=1)

        if name == "encoder":  # one input per mixture: the signal itself
            def leave(z, ctx):
                w = torch.relu(z[:, 0])
                return self._from_stream(self.bottleneck(self.norm_in(w.transpose(1, 2))), w, 1)

            return self._cut(name, layer, lambda x: LayerInput(x[:, None]), leave, activation=torch.relu)

        if name == "bottleneck":
            def enter(x):
                w = self._encode(x)
                return LayerInput(self.norm_in(w.transpose(1, 2)), pack(w))

            return self._cut(name, layer, enter, lambda z, ctx: self._from_stream(z, unpack(ctx)[0], 1),
                             scales=self.time_scales)

        def masks_in(x):
            v, w = self._stream(x, self.n_blocks + 1)
            return self.prelu_out(v), w

        if name == "mask":
            def enter(x):
                h, w = masks_in(x)
                return LayerInput(h, pack(w))

            return self._cut(name, layer, enter, lambda z, ctx: self._decode_masks(torch.sigmoid(z), unpack(ctx)[0]),
                             activation=torch.sigmoid, scales=self.time_scales)

        if name == "decoder":  # one input per speaker: its masked frames
            def enter(x):
                h, w = masks_in(x)
                return LayerInput(self._masked(torch.sigmoid(self.mask(h)), w))

            return self._cut(name, layer, enter, lambda z, ctx: self._signals(z))

        i, end = int(name[len("block"):name.index("_")]), name.rsplit("_", 1)[1]

        if end == "in":
            def enter(x):
                v, w = self._stream(x, i)
                return LayerInput(v, pack(w, v))

            def leave(z, ctx):
                w, v = unpack(ctx)
                return self._from_stream(v + getattr(self, f"block{i}_out")(self._inner(z, i)), w, i + 1)

            return self._cut(name, layer, enter, leave, activation=self.prelus[2 * i - 2], scales=self.time_scales)

        def enter(x):
            v, w = self._stream(x, i)
            return LayerInput(self._inner(getattr(self, f"block{i}_in")(v), i), pack(w, v))

        def leave(z, ctx):
            w, v = unpack(ctx)
            return self._from_stream(v + z, w, i + 1)

        return self._cut(name, layer, enter, leave, scales=self.time_scales)


def options(p, info: dict) -> dict:
    """The family's options: ``model.width``, ``model.blocks`` and ``model.repeats``, and every
    separator's (ocd.models.separator.options)."""
    shared = separator.options(p, info)
    return {"speakers": shared.pop("speakers"), "width": p.width, "blocks": p.blocks, "repeats": p.repeats,
            **shared}
