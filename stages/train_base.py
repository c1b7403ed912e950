"""Stage 1, ``train_base``: train the base model f(x; theta) on the train split."""

from __future__ import annotations

from pathlib import Path

import typer

from ocd.data.registry import load_dataset
from ocd.device import Compute, configure_threads, runtime
from ocd.models import base
from ocd.models.registry import ModelSpec
from ocd.params import load_params
from stages.common import write_csv, write_json
from stages.options import PARAMS_OPTION


def train_base(
    params: Path = PARAMS_OPTION,
    out: Path = typer.Option(Path("artifacts/base"), help="Folder for model.pt, model.json, metrics.json, loss.csv."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Stage 1: train the base model on the train split (params: data, model, base).

    Writes the weights (model.pt), their spec, sha256 and provenance
    (model.json), train and test cross-entropy and accuracy (metrics.json,
    beside what the trivial predictor fitted on the train rows scores: the
    class frequencies, the mean) and the loss per epoch (loss.csv). A model
    that did not beat that predictor on its own train rows is refused.
    """
    configure_threads()
    p = load_params(params)
    compute = Compute.of(precision=None)
    data = load_dataset(p.data)
    task = data.make_task()
    spec = ModelSpec.from_params(p.model, data.in_shape, data.n_outputs, data.info)
    base.seed_everything(p.base.seed)
    model = spec.build()
    history = base.train(model, task, data.x_train, data.y_train, p.base, progress, compute)
    train_out = base.predict(model, data.x_train, compute=compute)
    base.check_learned(train_out, history, task, data.y_train, p.base)  # before anything is written
    metrics = {"train": task.metrics(train_out, data.y_train),
               "test": base.evaluate(model, task, *data.split("test"), compute)}
    if task.constant is not None:  # beside the model: what the best input-blind output scores on the same rows
        width = train_out.shape[-1]
        metrics["trivial"] = {split: task.metrics(base.constant_outputs(task, data.y_train, width, len(y)), y)
                              for split, y in (("train", data.y_train), ("test", data.split("test")[1]))}
    base.save(out, model, spec, data=p.section("data"), data_info=data.info, task=data.task,
              task_options=data.task_options, base=p.section("base"), runtime=runtime())
    write_json(out / "metrics.json", metrics)
    write_csv(out / "loss.csv", ({"epoch": i + 1, "loss": v} for i, v in enumerate(history)))
    typer.echo(f"base model: test {metrics['test']}")
