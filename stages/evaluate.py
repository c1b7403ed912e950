"""Stage 5, ``evaluate``: base vs OCD vs ablations vs ensembles on the test split."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import typer

from ocd import distributed, evaluation
from ocd.artifacts import CheckpointError, write_wav
from ocd.data.registry import load_dataset
from ocd.delta import COND, StoreError
from ocd.device import Compute
from ocd.models import base
from ocd.params import Params, load_params
from ocd.pipeline import load_trained
from ocd.store import open_store, split_chunks
from stages.common import on_processes, write_bytes, write_csv, write_json, write_text
from stages.options import BASE, MODELS, PARAMS_OPTION, STORE


def evaluate(
    params: Path = PARAMS_OPTION,
    base_dir: Path = BASE.option(),
    store: Path = STORE.option("The weight-delta store."),
    models: Path = MODELS.option(),
    ensemble: Path = typer.Option(Path("artifacts/ensemble"), help="Folder of the deep ensemble's other members."),
    out: Path = typer.Option(Path("artifacts/eval"), help="Folder for metrics.json, results.csv/md, plots."),
    progress: bool = typer.Option(True, help="Accepted as by every stage; evaluate trains nothing and shows no bar."),
) -> None:
    """Stage 5: the results table on the test split (params: data, evaluate). It trains nothing.

    With compute.nproc above 1, or run by torchrun, the test rows are shared
    out to the processes in blocks; rank 0 gathers the rows and writes the
    outputs, the same as one process writes.
    """
    p = load_params(params)
    # glibc as it is: keeping freed blocks (ocd.device.keep_freed_memory) held 11 GB more
    # at the peak of the SetFit evaluation (17.8 GB against 6.6 GB), in the same time
    on_processes(p, lambda group: _evaluate(p, params, base_dir, store, models, ensemble, out, group),
                 keep_freed=False)


def _evaluate(p: Params, params: Path, base_dir: Path, store: Path, models: Path, ensemble: Path, out: Path,
              group: distributed.Group) -> None:
    ep = p.evaluate
    compute = Compute.of(p.compute.precision)
    trained = load_trained(base_dir, models, compute)
    base_model = trained.base
    root = open_store(store)
    if root.attrs["base_sha256"] != base_model.sha256 or root.attrs["layer"] != trained.layer:
        raise StoreError(f"{store} was written for another base model or layer than {models}; "
                         "rerun the overfit and train_diffusion stages")

    recorded = root.attrs["fingerprint"].get("data")
    if recorded is not None and recorded != p.section("data"):
        changed = sorted(k for k in p.section("data") if recorded.get(k) != p.section("data")[k])
        raise StoreError(f"{params}'s data section differs from the one the base model and store were "
                         f"made with ({', '.join(f'data.{k}' for k in changed)}); rerun the earlier "
                         "stages (`dvc repro`)")
    extra = _deep_ensemble(ensemble, base_model, p.evaluate, compute) if group.main else []
    data = load_dataset(p.data)
    task = data.make_task()
    train, test = root["train"], root["test"]
    if not np.array_equal(test["index"][:], np.arange(len(data.y_test))):
        raise StoreError(f"{store}'s test rows do not follow the test split; rebuild it with the overfit stage")

    def tensor(arr):
        return torch.as_tensor(np.asarray(arr[:], dtype=np.float32))

    train_index = torch.as_tensor(train["index"][:])
    x_cal, y_cal, cal_own = data.x_cal, data.y_cal, None
    if x_cal is None:  # no calibration rows: the train rows the diffusion model held out stand in
        cal_own = held_out_rows(train, p.diffusion.holdout)
        if cal_own is not None:
            x_cal, y_cal = data.x_train[train_index[cal_own]], data.y_train[train_index[cal_own]]

    inputs = evaluation.EvalInputs(
        model=base_model.model.eval(), layer=root.attrs["layer"], task=task,
        x_test=data.x_test, y_test=data.y_test, x_train=data.x_train[train_index],
        # the deltas in the store's dtype (a float16 store's 2,000 SetFit deltas: 2.4 GB, not 4.7);
        # each block takes its rows to float32
        train_delta=torch.as_tensor(train["delta"][:]), train_parts=[tensor(train[n]) for n in COND],
        oracle_delta=test["delta"], diff=trained.diff, scaler=trained.scaler,  # read block by block
        mean_rho=trained.mean_rho, regressor=trained.regressor, x_cal=x_cal, y_cal=y_cal,
        cal_own=cal_own).to(compute.device)
    if group.world > 1:
        typer.echo(f"rank {group.rank} of {group.world}: its blocks of the test rows")
    with torch.no_grad():
        result = evaluation.evaluate(inputs, ep.k, ep.sample_steps, ep.eta, ep.seed, ep.tent_steps, ep.tent_lr,
                                     extra, group)
    if result is None:
        return  # rank 0 writes
    rows, plots, skipped = result
    if "chosen" in plots:  # `ocd predict` serves what it chose, for this base model only
        plots["chosen"]["base_sha256"] = base_model.sha256
    unlearned = evaluation.mark_unlearned(rows, trained.held_out)

    out.mkdir(parents=True, exist_ok=True)
    table = {r.name: {k: v for k, v in r.flat().items() if k not in ("row", "note")} for r in rows}
    write_json(out / "metrics.json", {**table, **({"skipped": skipped} if skipped else {}),
                                      **({"chosen": plots["chosen"]} if "chosen" in plots else {}),
                                      **({"denoiser": trained.held_out} if trained.held_out else {})})
    write_json(out / "summary.json", summary(rows, task, root.attrs["layer"], plots.get("chosen", {}).get("best")))
    write_csv(out / "results.csv", (r.flat() for r in rows))
    notes = "".join(f"\nSkipped: {name}: {why}.\n" for name, why in skipped.items())
    if unlearned:
        notes += f"\nThe OCD rows come from an {unlearned}: it did not beat the references.\n"
    for name, how in plots.get("chosen", {}).get("widened", {}).items():
        notes += f"\nStep size of {name}_lambda: {how}.\n"
    best = plots.get("chosen", {}).get("best")
    if best:
        chosen = plots["chosen"]
        notes += (f"\nBest row on the {chosen['rows']} {chosen['source']}: {best['row']} "
                  f"(mean loss {best['loss']:.4f}, the least of {len(chosen['served'])} rows); "
                  "`ocd predict` serves it.\n")
    write_text(out / "results.md", _markdown(rows) + notes)
    by_name = {r.name: r for r in rows}
    base_loss, ocd_loss = by_name["base"].per_sample_loss, by_name["ocd"].per_sample_loss
    write_csv(out / "per_sample_loss.csv",
              ({"index": i, "base": float(b), "ocd": float(o)} for i, (b, o) in enumerate(zip(base_loss, ocd_loss))))
    if "reliability" in plots:  # accuracy per confidence bin, one column per row (blank: empty bin)
        curves = plots["reliability"]
        write_csv(out / "reliability.csv", (
            {"bin_centre": bins[0]["bin_centre"],
             **{name: "" if b["accuracy"] is None else b["accuracy"] for name, b in zip(curves, bins)}}
            for bins in zip(*curves.values())))
    else:  # the output DVC expects, saying why it is empty
        write_csv(out / "reliability.csv", [{"bin_centre": "", "note": f"{task.name}: no confidence to bin"}])
    pictures = out / "pictures"
    pictures.mkdir(exist_ok=True)
    for stale in [*pictures.glob("*.png"), *pictures.glob("*.wav")]:  # an earlier run's
        stale.unlink()
    if "views" in plots:
        names = ", ".join(plots["views"])
        write_bytes(pictures / "views.png", _png(evaluation.views_figure(plots["views"])))
        note = f"views.png: a row per test sample, columns {names} (named on the picture)\n"
        if "signals" in plots:
            for name, signals in plots["signals"].items():
                for i, sample in enumerate(signals):
                    for c, channel in enumerate(sample):
                        write_wav(pictures / f"{i}_{name}_{c}.wav", channel.numpy(), plots["sample_rate"])
            note += ("I_NAME_C.wav: test sample I (a row of views.png), its input or the signals "
                     "of the truth and of each row, C the channel\n")
        write_text(pictures / "README.md", note)
    else:
        write_text(pictures / "README.md", f"No pictures: {task.name} outputs are not images.\n")
    norms = plots["rho"]
    write_csv(out / "delta_norm.csv",
              ({"oracle": float(t), "ocd": float(q)} for t, q in zip(norms["true"], norms["predicted"])))
    typer.echo(_markdown(rows) + notes)


def held_out_rows(split, holdout: float) -> torch.Tensor | None:
    """The rows of a finished store split that the fitting stages held out (``split_chunks``:
    whole trailing chunks), or None where none were."""
    n_chunks, rows = split["done"].shape[0], split["rho"].shape[0]
    if holdout <= 0 or n_chunks < 2:
        return None
    _, held = split_chunks(n_chunks, holdout)
    return torch.arange(held[0] * split["rho"].chunks[0], rows)


def _deep_ensemble(folder: Path, base_model: base.BaseModel, ep, compute: Compute) -> list[torch.nn.Module]:
    """The deep ensemble's other members from the train_ensemble stage, checked to be
    trained as the base model was (same spec, data and base params) and to be k - 1."""
    if not ep.deep_ensemble:
        return []
    members, record = base.load_ensemble(folder, compute)
    for key in ("spec", "data", "base"):
        mine = base_model.spec.to_dict() if key == "spec" else base_model.meta.get(key)
        if record.get(key) != mine:
            raise CheckpointError(f"{folder} was trained with other {key} than the base model in its folder; "
                                  "rerun train_ensemble and train_base (`dvc repro`)")
    if len(members) != ep.k - 1:
        raise CheckpointError(f"{folder} holds {len(members)} members besides the base model; evaluate.k = "
                              f"{ep.k} asks for {ep.k - 1}: rerun train_ensemble (`dvc repro`)")
    return members


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image  # only a rendering run writes pictures

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _markdown(rows) -> str:
    keys = [k for k in rows[0].metrics]
    lines = ["| row | " + " | ".join(keys) + " | cosine to oracle delta | scale error | ms/sample | note |",
             "|---" * (len(keys) + 5) + "|"]
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r.name} | " + " | ".join(fmt(r.metrics[k]) for k in keys)
                     + f" | {fmt(r.cosine)} | {fmt(r.scale_error)} | {fmt(r.ms_per_sample)} | {r.note} |")
    return "\n".join(lines) + "\n"


def summary(rows: list, task, layer: str, best: dict | None) -> dict:
    """What `dvc exp show` lists per experiment (the pipeline's one declared metrics file): the layer,
    and the base model's, OCD's and the best calibration row's test loss and quality (the task's
    headline metrics); every row's every metric stays in metrics.json."""
    by_name = {r.name: r for r in rows}

    def headline(name: str) -> dict:
        return {key: by_name[name].metrics[key] for key in task.headline if key in by_name[name].metrics}

    got = {"layer": layer, "base": headline("base"), "ocd": headline("ocd")}
    if best and best["row"] in by_name:
        got["best"] = {"row": best["row"], **headline(best["row"])}
    return got
