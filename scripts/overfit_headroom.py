"""How much can one sample's own overfit move it? The oracle's headroom per overfit recipe,
on the calibration rows only (never test), so a recipe can be chosen before any store is built.

    .venv/bin/python scripts/overfit_headroom.py --params params.yaml --base artifacts/base \
        --layer proj1_inter --steps 3 10 30 --lr 0.0005 0.002 0.005

For every (steps, lr) it overfits each calibration row on the layer with its own label
(Adam, as the overfit stage does) and prints the mean loss before and after, the task's
metrics before and after, and the mean Frobenius norm of the deltas. Runs on the CPU or CUDA.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ocd.data.registry import load_dataset
from ocd.models import base
from ocd.models.cut import linear_cut
from ocd.overfit import overfit_batch
from ocd.pipeline import apply_deltas
from ocd.params import load_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--base", type=Path, default=Path("artifacts/base"))
    ap.add_argument("--layer", required=True)
    ap.add_argument("--steps", type=int, nargs="+", default=[3, 10, 30])
    ap.add_argument("--lr", type=float, nargs="+", default=[5e-4, 2e-3, 5e-3])
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    p = load_params(args.params)
    data = load_dataset(p.data)
    x, y = data.split("cal")
    model = base.load(args.base).model
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    task = data.make_task()
    cut = linear_cut(model, args.layer)
    with torch.no_grad():
        before = torch.cat([model(x[i:i + args.batch]) for i in range(0, len(x), args.batch)])
    head = f"{len(y)} calibration rows of {p.data.name}, layer {args.layer}, {args.optimizer}"
    print(head)
    metrics = " | ".join(f"{k} before | {k} after" for k in task.metrics(before, y))
    print(f"| steps | lr | loss before | loss after | {metrics} | mean |delta| |")
    for steps in args.steps:
        for lr in args.lr:
            outs, norms = [], []
            for i in range(0, len(y), args.batch):
                xb, yb = x[i:i + args.batch], y[i:i + args.batch]
                fit = overfit_batch(cut, task, cut.enter(xb), yb, steps=steps, optimizer=args.optimizer, lr=lr)
                with torch.no_grad():
                    outs.append(apply_deltas(model, args.layer, fit.delta, xb))
                norms.append(fit.delta.flatten(1).norm(dim=1))
            after = torch.cat(outs)
            m0, m1 = task.metrics(before, y), task.metrics(after, y)
            l0 = float(task.per_sample_loss(before, y).mean())
            l1 = float(task.per_sample_loss(after, y).mean())
            print(f"| {steps} | {lr:g} | {l0:.4f} | {l1:.4f} | "
                  + " | ".join(f"{m0[k]:.4f} | {m1[k]:.4f}" for k in m0) + f" | {float(torch.cat(norms).mean()):.4f} |")


if __name__ == "__main__":
    main()
