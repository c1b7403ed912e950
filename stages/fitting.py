"""What the three stages that train on the store share besides their rows
(ocd/fitting.py): their options and how they write a trained model's metrics.
"""

from __future__ import annotations

from pathlib import Path

import typer

from stages.common import write_csv, write_json

MODELS_OPTION = typer.Option(Path("artifacts/diffusion"), help="Folder for the checkpoints, metrics and loss curves.")
STORE_OPTION = typer.Option(Path("artifacts/deltas.zarr"), help="The weight-delta store (its train group).")


def write_fit(out: Path, model: str, metrics: dict, history: list[tuple[int, float]], seconds: float,
              metrics_name: str | None = None, loss_name: str | None = None) -> dict:
    """Write a trained model's metrics (``metrics`` with its steps and seconds) to
    ``{model}_metrics.json`` and its loss curve to ``{model}_loss.csv`` in ``out``
    (or the names given); returns the metrics."""
    metrics = {**metrics, "steps": {model: len(history)}, "seconds": {model: round(seconds, 1)}}
    write_json(out / (metrics_name or f"{model}_metrics.json"), metrics)
    write_csv(out / (loss_name or f"{model}_loss.csv"), ({"step": s, "loss": v} for s, v in history))
    return metrics


NO_DIAGNOSTICS = "none: diffusion.holdout is 0, every train row fits the models"
