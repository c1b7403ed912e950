"""What the three stages that train on the store share besides their rows
(ocd/fitting.py): their options, and one skeleton (:func:`train_on_store`):
device and precision, the fit rows, the seed, build, train, diagnose on the
held-out rows, save, write the metrics and the loss curve. Each stage says
what it does differently in a :class:`Trainer`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import typer

from ocd import distributed
from ocd.device import Compute
from ocd.fitting import Fit, open_fit
from ocd.params import Params
from stages.common import write_csv, write_json
from stages.options import STORE

MODELS_OPTION = typer.Option(Path("artifacts/diffusion"), help="Folder for the checkpoints, metrics and loss curves.")
STORE_OPTION = STORE.option()
NO_DIAGNOSTICS = "none: diffusion.holdout is 0, every train row fits the models"


@dataclass
class Trainer:
    """One model trained on the store's fit rows (``ocd.fitting.Fit``): its checkpoint is
    ``{name}.pt`` and its metrics ``{name}_metrics.json`` (or ``metrics_name``)."""

    name: str
    seed: int  # torch's global seed before the model is built
    build: Callable  # (fit, compute) -> the model
    train: Callable  # (model, fit, device, progress, group) -> (the model to save, loss history)
    diagnose: Callable  # (model, fit, device) -> its figures on the held-out rows
    save: Callable  # (path, model, fit, diagnostics) -> None
    neighbours: bool = True  # it reads the retrieved train rows (diffusion.neighbours)
    record: Callable[[Fit], dict] = lambda fit: {}  # more for its metrics, diagnosed or not
    metrics_name: str | None = None
    loss_name: str | None = None


def train_on_store(p: Params, store: Path, out: Path, progress: bool, group: distributed.Group,
                   trainer: Trainer) -> dict | None:
    """Train ``trainer``'s model on the store's fit rows and write it with its metrics (rank 0);
    returns the metrics written (None on the other ranks)."""
    compute = Compute.of(p.compute.precision)
    device = compute.device
    fit = open_fit(p, store, neighbours=trainer.neighbours)
    if group.main:
        typer.echo(fit.note)
    torch.manual_seed(trainer.seed)
    model = trainer.build(fit, compute)
    if group.world > 1:
        typer.echo(f"rank {group.rank} of {group.world}: its share of every minibatch")
    start = time.perf_counter()
    model, history = trainer.train(model, fit, device, progress, group)
    seconds = time.perf_counter() - start
    if not group.main:
        return None  # every rank holds the same model: rank 0 writes it
    diagnostics = trainer.diagnose(model, fit, device) if fit.held_chunks else {"diagnostics": NO_DIAGNOSTICS}
    out.mkdir(parents=True, exist_ok=True)
    trainer.save(out / f"{trainer.name}.pt", model, fit, diagnostics)
    return write_fit(out, trainer.name, {**diagnostics, **trainer.record(fit)}, history, seconds,
                     trainer.metrics_name, trainer.loss_name)


def write_fit(out: Path, model: str, metrics: dict, history: list[tuple[int, float]], seconds: float,
              metrics_name: str | None = None, loss_name: str | None = None) -> dict:
    """Write a trained model's metrics (``metrics`` with its steps and seconds) to
    ``{model}_metrics.json`` and its loss curve to ``{model}_loss.csv`` in ``out``
    (or the names given); returns the metrics."""
    metrics = {**metrics, "steps": {model: len(history)}, "seconds": {model: round(seconds, 1)}}
    write_json(out / (metrics_name or f"{model}_metrics.json"), metrics)
    write_csv(out / (loss_name or f"{model}_loss.csv"), ({"step": s, "loss": v} for s, v in history))
    return metrics
