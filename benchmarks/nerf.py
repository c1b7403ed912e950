"""TinyNeRF speed on this machine: the overfit stage per view and base training per step,
with glibc's default allocator and with the freed-memory setting every stage applies
(ocd.device.keep_freed_memory), side by side in one run; and the vectorised overfit
against the naive loop (a model copy and a torch.optim.Adam per view).

    .venv/bin/python benchmarks/nerf.py [--views 4] [--size 64]

Each allocator setting runs in its own process (mallopt cannot be undone).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def measure(views: int, size: int, naive: bool) -> dict:
    import torch

    from ocd.data.registry import load_dataset
    from ocd.device import configure_threads
    from ocd.models import base
    from ocd.models.cut import layer_io, linear_cut
    from ocd.models.registry import ModelSpec
    from ocd.overfit import overfit_batch, overfit_naive
    from ocd.params import BaseParams, DataParams, ModelParams

    configure_threads()
    data = load_dataset(DataParams(name="nerf_blocks", image_size=size, max_train=max(views, 8), max_test=1))
    spec = ModelSpec.from_params(ModelParams(name="tinynerf"), data.in_shape, data.n_outputs, data.info)
    torch.manual_seed(0)
    model = spec.build().eval()
    task = data.make_task()
    cut = linear_cut(model, "layer1")
    x, y = data.x_train[:views], data.y_train[:views]
    overfit_batch(cut, task, layer_io(cut, x[:1]).inp, y[:1], 1, "adam", 5e-3)  # warm up
    start = time.perf_counter()
    for i in range(views):  # as the stage does it: conditioning, then 10 Adam steps
        io = layer_io(cut, x[i:i + 1])
        overfit_batch(cut, task, io.inp, y[i:i + 1], 10, "adam", 5e-3)
    out = {"overfit_s_per_view": (time.perf_counter() - start) / views}
    if naive:
        start = time.perf_counter()
        overfit_naive(model, "layer1", task, x[:2], y[:2], 10, "adam", 5e-3)
        out["naive_s_per_view"] = (time.perf_counter() - start) / 2
    params = BaseParams(epochs=1, lr=5e-3, batch_size=4096, seed=0)
    fresh = spec.build()
    start = time.perf_counter()
    base.train(fresh, task, x, y, params, progress=False)
    steps = -(-len(y) * size * size // 4096)
    out["base_s_per_step"] = (time.perf_counter() - start) / steps
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--child", choices=["default", "kept"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.views, args.size, naive=args.child == "kept")))
        return
    results = {}
    for setting in ("default", "kept"):
        env = dict(os.environ, OCD_MALLOC="default" if setting == "default" else "")
        done = subprocess.run([sys.executable, __file__, "--views", str(args.views), "--size", str(args.size),
                               "--child", setting], env=env, capture_output=True, text=True, check=True)
        results[setting] = json.loads(done.stdout.strip().splitlines()[-1])
    d, k = results["default"], results["kept"]
    print(f"TinyNeRF, {args.size}x{args.size} views x 32 depths, layer1, 10 Adam steps a view")
    print(f"  overfit, s per view:   glibc default {d['overfit_s_per_view']:.2f}   freed memory kept "
          f"{k['overfit_s_per_view']:.2f}   ({d['overfit_s_per_view'] / k['overfit_s_per_view']:.2f}x)")
    print(f"  base training, s/step: glibc default {d['base_s_per_step']:.3f}  freed memory kept "
          f"{k['base_s_per_step']:.3f}  ({d['base_s_per_step'] / k['base_s_per_step']:.2f}x)")
    print(f"  naive loop (model copy + torch.optim per view), s per view: {k['naive_s_per_view']:.2f} "
          f"({k['naive_s_per_view'] / k['overfit_s_per_view']:.2f}x the vectorised overfit)")


if __name__ == "__main__":
    main()
