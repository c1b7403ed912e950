"""Stage 1b, ``train_ensemble``: the deep ensemble's other members (the ``deep_ensemble`` row)."""

from __future__ import annotations

from pathlib import Path

import typer

from ocd.data.registry import load_dataset
from ocd.device import Compute, configure_threads, runtime
from ocd.models import base
from ocd.models.registry import ModelSpec
from ocd.params import load_params
from stages.options import PARAMS_OPTION


def train_ensemble(
    params: Path = PARAMS_OPTION,
    out: Path = typer.Option(Path("artifacts/ensemble"), help="Folder for the members and ensemble.json."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Stage 1b: train evaluate.k - 1 more base models, seeds base.seed + 1, ... (params: data,
    model, base, evaluate.k, evaluate.deep_ensemble).

    With the base model they make the deep ensemble of evaluate.k; the members
    train together as one stacked model (ocd.models.base.train_seeds). With
    evaluate.deep_ensemble false the folder holds no member and says so. Kept
    apart from evaluate, so that an experiment on the diffusion or evaluation
    params does not train them again.
    """
    configure_threads()
    p = load_params(params)
    ep = p.evaluate
    data = load_dataset(p.data)
    task = data.make_task()
    spec = ModelSpec.from_params(p.model, data.in_shape, data.n_outputs, data.info)
    seeds = [p.base.seed + j for j in range(1, ep.k)] if ep.deep_ensemble else []
    members = base.train_seeds(spec, task, data.x_train, data.y_train, p.base, seeds, progress,
                               Compute.of(precision=None))
    base.save_ensemble(out, members, spec, seeds, data=p.section("data"), base=p.section("base"),
                       runtime=runtime(), note=None if seeds else "evaluate.deep_ensemble is false: no members")
    typer.echo(f"deep ensemble: {len(members)} members besides the base model (seeds {seeds})" if seeds
               else "deep ensemble: off (evaluate.deep_ensemble false)")
