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
The paper's layer is the projection of the last MulCat block. The
conditioning encodes the separated signals (``encode_output``): the
log-magnitude spectrogram of each (256 FFT bins), averaged down to G
frequency bands by G time bins (``model.spectrum_grid``, 8 by default),
channels concatenated. The paper passes each spectrogram through a
pretrained VGG-11, which cannot be downloaded here; the pooled spectrogram
is fixed and parameter-free, as TinyNeRF's thumbnail is, and keeps where in
time and frequency each output has energy. The cut says it is a picture
(``LayerCut.output_grid``: speakers x G x G), so that the denoiser may read
it with a small convolutional encoder trained with it
(``diffusion.output_encoder: conv``, ocd.hypernet.conditioning).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ocd.artifacts import write_wav
from ocd.device import generator
from ocd.models.cut import LayerCut, LayerInput, ModelError
from ocd.models.fit import fit_minibatches
from ocd.tasks import spectrogram

REMIX_STREAM = 1  # dynamic mixing's draws: base.seed + 1, apart from the minibatch order's (base.seed)

SPECTRUM_FFT = 256
SPECTRUM_GRID = 8  # frequency bands and time bins of the conditioning's pooled spectrogram (model.spectrum_grid)


def pooled_spectrogram(outputs: torch.Tensor, speakers: int, grid: int = SPECTRUM_GRID) -> torch.Tensor:
    """The conditioning's encoding of separated signals ``[B, speakers * T]``: each channel's
    spectrogram averaged to grid x grid cells, channels concatenated: ``[B, speakers * grid**2]``."""
    spec = spectrogram(outputs.reshape(len(outputs), speakers, -1), SPECTRUM_FFT)
    pooled = F.adaptive_avg_pool2d(spec, grid)
    return pooled.flatten(1)


class MulCat(nn.Module):
    """The two gated LSTMs of a MulCat block (the block's projection is a child of the model)."""

    def __init__(self, width: int):
        super().__init__()
        self.a = nn.LSTM(width, width, batch_first=True, bidirectional=True)
        self.b = nn.LSTM(width, width, batch_first=True, bidirectional=True)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """[N, L, width] -> the projection's input [N, L, 2 width + width]: (a * b, input)."""
        return torch.cat([self.a(seq)[0] * self.b(seq)[0], seq], dim=-1)


class MulCatSeparator(nn.Module):
    def __init__(self, in_shape: tuple[int, ...], n_outputs: int, speakers: int, width: int, blocks: int,
                 window: int, chunk: int, sample_rate: int = 8000, level: float = 0.0,
                 time_scales: tuple[int, ...] = (1,), spectrum_grid: int = SPECTRUM_GRID):
        # no defaults for the network's shape: they are params.yaml's (model.width, ...), in one place
        super().__init__()
        self.sample_rate, self.level = sample_rate, level  # ocd predict: the training mixtures' rate and RMS
        if len(in_shape) != 2 or in_shape[0] != 1:
            raise ModelError(f"mulcat separates one-channel signals of shape (1, T); the dataset has {in_shape}")
        self.samples = in_shape[1]
        if n_outputs != speakers * self.samples:
            raise ModelError(f"mulcat: {n_outputs} outputs are not {speakers} signals of {self.samples} samples")
        if window < 2 or window % 2:
            raise ModelError(f"model.window must be an even number of samples, at least 2; got {window}")
        if chunk < 2:
            raise ModelError(f"model.chunk must be at least 2 frames, got {chunk}")
        self.speakers, self.width, self.blocks, self.window, self.chunk = speakers, width, blocks, window, chunk
        # how the conditioning pools a projection's activation over time (model.time_scales, LayerCut.scales)
        self.time_scales = tuple(int(s) for s in time_scales)
        if not 1 <= spectrum_grid <= SPECTRUM_FFT // 2 + 1:
            raise ModelError(f"model.spectrum_grid must lie in [1, {SPECTRUM_FFT // 2 + 1}] (the spectrogram's "
                             f"frequency bins); got {spectrum_grid}")
        self.spectrum_grid = int(spectrum_grid)  # the conditioning's pooled spectrogram: grid x grid per speaker
        self.hop = window // 2
        self.frames = (self.samples - window) // self.hop + 1
        if self.frames < 1:
            raise ModelError(f"mulcat: {self.samples} samples are shorter than one window of {window}")
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

    def _masked(self, m: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Masks [B, F, speakers * D] times w [B, D, F]: the decoder's inputs [B, speakers, D, F]."""
        m = m.reshape(len(w), self.frames, self.speakers, self.width).permute(0, 2, 3, 1)
        return m * w[:, None]

    def _signals(self, decoded: torch.Tensor) -> torch.Tensor:
        """The decoder's outputs [B, speakers, 1, T'] -> signals [B, speakers * T] (cut or padded to T)."""
        s = F.pad(decoded, (0, max(0, self.samples - decoded.shape[-1])))[..., :self.samples]
        return s.reshape(len(s), self.speakers * self.samples)

    def _decode_masks(self, m: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        h = self._masked(m, w)
        return self._signals(self.decoder(h.flatten(0, 1)).unflatten(0, h.shape[:2]))

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

    def _cut(self, name: str, layer: nn.Module, enter, leave, **kw) -> LayerCut:
        """A cut whose conditioning encodes the outputs as pooled spectrograms (:meth:`encode_output`)."""
        return LayerCut(name, layer, enter, leave, encode_output=self.encode_output, output_grid=self.output_grid,
                        **kw)

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

    def encode_output(self, outputs: torch.Tensor) -> torch.Tensor:
        return pooled_spectrogram(outputs, self.speakers, self.spectrum_grid)

    @property
    def output_grid(self) -> tuple[int, int, int]:
        """The conditioning's output part as a picture: one pooled spectrogram per speaker."""
        return self.speakers, self.spectrum_grid, self.spectrum_grid

    # ---- ocd predict: a WAV file in, the separated WAV files out

    def read_inputs(self, path: Path) -> tuple[list[str], torch.Tensor]:
        """A mono WAV file as windows of the model's length with a hop of half of it
        (the last padded with silence), resampled to the training rate and scaled to
        the training mixtures' RMS; :meth:`write_predictions` joins their outputs."""
        signal = read_wav(path, self.sample_rate)
        rms = float(np.sqrt(np.mean(signal ** 2)))
        if rms == 0:
            raise ModelError(f"{path} is silent: there is nothing to separate")
        scale = (self.level or 0.1) / rms
        n, hop = len(signal), self.samples // 2
        starts = list(range(0, max(1, n - hop), hop)) if n > self.samples else [0]
        padded = np.zeros(starts[-1] + self.samples, np.float32)
        padded[:n] = signal * scale
        windows = np.stack([padded[s:s + self.samples] for s in starts])[:, None]
        # the file read last: its length, scale, window starts and scaled samples (what the windows'
        # outputs must add up to, :meth:`_join`)
        self._pending = (path, n, scale, starts, padded)
        return [f"{path.name}@{s / self.sample_rate:.2f}s" for s in starts], torch.from_numpy(windows)

    def write_predictions(self, base: torch.Tensor, ocd: torch.Tensor, row: str = "ocd") -> list[str]:
        """Write the base model's and the served row's (``row``: OCD's, by default) separated
        signals of the file read last as ``<name>_separated/{base,ROW}_<speaker>.wav`` beside it;
        returns what was written."""
        path, n, scale, starts, mixture = self._pending
        folder = path.with_name(f"{path.stem}_separated")
        folder.mkdir(exist_ok=True)
        lines = []
        for name, out in (("base", base), (row, ocd))[:1 if row == "base" else 2]:
            windows = out.reshape(len(out), self.speakers, self.samples).cpu().numpy()
            joined = self._join(windows, starts, mixture)[:, :n]
            files = []
            for c, channel in enumerate(joined / scale):
                files.append(folder / f"{name}_{c}.wav")
                write_wav(files[-1], channel, self.sample_rate)
            lines.append(f"{path.name}\t{name}: " + ", ".join(str(f) for f in files))
        # the input's speaker count is unknown here: say what the model gives whatever it is
        lines.append(f"{path.name}\tnote: this model separates {self.speakers} speakers (its training mixtures'); "
                     f"a mixture of more or fewer still comes out as {self.speakers} channels")
        return lines

    def _join(self, windows: np.ndarray, starts: list[int], mixture: np.ndarray | None = None) -> np.ndarray:
        """Overlapping windows [W, speakers, T] -> [speakers, length]. A separator trained on
        SI-SDR owes no window a scale, a sign or a speaker order, and windows cross-faded as
        they come cancel where they disagree (issue 43: 0.4 to 1.5 dB lost on a file). So each
        window's channels are first given the gains under which they best add up to the
        window's ``mixture`` (:func:`mixture_gains`), then put in the order of the previous
        window's by their SI-SNR on the overlap, then cross-faded (triangular weights)."""
        from ocd.tasks import best_permutation, si_snr

        hop, total = self.samples // 2, starts[-1] + self.samples
        fade = np.minimum(np.arange(1, self.samples + 1), np.arange(self.samples, 0, -1)).astype(np.float64)
        out, weight = np.zeros((self.speakers, total)), np.zeros(total)
        previous = None
        for s, win in zip(starts, windows):
            win = np.asarray(win, np.float64)
            if mixture is not None:
                win = win * mixture_gains(win, mixture[s:s + self.samples])[:, None]
            if previous is not None:
                a, b = torch.from_numpy(win[:, :hop]), torch.from_numpy(previous[:, hop:])
                perm = best_permutation(si_snr(a[None, :, None], b[None, None, :]))[0].numpy()
                win = win[perm]
            out[:, s:s + self.samples] += win * fade
            weight[s:s + self.samples] += fade
            previous = win
        return out / np.maximum(weight, 1e-9)

    def fit(self, task, x: torch.Tensor, y: torch.Tensor, params, device, progress: bool = True) -> list[float]:
        """Minibatch Adam on the task's loss (ocd.models.fit), one model at a time (a
        deep ensemble's members too: LSTMs do not run under ``vmap``). With
        ``base.dynamic_mixing`` every minibatch is mixed anew from its sources: each
        speaker's sources shuffled across the minibatch, each at a new gain in
        [-2.5, 2.5] dB (the dynamic mixing of Zeghidour and Grangier's Wavesplit and
        of the paper's best row), drawn from ``base.seed``."""
        self.to(device)
        remix = generator(params.seed, REMIX_STREAM)

        def loss_of(idx):
            xb, yb = x[idx], y[idx]
            if params.dynamic_mixing:
                xb, yb = dynamic_mix(yb, self.speakers, remix)
            return task.loss(self(xb.to(device)), yb.to(device))

        return fit_minibatches(self, params, len(y), loss_of, "train base", progress)


def mixture_gains(channels: np.ndarray, mixture: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """The gain per channel (``channels [S, T]``) under which the channels best add up to
    ``mixture [T]``: least squares, each gain's square damped by ``ridge`` times its channel's
    energy (channels too alike to tell apart then share the mixture, not opposite huge gains).
    A silent channel keeps gain 1."""
    energy = (channels ** 2).sum(1)
    if not energy.any():
        return np.ones(len(channels))
    gram = channels @ channels.T + ridge * np.diag(np.maximum(energy, 1e-12))
    return np.where(energy > 0, np.linalg.solve(gram, channels @ mixture), 1.0)


def read_wav(path: Path, rate: int) -> np.ndarray:
    """A mono WAV file's samples in [-1, 1] at ``rate`` Hz (resampled if it has another rate).
    Stereo, empty, clipped or non-finite audio is refused, naming the problem."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    if path.is_dir() or path.suffix.lower() != ".wav":
        raise ModelError(f"{path}: the separator reads a mixture from a .wav file")
    try:
        file_rate, data = wavfile.read(path)
    except (ValueError, OSError) as exc:
        raise ModelError(f"{path}: not a readable WAV file ({exc})") from None
    if data.ndim == 2 and data.shape[1] > 1:
        raise ModelError(f"{path} has {data.shape[1]} channels; the separator takes one microphone (mono): "
                         "mix the channels down first")
    data = data.reshape(len(data), -1)[:, 0] if data.ndim == 2 else data
    if data.size == 0:
        raise ModelError(f"{path} holds no samples")
    if np.issubdtype(data.dtype, np.integer):
        full = float(np.iinfo(data.dtype).max)
        signal = data.astype(np.float64) / full if data.dtype != np.uint8 else (data.astype(np.float64) - 128) / 128
    else:
        signal = data.astype(np.float64)
        if not np.isfinite(signal).all():
            raise ModelError(f"{path} holds NaN or infinite samples")
    clipped = np.mean(np.abs(signal) >= 0.999)
    if clipped > 0.001:
        raise ModelError(f"{path} is clipped: {clipped:.1%} of its samples sit at full scale, which the "
                         "separator never heard; record or export it at a lower level")
    if file_rate != rate:
        g = math.gcd(int(file_rate), rate)
        signal = resample_poly(signal, rate // g, int(file_rate) // g)
    return signal.astype(np.float32)


def dynamic_mix(sources: torch.Tensor, speakers: int, gen: torch.Generator,
                gain_db: float = 2.5) -> tuple[torch.Tensor, torch.Tensor]:
    """New mixtures from a minibatch's sources ``[B, speakers * T]``: the sources of
    each speaker slot permuted across the minibatch and scaled by a gain drawn in
    ``[-gain_db, gain_db]`` dB; returns (mixtures [B, 1, T], their sources). A
    mixture whose peak exceeds 0.99 is scaled down with its sources."""
    b = len(sources)
    s = sources.reshape(b, speakers, -1)
    picked = torch.stack([s[torch.randperm(b, generator=gen), k] for k in range(speakers)], dim=1)
    gains = 10 ** ((torch.rand(b, speakers, 1, generator=gen) * 2 - 1) * gain_db / 20)
    picked = picked * gains
    peak = picked.sum(1).abs().amax(1).clamp_min(1e-9)
    picked = picked * (0.99 / peak).clamp(max=1.0)[:, None, None]
    return picked.sum(1, keepdim=True), picked.reshape(b, -1)


def mulcat(in_shape: tuple[int, ...], n_outputs: int, speakers: int, width: int, blocks: int, window: int,
           chunk: int, sample_rate: int = 8000, level: float = 0.0, time_scales=(1,),
           spectrum_grid: int = SPECTRUM_GRID) -> MulCatSeparator:
    return MulCatSeparator(in_shape, n_outputs, speakers, width, blocks, window, chunk, sample_rate, level,
                           tuple(time_scales), spectrum_grid)


def options(p, info: dict) -> dict:
    """The family's options: ``model.width``, ``model.blocks``, ``model.window``,
    ``model.chunk``, ``model.time_scales`` and ``model.spectrum_grid`` (each kept out of the
    spec at its default, [1] and 8, so that models saved before it rebuild as they were), and
    the dataset's number of speakers, sample rate and mixtures' RMS."""
    if "speakers" not in info:
        raise ModelError("mulcat separates speech mixtures: use it with data.name=speech_mix")
    return {"speakers": int(info["speakers"]), "width": p.width, "blocks": p.blocks, "window": p.window,
            "chunk": p.chunk, "sample_rate": int(info.get("sample_rate", 8000)),
            "level": float(info.get("mixture_rms", 0.0)),
            **({"time_scales": list(p.time_scales)} if list(p.time_scales) != [1] else {}),
            **({"spectrum_grid": p.spectrum_grid} if p.spectrum_grid != SPECTRUM_GRID else {})}
