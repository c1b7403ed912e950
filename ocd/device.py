"""The one place that decides where tensors live and how many threads run."""

from __future__ import annotations

import os

import torch


def get_device() -> torch.device:
    """CUDA when present, else CPU; ``OCD_DEVICE`` (e.g. ``cpu``) overrides."""
    wanted = os.environ.get("OCD_DEVICE")
    if wanted:
        return torch.device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def configure_threads() -> None:
    """Apply ``OCD_THREADS`` to torch's intra-op pool when it is set.

    Several processes each running two torch threads on a 2-core machine slow
    each other down many times over; side-by-side runs set OCD_THREADS=1.
    """
    threads = os.environ.get("OCD_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
