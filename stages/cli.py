"""The ``ocd`` command: one subcommand per pipeline stage, in pipeline order."""

from __future__ import annotations

import errno
import functools
import logging

import typer

from ocd.artifacts import CheckpointError
from ocd.data.core import DataError
from ocd.delta import StoreError
from ocd.distributed import launched, report_user_error
from ocd.layers import ScoreError
from ocd.models.cut import ModelError
from ocd.params import ParamsError
from stages.evaluate import evaluate
from stages.inspect import inspect
from stages.overfit import overfit
from stages.predict import InputError, predict
from stages.preset import preset
from stages.score_layers import score_layers
from stages.train_base import train_base
from stages.train_diffusion import train_diffusion
from stages.train_ensemble import train_ensemble
from stages.train_regressor import train_regressor
from stages.train_scale import train_scale

app = typer.Typer(
    help="OCD: learning to overfit with conditional diffusion models. "
    "Each command is one DVC stage; `dvc repro` runs them in order.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Errors about the user's input: a one-line message and exit code 2, no traceback.
# FloatingPointError: a training whose loss stopped being finite (too high a learning rate).
USER_ERRORS = (ParamsError, CheckpointError, DataError, ModelError, ScoreError, StoreError, InputError,
               FileNotFoundError, FloatingPointError)
# The machine, not the input: a full disk or quota. One line and exit code 1.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# A path the user chose that cannot be written: a read-only file system, no permission. One line, exit code 2.
NOT_WRITABLE = (errno.EROFS, errno.EACCES)


def _os_error(exc: BaseException, codes: tuple[int, ...]) -> OSError | None:
    """The OSError with one of ``codes`` behind ``exc`` (itself, or its cause), if any."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in codes:
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


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
            _quiet_on_exit()
            if not report_user_error(f"error: {exc}"):  # a rank leaves it to its launcher
                typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except Exception as exc:
            full, locked = _os_error(exc, DISK_FULL), _os_error(exc, NOT_WRITABLE)
            if full is not None:
                where = f" writing {full.filename}" if full.filename else ""
                message = (f"error: the disk is full{where} ({full.strerror}); free some space and run it again: "
                           "every file already written is whole, and a store's finished chunks are kept")
                code = 1
            elif locked is not None:
                where = f" {locked.filename}" if locked.filename else " an output"
                message = (f"error: cannot write{where} ({locked.strerror}): choose an --out you can write, "
                           "or make it writable; every file already written is whole")
                code = 2
            else:
                raise
            _quiet_on_exit()
            if not report_user_error(message):
                typer.echo(message, err=True)
            raise typer.Exit(code) from None

    return run


def _quiet_on_exit() -> None:
    """A stage stopped by an error may leave Zarr's reads pending on its event
    loop; Python then logs "Task was destroyed but it is pending!" for each at
    exit, 40 lines after the one line that matters."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


@app.callback()
def main() -> None:
    """Keeps `ocd` a group of subcommands even while it has few of them."""


app.command("train-base")(_stage(train_base))
app.command("score-layers")(_stage(score_layers, many_processes=True))
app.command("overfit")(_stage(overfit, many_processes=True))
app.command("train-ensemble")(_stage(train_ensemble))
app.command("train-diffusion")(_stage(train_diffusion, many_processes=True))
app.command("train-scale")(_stage(train_scale, many_processes=True))
app.command("train-regressor")(_stage(train_regressor, many_processes=True))
app.command("evaluate")(_stage(evaluate, many_processes=True))
app.command("inspect")(_stage(inspect))
app.command("predict")(_stage(predict))
app.command("preset")(_stage(preset))


if __name__ == "__main__":
    app()
