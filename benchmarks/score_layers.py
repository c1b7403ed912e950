"""Layer scoring: the earlier estimator against the current one, side by side, with accuracy.

    .venv/bin/python benchmarks/score_layers.py [--base artifacts/base] [--draws 10000] [--samples 100]

Default params otherwise (mnist5k, noise 0.1, seed 0), on the library's device.
Prints, for the same M training samples and K draws:
(a) before: every weight layer scored, entropies by scipy's gaussian_kde
    evaluated on a grid of at most 4,096 points (the earlier estimator);
(b) now: the selectable layers only (layers.scope: selectable), entropies by
    the binned FFT KDE (ocd.layers.kde_entropy);
the seconds of each (forward passes and entropies apart), the ratio, and
each estimator's mean absolute error per sample against a reference (scipy's
exact KDE on a 2^15-point grid over the same span) for the selectable layers,
with the scores and selected layer of each. Targets (issue 18): <= 15 s on 2
CPU cores, <= 5 s on one H100, with estimates no worse than before.
Needs a trained base model (ocd train-base writes artifacts/base).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import gaussian_kde

from ocd import layers
from ocd.data.registry import load_dataset
from ocd.device import get_device, runtime
from ocd.models import base
from ocd.params import load_params


def scipy_entropy(values: np.ndarray, max_grid: int = 4096, min_step_per_bw: int = 4) -> float:
    """The earlier estimator: scipy's exact KDE on a grid of at most ``max_grid`` points."""
    kde = gaussian_kde(values)
    bw = math.sqrt(float(kde.covariance[0, 0]))
    lo, hi = values.min() - 5 * bw, values.max() + 5 * bw
    n = int(min(max_grid, max(256, math.ceil((hi - lo) / (bw / min_step_per_bw)))))
    grid = np.linspace(lo, hi, n)
    p = kde(grid)
    integrand = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return float(np.trapezoid(integrand, grid))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, default=Path("artifacts/base"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--draws", type=int, default=None)
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--reference", type=int, default=32, help="samples per layer checked against the reference")
    args = ap.parse_args()
    p = load_params(args.params)
    draws = args.draws or p.layers.draws
    samples = args.samples or p.layers.samples
    model = base.load(args.base).model
    data = load_dataset(p.data)
    task = data.make_task()
    idx = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(p.layers.seed))[:samples]
    device = get_device()
    x, y = data.x_train[idx].to(device), data.y_train[idx].to(device)
    print(f"runtime: {runtime()}; K={draws} draws, M={samples} samples, noise {p.layers.noise}")

    def forward(names):
        start = time.perf_counter()
        losses = {n: layers.perturbation_losses(model, task, n, x, y, draws, p.layers.noise, p.layers.seed)
                  .double().numpy() for n in names}
        if device.type == "cuda":
            torch.cuda.synchronize()
        return losses, time.perf_counter() - start

    def entropies(losses, fn):
        start = time.perf_counter()
        out = {n: np.array([fn(row) for row in rows]) for n, rows in losses.items()}
        return out, time.perf_counter() - start

    every, selectable = layers.weight_layers(model), layers.selectable_layers(model)
    before_losses, t_fwd_before = forward(every)
    before, t_ent_before = entropies(before_losses, scipy_entropy)
    now_losses, t_fwd_now = forward(selectable)
    now, t_ent_now = entropies(now_losses, layers.kde_entropy)
    total_before, total_now = t_fwd_before + t_ent_before, t_fwd_now + t_ent_now
    print(f"(a) before: {len(every)} layers, scipy KDE: {total_before:6.1f} s "
          f"(forward {t_fwd_before:.1f} s, entropies {t_ent_before:.1f} s)")
    print(f"(b) now:    {len(selectable)} layers, binned KDE: {total_now:6.1f} s "
          f"(forward {t_fwd_now:.1f} s, entropies {t_ent_now:.2f} s)")
    print(f"ratio (a)/(b): {total_before / total_now:.1f}x")

    for n in selectable:
        rows = now_losses[n][: args.reference]
        ref = np.array([scipy_entropy(r, max_grid=1 << 15, min_step_per_bw=64) for r in rows])
        err_before = np.abs(before[n][: args.reference] - ref).mean()
        err_now = np.abs(now[n][: args.reference] - ref).mean()
        print(f"{n}: score before {before[n].mean():.4f}, now {now[n].mean():.4f}; mean |error| per sample "
              f"against the fine-grid reference ({len(rows)} samples): before {err_before:.2e}, now {err_now:.2e}")
    # the estimate's own noise: the same samples under an independent set of draws
    other = {n: layers.perturbation_losses(model, task, n, x, y, draws, p.layers.noise, p.layers.seed + 1)
             .double().numpy() for n in selectable}
    for n in selectable:
        again = np.array([layers.kde_entropy(r) for r in other[n]])
        print(f"{n}: sampling noise of the entropy (draws seed {p.layers.seed} vs {p.layers.seed + 1}): "
              f"mean |difference| per sample {np.abs(again - now[n]).mean():.2e}, "
              f"of the score {abs(again.mean() - now[n].mean()):.2e}")
    pick = lambda ent: max(selectable, key=lambda n: ent[n].mean())  # noqa: E731
    print(f"selected: before {pick(before)}, now {pick(now)}")


if __name__ == "__main__":
    main()
