"""``ocd preset NAME``: the flags that apply a params preset with ``dvc exp run`` (not a DVC stage)."""

from __future__ import annotations

from pathlib import Path

import torch
import typer

from ocd import presets
from stages.options import PARAMS_OPTION


def preset(
    name: str = typer.Argument(..., help="The preset: paper (the paper as written) or project (our defaults)."),
    params: Path = PARAMS_OPTION,
) -> None:
    """Print `-S` flags that apply a preset: `.venv/bin/dvc exp run $(.venv/bin/ocd preset paper)`.

    The preset is checked against params.yaml first (a dry parse); a value
    this machine cannot run (the paper's GPU U-Net without CUDA) is replaced
    by its stand-in, and the replacement is said on stderr.
    """
    chosen, notes = presets.resolve(presets.load(name), cuda=torch.cuda.is_available())
    presets.apply(params, chosen)
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(" ".join(presets.flags(chosen)))
