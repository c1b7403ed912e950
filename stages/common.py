"""What every stage shares: reading params, writing JSON and CSV outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterable

import typer

PARAMS_OPTION = typer.Option("params.yaml", "--params", help="The params file to read.")


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path: Path, rows: Iterable[dict]) -> None:
    rows = list(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
