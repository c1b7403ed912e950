"""What every stage shares: the params option. Outputs are written with
``ocd.artifacts`` (atomically: a killed stage leaves the old file or the new one)."""

from __future__ import annotations

import typer

from ocd.artifacts import write_bytes, write_csv, write_json, write_text  # noqa: F401  (the stages' writers)

PARAMS_OPTION = typer.Option("params.yaml", "--params", help="The params file to read.")
