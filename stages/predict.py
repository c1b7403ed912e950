"""``ocd predict``: the trained pipeline applied to new inputs (not a DVC stage)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import typer

from ocd.params import load_params
from ocd.pipeline import load_trained, predict as ocd_predict
from ocd.tasks import get_task
from stages.common import PARAMS_OPTION


class InputError(ValueError):
    """New inputs cannot be read or do not fit the model; the message says why."""


def predict(
    inputs: Path = typer.Argument(..., help="A .npy file of raw inputs [N, ...], or a folder of PNG images."),
    params: Path = PARAMS_OPTION,
    base_dir: Path = typer.Option(Path("artifacts/base"), "--base", help="Folder of the base model."),
    models: Path = typer.Option(Path("artifacts/diffusion"), help="Folder of diffusion.pt, scale.pt and regressor.pt."),
) -> None:
    """Print the base model's and OCD's prediction for every input.

    Inputs are raw values as the dataset ships them (MNIST pixels 0..255;
    a PNG's 0..255 are mapped to the dataset's pixel range), scaled here the
    way the base model's training data was. OCD uses evaluate.k noises.
    """
    p = load_params(params)
    trained = load_trained(base_dir, models)
    info = trained.base.meta["data_info"]
    in_shape = tuple(trained.base.spec.in_shape)
    names, raw = read_inputs(inputs, in_shape, info["pixel_max"])
    x = torch.as_tensor(((raw / info["pixel_max"] - info["mean"]) / info["std"]).astype(np.float32))
    if "task" not in trained.base.meta:
        raise InputError(f"{base_dir}/model.json predates task records; rerun the train_base stage")
    task = get_task(trained.base.meta["task"], **trained.base.meta.get("task_options", {}))
    base_out, members = ocd_predict(trained, x, k=p.evaluate.k, steps=p.evaluate.sample_steps,
                                    eta=p.evaluate.eta, seed=p.evaluate.seed)
    ocd_out = task.ensemble(members)
    for name, b, o in zip(names, base_out, ocd_out):
        typer.echo(f"{name}\tbase: {task.describe(b)}\tOCD: {task.describe(o)}")


def read_inputs(path: Path, in_shape: tuple[int, ...], pixel_max: float) -> tuple[list[str], np.ndarray]:
    if path.is_dir():
        files = sorted(path.glob("*.png"))
        if not files:
            raise InputError(f"{path} holds no .png files")
        from PIL import Image

        images = [np.asarray(Image.open(f).convert("L"), dtype=np.float64) / 255.0 * pixel_max for f in files]
        names, raw = [f.name for f in files], np.stack(images)
    elif path.suffix == ".npy":
        raw = np.load(path).astype(np.float64)
        names = [f"{path.name}[{i}]" for i in range(len(raw))]
    else:
        raise InputError(f"{path}: expected a .npy file or a folder of PNG images")
    if raw.shape[1:] != in_shape and raw.shape[1:] == in_shape[1:] and in_shape[0] == 1:
        raw = raw[:, None]  # grey images without a channel axis
    if raw.shape[1:] != in_shape:
        raise InputError(f"{path}: inputs of shape {raw.shape[1:]}; the model takes {in_shape}")
    if not np.all(np.isfinite(raw)):
        raise InputError(f"{path}: inputs contain NaN or infinite values")
    return names, raw
