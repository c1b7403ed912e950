"""Stage 3, ``overfit``: overfit every sample on the selected layer into the Zarr store."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import typer
from tqdm import tqdm

from ocd import distributed
from ocd.data.registry import load_dataset
from ocd.delta import BASIS_OF_OPTIMIZER, RHO, StoreError
from ocd.device import Compute, runtime
from ocd.models import base
from ocd.models.cut import activation_width, linear_cut
from ocd.overfit import code_digest, fill_store, pending_work
from ocd.params import load_params
from ocd.store import DeltaStore, Layout, chunk_rows, summarize
from stages.common import on_processes, write_json
from stages.options import BASE, PARAMS_OPTION, SCORES


def overfit(
    params: Path = PARAMS_OPTION,
    base_dir: Path = BASE.option(),
    scores: Path = SCORES.option(),
    layer: str = typer.Option("selected", help="Which layer of scores.json: selected or runner_up."),
    out: Path = typer.Option(Path("artifacts/deltas.zarr"), help="The Zarr store to write."),
    metrics: Path = typer.Option(Path("artifacts/overfit/metrics.json"),
                                 help="Summary figures of the store (DVC metrics)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Stage 3: overfit every train and test sample on one layer (params: overfit).

    Writes every delta, its scale rho and its conditioning I(x) to a Zarr
    store; resumes a killed run; rebuilds a store made by another base model,
    layer or params. `ocd inspect` summarises the result. With compute.nproc
    above 1, or run by torchrun, the store's chunks are dealt out to the
    processes; the store is the same.
    """
    p = load_params(params)
    on_processes(p, lambda group: _overfit(p, base_dir, scores, layer, out, metrics, progress, group))


def _overfit(p, base_dir: Path, scores: Path, layer: str, out: Path, metrics: Path, progress: bool,
             group: distributed.Group) -> None:
    compute = Compute.of(precision=None)
    model = base.load(base_dir, compute)
    if not scores.is_file():
        raise FileNotFoundError(f"{scores} does not exist; run the score_layers stage first")
    chosen = json.loads(scores.read_text())
    if chosen.get("base_sha256") != model.sha256:
        raise StoreError(f"{scores} was computed for another base model; rerun score_layers")
    if layer not in ("selected", "runner_up") or not chosen.get(layer):
        raise StoreError(f"--layer must be selected or runner_up, and {scores} must name it")
    name = chosen[layer]
    cut = linear_cut(model.model, name)
    data = load_dataset(p.data)
    task = data.make_task()

    with torch.no_grad():  # the conditioning's width of the output part, as the cut encodes it
        cond_outputs = cut.encode_output(torch.zeros(1, data.n_outputs, device=compute.device)).shape[1]
    layout = Layout(n={"train": len(data.y_train), "test": len(data.y_test)},
                    out_features=cut.layer.out_features, in_features=cut.layer.in_features,
                    n_outputs=cond_outputs, chunk=chunk_rows(len(data.y_train), p.overfit.batch_size),
                    dtype=p.overfit.dtype,
                    label_dtype=str(data.y_train.numpy().dtype), label_shape=tuple(data.y_train.shape[1:]),
                    rank1_basis=BASIS_OF_OPTIMIZER[p.overfit.optimizer], activation_width=activation_width(cut))
    # the weights' sha256 does not see how the conditioning pools (model.time_scales) or pictures the
    # output (model.spectrum_grid): the scales and the grid do
    fingerprint = {"base_sha256": model.sha256, "layer": name, "data": p.section("data"),
                   "overfit": p.section("overfit"), "n": layout.n, "code": code_digest(model.model, model.spec),
                   "scales": list(cut.scales), "output_grid": list(cut.output_grid)}
    attrs = {"layer": name, "weight_shape": list(cut.layer.weight.shape),
             # cond/output as a picture (channels, height, width), which diffusion.output_encoder conv reads
             "output_grid": list(cut.output_grid),
             "base_sha256": model.sha256, "base_model": model.spec.to_dict(),
             "dataset": data.name, "task": data.task, "overfit": p.section("overfit"),
             "rho": RHO[p.overfit.rho],
             "delta": "W' - W of the layer's weight, accumulated over the steps", "runtime": runtime()}
    # rank 0 makes, resumes or heals the store; then every rank reads the same
    # pending chunks before any is written, and computes and writes its share
    if group.main:
        store = DeltaStore.create_or_resume(out, layout, fingerprint, attrs, log=typer.echo)
    group.barrier()
    if not group.main:
        store = DeltaStore.attach(out, layout, fingerprint)
    splits = {s: data.split(s) for s in layout.n}
    work = pending_work(store, splits)
    group.barrier()
    mine = group.deal(work)

    def rows(split: str, c: int) -> int:
        return min(layout.chunk, layout.n[split] - c * layout.chunk)

    # the bar counts this rank's rows (all of them in one process) and the rows already done
    done = sum(layout.n.values()) - sum(rows(*w) for w in work)
    desc = f"overfit {name}" + (f" (rank 0 of {group.world})" if group.world > 1 else "")
    bar = tqdm(total=done + sum(rows(*w) for w in mine), initial=done, desc=desc, unit="sample",
               disable=not (progress and group.main))
    if group.world > 1:
        typer.echo(f"rank {group.rank} of {group.world}: {len(mine)} of {len(work)} pending chunks")
    fill_store(store, cut, task, splits, p.overfit.steps, p.overfit.optimizer, p.overfit.lr,
               p.overfit.rho, on_chunk=lambda split, rows: bar.update(rows), chunks=mine)
    bar.close()
    group.barrier()  # every share written
    if not group.main:
        return
    summary = summarize(out)["splits"]
    write_json(metrics, {split: {key: summary[split][key]["mean"]
                                 for key in ("rho", "loss_before", "loss_after", "rank1_share", "rank_one_share")}
                         for split in summary})
    typer.echo(f"wrote {out}: layer {name}, {layout.n['train']} train and {layout.n['test']} test deltas; "
               f"`ocd inspect {out}` summarises it")

