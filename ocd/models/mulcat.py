"""The speech separator of the paper's Table 5 as a model family (``mulcat``):
a Gated-LSTM with MulCat blocks (Nachmani et al., 2020), chunked as a
dual-path network, trained with the permutation-invariant SI-SNR loss
(ocd.tasks.separation).

A sample is one mixture ``x [1, T]``; its output is the ``speakers`` separated
signals, flattened to ``[speakers * T]``. The network:

- ``encoder``: a 1-D convolution of ``window`` samples and hop ``window / 2``
  to ``width`` channels, with a ReLU: the mixture's frames ``w [width, F]``;
- ``bottleneck``: a Linear layer on every frame, after a LayerNorm of its channels;
- the frames cut into chunks of ``chunk`` frames with a hop of half a chunk
  ``[C, K, width]``; then ``blocks`` pairs of MulCat blocks, one along each
  chunk (``intra``) and one across the chunks (``inter``). A MulCat block runs
  two bidirectional LSTMs of ``width`` units on its input, multiplies their
  outputs (one gates the other), concatenates the input, and projects back to
  ``width`` with a Linear layer (``proj{i}_{intra|inter}``), then a LayerNorm,
  with a residual connection around the block (as DPRNN);
- the chunks overlap-added back to frames; ``mask``: a Linear layer with a
  ReLU, one mask per speaker over the encoder's channels; ``decoder``: a
  transposed convolution from each masked ``w`` back to a signal.

Cut at a Linear layer (:meth:`MulCatSeparator.cut`, the layer contract of
ocd.models.cut), the layer sees a set of inputs per mixture: one per frame
(``bottleneck``, ``mask``) or per chunk position (a projection: P = C K).
The paper's layer is the projection of the last MulCat block. What the
separators share (the conditioning's pooled spectrograms, training with dynamic
mixing, ``ocd predict`` on WAV files) is ocd.models.separator's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ocd.models import separator
from ocd.models.cut import LayerCut, LayerInput, ModelError
from ocd.models.separator import SPECTRUM_GRID, Separator


class MulCat(nn.Module):
    """The two gated LSTMs of a MulCat block (the block's projection is a child of the model)."""

    def __init__(self, width: int):
        super().__init__()
        self.a = nn.LSTM(width, width, batch_first=True, bidirectional=True)
        self.b = nn.LSTM(width, width, batch_first=True, bidirectional=True)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """[N, L, width] -> the projection's input [N, L, 2 width + width]: (a * b, input)."""
        return torch.cat([self.a(seq)[0] * self.b(seq)[0], seq], dim=-1)


class MulCatSeparator(Separator):
    family = "mulcat"

    def __init__(self, in_shape: tuple[int, ...], n_outputs: int, speakers: int, width: int, blocks: int,
                 window: int, chunk: int, sample_rate: int = 8000, level: float = 0.0,
                 time_scales: tuple[int, ...] = (1,), spectrum_grid: int = SPECTRUM_GRID):
        # no defaults for the network's shape: they are params.yaml's (model.width, ...), in one place
        super().__init__(in_shape, n_outputs, speakers, window, sample_rate, level, time_scales, spectrum_grid)
        if chunk < 2:
            raise ModelError(f"model.chunk must be at least 2 frames, got {chunk}")
        self.width, self.blocks, self.chunk = width, blocks, chunk
        self.encoder = nn.Conv1d(1, width, window, stride=self.hop, bias=False)
        self.norm_in = nn.LayerNorm(width)  # each frame's channels, before the bottleneck (as DPRNN)
        self.bottleneck = nn.Linear(width, width)
        self.mulcats = nn.ModuleList(MulCat(width) for _ in range(2 * blocks))
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(2 * blocks))  # after each projection
        for name in self.projections():
            self.add_module(name, nn.Linear(3 * width, width))
        self.mask = nn.Linear(width, speakers * width)
        self.decoder = nn.ConvTranspose1d(width, 1, window, stride=self.hop, bias=False)
        self.rows_per_pass = 32

    def projections(self) -> list[str]:
        return [f"proj{i}_{path}" for i in range(1, self.blocks + 1) for path in ("intra", "inter")]

    # ---- the forward pass in steps, so that it can be cut before any Linear layer

    @property
    def n_chunks(self) -> int:
        step = self.chunk // 2
        return max(1, math.ceil((self.frames - self.chunk) / step) + 1) if self.frames > self.chunk else 1

    def _to_chunks(self, v: torch.Tensor) -> torch.Tensor:
        """Frames [B, F, D] -> chunks [B, C, K, D] with a hop of K / 2 (zero-padded at the end)."""
        step, k = self.chunk // 2, self.chunk
        total = (self.n_chunks - 1) * step + k
        v = F.pad(v, (0, 0, 0, total - v.shape[1]))
        return v.unfold(1, k, step).transpose(2, 3)

    def _to_frames(self, c: torch.Tensor) -> torch.Tensor:
        """Chunks [B, C, K, D] -> frames [B, F, D], overlapping chunks added."""
        b, n, k, d = c.shape
        step = self.chunk // 2
        total = (n - 1) * step + k
        folded = F.fold(c.permute(0, 3, 2, 1).reshape(b, d * k, n), (1, total), (1, k), stride=(1, step))
        return folded.reshape(b, d, total).transpose(1, 2)[:, :self.frames]

    def _block_input(self, c: torch.Tensor, j: int) -> torch.Tensor:
        """The projection input of sub-block j (even: intra, odd: inter) as [B, C, K, 3D] in chunk layout."""
        b, n, k, d = c.shape
        if j % 2 == 0:  # along each chunk
            return self.mulcats[j](c.reshape(b * n, k, d)).reshape(b, n, k, 3 * d)
        g = self.mulcats[j](c.transpose(1, 2).reshape(b * k, n, d))  # across the chunks
        return g.reshape(b, k, n, 3 * d).transpose(1, 2)

    def _block(self, c: torch.Tensor, j: int, z: torch.Tensor | None = None) -> torch.Tensor:
        """Sub-block j with its residual connection: ``c + norm(projection(input))`` (``z``:
        the projection's output, if already known)."""
        if z is None:
            z = getattr(self, self.projections()[j])(self._block_input(c, j))
        return c + self.norms[j](z)

    def _decode(self, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Frames [B, F, D] and the encoder's frames w [B, D, F] -> signals [B, speakers * T]."""
        return self._decode_masks(torch.relu(self.mask(v)), w)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.encoder(x))  # [B, D, F]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._frames_to_signals(self._encode(x))

    def _frames_to_signals(self, w: torch.Tensor) -> torch.Tensor:
        """The encoder's frames w [B, D, F] -> signals [B, speakers * T]."""
        c = self._to_chunks(self.bottleneck(self.norm_in(w.transpose(1, 2))))
        for j, name in enumerate(self.projections()):
            c = self._block(c, j)
        return self._decode(self._to_frames(c), w)

    # ---- the layer contract

    def _pack(self, *tensors: torch.Tensor) -> torch.Tensor:
        return torch.cat([t.flatten(1) for t in tensors], dim=1)

    def cut(self, name: str) -> LayerCut:
        layer = getattr(self, name)
        b_shape = (self.n_chunks, self.chunk, self.width)
        w_size = self.width * self.frames

        def unpack(ctx):
            return ctx[:, :w_size].reshape(-1, self.width, self.frames), ctx[:, w_size:]

        def blocks_from(c, start):
            for j, proj in enumerate(self.projections()[start:], start=start):
                c = self._block(c, j)
            return c

        if name == "encoder":  # one input per mixture: the signal itself
            return self._cut(name, layer, lambda x: LayerInput(x[:, None]),
                             lambda z, ctx: self._frames_to_signals(torch.relu(z[:, 0])), activation=torch.relu)

        if name == "bottleneck":
            def enter(x):
                w = self._encode(x)
                return LayerInput(self.norm_in(w.transpose(1, 2)), w.flatten(1))

            def leave(z, ctx):
                w, _ = unpack(ctx)
                return self._decode(self._to_frames(blocks_from(self._to_chunks(z), 0)), w)

            return self._cut(name, layer, enter, leave)

        def frames_of(x):
            w = self._encode(x)
            return self._to_frames(blocks_from(self._to_chunks(self.bottleneck(self.norm_in(w.transpose(1, 2)))), 0)), w

        if name == "mask":
            def enter(x):
                v, w = frames_of(x)
                return LayerInput(v, w.flatten(1))

            return self._cut(name, layer, enter, lambda z, ctx: self._decode_masks(torch.relu(z), unpack(ctx)[0]),
                             activation=torch.relu)

        if name == "decoder":  # one input per speaker: its masked frames
            def enter(x):
                v, w = frames_of(x)
                return LayerInput(self._masked(torch.relu(self.mask(v)), w))

            return self._cut(name, layer, enter, lambda z, ctx: self._signals(z))

        if name not in self.projections():
            raise ModelError(f"mulcat cannot be cut at {name!r}: its weight layers are encoder, bottleneck, "
                             f"{', '.join(self.projections())}, mask and decoder")
        at = self.projections().index(name)

        def enter(x):
            w = self._encode(x)
            c = self._to_chunks(self.bottleneck(self.norm_in(w.transpose(1, 2))))
            for j, proj in enumerate(self.projections()[:at]):
                c = self._block(c, j)
            h = self._block_input(c, at)
            return LayerInput(h.flatten(1, 2), self._pack(w, c))  # P = C K positions

        def leave(z, ctx):
            w, c = unpack(ctx)
            c = self._block(c.reshape(-1, *b_shape), at, z.reshape(-1, *b_shape))
            return self._decode(self._to_frames(blocks_from(c, at + 1)), w)

        return self._cut(name, layer, enter, leave, scales=self.time_scales)


def options(p, info: dict) -> dict:
    """The family's options: ``model.width``, ``model.blocks`` and ``model.chunk``, and every
    separator's (ocd.models.separator.options)."""
    shared = separator.options(p, info)
    return {"speakers": shared.pop("speakers"), "width": p.width, "blocks": p.blocks, "window": shared.pop("window"),
            "chunk": p.chunk, **shared}
