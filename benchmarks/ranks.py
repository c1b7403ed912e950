"""The stages that run on torch.distributed, in one process and on two torchrun ranks, side by side.

    .venv/bin/python benchmarks/ranks.py [--stage score-layers|overfit|both] [--layer selected|runner_up]

Runs the stage command itself (`python -m stages STAGE`, process start and
data loading included) on params.yaml's data and the project's artifacts
(artifacts/base, artifacts/layers/scores.json: run `make repro` first), into
temporary outputs: one process with 2 torch threads, one process with 1, and
`compute.nproc: 2` (two torchrun ranks of 1 thread each, gloo). Prints the
wall seconds, the ratios, and whether the 2-rank output equals the 1-thread
one (scores.json; every array of the store).
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


def stage_args(stage: str, tmp: str, name: str, layer: str) -> list[str]:
    if stage == "score-layers":
        return ["--out", f"{tmp}/{name}"]
    return ["--layer", layer, "--out", f"{tmp}/{name}.zarr", "--metrics", f"{tmp}/{name}.json"]


def same_output(stage: str, tmp: str, a: str, b: str) -> bool:
    if stage == "score-layers":
        return json.loads(Path(tmp, a, "scores.json").read_text()) == json.loads(Path(tmp, b, "scores.json").read_text())
    one, two = zarr.open_group(f"{tmp}/{a}.zarr", mode="r"), zarr.open_group(f"{tmp}/{b}.zarr", mode="r")
    return all(np.array_equal(node[:], two[split][name][:]) for split in ("train", "test")
               for name, node in one[split].members(max_depth=None) if isinstance(node, zarr.Array))


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
        same = same_output(stage, tmp, "run1", "run2")
    what = f"layer {layer}, " if stage == "overfit" else f"{params['layers']['draws']} draws, "
    print(f"{stage} ({params['data']['name']}, {what}wall, process start included):")
    for label, s in seconds.items():
        print(f"  {label:24s}: {s:6.1f} s")
    ranks = seconds[RUNS[2][0]]
    print(f"  1 process 1 thread / 2 ranks: {seconds[RUNS[1][0]] / ranks:.2f}x; 1 process 2 threads / 2 ranks: "
          f"{seconds[RUNS[0][0]] / ranks:.2f}x; 2-rank output equals the 1-thread one: {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", default="both", choices=["score-layers", "overfit", "both"])
    ap.add_argument("--layer", default="selected", choices=["selected", "runner_up"],
                    help="scores.json's layer for the overfit stage")
    args = ap.parse_args()
    if not (Path("artifacts/base/model.pt").exists() and Path("artifacts/layers/scores.json").exists()):
        sys.exit("needs the base model and the layer scores: run `make repro` first")
    for stage in (["score-layers", "overfit"] if args.stage == "both" else [args.stage]):
        measure(stage, args.layer)


if __name__ == "__main__":
    main()
