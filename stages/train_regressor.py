"""Stage 4c, ``train_regressor``: the no-diffusion baseline, an MLP from I(x) to the delta's direction."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import typer

from ocd import distributed
from ocd.device import get_device, use_precision
from ocd.fitting import open_fit
from ocd.hypernet import regressor
from ocd.params import Params, load_params
from stages.common import PARAMS_OPTION, on_processes
from stages.fitting import MODELS_OPTION, NO_DIAGNOSTICS, STORE_OPTION, write_fit


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
    device = get_device()
    use_precision(p.compute.precision)
    fit = open_fit(p, store)
    if group.main:
        typer.echo(fit.note)
    torch.manual_seed(rp.seed)
    model = regressor.DeltaRegressor(fit.target, fit.stats, rp.hidden)
    start = time.perf_counter()
    history = regressor.train(model, fit.reader, rp, p.compute, device, progress, group)
    seconds = time.perf_counter() - start
    if not group.main:
        return
    out.mkdir(parents=True, exist_ok=True)
    regressor.save(out / "regressor.pt", model, fit.stats, {"provenance": fit.provenance,
                                                           "params": p.section("regressor")})
    diagnostics = ({"regressor": regressor.diagnose(model, fit.held(), device)}
                   if fit.held_chunks else {"diagnostics": NO_DIAGNOSTICS})
    metrics = write_fit(out, "regressor", diagnostics, history, seconds)
    typer.echo(f"regressor: {metrics.get('regressor', NO_DIAGNOSTICS)}")
