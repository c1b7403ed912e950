"""Whether this process is one rank of a launched group, and how a rank reports a user's
error once for all ranks: the part of ``ocd.distributed`` that needs no torch, so that
``ocd`` can check it before a stage loads (``stages/cli.py``)."""

from __future__ import annotations

import os
from pathlib import Path

from ocd.artifacts import write_text

# Set by ocd.distributed.relaunch for its ranks: the folder where a rank leaves its user error
# (one line) for the launcher to print once, instead of every rank printing it.
ERRORS_ENV = "OCD_ERRORS"


def launched() -> bool:
    """Whether torchrun (or another launcher that sets WORLD_SIZE) started this process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def report_user_error(message: str) -> bool:
    """In a rank started by ``ocd.distributed.relaunch``, leave ``message`` for the launcher
    to print (once, however many ranks hit it); returns False elsewhere."""
    folder = os.environ.get(ERRORS_ENV)
    if not (launched() and folder and os.path.isdir(folder)):
        return False
    write_text(Path(folder, f"rank{os.environ.get('RANK', '0')}"), message)
    return True
