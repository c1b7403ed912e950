"""Calibration: a fitted temperature, expected calibration error, reliability bins.

- :func:`fit_temperature`: the one scalar T > 0 minimising the task's mean loss
  of ``outputs / T`` on calibration rows (Guo et al., 2017), by a bounded
  search over log T; rows the models never trained on, never test rows.
- :func:`expected_calibration_error`: 15 equal-width confidence bins over
  [0, 1] (Guo et al.'s ECE): sum over bins of (rows in bin / N) *
  |accuracy - mean confidence|, confidence = the top class's probability.
- :func:`reliability`: per bin, the mean confidence, accuracy and row count
  (the reliability diagram).
"""

from __future__ import annotations

import math

import torch
from scipy.optimize import minimize_scalar

ECE_BINS = 15


def _confidence(outputs: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p = outputs.double().softmax(-1)
    conf, pred = p.max(-1)
    return conf, (pred == y).double()


def _bins(conf: torch.Tensor, bins: int) -> torch.Tensor:
    return torch.clamp((conf * bins).long(), max=bins - 1)  # confidence 1.0 falls in the last bin


def expected_calibration_error(outputs: torch.Tensor, y: torch.Tensor, bins: int = ECE_BINS) -> float:
    conf, right = _confidence(outputs, y)
    idx = _bins(conf, bins)
    total = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            total += float(mask.double().mean()) * abs(float(right[mask].mean() - conf[mask].mean()))
    return total


def reliability(outputs: torch.Tensor, y: torch.Tensor, bins: int = ECE_BINS) -> list[dict]:
    """One dict per bin: its centre, mean confidence, accuracy (None when empty) and count."""
    conf, right = _confidence(outputs, y)
    idx = _bins(conf, bins)
    rows = []
    for b in range(bins):
        mask = idx == b
        n = int(mask.sum())
        rows.append({"bin_centre": (b + 0.5) / bins, "confidence": float(conf[mask].mean()) if n else None,
                     "accuracy": float(right[mask].mean()) if n else None, "count": n})
    return rows


def fit_temperature(loss, outputs: torch.Tensor, y: torch.Tensor, with_temperature) -> float:
    """T minimising ``loss(with_temperature(outputs, T), y).mean()``, searched over log T in [-5, 5]."""
    outputs, y = outputs.detach().double().cpu(), y.cpu()

    def objective(log_t: float) -> float:
        return float(loss(with_temperature(outputs, math.exp(log_t)), y).mean())

    result = minimize_scalar(objective, bounds=(-5.0, 5.0), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(result.x))
