"""The ``ocd`` command: one subcommand per pipeline stage, in pipeline order."""

from __future__ import annotations

import functools

import typer

from ocd.artifacts import CheckpointError
from ocd.data import DataError
from ocd.distributed import launched
from ocd.layers import ScoreError
from ocd.models import ModelError
from ocd.params import ParamsError
from ocd.store import StoreError
from stages.evaluate import evaluate
from stages.inspect import inspect
from stages.overfit import overfit
from stages.predict import InputError, predict
from stages.preset import preset
from stages.score_layers import score_layers
from stages.train_base import train_base
from stages.train_diffusion import train_diffusion

app = typer.Typer(
    help="OCD: learning to overfit with conditional diffusion models. "
    "Each command is one DVC stage; `dvc repro` runs them in order.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Errors about the user's input: a one-line message and exit code 2, no traceback.
USER_ERRORS = (ParamsError, CheckpointError, DataError, ModelError, ScoreError, StoreError, InputError, FileNotFoundError)


def _stage(fn, many_processes: bool = False):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        if launched() and not many_processes:
            # every process would write the same artifacts at once
            typer.echo(f"error: `ocd {fn.__name__.replace('_', '-')}` runs in one process; run it without "
                       "torchrun (score-layers, overfit, train-diffusion and evaluate run on many: README, "
                       "\"Many processes\")", err=True)
            raise typer.Exit(2)
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return run


@app.callback()
def main() -> None:
    """Keeps `ocd` a group of subcommands even while it has few of them."""


app.command("train-base")(_stage(train_base))
app.command("score-layers")(_stage(score_layers, many_processes=True))
app.command("overfit")(_stage(overfit, many_processes=True))
app.command("train-diffusion")(_stage(train_diffusion, many_processes=True))
app.command("evaluate")(_stage(evaluate, many_processes=True))
app.command("inspect")(_stage(inspect))
app.command("predict")(_stage(predict))
app.command("preset")(_stage(preset))


if __name__ == "__main__":
    app()
