"""Loss, metrics and ensembling per task type, chosen by the dataset (``Dataset.task``).

Stages ask the task for its loss and metrics instead of branching on the
dataset, so a new task type is one entry here. Classification reports
cross-entropy, accuracy and expected calibration error (ocd.calibration); regression MSE on the standardised target and
RMSE in the target's own units; rendering (a NeRF's views) the image MSE and PSNR;
separation (speech mixtures) the SI-SDR and its improvement over the mixture.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ocd.calibration import expected_calibration_error


@dataclass(frozen=True)
class Task:
    name: str
    # Per-sample loss: (outputs [N, C], targets [N]) -> [N].
    per_sample_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    # Summary metrics over a split: (outputs, targets) -> {name: float}.
    metrics: Callable[[torch.Tensor, torch.Tensor], dict[str, float]]
    # Combine k members' outputs [k, N, C] into one output [N, C].
    ensemble: Callable[[torch.Tensor], torch.Tensor]
    # Label-free per-sample loss for test-time adaptation (Tent); None: not defined.
    unsupervised_loss: Callable[[torch.Tensor], torch.Tensor] | None = None
    # A readable prediction from one output vector.
    describe: Callable[[torch.Tensor], str] = lambda out: str(out.tolist())
    # The per-sample loss computed without rounding tiny losses to 0 (layer
    # scores compare loss distributions of confident samples); None: per_sample_loss.
    precise_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # outputs rescaled by a temperature T (classification: logits / T); None: no temperature applies.
    with_temperature: Callable[[torch.Tensor, float], torch.Tensor] | None = None
    # Per sample, whether the output predicts the target (classification: the top class is right).
    correct: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # Outputs as pictures [N, H, W, 3] in [0, 1] (rendering; separation: spectrograms); None: no pictures.
    as_images: Callable[[torch.Tensor], torch.Tensor] | None = None
    # Inputs as pictures of the same size (separation: the mixture's spectrogram); None: the inputs are not shown.
    inputs_as_images: Callable[[torch.Tensor], torch.Tensor] | None = None
    # What an input is called in pictures and file names.
    input_name: str = "input"
    # Outputs as signals [N, channels, T] at ``sample_rate`` Hz (separation); None: outputs are not sound.
    as_signals: Callable[[torch.Tensor], torch.Tensor] | None = None
    sample_rate: int = 0
    # (outputs, targets) -> the outputs arranged as the targets are (separation: channels in
    # the speakers' order), for pictures and sound; None: as they are.
    aligned: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # (targets [N], output width C) -> the best output that ignores the input, [C] (classification: the
    # log class frequencies; regression: the mean): the trivial predictor a trained model must beat.
    # None: no such reference (a NeRF's or a separator's constant output is checked as constant).
    constant: Callable[[torch.Tensor, int], torch.Tensor] | None = None
    constant_name: str = ""  # what that constant predicts, for messages
    # The metrics a user compares runs by: the loss and the measure of quality (evaluate's summary.json).
    headline: tuple[str, ...] = ()

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.per_sample_loss(outputs, targets).mean()


def _ce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets, reduction="none")


def _ce_precise(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in float64 as softplus(logsumexp_{j != y}(z_j - z_y)).

    ``logsumexp(z) - z_y`` rounds to exactly 0 once the margin exceeds ~37
    (float64 absorbs e^-37 into the log-sum-exp); this form stays exact until
    e^-margin underflows (margin ~745).
    """
    z = outputs.double()
    rel = z - z.gather(1, targets[:, None])
    rel = rel.scatter(1, targets[:, None], float("-inf"))
    return F.softplus(torch.logsumexp(rel, dim=1))


def _classification_metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    return {
        "ce": float(_ce(outputs, targets).mean()),
        "acc": float((outputs.argmax(dim=-1) == targets).float().mean()),
        "ece": expected_calibration_error(outputs, targets),
    }


def _mean_probabilities(outputs: torch.Tensor) -> torch.Tensor:
    """Log of the members' mean predicted distribution (a valid logit vector)."""
    return torch.logsumexp(F.log_softmax(outputs, dim=-1), dim=0) - torch.log(torch.tensor(float(len(outputs))))


def _entropy(outputs: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(outputs, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def _describe_class(out: torch.Tensor) -> str:
    p = out.softmax(-1)
    return f"class {int(p.argmax())} (p={float(p.max()):.3f})"


def _log_frequencies(targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    counts = torch.bincount(targets.long().flatten().cpu(), minlength=n_classes)[:n_classes].double()
    return torch.log((counts / counts.sum()).clamp_min(1e-12)).float()


def classification() -> Task:
    return Task("classification", _ce, _classification_metrics, _mean_probabilities, _entropy, _describe_class,
                _ce_precise, with_temperature=lambda out, t: out / t,
                correct=lambda out, y: out.argmax(dim=-1) == y,
                constant=_log_frequencies, constant_name="the training class frequencies", headline=("ce", "acc"))


def regression(target_mean: float = 0.0, target_scale: float = 1.0) -> Task:
    """Squared error on a standardised scalar target; RMSE also in the target's own units.

    ``target_mean`` and ``target_scale`` undo the standardisation (train
    statistics). No label-free loss: Tent does not apply.
    """

    def per_sample(outputs, targets):
        return (outputs[:, 0] - targets) ** 2

    def metrics(outputs, targets):
        mse = float(per_sample(outputs, targets).mean())
        return {"mse": mse, "rmse": target_scale * mse**0.5}

    return Task("regression", per_sample, metrics, lambda outs: outs.mean(0), None,
                lambda out: f"{float(out[0]) * target_scale + target_mean:.4f}",
                constant=lambda targets, width: targets.double().mean().float().expand(width),
                constant_name="the training mean", headline=("mse", "rmse"))


def _psnr(mse: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio (dB) of images with values in [0, 1]."""
    return -10 * torch.log10(mse.clamp_min(1e-10))


def rendering(height: int, width: int) -> Task:
    """Rendered images [N, H * W * 3] against the true views: the mean squared
    error per view (the loss) and its PSNR, each as the mean and SD over views."""

    def per_sample(outputs, targets):
        return ((outputs - targets) ** 2).mean(1)

    def metrics(outputs, targets):
        mse = per_sample(outputs, targets).double()
        psnr = _psnr(mse)
        sd = (lambda v: float(v.std())) if len(mse) > 1 else (lambda v: 0.0)
        return {"mse": float(mse.mean()), "mse_sd": sd(mse), "psnr": float(psnr.mean()), "psnr_sd": sd(psnr)}

    return Task("rendering", per_sample, metrics, lambda outs: outs.mean(0), None,
                lambda out: f"image, mean colour {float(out.mean()):.3f}",
                as_images=lambda outs: outs.reshape(-1, height, width, 3).clamp(0, 1), headline=("mse", "psnr"))


def si_snr(estimates: torch.Tensor, sources: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant signal-to-noise ratio (dB) of ``estimates`` against ``sources``
    ([..., T] each, broadcast), both made zero-mean: SI-SDR (Le Roux et al., 2019)."""
    estimates = estimates - estimates.mean(-1, keepdim=True)
    sources = sources - sources.mean(-1, keepdim=True)
    scale = (estimates * sources).sum(-1, keepdim=True) / ((sources ** 2).sum(-1, keepdim=True) + eps)
    target = scale * sources
    noise = estimates - target
    return 10 * torch.log10(((target ** 2).sum(-1) + eps) / ((noise ** 2).sum(-1) + eps))


def best_permutation(pairs: torch.Tensor) -> torch.Tensor:
    """For each sample's matrix ``pairs [B, S, S]`` (estimate i against source j),
    the permutation of the estimates that maximises the total: ``[B, S]`` (estimate
    ``perm[b, j]`` is matched to source j). Exhaustive up to 4 speakers, the
    Hungarian algorithm above (Dovrat et al., 2021)."""
    b, s, _ = pairs.shape
    if s <= 4:
        perms = torch.tensor(list(itertools.permutations(range(s))), device=pairs.device)  # [P, S]
        totals = pairs[:, perms, torch.arange(s, device=pairs.device)].sum(-1)  # [B, P]
        return perms[totals.argmax(1)]
    from scipy.optimize import linear_sum_assignment

    cost = -pairs.detach().double().cpu().numpy()
    rows = [linear_sum_assignment(c.T)[1] for c in cost]  # per source j, the estimate matched to it
    return torch.as_tensor(np.stack(rows), device=pairs.device)


SPECTROGRAM_FFT = 128  # the pictures' spectrograms: 65 bins of 62.5 Hz at 8 kHz
SPECTROGRAM_TOP = 3.0  # log(1 + |STFT|) drawn black at and above this


def spectrogram(signals: torch.Tensor, n_fft: int) -> torch.Tensor:
    """log(1 + |STFT|) of ``signals [..., T]``: ``[..., n_fft // 2 + 1, frames]`` (Hann window, hop n_fft / 4)."""
    flat = signals.reshape(-1, signals.shape[-1]).float()
    spec = torch.stft(flat, n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft, device=signals.device),
                      return_complex=True).abs()
    return torch.log1p(spec).reshape(*signals.shape[:-1], *spec.shape[1:])


def separation(speakers: int, length: int, sample_rate: int = 8000) -> Task:
    """Speech separation: outputs and targets are ``speakers`` signals of ``length``
    samples, flattened to ``[N, speakers * length]``. The loss is the negative
    SI-SNR of the estimates matched to the speakers by the permutation that
    maximises it (permutation-invariant training); the metrics are the mean
    SI-SDR in dB and its improvement over the mixture (SI-SDRi; the mixture is
    the sum of the sources), each with its SD over samples. An ensemble matches
    every member's outputs to the first member's, in order and sign, and averages
    them at equal energy."""

    def signals(t):
        return t.reshape(len(t), speakers, length)

    def matched(outputs, targets):
        est, src = signals(outputs), signals(targets)
        pairs = si_snr(est[:, :, None], src[:, None, :])  # [N, S est, S src]
        perm = best_permutation(pairs.detach())
        return pairs.gather(1, perm[:, None, :]).squeeze(1)  # [N, S]: each source's matched SI-SNR

    def per_sample(outputs, targets):
        return -matched(outputs, targets).mean(1)

    def metrics(outputs, targets):
        sdr = matched(outputs, targets).double()
        src = signals(targets)
        mixture = si_snr(src.sum(1, keepdim=True).expand_as(src), src).double()
        improvement = (sdr - mixture).mean(1)
        sd = (lambda v: float(v.std())) if len(sdr) > 1 else (lambda v: 0.0)
        return {"neg_si_sdr": float(-sdr.mean()), "si_sdr": float(sdr.mean()), "si_sdri": float(improvement.mean()),
                "si_sdri_sd": sd(improvement)}

    def ensemble(outputs):
        n = outputs.shape[1]
        first = signals(outputs[0])
        aligned = [first]
        for member in outputs[1:]:
            est = signals(member)
            perm = best_permutation(si_snr(est[:, :, None], first[:, None, :]))
            est = est.gather(1, perm[:, :, None].expand(-1, -1, length))
            # SI-SDR sees neither a channel's sign nor its scale, so members trained apart may differ in
            # both: turn each channel to the first member's sign before the mean (no correlation: kept)
            aligned.append(torch.where((est * first).sum(-1, keepdim=True) < 0, -est, est))
        members = torch.stack(aligned)  # [K, N, S, T]
        norms = members.norm(dim=-1, keepdim=True)
        # every member counts the same whatever its scale: the mean of unit-energy channels, brought
        # back to the members' mean energy (a silent channel adds zeros)
        units = members / torch.where(norms > 0, norms, torch.ones_like(norms))
        return (units.mean(0) * norms.mean(0)).reshape(n, speakers * length)

    def describe(out):
        peaks = signals(out[None])[0].abs().amax(-1)
        return f"{speakers} signals of {length / sample_rate:.2f} s, peaks " + ", ".join(f"{float(v):.3f}"
                                                                                          for v in peaks)

    def pictures(signals_):  # [N, C, T] -> [N, C panels of spectrogram stacked, frames, 3]
        spec = torch.flip(spectrogram(signals_, SPECTROGRAM_FFT), dims=[-2])  # low frequencies at the bottom
        panels = (spec / SPECTROGRAM_TOP).clamp(0, 1)
        gap = torch.full((*panels.shape[:2], 2, panels.shape[-1]), 0.5)  # a grey line between the speakers
        stacked = torch.cat([torch.cat([p, g], 1) for p, g in zip(panels.unbind(1), gap.unbind(1))], 1)[:, :-2]
        return (1 - stacked)[..., None].repeat(1, 1, 1, 3)  # energy dark on white

    def inputs(x):  # the mixture on top, blank below: the same size as the outputs' pictures
        mixture = torch.cat([x.reshape(len(x), 1, length), torch.zeros(len(x), speakers - 1, length)], 1)
        image = pictures(mixture)
        image[:, (image.shape[1] - 2 * (speakers - 1)) // speakers:] = 1.0
        return image

    def aligned(outputs, targets):  # each output channel in the order of the sources it is matched to
        est = signals(outputs)
        perm = best_permutation(si_snr(est[:, :, None], signals(targets)[:, None, :]))
        return est.gather(1, perm[:, :, None].expand(-1, -1, length)).reshape(outputs.shape)

    return Task("separation", per_sample, metrics, ensemble, None, describe, as_images=lambda o: pictures(signals(o)),
                inputs_as_images=inputs, input_name="mixture", as_signals=signals, sample_rate=sample_rate,
                aligned=aligned, headline=("neg_si_sdr", "si_sdri"))


TASKS = {"classification": classification, "regression": regression, "rendering": rendering,
         "separation": separation}


def get_task(name: str, **options) -> Task:
    """The task ``name``, built with the dataset's options (e.g. the target's scale)."""
    try:
        factory = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}") from None
    return factory(**options)
