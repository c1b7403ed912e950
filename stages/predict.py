"""``ocd predict``: the trained pipeline applied to new inputs (not a DVC stage)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import typer

from ocd.delta import COND, StoreError
from ocd.device import Compute
from ocd.errors import InputError
from ocd.hypernet.neighbours import Retriever
from ocd.hypernet.targets import retriever_of
from ocd.inputs import read_images, read_table
from ocd.params import load_params
from ocd.pipeline import SERVABLE, Pool, load_trained, missing_model, serve
from ocd.store import open_store
from ocd.tasks import get_task
from stages.options import BASE, MODELS, PARAMS_OPTION, STORE




def predict(
    inputs: Path = typer.Argument(..., help="A .npy file of raw inputs [N, ...], a folder of PNG images, "
                                  "for a text model (setfit) a text file, one sentence per line, or for the "
                                  "separators (mulcat, convtasnet) a mono .wav mixture."),
    params: Path = PARAMS_OPTION,
    base_dir: Path = BASE.option(),
    models: Path = MODELS.option(),
    store: Path = STORE.option("The weight-delta store: read only by the knn rows and by models trained with "
                               "diffusion.neighbours > 0 (they retrieve from its train rows)."),
    row: str = typer.Option("best", help="The row to serve: best (the row of least loss on the calibration rows, "
                            f"as evaluate recorded it) or one of {', '.join(SERVABLE)}."),
    chosen: Path = typer.Option(Path("artifacts/eval/metrics.json"), help="evaluate's metrics: what the "
                                "calibration rows chose (the best row, its step size, temperature, retrieval)."),
) -> None:
    """Print the base model's prediction and the served row's for every input.

    By default the served row is the one evaluate found best on the
    calibration rows (never test): OCD, a stepped or tempered row, knn or the
    base model itself; --row names another. Inputs are raw values as the
    dataset ships them (MNIST pixels 0..255; a PNG's 0..255 are mapped to
    the dataset's pixel range), scaled here the way the base model's
    training data was; a text model reads sentences, one per line, tokenised
    as its training data; the separator reads a WAV file and writes the
    separated signals beside it (NAME_separated/). ocd_ensemble uses
    evaluate.k noises.
    """
    p = load_params(params)
    trained = load_trained(base_dir, models, Compute.of(p.compute.precision), with_regressor=False)
    # what the calibration rows chose: read only for a row that needs it (the base row, OCD, its
    # ensemble and the regressor need nothing)
    record = _chosen(chosen, trained) if row not in ("base", "ocd", "ocd_ensemble", "regressor") else {}
    if row == "best":
        if "best" not in record:
            raise InputError(f"{chosen} records no best row (evaluate chooses it on the calibration rows: "
                             f"`dvc repro`); or pass --row, one of {', '.join(SERVABLE)}")
        row = record["best"]["row"]
        why = (f"serving {row}: the least mean loss ({record['best']['loss']:.4g}) on the {record['rows']} "
               f"{record['source']} (--row serves another)")
    else:
        why = None
    if row not in SERVABLE:
        raise InputError(f"--row {row}: not a row ocd predict serves; valid: best, {', '.join(SERVABLE)}")
    if row.startswith("regressor") and trained.regressor is None:
        raise missing_model(models, "regressor.pt")
    family = row.split("_")[0]
    need = {"step size": (row.endswith("_lambda") or row == "knn_temperature")
            and family not in record.get("lambda", {}),
            "temperature": row.endswith("temperature") and row not in record.get("temperature", {}),
            "retrieval": family == "knn" and "knn" not in record}
    missing = [what for what, lacking in need.items() if lacking]
    if missing:
        raise InputError(f"{chosen} records no {' or '.join(missing)} for the {row} row (the calibration rows "
                         "choose it): run evaluate (`dvc repro`), or pass another --row")
    if trained.diff.meta.neighbours and row.startswith(("ocd", "regressor")):
        trained.retriever = _train_rows(store, trained)
    if "task" not in trained.base.meta:
        raise InputError(f"{base_dir}/model.json predates task records; rerun the train_base stage")
    info = trained.base.meta["data_info"]
    own = getattr(trained.base.model, "read_inputs", None)
    if callable(own):  # a model family with its own inputs (SetFit: a text file of sentences)
        try:
            names, x = own(inputs)
        except (ValueError, OSError) as exc:
            raise InputError(str(exc)) from None
    else:
        names, x = _image_inputs(inputs, trained, info)
    task = get_task(trained.base.meta["task"], **trained.base.meta.get("task_options", {}))
    pool = _pool(store, trained, record, p) if row.startswith("knn") else None
    if why:  # once the inputs are read: a refused input is one line
        typer.echo(why, err=True)
    base_out, ocd_out = serve(trained, task, x, row, record, pool, k=p.evaluate.k, steps=p.evaluate.sample_steps,
                              eta=p.evaluate.eta, seed=p.evaluate.seed)
    writer = getattr(trained.base.model, "write_predictions", None)
    if callable(writer):  # a model family whose predictions are files (the separator: WAVs)
        bad = [n for n, b, o in zip(names, base_out, ocd_out)
               if not (torch.isfinite(b).all() and torch.isfinite(o).all())]
        if bad:
            raise InputError(f"{inputs}: {len(bad)} of {len(names)} windows gave non-finite outputs ({bad[0]}, ...)")
        for line in writer(base_out, ocd_out, row):
            typer.echo(line)
        return
    failed = 0
    for name, b, o in zip(names, base_out, ocd_out):
        if not (torch.isfinite(b).all() and torch.isfinite(o).all()):
            failed += 1
            typer.echo(f"{name}\tno prediction: the model's output is not finite", err=True)
            continue
        typer.echo(f"{name}\tbase: {task.describe(b)}" + (f"\t{row}: {task.describe(o)}" if row != "base" else ""))
    if failed:
        raise InputError(f"{inputs}: {failed} of {len(names)} inputs gave non-finite outputs")


def _chosen(path: Path, trained) -> dict:
    """evaluate's record of what the calibration rows chose, checked to be for this base model
    ({} where evaluate has not run: the rows that need it are then refused by name)."""
    import json

    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text()).get("chosen") or {}
    except (ValueError, AttributeError):
        raise InputError(f"{path}: not evaluate's metrics (unreadable JSON); "
                         "rerun evaluate (`dvc repro`)") from None
    if record.get("base_sha256", trained.base.sha256) != trained.base.sha256:
        raise InputError(f"{path} was written for another base model; rerun evaluate (`dvc repro`)")
    return record


def _checked_store(store: Path, trained):
    """The store, checked to be written for the trained models' base model and layer."""
    root = open_store(store)  # names a missing or damaged store in one line
    if root.attrs["base_sha256"] != trained.base.sha256 or root.attrs["layer"] != trained.layer:
        raise StoreError(f"{store} was written for another base model or layer than the trained models; "
                         "rerun the pipeline (`dvc repro`)")
    return root


def _cond_parts(train) -> list[torch.Tensor]:
    return [torch.as_tensor(np.asarray(train[n][:], dtype=np.float32)) for n in COND]


def _pool(store: Path, trained, record: dict, p) -> Pool:
    """The store's train rows, which the knn rows retrieve from (and their inputs, for input space)."""
    root = _checked_store(store, trained)
    train = root["train"]
    features = None
    if record["knn"]["space"] == "input":  # the train rows' inputs: the data the store was made from
        from ocd.data.registry import load_dataset

        recorded = root.attrs["fingerprint"].get("data")
        if recorded is not None and recorded != p.section("data"):
            raise StoreError(f"{store} was made from other data params than params.yaml's; the knn row "
                             "retrieves train inputs by their rows: rerun the pipeline (`dvc repro`)")
        features = load_dataset(p.data).x_train[torch.as_tensor(train["index"][:])]
    return Pool(torch.as_tensor(train["delta"][:]), _cond_parts(train), features)


def _train_rows(store: Path, trained) -> Retriever:
    """The store's train rows, which a generator trained with diffusion.neighbours retrieves from."""
    train = _checked_store(store, trained)["train"]
    return retriever_of(trained.diff.meta, _cond_parts(train), train["delta"])


def _image_inputs(inputs: Path, trained, info: dict) -> tuple[list[str], torch.Tensor]:
    """Images (a .npy file or a folder of PNGs), scaled as the base model's training data;
    or a table's raw features (a .npy file), transformed as its training data."""
    if "feature_transform" in info:
        return _table_inputs(inputs, trained, info)
    if "pixel_max" not in info:
        raise InputError(f"ocd predict reads images or tables; the base model was trained on "
                         f"{trained.base.meta.get('data', {}).get('name')!r}, whose inputs are neither "
                         "(a scene's inputs are camera poses), or its model.json predates the saved feature "
                         "transform (rerun train_base)")
    names, raw = read_images(inputs, tuple(trained.base.spec.in_shape), info["pixel_max"])
    return names, torch.as_tensor(((raw / info["pixel_max"] - info["mean"]) / info["std"]).astype(np.float32))


def _table_inputs(inputs: Path, trained, info: dict) -> tuple[list[str], torch.Tensor]:
    """Raw feature rows [N, F] from a .npy file (blank values as NaN take the train medians)."""
    from ocd.data.core import feature_transform

    names, raw = read_table(inputs, trained.base.spec.in_shape[0])
    return names, feature_transform(info["feature_transform"])(raw)
