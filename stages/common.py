"""What every stage shares: running on one or many processes. Outputs are written with
``ocd.artifacts`` (atomically: a killed stage leaves the old file or the new one)."""

from __future__ import annotations

import sys
from typing import Callable

import typer

from ocd import distributed
from ocd.artifacts import write_bytes, write_csv, write_json, write_text  # noqa: F401  (the stages' writers)
from ocd.device import configure_threads
from ocd.params import Params



def on_processes(p: Params, stage: Callable[[distributed.Group], None], keep_freed: bool = True) -> None:
    """Run ``stage(group)`` in this process, or, with ``compute.nproc`` above 1 and
    no launcher yet, run the whole command again under torchrun with that many
    processes (ocd/distributed.py); each of them lands here and runs its part."""
    if p.compute.nproc > 1 and not distributed.launched():
        code = distributed.relaunch(p.compute.nproc, sys.argv[1:])
        if code:
            raise typer.Exit(code)
        return
    configure_threads(keep_freed)
    group = distributed.start()
    try:
        stage(group)
    finally:
        distributed.stop(group)
