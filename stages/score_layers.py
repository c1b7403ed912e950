"""Stage 2, ``score_layers``: score every weight layer and select one."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import typer
from tqdm import tqdm

from ocd import distributed, layers
from ocd.data.registry import load_dataset
from ocd.device import Compute, generator, runtime
from ocd.models import base
from ocd.params import load_params
from stages.common import on_processes, write_csv, write_json
from stages.options import BASE, PARAMS_OPTION


def score_layers(
    params: Path = PARAMS_OPTION,
    base_dir: Path = BASE.option(),
    out: Path = typer.Option(Path("artifacts/layers"), help="Folder for scores.json and scores.csv."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Stage 2: score layers by the entropy of the loss under weight noise (params: layers).

    Writes every layer's score, the ranking of the selectable (Linear) layers,
    the selected layer and the runner-up (scores.json), and score per layer
    for `dvc plots show` (scores.csv). With compute.nproc above 1, or run by
    torchrun, the draws are dealt out to the processes; the scores are the same.
    """
    p = load_params(params)
    on_processes(p, lambda group: _score_layers(p, base_dir, out, progress, group))


def _score_layers(p, base_dir: Path, out: Path, progress: bool, group: distributed.Group) -> None:
    compute = Compute.of(precision=None)
    device = compute.device
    base_model = base.load(base_dir, compute)
    layers.check_force(base_model.model, p.layers.force)  # before minutes of scoring
    data = load_dataset(p.data)
    task = data.make_task()
    idx = torch.randperm(len(data.y_train), generator=generator(p.layers.seed))[: p.layers.samples]
    x, y = data.x_train[idx].to(device), data.y_train[idx].to(device)

    names = layers.scored_layers(base_model.model, p.layers.scope)
    if group.world > 1:
        typer.echo(f"rank {group.rank} of {group.world}: its share of the {p.layers.draws} draws of every layer")
    bar = tqdm(total=len(names), desc="score layers", unit="layer", disable=not (progress and group.main))
    scores = layers.score_layers(base_model.model, task, x, y, p.layers.draws, p.layers.noise,
                                 p.layers.seed, progress=lambda name: bar.update(), scope=p.layers.scope,
                                 group=group)
    bar.close()
    if not group.main:  # every rank holds the same scores: rank 0 writes them
        return
    selection = layers.select(scores, p.layers.force)

    def finite(v: float):
        return v if math.isfinite(v) else None  # JSON has no infinity

    write_json(out / "scores.json", {
        "selected": selection.selected,
        "runner_up": selection.runner_up,
        "ranking": selection.ranking,
        "forced": selection.forced,
        "base_sha256": base_model.sha256,
        "layers": {s.name: {"score": finite(s.score), "entropy_sd": finite(s.entropy_sd),
                            "mean_loss": s.mean_loss, "selectable": s.selectable,
                            "degenerate_samples": s.degenerate}
                   for s in scores},
        # the score averages the samples degenerate in no selectable layer (ocd/layers.py)
        "samples_used": scores[0].samples_used,
        "params": p.section("layers"),
        "samples": idx.tolist(),
        "runtime": runtime(),
    })
    write_csv(out / "scores.csv", ({"layer": s.name, "score": finite(s.score)} for s in scores))
    forced = next((s for s in scores if s.name == selection.selected), None)
    if selection.forced and forced is not None and forced.degenerate == len(idx):
        typer.echo(f"warning: the forced layer {forced.name}: every scored sample has the same loss under all "
                   f"{p.layers.draws} weight draws; if its gradient is zero too, overfitting it moves nothing "
                   "(the overfit stage stops on a first chunk of zero deltas)", err=True)
    degenerate = [f"{s.name} {s.degenerate}" for s in scores if s.degenerate]
    how = (f"forced by layers.force; the scores rank {selection.ranking[0]} first" if selection.forced
           else f"runner-up {selection.runner_up}")
    typer.echo(f"selected {selection.selected} ({how}); scores: "
               + ", ".join(f"{s.name} {s.score:.3f}" for s in scores)
               + (f"; degenerate samples (constant loss, left out of every score): {', '.join(degenerate)}; "
                  f"scores average {scores[0].samples_used} of {len(idx)} samples" if degenerate else ""))
