"""What the speech separators share (``mulcat``, ocd/models/mulcat.py; ``convtasnet``,
ocd/models/convtasnet.py): a one-channel mixture ``x [1, T]`` in, ``speakers``
signals out, flattened to ``[speakers * T]``; a learnt encoder of ``window``
samples with a hop of half of it; training on the permutation-invariant SI-SNR
(ocd.tasks.separation), with dynamic mixing; the conditioning's encoding of the
separated signals; and ``ocd predict`` on a WAV file of any rate and length.

The conditioning encodes the separated signals (:meth:`Separator.encode_output`):
the log-magnitude spectrogram of each (256 FFT bins), averaged down to G
frequency bands by G time bins (``model.spectrum_grid``, 8 by default),
channels concatenated. The paper passes each spectrogram through a pretrained
VGG-11, which cannot be downloaded here; the pooled spectrogram is fixed and
parameter-free, as TinyNeRF's thumbnail is, and keeps where in time and
frequency each output has energy. A cut says it is a picture
(``LayerCut.output_grid``: speakers x G x G), so that the denoiser may read it
with a small convolutional encoder trained with it
(``diffusion.output_encoder: conv``, ocd.hypernet.conditioning). A cut whose
layer sees one input per moment of the mixture pools its activation over time
at ``model.time_scales``.
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
from ocd.models.cut import LayerCut, ModelError
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


class Separator(nn.Module):
    """A separator's shared half: its shape checks, the masks' decoding, the conditioning's
    encoding, training, and reading and writing WAV files for ``ocd predict``. A family sets
    ``width`` (the encoder's channels) and its layers, among them ``decoder`` (a transposed
    convolution from masked frames to a signal), ``forward`` and ``cut`` (the layer contract,
    ocd.models.cut)."""

    family = "separator"  # model.name, in messages
    grad_clip: float | None = None  # the gradient's norm is clipped to this in training (None: not clipped)

    def __init__(self, in_shape: tuple[int, ...], n_outputs: int, speakers: int, window: int,
                 sample_rate: int = 8000, level: float = 0.0, time_scales: tuple[int, ...] = (1,),
                 spectrum_grid: int = SPECTRUM_GRID):
        super().__init__()
        self.sample_rate, self.level = sample_rate, level  # ocd predict: the training mixtures' rate and RMS
        if len(in_shape) != 2 or in_shape[0] != 1:
            raise ModelError(f"{self.family} separates one-channel signals of shape (1, T); the dataset has "
                             f"{in_shape}")
        self.samples = in_shape[1]
        if n_outputs != speakers * self.samples:
            raise ModelError(f"{self.family}: {n_outputs} outputs are not {speakers} signals of {self.samples} "
                             "samples")
        if window < 2 or window % 2:
            raise ModelError(f"model.window must be an even number of samples, at least 2; got {window}")
        if not 1 <= spectrum_grid <= SPECTRUM_FFT // 2 + 1:
            raise ModelError(f"model.spectrum_grid must lie in [1, {SPECTRUM_FFT // 2 + 1}] (the spectrogram's "
                             f"frequency bins); got {spectrum_grid}")
        self.speakers, self.window, self.hop = speakers, window, window // 2
        # how the conditioning pools a layer's activation over time (model.time_scales, LayerCut.scales)
        self.time_scales = tuple(int(s) for s in time_scales)
        self.spectrum_grid = int(spectrum_grid)  # the conditioning's pooled spectrogram: grid x grid per speaker
        self.frames = (self.samples - window) // self.hop + 1
        if self.frames < 1:
            raise ModelError(f"{self.family}: {self.samples} samples are shorter than one window of {window}")

    def _masked(self, m: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Masks [B, F, speakers * width] (after the family's non-linearity) times the encoder's
        frames w [B, width, F]: the decoder's inputs [B, speakers, width, F]."""
        return m.reshape(len(w), self.frames, self.speakers, self.width).permute(0, 2, 3, 1) * w[:, None]

    def _decode_masks(self, m: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Masks [B, F, speakers * width] and w [B, width, F] -> signals [B, speakers * T], each
        speaker's masked frames through the family's ``decoder``."""
        h = self._masked(m, w)
        return self._signals(self.decoder(h.flatten(0, 1)).unflatten(0, h.shape[:2]))

    def _signals(self, decoded: torch.Tensor) -> torch.Tensor:
        """The decoder's outputs [B, speakers, 1, T'] -> signals [B, speakers * T] (cut or padded to T)."""
        s = F.pad(decoded, (0, max(0, self.samples - decoded.shape[-1])))[..., :self.samples]
        return s.reshape(len(s), self.speakers * self.samples)

    def _cut(self, name: str, layer: nn.Module, enter, leave, **kw) -> LayerCut:
        """A cut whose conditioning encodes the outputs as pooled spectrograms (:meth:`encode_output`)."""
        return LayerCut(name, layer, enter, leave, encode_output=self.encode_output, output_grid=self.output_grid,
                        **kw)

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
        deep ensemble's members too: LSTMs do not run under ``vmap``), each step's gradient
        clipped to the family's ``grad_clip`` norm where it sets one. With
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

        return fit_minibatches(self, params, len(y), loss_of, "train base", progress, clip=self.grad_clip)


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


def options(p, info: dict) -> dict:
    """The options every separator reads: the dataset's number of speakers, sample rate and
    mixtures' RMS, ``model.window``, and ``model.time_scales`` and ``model.spectrum_grid``
    (each kept out of the spec at its default, [1] and 8, so that models saved before they
    existed rebuild as they were)."""
    if "speakers" not in info:
        raise ModelError(f"{p.name} separates speech mixtures: use it with data.name=speech_mix")
    return {"speakers": int(info["speakers"]), "window": p.window, "sample_rate": int(info.get("sample_rate", 8000)),
            "level": float(info.get("mixture_rms", 0.0)),
            **({"time_scales": list(p.time_scales)} if list(p.time_scales) != [1] else {}),
            **({"spectrum_grid": p.spectrum_grid} if p.spectrum_grid != SPECTRUM_GRID else {})}
