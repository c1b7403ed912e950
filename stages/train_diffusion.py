"""Stage 4, ``train_diffusion``: the conditional diffusion model and the scale model."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import typer

from ocd import diffusion, distributed, regressor, scale
from ocd.device import get_device, runtime, use_precision
from ocd.params import Params, load_params, training_steps
from ocd.store import COND, ChunkReader, open_store, split_chunks
from stages.common import PARAMS_OPTION, on_processes, write_csv, write_json


def train_diffusion(
    params: Path = PARAMS_OPTION,
    store: Path = typer.Option(Path("artifacts/deltas.zarr"), help="The weight-delta store (its train group)."),
    out: Path = typer.Option(Path("artifacts/diffusion"), help="Folder for the checkpoints, metrics and loss curve."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Stage 4: train the diffusion, scale and regressor models on the store's train group
    (params: diffusion, scale, regressor).

    A trailing slice of the train group's chunks is held out for the
    diagnostics in metrics.json: denoising loss, the cosine between deltas
    sampled from pure noise and the true ones (the regressor's beside it),
    and the scale model's median relative error beside the constant
    mean-rho predictor's. With diffusion.holdout 0 (a few-shot store) every
    train row fits the models and there are no diagnostics.

    With compute.nproc above 1, or run by torchrun, the three models train
    with DistributedDataParallel: every rank takes its share of each global
    minibatch (the batch sizes in params.yaml are global), and rank 0 writes
    the outputs.
    """
    p = load_params(params)
    on_processes(p, lambda group: _train_diffusion(p, store, out, progress, group))


def holdout_note(holdout: float, rows: int, fit_rows: int, held_chunks: int) -> str:
    """What diffusion.holdout held out: whole store chunks, so its share can be far from the one asked."""
    if not held_chunks:
        return f"every one of the {rows} train rows fits the models (diffusion.holdout 0: no diagnostics)"
    held = rows - fit_rows
    note = (f"held out for the diagnostics: the last {held_chunks} store chunk(s), {held} of {rows} train rows "
            f"({held / rows:.0%}); the models fit {fit_rows}")
    if abs(held / rows - holdout) > 0.5 * holdout:
        note += (f". diffusion.holdout asks {holdout:.0%}, but rows are held out in whole chunks of "
                 "overfit.batch_size rows: a smaller overfit.batch_size splits finer")
    return note


def _train_diffusion(p: Params, store: Path, out: Path, progress: bool, group: distributed.Group) -> None:
    dp, sp, rp = p.diffusion, p.scale, p.regressor
    device = get_device()
    use_precision(p.compute.precision)
    root = open_store(store)
    train = root["train"]  # never the test group: that is the oracle's alone
    weight_shape = tuple(root.attrs["weight_shape"])
    if dp.target == "rank1":
        diffusion.require_rank1(weight_shape, train["cond/layer_input"].shape[1])
    fit_chunks, held_chunks = split_chunks(train["done"].shape[0], dp.holdout)
    reader = ChunkReader(train, diffusion.reader_names(dp.target), fit_chunks, ram_mb=dp.ram_mb)
    if group.main:
        typer.echo(holdout_note(dp.holdout, train["rho"].shape[0], reader.rows, len(held_chunks)))
    stats = diffusion.cond_stats(reader)
    # before any training: a store whose every delta is zero has no scale to learn, and says so now
    fit_rho = scale.rhos(reader)
    train_mean, floor = float(fit_rho.mean()), scale.rho_floor(fit_rho)
    provenance = {"base_sha256": root.attrs["base_sha256"], "layer": root.attrs["layer"],
                  "store_fingerprint": root.attrs["fingerprint"], "rho": root.attrs["overfit"]["rho"], "runtime": runtime(),
                  "compute": {k: v for k, v in p.section("compute").items() if k != "nproc"}}

    meta = diffusion.make_meta(dp.preset, weight_shape, dp.square, dp.pad, dp.prediction,
                               provenance["rho"], dp.schedule, dp.T, dp.target, root.attrs["rank1_basis"])
    torch.manual_seed(dp.seed)
    model = diffusion.build(meta, stats)
    model.precision = p.compute.precision
    start = time.perf_counter()
    steps = {name: training_steps(q.steps, q.epochs, reader.rows, q.batch_size)
             for name, q in (("diffusion", dp), ("scale", sp), ("regressor", rp))}
    if group.world > 1:
        typer.echo(f"rank {group.rank} of {group.world}: its share of every minibatch")
    ema, history = diffusion.train(model, reader, steps["diffusion"], dp.batch_size, dp.lr, dp.ema, dp.grad_clip,
                                   dp.seed, device, progress, compile=p.compute.compile, graphs=p.compute.graphs,
                                   group=group)
    diffusion_seconds = time.perf_counter() - start

    torch.manual_seed(sp.seed)
    scaler = scale.ScaleModel(stats, sp.hidden, train_mean)
    start = time.perf_counter()
    scale_history = scale.train(scaler, reader, steps["scale"], sp.batch_size, sp.lr, sp.seed, device, progress,
                                loss=sp.loss, graphs=p.compute.graphs, group=group, floor=floor)
    scale_seconds = time.perf_counter() - start

    torch.manual_seed(rp.seed)
    reg = regressor.DeltaRegressor(meta, stats, rp.hidden)
    start = time.perf_counter()
    reg_history = regressor.train(reg, reader, steps["regressor"], rp.batch_size, rp.lr, rp.seed, device, progress,
                                  graphs=p.compute.graphs, group=group)
    regressor_seconds = time.perf_counter() - start
    if not group.main:
        return  # every rank holds the same models: rank 0 writes them
    out.mkdir(parents=True, exist_ok=True)
    diffusion.save(out / "diffusion.pt", ema, stats, {"provenance": provenance, "params": p.section("diffusion")})
    scale.save(out / "scale.pt", scaler, stats, sp.hidden, {"provenance": provenance, "params": p.section("scale"),
                                                           "rho_floor": floor})
    regressor.save(out / "regressor.pt", reg, stats, {"provenance": provenance, "params": p.section("regressor")})
    if held_chunks:
        held = ChunkReader(train, ("delta", "u", "rank1_share", "rho", *COND), held_chunks,
                           ram_mb=dp.ram_mb).read(held_chunks)
        diagnostics = {
            "diffusion": diffusion.diagnose(ema, held, dp.sample_steps, dp.eta, dp.seed, dp.diag_samples, device),
            "regressor": regressor.diagnose(reg, held, device),
            "scale": scale.diagnose(scaler, held, train_mean, device, floor),
            # the best cosine a rank1 target can reach: sqrt of the share u i_L^T explains
            "rank1_ceiling_cosine": float(np.mean(np.sqrt(held["rank1_share"]))),
        }
    else:
        diagnostics = {"diagnostics": "none: diffusion.holdout is 0, every train row fits the models"}
    metrics = {
        **diagnostics,
        "rows": {"fit": reader.rows, "held_out": len(held["rho"]) if held_chunks else 0},
        "steps": steps,
        "seconds": {"diffusion": round(diffusion_seconds, 1), "scale": round(scale_seconds, 1),
                    "regressor": round(regressor_seconds, 1)},
    }
    write_json(out / "metrics.json", metrics)
    write_csv(out / "loss.csv", ({"step": s, "loss": v} for s, v in history))
    write_csv(out / "scale_loss.csv", ({"step": s, "loss": v} for s, v in scale_history))
    write_csv(out / "regressor_loss.csv", ({"step": s, "loss": v} for s, v in reg_history))
    typer.echo("\n".join(f"{key}: {metrics[key]}" for key in ("diffusion", "regressor", "scale", "diagnostics")
                          if key in metrics))
