"""Stage 4c, ``train_regressor``: the no-diffusion baseline, an MLP from I(x) to the delta's direction."""

from __future__ import annotations

from pathlib import Path

import typer

from ocd import distributed
from ocd.hypernet import regressor
from ocd.params import Params, load_params
from stages.common import on_processes
from stages.fitting import MODELS_OPTION, NO_DIAGNOSTICS, STORE_OPTION, Trainer, train_on_store
from stages.options import PARAMS_OPTION


def train_regressor(
    params: Path = PARAMS_OPTION,
    store: Path = STORE_OPTION,
    out: Path = MODELS_OPTION,
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Stage 4c: train the regressor on the store's train group (params: regressor, and the
    diffusion keys that shape its target: diffusion.target and the matrix target's padding).

    It answers "is diffusion needed at all?": its direction, sized by the scale
    model, is a row of every evaluation. The same fit rows as train-diffusion;
    regressor_metrics.json gives its held-out MSE and cosine to the true deltas.
    """
    p = load_params(params)
    on_processes(p, lambda group: _train_regressor(p, store, out, progress, group))


def _train_regressor(p: Params, store: Path, out: Path, progress: bool, group: distributed.Group) -> None:
    rp = p.regressor

    def train(model, fit, device, progress, group):
        return model, regressor.train(model, fit.reader, rp, p.compute, device, progress, group)

    def save(path, model, fit, diagnostics):
        regressor.save(path, model, fit.stats, {"provenance": fit.provenance, "params": p.section("regressor")})

    metrics = train_on_store(p, store, out, progress, group, Trainer(
        "regressor", rp.seed, lambda fit, compute: regressor.DeltaRegressor(fit.target, fit.stats, rp.hidden), train,
        lambda model, fit, device: {"regressor": regressor.diagnose(model, fit.held(), device)}, save))
    if metrics is not None:
        typer.echo(f"regressor: {metrics.get('regressor', NO_DIAGNOSTICS)}")
