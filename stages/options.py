"""The options that name what a command reads, declared once: each stage takes its
options from here, and ``ocd`` checks the inputs a command needs before the stage's
module loads (``stages/cli.py``, :data:`NEEDS`), so a missing input is refused in a
fraction of a second, not after torch, Zarr and a family have loaded. The stages check
them again, with the same messages, for whoever calls them as functions.

This module imports no more than Typer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import typer

PARAMS_OPTION = typer.Option("params.yaml", "--params", help="The params file to read.")


@dataclass(frozen=True)
class Input:
    """A path a command reads: its option, its default, and what must be in it (each file
    within it, with the stage that writes it; none: the path itself, written by ``made_by``)."""

    flag: str
    default: str
    help: str
    files: dict[str, str] = field(default_factory=dict)
    made_by: str = ""

    def option(self, help: str | None = None):
        return typer.Option(Path(self.default), self.flag, help=help or self.help)

    def value(self, args: list[str]) -> str:
        """The path a command line gives it (``FLAG P`` or ``FLAG=P``; the last one wins), else its default."""
        found = self.default
        for i, word in enumerate(args):
            if word == self.flag and i + 1 < len(args):
                found = args[i + 1]
            elif word.startswith(self.flag + "="):
                found = word.split("=", 1)[1]
        return found

    def missing(self, args: list[str]) -> str | None:
        """What is missing, in the words the stage would use; None where nothing is."""
        path = Path(self.value(args))
        if not self.files:
            return None if path.exists() else f"{path} does not exist; run the {self.made_by} stage first"
        for name, stage in self.files.items():
            if not (path / name).is_file():
                return f"{path / name} is missing; run the {stage} stage first"
        return None


BASE = Input("--base", "artifacts/base", "Folder of the base model.",
             {"model.pt": "train_base", "model.json": "train_base"})
SCORES = Input("--scores", "artifacts/layers/scores.json", "The score_layers output.", made_by="score_layers")
STORE = Input("--store", "artifacts/deltas.zarr", "The weight-delta store (its train group).", made_by="overfit")
MODELS = Input("--models", "artifacts/diffusion", "Folder of diffusion.pt, scale.pt, regressor.pt.",
               {"diffusion.pt": "train_diffusion", "scale.pt": "train_scale", "regressor.pt": "train_regressor"})
# predict reads regressor.pt only for the regressor's rows
SERVED_MODELS = Input(MODELS.flag, MODELS.default, MODELS.help,
                      {"diffusion.pt": "train_diffusion", "scale.pt": "train_scale"})

# What each command needs, in the order its stage reads it (the first missing one is reported).
NEEDS = {
    "score-layers": (BASE,),
    "overfit": (BASE, SCORES),
    "train-diffusion": (STORE,),
    "train-scale": (STORE,),
    "train-regressor": (STORE,),
    "evaluate": (BASE, MODELS, STORE),
    "predict": (BASE, SERVED_MODELS),  # the store, evaluate's record and regressor.pt: for the rows that read them
}
