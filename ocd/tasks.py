"""Loss, metrics and ensembling per task type, chosen by the dataset (``Dataset.task``).

Stages ask the task for its loss and metrics instead of branching on the
dataset, so a new task type is one entry here. Classification reports
cross-entropy, accuracy and expected calibration error (ocd.calibration); regression MSE on the standardised target and
RMSE in the target's own units; rendering (a NeRF's views) the image MSE and PSNR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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
    # Outputs as pictures [N, H, W, 3] in [0, 1] (rendering); None: outputs are not images.
    as_images: Callable[[torch.Tensor], torch.Tensor] | None = None

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


def classification() -> Task:
    return Task("classification", _ce, _classification_metrics, _mean_probabilities, _entropy, _describe_class,
                _ce_precise, with_temperature=lambda out, t: out / t,
                correct=lambda out, y: out.argmax(dim=-1) == y)


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
                lambda out: f"{float(out[0]) * target_scale + target_mean:.4f}")


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
                as_images=lambda outs: outs.reshape(-1, height, width, 3).clamp(0, 1))


TASKS = {"classification": classification, "regression": regression, "rendering": rendering}


def get_task(name: str, **options) -> Task:
    """The task ``name``, built with the dataset's options (e.g. the target's scale)."""
    try:
        factory = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}") from None
    return factory(**options)
