"""The stages of the pipeline, each timed alone as a user runs it, on this machine's device.

    .venv/bin/python benchmarks/pipeline.py [-S section.key=value ...] [--profile STAGE] [--work DIR]

Runs ``python -m stages STAGE --no-progress`` for every stage in order,
writing every artifact under a fresh work folder (a temporary one unless
``--work``), with params.yaml and the given overrides (the ``dvc exp run -S``
syntax). Each figure is the stage's wall time, process start included, as
``dvc repro`` pays it. ``--profile STAGE`` runs that stage under cProfile and
prints its 25 costliest functions (cumulative time) after the table.
Prints the table last: stage, seconds, the peak resident memory of the
stage's largest process (with ``compute.nproc`` above 1: of one rank, or
of the launcher), and the whole pipeline's total. Each stage's output is in
``WORK/STAGE.log``.
On a GPU machine: ``source .gpu/on-device.sh && python3 benchmarks/pipeline.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parents[1]
STAGES = ("train-base", "train-ensemble", "score-layers", "overfit", "train-diffusion", "train-scale",
          "train-regressor", "evaluate")


def stage_args(stage: str, params: Path, work: Path) -> list[str]:
    a = work / "artifacts"
    return {
        "train-base": ["--out", str(a / "base")],
        "score-layers": ["--base", str(a / "base"), "--out", str(a / "layers")],
        "overfit": ["--base", str(a / "base"), "--scores", str(a / "layers/scores.json"),
                    "--out", str(a / "deltas.zarr"), "--metrics", str(a / "overfit/metrics.json")],
        "train-ensemble": ["--out", str(a / "ensemble")],
        "train-diffusion": ["--store", str(a / "deltas.zarr"), "--out", str(a / "diffusion")],
        "train-scale": ["--store", str(a / "deltas.zarr"), "--out", str(a / "diffusion")],
        "train-regressor": ["--store", str(a / "deltas.zarr"), "--out", str(a / "diffusion")],
        "evaluate": ["--base", str(a / "base"), "--store", str(a / "deltas.zarr"),
                     "--models", str(a / "diffusion"), "--ensemble", str(a / "ensemble"), "--out", str(a / "eval")],
    }[stage] + ["--params", str(params), "--no-progress"]


def override(raw: dict, assignment: str) -> None:
    key, _, value = assignment.partition("=")
    section, _, name = key.partition(".")
    raw.setdefault(section, {})[name] = yaml.safe_load(value)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-S", dest="sets", action="append", default=[], help="section.key=value")
    ap.add_argument("--profile", choices=STAGES, default=None)
    ap.add_argument("--work", type=Path, default=None, help="keep the artifacts here")
    ap.add_argument("--root", type=Path, default=HERE,
                    help="the checkout whose stages run (e.g. a worktree of an earlier commit)")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                    help="a subset, in order, over the artifacts already in --work")
    args = ap.parse_args()
    root = args.root.resolve()

    work = args.work or Path(tempfile.mkdtemp(prefix="ocd-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    for assignment in args.sets:
        override(raw, assignment)
    params = work / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    times, peak_gb = {}, {}
    for stage in args.stages:
        cmd = [sys.executable]
        if stage == args.profile:
            cmd += ["-m", "cProfile", "-o", str(work / "profile.out")]
            cmd += [str(root / "stages/__main__.py")]
        else:
            cmd += ["-m", "stages"]
        start = time.perf_counter()
        log = work / f"{stage}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd + [stage] + stage_args(stage, params, work), cwd=root, env=env,
                                    stdout=out, stderr=subprocess.STDOUT)
            # the rusage of the stage's process and every process it waited for (torchrun's ranks)
            _, status, usage = os.wait4(proc.pid, 0)
        times[stage] = time.perf_counter() - start
        peak_gb[stage] = usage.ru_maxrss / 2**20  # KiB on Linux
        if os.waitstatus_to_exitcode(status):
            sys.exit(f"{stage} failed ({os.waitstatus_to_exitcode(status)}):\n{log.read_text()[-6000:]}")

    base = json.loads((work / "artifacts/base/model.json").read_text())
    if args.profile:
        print(f"\ncProfile of {args.profile} (cumulative, top 25):")
        pstats.Stats(str(work / "profile.out")).sort_stats("cumulative").print_stats(25)
    print(f"\nruntime: {base.get('runtime')}")
    print(f"overrides: {' '.join(args.sets) or '(none)'}; artifacts in {work}")
    for name in ("metrics.json", "scale_metrics.json", "regressor_metrics.json"):
        if (work / "artifacts/diffusion" / name).is_file():
            print(f"{name}: {(work / 'artifacts/diffusion' / name).read_text()}")
    if "evaluate" in args.stages:
        print((work / "artifacts/eval/results.md").read_text())
    store = work / "artifacts/deltas.zarr"
    if store.exists():
        print(f"store: {sum(f.stat().st_size for f in store.rglob('*') if f.is_file()) / 2**20:.0f} MiB on disk")
    print("\n| stage | seconds | peak RSS of one process, GB |\n|---|---|---|")
    for stage, seconds in times.items():
        print(f"| {stage} | {seconds:.1f} | {peak_gb[stage]:.2f} |")
    print(f"| **total** | **{sum(times.values()):.1f}** | |")
    (work / "times.json").write_text(json.dumps(times))


if __name__ == "__main__":
    main()
