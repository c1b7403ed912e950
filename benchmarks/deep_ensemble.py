"""Deep-ensemble members: trained together (stacked weights + vmap) against one by one, side by side.

    .venv/bin/python benchmarks/deep_ensemble.py [--members 4] [--epochs 10]

LeNet5 on mnist5k with the default base params (the evaluate stage's k - 1 = 4
extra members). Prints the seconds of each path, the ratio, and each member's
test accuracy by both paths (they differ only by float summation order).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from ocd.data.registry import load_dataset
from ocd.device import get_device, runtime
from ocd.models import base
from ocd.models.registry import ModelSpec
from ocd.params import load_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=None)
    args = ap.parse_args()
    p = load_params("params.yaml")
    params = dataclasses.replace(p.base, epochs=args.epochs or p.base.epochs)
    data = load_dataset(p.data)
    task = data.make_task()
    spec = ModelSpec.from_params(p.model, data.in_shape, data.n_outputs)
    seeds = [params.seed + j for j in range(1, args.members + 1)]
    print(f"runtime: {runtime()}; {args.members} members, {params.epochs} epochs, batch {params.batch_size}")
    seconds = {}
    for fn in (base.train_seeds, base.train_seeds_one_by_one):
        start = time.perf_counter()
        members = fn(spec, task, data.x_train, data.y_train, params, seeds, progress=False)
        if get_device().type == "cuda":
            torch.cuda.synchronize()
        seconds[fn.__name__] = time.perf_counter() - start
        accs = [base.evaluate(m, task, data.x_test, data.y_test)["acc"] for m in members]
        print(f"{fn.__name__:24s}: {seconds[fn.__name__]:6.1f} s; test acc " + " ".join(f"{a:.3f}" for a in accs))
    print(f"ratio (one by one / together): {seconds['train_seeds_one_by_one'] / seconds['train_seeds']:.2f}x")


if __name__ == "__main__":
    main()
