"""The stages that run on torch.distributed, in one process and on two torchrun ranks, side by side.

    .venv/bin/python benchmarks/ranks.py [--stage STAGE ...|all] [--layer selected|runner_up]

STAGE: score-layers, overfit, train-diffusion, evaluate (default: all four).
Runs the stage command itself (`python -m stages STAGE`, process start and
data loading included) on params.yaml's data and the project's artifacts
(artifacts/base, layers/scores.json, deltas.zarr, diffusion/: run `make
repro` first), into temporary outputs: one process with 2 torch threads, one
process with 1, and `compute.nproc: 2` (two torchrun ranks of 1 thread each,
gloo). Prints the wall seconds, the ratios, and how the 2-rank output
compares with the 1-thread one: equal or not (scores.json; every array of
the store; the evaluation's metrics.json, timings aside), and for the
trained models the largest difference of a tensor relative to its largest
entry.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
import zarr

RUNS = (("1 process, 2 threads", 1, 2), ("1 process, 1 thread", 1, 1), ("2 ranks, 1 thread each", 2, 1))


STAGES = ("score-layers", "overfit", "train-diffusion", "evaluate")


def stage_args(stage: str, tmp: str, name: str, layer: str) -> list[str]:
    if stage == "overfit":
        return ["--layer", layer, "--out", f"{tmp}/{name}.zarr", "--metrics", f"{tmp}/{name}.json"]
    return ["--out", f"{tmp}/{name}"]


def _without_timings(metrics: dict) -> dict:
    return {row: {k: v for k, v in values.items() if k != "ms_per_sample"} if isinstance(values, dict) else values
            for row, values in metrics.items()}


def compare(stage: str, tmp: str, a: str, b: str) -> str:
    """How run b's output compares with run a's."""
    if stage == "score-layers":
        same = json.loads(Path(tmp, a, "scores.json").read_text()) == json.loads(Path(tmp, b, "scores.json").read_text())
    elif stage == "evaluate":
        same = (_without_timings(json.loads(Path(tmp, a, "metrics.json").read_text()))
                == _without_timings(json.loads(Path(tmp, b, "metrics.json").read_text())))
    elif stage == "train-diffusion":
        import torch

        worst = 0.0
        for name in ("diffusion.pt", "scale.pt", "regressor.pt"):
            x, y = (torch.load(Path(tmp, run, name), weights_only=True)["state"] for run in (a, b))
            worst = max([worst] + [float((x[k] - y[k]).abs().max() / x[k].abs().max().clamp_min(1e-30))
                                   for k in x if x[k].is_floating_point()])
        return f"largest tensor difference / its largest entry: {worst:.1e}"
    else:
        one, two = zarr.open_group(f"{tmp}/{a}.zarr", mode="r"), zarr.open_group(f"{tmp}/{b}.zarr", mode="r")
        same = all(np.array_equal(node[:], two[split][name][:]) for split in ("train", "test")
                   for name, node in one[split].members(max_depth=None) if isinstance(node, zarr.Array))
    return f"2-rank output equals the 1-thread one: {same}"


def measure(stage: str, layer: str) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, nproc, threads) in enumerate(RUNS):
            params["compute"] = {"nproc": nproc}
            Path(tmp, f"p{i}.yaml").write_text(yaml.safe_dump(params))
            cmd = [sys.executable, "-m", "stages", stage, "--params", f"{tmp}/p{i}.yaml", "--no-progress",
                   *stage_args(stage, tmp, f"run{i}", layer)]
            t = time.perf_counter()
            subprocess.run(cmd, env=dict(os.environ, OCD_THREADS=str(threads)), check=True, capture_output=True)
            seconds[label] = time.perf_counter() - t
        verdict = compare(stage, tmp, "run1", "run2")
    what = {"overfit": f"layer {layer}, ", "score-layers": f"{params['layers']['draws']} draws, "}.get(stage, "")
    print(f"{stage} ({params['data']['name']}, {what}wall, process start included):")
    for label, s in seconds.items():
        print(f"  {label:24s}: {s:6.1f} s")
    ranks = seconds[RUNS[2][0]]
    print(f"  1 process 1 thread / 2 ranks: {seconds[RUNS[1][0]] / ranks:.2f}x; 1 process 2 threads / 2 ranks: "
          f"{seconds[RUNS[0][0]] / ranks:.2f}x; {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", nargs="+", default=["all"], choices=[*STAGES, "all"])
    ap.add_argument("--layer", default="selected", choices=["selected", "runner_up"],
                    help="scores.json's layer for the overfit stage")
    args = ap.parse_args()
    if not all(Path(p).exists() for p in ("artifacts/base/model.pt", "artifacts/layers/scores.json",
                                          "artifacts/deltas.zarr", "artifacts/diffusion/diffusion.pt")):
        sys.exit("needs the project's artifacts: run `make repro` first")
    for stage in (STAGES if "all" in args.stage else args.stage):
        measure(stage, args.layer)


if __name__ == "__main__":
    main()
