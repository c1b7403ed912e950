"""Stage 4a, ``train_diffusion``: the conditional diffusion model (the denoiser)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from ocd import distributed
from ocd.hypernet import diffusion
from ocd.params import Params, load_params
from stages.common import on_processes
from stages.fitting import MODELS_OPTION, STORE_OPTION, Trainer, train_on_store
from stages.options import PARAMS_OPTION


def train_diffusion(
    params: Path = PARAMS_OPTION,
    store: Path = STORE_OPTION,
    out: Path = MODELS_OPTION,
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Stage 4a: train the conditional diffusion model on the store's train group (params: diffusion).

    A trailing slice of the train group's chunks is held out for the
    diagnostics in metrics.json: the denoising loss, and the cosine between
    deltas sampled from pure noise and the true ones. With diffusion.holdout 0
    (a few-shot store) every train row fits the model and there are no
    diagnostics. The scale model and the regressor train in stages of their own
    (train-scale, train-regressor), on the same rows.

    With compute.nproc above 1, or run by torchrun, the model trains with
    DistributedDataParallel: every rank takes its share of each global
    minibatch (the batch sizes in params.yaml are global), and rank 0 writes
    the outputs.
    """
    p = load_params(params)
    on_processes(p, lambda group: _train_diffusion(p, store, out, progress, group))


def _train_diffusion(p: Params, store: Path, out: Path, progress: bool, group: distributed.Group) -> None:
    dp = p.diffusion

    def build(fit, compute):
        return diffusion.build(diffusion.meta_of(fit.target, dp, fit.output_grid), fit.stats, compute.precision)

    def diagnose(ema, fit, device):
        held = fit.held()
        return {
            "diffusion": diffusion.diagnose(ema, held, dp.sample_steps, dp.eta, dp.seed, dp.diag_samples, device),
            # the best cosine a rank1 target can reach: sqrt of the share u i_L^T explains
            "rank1_ceiling_cosine": float(np.mean(np.sqrt(held["rank1_share"]))),
        }

    def save(path, ema, fit, diagnostics):
        # what the held-out rows said of it travels with the model: evaluate marks the OCD rows of a
        # denoiser that did not learn
        diffusion.save(path, ema, fit.stats, {"provenance": fit.provenance, "params": p.section("diffusion"),
                                              "held_out": _learned(diagnostics)})

    metrics = train_on_store(p, store, out, progress, group, Trainer(
        "diffusion", dp.seed, build,
        lambda model, fit, device, progress, group: diffusion.train(model, fit.reader, dp, p.compute, device,
                                                                    progress, group),
        diagnose, save, record=lambda fit: {"rows": {"fit": fit.reader.rows,
                                                     "held_out": fit.train["rho"].shape[0] - fit.reader.rows}},
        metrics_name="metrics.json", loss_name="loss.csv"))
    if metrics is None:
        return
    typer.echo("\n".join(f"{key}: {metrics[key]}" for key in ("diffusion", "diagnostics") if key in metrics))
    learned = _learned(metrics)
    if learned and not learned["learned"]:
        typer.echo(diffusion.not_learned_warning(learned, dp.prediction), err=True)


def _learned(diagnostics: dict) -> dict:
    """The held-out denoising figures that say whether the denoiser learned (empty: none held out)."""
    return {k: v for k, v in diagnostics.get("diffusion", {}).items() if k.startswith(("denoise_", "learned"))}
