"""The base model's quality against its training time, scored on the calibration rows (issue 43, item 1).

Each RUN folder holds the params.yaml `ocd train-base` was given, its output
`base/` and its `train.log` (ending with GNU time's "N s wall" line, if timed).
Prints one JSON line per run: what its params change from the first run's,
the training seconds, and the task's metrics on the calibration rows (where a
recipe is chosen) and on the test rows (reported, never chosen on).

    .venv/bin/python scripts/base_curve.py RUN [RUN ...] > docs/runs/NAME/curve.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ocd.data.registry import load_dataset  # noqa: E402
from ocd.models import base  # noqa: E402
from ocd.params import load_params  # noqa: E402


def changes(first: dict, other: dict, prefix: str = "") -> dict:
    out = {}
    for key in sorted(set(first) | set(other)):
        a, b = first.get(key), other.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(changes(a, b, f"{prefix}{key}."))
        elif a != b:
            out[f"{prefix}{key}"] = b
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path, nargs="+")
    args = ap.parse_args()
    first = yaml.safe_load((args.runs[0] / "params.yaml").read_text())
    for run in args.runs:
        p = load_params(run / "params.yaml")
        data = load_dataset(p.data)
        task = data.make_task()
        model = base.load(run / "base").model
        log = (run / "train.log").read_text() if (run / "train.log").is_file() else ""
        wall = re.findall(r"([0-9.]+) s wall", log)
        record = {"run": run.name, "changes": changes(first, yaml.safe_load((run / "params.yaml").read_text())),
                  "seconds": float(wall[-1]) if wall else None,
                  "cal": base.evaluate(model, task, *data.split("cal")),
                  "test": base.evaluate(model, task, *data.split("test"))}
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
