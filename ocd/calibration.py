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


LOG_T_BOUND = 5.0  # the search interval of log T


def fit_temperature(loss, outputs: torch.Tensor, y: torch.Tensor, with_temperature) -> float:
    """T minimising ``loss(with_temperature(outputs, T), y).mean()``, searched over log T in [-5, 5]."""
    outputs, y = outputs.detach().double().cpu(), y.cpu()

    def objective(log_t: float) -> float:
        return float(loss(with_temperature(outputs, math.exp(log_t)), y).mean())

    result = minimize_scalar(objective, bounds=(-LOG_T_BOUND, LOG_T_BOUND), method="bounded",
                             options={"xatol": 1e-6})
    return float(math.exp(result.x))


def choose_temperature(loss, outputs: torch.Tensor, y: torch.Tensor, with_temperature) -> tuple[float, str]:
    """(T, what the table says of it): :func:`fit_temperature` where the
    calibration rows identify T, else T = 1, the outputs as they are.

    When every calibration row is classified right, the cross-entropy of
    ``outputs / T`` falls monotonically as T -> 0 (its derivative in 1/T is
    E_p[z] - z_y <= 0 for each row), so the "fit" runs to the search bound and
    makes every test prediction absurdly confident (scikit-learn's breast
    cancer: T = 0.016, test CE 5.98 against 0.12). A fit that ends at a bound
    of the search is refused for the same reason.
    """
    n = len(y)
    if outputs.ndim == 2 and bool((outputs.argmax(-1).cpu() == y.cpu()).all()):
        return 1.0, (f"T = 1: not fitted, all {n} calibration rows are right, so their loss falls "
                     "without end as T -> 0")
    t = fit_temperature(loss, outputs, y, with_temperature)
    if abs(math.log(t)) > LOG_T_BOUND - 1e-2:
        return 1.0, f"T = 1: not fitted, the fit on {n} calibration rows ran to its bound (T = {t:.3g})"
    return t, f"T = {t:.3f} fitted on {n} calibration rows"
