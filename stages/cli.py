"""The ``ocd`` command: one subcommand per pipeline stage, in pipeline order."""

from __future__ import annotations

import errno
import functools
import importlib
import logging
import os

import typer
from typer.core import TyperGroup

from ocd.errors import USER_ERRORS as INPUT_ERRORS

# The commands, in pipeline order: name -> (the module of stages/ and its function, both so named; the
# line `ocd --help` shows). Each module is imported only when its command runs (or shows its own --help), so `ocd --help`
# and a refusal start without importing torch and every family of every stage.
COMMANDS = {
    "train-base": ("train_base", "Stage 1: train the base model on the train split."),
    "score-layers": ("score_layers", "Stage 2: score every weight layer by the entropy of its loss under "
                                     "perturbation; select one."),
    "overfit": ("overfit", "Stage 3: overfit every train and test sample on one layer, into a Zarr store."),
    "train-ensemble": ("train_ensemble", "The deep ensemble's other base models (evaluate.k - 1 seeds)."),
    "train-diffusion": ("train_diffusion", "Stage 4: train the conditional diffusion model on the store."),
    "train-scale": ("train_scale", "Stage 4: train the scale model rho(I(x)) on the store."),
    "train-regressor": ("train_regressor", "Stage 4: train the regressor (no diffusion) on the store."),
    "evaluate": ("evaluate", "Stage 5: base vs OCD vs ablations vs ensembles on the test split."),
    "inspect": ("inspect", "Summarise a weight-delta store; --verify reads every chunk."),
    "predict": ("predict", "Predict new inputs with the row the calibration rows chose best."),
    "preset": ("preset", "Print a params preset's `dvc exp run` flags."),
}
# Commands that read no params file (the others check theirs before their stage loads: preflight).
NO_PARAMS = {"inspect"}
# Stages that run on several processes (under torchrun) rather than refusing it.
MANY_PROCESSES = {"score-layers", "overfit", "train-diffusion", "train-scale", "train-regressor", "evaluate"}


class LazyGroup(TyperGroup):
    """The ``ocd`` group, building a command only when it is asked for."""

    def resolve_command(self, ctx, args):
        if args and args[0] in COMMANDS:
            preflight(args[0], args[1:])
        return super().resolve_command(ctx, args)

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, _ = COMMANDS[name]
        fn = getattr(importlib.import_module(f"stages.{module}"), module)
        one = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        one.command(name)(_stage(fn, many_processes=name in MANY_PROCESSES))
        return typer.main.get_command(one)

    def format_help(self, ctx, formatter):
        # the plain help: Typer's rich help builds every command to show its first line
        super(TyperGroup, self).format_help(ctx, formatter)

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_line) for name, (_, help_line) in COMMANDS.items()])


def params_argument(args: list[str]) -> str | None:
    """The params file a command line names (``--params P``, ``--params=P``; else params.yaml),
    or None where it asks for help."""
    from stages.options import Input

    return None if "--help" in args else Input("--params", "params.yaml", "").value(args)


def preflight(name: str, args: list[str]) -> None:
    """Refuse malformed params, a dataset or model no registry names, or a missing input
    (stages/options.py, NEEDS), in one line and before the stage's module imports torch:
    a mistake costs a fraction of a second, not the seconds torch, Zarr and a family take
    to import. The stage parses the same file again, with the same function, for its work,
    and checks its inputs again. A rank of a many-process run leaves it to its stage,
    which reports an error once for all ranks."""
    from ocd.errors import DataError, ModelError, ParamsError
    from stages.options import NEEDS

    path = params_argument(args)
    if path is None or name in NO_PARAMS or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    from ocd.data.registry import find_loader
    from ocd.models.registry import architecture
    from ocd.params import load_params

    try:
        p = load_params(path)
        find_loader(p.data.name)
        architecture(p.model.name)
    except (DataError, ModelError, ParamsError) as exc:
        _refuse(str(exc))
    for needed in NEEDS.get(name, ()):
        missing = needed.missing(args)
        if missing:
            _refuse(missing)


def _refuse(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise SystemExit(2)


app = typer.Typer(
    cls=LazyGroup,
    help="OCD: learning to overfit with conditional diffusion models. "
    "Each command is one DVC stage; `dvc repro` runs them in order.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Errors about the user's input: a one-line message and exit code 2, no traceback.
# FloatingPointError: a training whose loss stopped being finite (too high a learning rate).
USER_ERRORS = (*INPUT_ERRORS, FileNotFoundError, FloatingPointError)
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
        from ocd.launch import launched, report_user_error

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


if __name__ == "__main__":
    app()
