"""Start-up: how long `ocd` takes before it works or refuses, this tree beside another revision.

    .venv/bin/python benchmarks/startup.py [--against REV] [--repeats 3]

Checks REV (default HEAD) out into a temporary git worktree and runs the same
command lines in both trees with this venv's Python (`python -m stages ...`,
from each tree's root, so each imports its own code), alternating, and prints
the median wall time of each:

- `ocd --help`;
- a one-line refusal of a malformed params file (a key of the wrong type),
  an unknown dataset and a missing params file, for every stage that reads params;
- a one-line refusal of a missing input (score-layers --base, inspect,
  train-diffusion --store);
- the import of each stage's module and of what it imports to run the
  default params (the family and the dataset): the part of a stage's wall
  time that is not its compute.

Issue 42 asks `ocd --help` and a refusal under 1 s on a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("train_base", "score_layers", "overfit", "train_ensemble", "train_diffusion", "train_scale",
          "train_regressor", "evaluate", "predict")
# what a stage on the default params imports when it runs, beyond its module (the family and the loader)
DEFAULT = "ocd.models.sequential, ocd.data.images"
RUNS = {**{stage: DEFAULT for stage in ("train_base", "score_layers", "overfit", "train_ensemble", "evaluate")},
        "predict": "ocd.models.sequential"}


def timed(argv: list[str], cwd: Path) -> tuple[float, int, str]:
    t = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - t, done.returncode, (done.stderr or done.stdout).strip().splitlines()[-1:]


def cases(scratch: Path) -> list[tuple[str, list[str]]]:
    wrong = scratch / "wrong_type.yaml"
    wrong.write_text("base:\n  lr: fast\n")
    unknown = scratch / "unknown.yaml"
    unknown.write_text("data:\n  name: cifar\n")
    ocd = [sys.executable, "-m", "stages"]
    out = [("ocd --help", ocd + ["--help"])]
    for stage in STAGES:
        command = stage.replace("_", "-")
        extra = ["x.npy"] if stage == "predict" else []
        out.append((f"ocd {command}: base.lr 'fast'", ocd + [command, "--params", str(wrong)] + extra))
        out.append((f"ocd {command}: data.name cifar", ocd + [command, "--params", str(unknown)] + extra))
    out.append(("ocd evaluate: no params file", ocd + ["evaluate", "--params", str(scratch / "none.yaml")]))
    out.append(("ocd score-layers: no --base", ocd + ["score-layers", "--base", str(scratch / "none")]))
    out.append(("ocd inspect: no store", ocd + ["inspect", str(scratch / "none.zarr")]))
    out.append(("ocd train-diffusion: no --store", ocd + ["train-diffusion", "--store", str(scratch / "none.zarr")]))
    for stage in STAGES:
        imports = ", ".join(["stages." + stage] + ([RUNS[stage]] if stage in RUNS else []))
        out.append((f"import {stage} (default params)", [sys.executable, "-c", f"import {imports}"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", default="HEAD", help="The git revision to measure beside this tree.")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scratch, old = Path(tmp), Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old), args.against], cwd=ROOT, check=True)
        try:
            print(f"| command | {args.against} (s) | this tree (s) | this tree: exit, last line |")
            print("|---|---|---|---|")
            for name, argv in cases(scratch):
                times = {"old": [], "new": []}
                for _ in range(args.repeats):
                    for tree, cwd in (("old", old), ("new", ROOT)):
                        seconds, code, last = timed(argv, cwd)
                        times[tree].append(seconds)
                line = (last[0] if last else "")[:90].replace("|", "/")
                print(f"| {name} | {statistics.median(times['old']):.2f} | {statistics.median(times['new']):.2f} "
                      f"| {code}: {line} |", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)


if __name__ == "__main__":
    main()
