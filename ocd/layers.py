"""Layer selection: score every weight layer by the entropy of the loss under
random perturbations of that layer's weight, and select the highest.

For a candidate layer L with weight W, K Gaussian draws
``W_k = W + noise * std(W) * eps_k`` are shared by the M scored training
samples. Each sample's K losses are summarised by the differential entropy of
a Gaussian kernel density estimate of them (:func:`kde_entropy`); the layer's
score is the mean over samples. Losses are computed without rounding tiny
losses to zero (``Task.precise_loss``), yet a sample can still be degenerate:
its K losses all equal (entropy -inf), e.g. a margin so large that e^-margin
underflows. Such a sample would make every layer's mean -inf and the ranking
meaningless, so the score is the mean over the samples that are not
degenerate in any selectable layer, the same samples for every layer, and
the number of degenerate samples is reported per layer. When no sample is
left, or the best two selectable layers tie, selection stops with a message.
Only forward passes: the model is cut at L, so
the part before L runs once and only L and what follows it run per draw.

Entropy estimator: a Gaussian KDE of the K losses (Scott's bandwidth, as
``scipy.stats.gaussian_kde``), evaluated on a grid of a 32nd of a bandwidth
by linear binning and an FFT convolution, then ``H = -integral p log p`` by the
trapezoid rule (:func:`kde_entropy`). For a Gaussian sample it converges to
0.5 log(2 pi e s^2) plus the kernel's small smoothing bias (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.signal import fftconvolve
from torch import nn

from ocd.distributed import Group
from ocd.errors import ScoreError
from ocd.models.cut import ModelError, cut_at, layer_with_weight_stack, weight_layers
from ocd.tasks import Task

# Layers the overfit stage can handle: a matrix weight applied to each of a
# sample's input vectors (one, or a set: ocd.models.cut's layer contract). Other
# weight layers (convolutions) are scored, reported, and not selectable.
SELECTABLE = (nn.Linear,)




def selectable_layers(model: nn.Module) -> list[str]:
    return [n for n in weight_layers(model) if isinstance(getattr(model, n), SELECTABLE)]


def kde_entropy(values: np.ndarray, step_per_bw: int = 32, max_grid: int = 1 << 16) -> float:
    """Differential entropy (nats) of a Gaussian KDE (Scott's bandwidth) of 1-D ``values``.

    The density is evaluated on a grid of step ``bandwidth / step_per_bw``
    spanning the data plus five bandwidths on each side (at most ``max_grid``
    points) by linear binning and one FFT convolution with the kernel, and
    ``-integral p log p`` is taken by the trapezoid rule. Linear binning widens
    the kernel by step^2/6 in variance; the kernel is narrowed by as much, which
    leaves an error of ~2e-8 nats per sample against the exact KDE on a fine
    grid (mnist5k losses; the earlier scipy estimator: ~1e-10; the estimate's
    own sampling noise at K = 10,000: ~1e-2; benchmarks/score_layers.py).

    ``-inf`` when all values are equal (a point mass); a ValueError on
    non-finite values.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(values)):
        raise ValueError("losses contain NaN or infinity; the perturbation is too large or the model diverged")
    # all equal up to float rounding, relative to the values' own size (losses of
    # confident samples are ~1e-20 and still vary)
    if values.size < 2 or np.ptp(values) <= 1e-12 * float(np.abs(values).max()):
        return float("-inf")
    n = values.size
    bw = float(values.std(ddof=1)) * n ** (-1 / 5)  # Scott's rule, as scipy.stats.gaussian_kde
    if not bw > 0:
        return float("-inf")
    lo, hi = values.min() - 5 * bw, values.max() + 5 * bw
    size = int(min(max_grid, max(256, math.ceil((hi - lo) / bw * step_per_bw) + 1)))
    grid, step = np.linspace(lo, hi, size, retstep=True)
    # linear binning: each value splits its unit weight between its two grid neighbours
    pos = (values - lo) / step
    i = np.clip(np.floor(pos).astype(np.int64), 0, size - 2)
    frac = pos - i
    counts = np.bincount(i, 1 - frac, size) + np.bincount(i + 1, frac, size)
    kernel_bw = math.sqrt(bw**2 - step**2 / 6)  # the binning's own smoothing taken out
    half = int(min(size - 1, math.ceil(6 * bw / step)))
    offsets = np.arange(-half, half + 1) * step
    kernel = np.exp(-0.5 * (offsets / kernel_bw) ** 2) / (math.sqrt(2 * math.pi) * kernel_bw * n)
    p = np.clip(fftconvolve(counts, kernel, mode="same"), 0.0, None)
    integrand = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return float(np.trapezoid(integrand, grid))


@torch.no_grad()
def perturbation_losses(model: nn.Module, task: Task, name: str, x: torch.Tensor,
                        y: torch.Tensor, draws: int, noise: float, seed: int,
                        points_per_pass: int = 16384, group: Group | None = None) -> torch.Tensor:
    """Losses ``[M, K]`` of the M samples under K shared draws of layer ``name``'s weight.

    A pass holds about ``points_per_pass`` (draw, sample, point) triples: 16,384
    draw-sample pairs for a model with one layer input per sample, one draw
    at a time for a NeRF view's 131,072 points.

    ``group`` (several processes, ocd.distributed): the passes are dealt out
    to the ranks and every rank gets all the columns back. Whole passes, not
    single draws: a batched product sums in an order that can depend on how
    many draws it holds, so each pass holds the draws it holds in one process,
    and the losses equal the one-process losses exactly.
    """
    group = group or Group()
    model.eval()
    cut = cut_at(model, name)
    inp = cut.enter(x)
    weight = cut.layer.weight
    sigma = noise * weight.std()
    chunk = max(1, points_per_pass // (len(x) * inp.points))
    loss = task.precise_loss or task.per_sample_loss
    passes = [list(range(start, min(start + chunk, draws))) for start in range(0, draws, chunk)]
    columns, indices = [], []
    for batch in group.deal(passes):
        k = len(batch)
        eps = torch.stack([_draw(weight, seed, i) for i in batch])
        z = layer_with_weight_stack(cut.layer, weight + sigma * eps, inp.h)  # [k, M, P, ...]
        out = cut.leave(z.flatten(0, 1), inp.repeat(k).ctx)
        # float64 and a precise form: plain cross-entropy rounds confident samples to exactly 0
        columns.append(loss(out.double(), y.repeat(k, *[1] * (y.dim() - 1))).view(k, len(x)).T.cpu())
        indices += batch
    local = torch.cat(columns, dim=1) if columns else torch.empty(len(x), 0, dtype=torch.float64)
    return group.gather_columns(local, indices, draws)


def _draw(weight: torch.Tensor, seed: int, index: int) -> torch.Tensor:
    """Draw ``index`` of the noise: a function of (seed, index) alone, so the
    draws do not depend on how many are computed per pass, nor on the device.

    numpy's SeedSequence hashes (seed, index) into a 128-bit state. (A torch
    CPU generator seeded with ``(seed << 32) + index`` kept only the low 32
    bits, so every layers.seed gave the same draws.)
    """
    rng = np.random.default_rng([seed, index])
    return torch.from_numpy(rng.standard_normal(tuple(weight.shape), dtype=np.float32)).to(weight.device)


@dataclass
class LayerScore:
    name: str
    # mean entropy (nats) over the samples degenerate in no selectable layer;
    # -inf when this layer has degenerate samples among them (non-selectable layers only)
    score: float
    entropy_sd: float  # spread of those per-sample entropies
    selectable: bool
    mean_loss: float  # mean perturbed loss, to see how hard the noise hits
    degenerate: int = 0  # samples whose K losses were all equal for this layer
    samples_used: int = 0  # samples behind the score


SCOPES = ("selectable", "all")


def scored_layers(model: nn.Module, scope: str) -> list[str]:
    """The layers ``scope`` scores: every weight layer ("all") or the selectable ones."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; valid: {', '.join(SCOPES)}")
    return weight_layers(model) if scope == "all" else selectable_layers(model)


def score_layers(model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor,
                 draws: int, noise: float, seed: int, progress=None, scope: str = "all",
                 group: Group | None = None) -> list[LayerScore]:
    """Score the weight layers of ``model`` on the samples (x, y): every one
    (``scope="all"``) or only those the overfit stage can use ("selectable").

    ``group`` (several processes, ocd.distributed): each rank computes its
    share of the draws and every rank gets all of them back
    (:func:`perturbation_losses`); each draw is a function of (seed, index)
    alone, so the scores do not depend on the number of processes.
    """
    selectable = set(selectable_layers(model))
    names = scored_layers(model, scope)
    entropies, mean_loss = {}, {}
    for name in names:
        losses = perturbation_losses(model, task, name, x, y, draws, noise, seed, group=group).double().numpy()
        try:
            entropies[name] = np.array([kde_entropy(row) for row in losses])
        except ValueError as exc:
            raise ScoreError(f"layer {name}: {exc}") from None
        mean_loss[name] = float(losses.mean())
        if progress is not None:
            progress(name)
    chosen = [n for n in names if n in selectable] or names
    used = np.all([np.isfinite(entropies[n]) for n in chosen], axis=0)
    scores = []
    for name in names:
        e = entropies[name][used]
        scores.append(LayerScore(
            name=name,
            score=float(e.mean()) if e.size else float("-inf"),
            entropy_sd=float(e[np.isfinite(e)].std()) if np.isfinite(e).any() else float("nan"),
            selectable=name in selectable,
            mean_loss=mean_loss[name],
            degenerate=int(np.sum(~np.isfinite(entropies[name]))),
            samples_used=int(used.sum()),
        ))
    return scores


@dataclass
class Selection:
    selected: str
    runner_up: str | None
    ranking: list[str]  # selectable layers, best first
    forced: bool


def check_force(model: nn.Module, force: str) -> None:
    """Refuse a ``layers.force`` that names no selectable layer, before any scoring."""
    _check_force(force, selectable_layers(model), weight_layers(model))


def _check_force(force: str, selectable: list[str], all_names: list[str]) -> None:
    if force and force not in selectable:
        why = ("is not a Linear layer, which the overfit stage needs" if force in all_names
               else "is not a weight layer of this model")
        raise ModelError(f"layers.force={force!r} {why}; valid names: {', '.join(selectable)}")


def select(scores: list[LayerScore], force: str = "") -> Selection:
    """The selectable layer with the highest score (or ``force``), and the runner-up.

    Without ``force``, stops (ScoreError) rather than choose when no sample
    could be scored or the best two layers tie.
    """
    candidates = [s for s in scores if s.selectable]
    if not candidates:
        raise ModelError("the model has no layer the overfit stage can handle (a Linear layer)")
    best = sorted(candidates, key=lambda s: s.score, reverse=True)
    ranking = [s.name for s in best]
    if force:
        _check_force(force, ranking, [s.name for s in scores])
        runner_up = next((n for n in ranking if n != force), None)
        return Selection(force, runner_up, ranking, forced=True)
    if not math.isfinite(best[0].score):
        per_layer = ", ".join(f"{s.name} {s.degenerate}" for s in candidates)
        raise ScoreError("no layer can be selected: every scored sample has the same loss under all weight "
                         f"draws of some selectable layer (saturated predictions; degenerate samples per layer: "
                         f"{per_layer}); raise layers.noise or layers.samples, or set layers.force")
    if len(best) > 1 and math.isclose(best[0].score, best[1].score, rel_tol=1e-9, abs_tol=1e-12):
        raise ScoreError(f"layers {best[0].name} and {best[1].name} tie at score {best[0].score:.6g}; "
                         "set layers.force to choose one")
    return Selection(ranking[0], ranking[1] if len(ranking) > 1 else None, ranking, forced=False)
