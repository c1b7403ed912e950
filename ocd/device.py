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


def runtime() -> dict:
    """What a seeded run's numbers depend on besides the code, params and data.

    On one machine a run is bit-for-bit repeatable; another torch build,
    device, CPU instruction set or number of threads sums floats in another
    order, so trained weights (and every later number) differ slightly.
    Recorded in the artifacts so that two runs can be compared knowingly.
    """
    device = get_device()
    info = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
