"""Stage 4b, ``train_scale``: the scale model rho(I(x))."""

from __future__ import annotations

from pathlib import Path

import typer

from ocd import distributed
from ocd.hypernet import scale
from ocd.params import Params, load_params
from stages.common import on_processes
from stages.fitting import MODELS_OPTION, NO_DIAGNOSTICS, STORE_OPTION, Trainer, train_on_store
from stages.options import PARAMS_OPTION


def train_scale(
    params: Path = PARAMS_OPTION,
    store: Path = STORE_OPTION,
    out: Path = MODELS_OPTION,
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Stage 4b: train the scale model on the store's train group (params: scale).

    The same fit rows as train-diffusion (diffusion.holdout); on the held-out
    rows, scale_metrics.json gives its median relative error beside the
    constant mean-rho predictor's. A rho below a thousandth of the median (a
    zero delta) is trained as that floor (ocd/hypernet/scale.py).
    """
    p = load_params(params)
    on_processes(p, lambda group: _train_scale(p, store, out, progress, group))


def _train_scale(p: Params, store: Path, out: Path, progress: bool, group: distributed.Group) -> None:
    sp = p.scale

    def train(model, fit, device, progress, group):
        return model, scale.train(model, fit.reader, sp, p.compute, device, progress, group, floor=fit.rho_floor)

    def save(path, model, fit, diagnostics):
        scale.save(path, model, fit.stats, sp.hidden,
                   {"provenance": fit.provenance, "params": p.section("scale"), "rho_floor": fit.rho_floor})

    metrics = train_on_store(p, store, out, progress, group, Trainer(
        "scale", sp.seed, lambda fit, compute: scale.ScaleModel(fit.stats, sp.hidden, fit.train_mean), train,
        lambda model, fit, device: {"scale": scale.diagnose(model, fit.held(), fit.train_mean, device,
                                                            fit.rho_floor)},
        save, neighbours=False))
    if metrics is not None:
        typer.echo(f"scale: {metrics.get('scale', NO_DIAGNOSTICS)}")
