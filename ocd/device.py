"""The one place that decides where tensors live and how many threads run."""

from __future__ import annotations

import ctypes
import os
import sys

import torch


def get_device() -> torch.device:
    """CUDA when present, else CPU; ``OCD_DEVICE`` (e.g. ``cpu``) overrides."""
    wanted = os.environ.get("OCD_DEVICE")
    if wanted:
        return torch.device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def configure_threads() -> None:
    """Apply ``OCD_THREADS`` to torch's intra-op pool when it is set, and
    keep large freed blocks in the process (:func:`keep_freed_memory`).

    Several processes each running two torch threads on a 2-core machine slow
    each other down many times over; side-by-side runs set OCD_THREADS=1.
    """
    threads = os.environ.get("OCD_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    keep_freed_memory()


# glibc's mallopt parameters
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Serve large CPU tensors from the heap instead of fresh mmap pages (glibc only).

    glibc maps every block above 32 MiB afresh and returns it on free, so each
    such tensor pays its page faults again: a TinyNeRF view's activations
    ([131,072, 128] floats, 64 MiB) are allocated a dozen times per overfit
    step. Raising the mmap and trim thresholds keeps freed blocks for reuse,
    as PyTorch's CPU tuning guide obtains by preloading jemalloc; measured:
    2.9 s -> 1.5 s per overfitted view (benchmarks/nerf.py). The numbers
    computed are unchanged. ``OCD_MALLOC=default`` leaves glibc as it is.
    Returns whether the thresholds were set.
    """
    if os.environ.get("OCD_MALLOC") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 31))
    except (OSError, AttributeError):  # not glibc
        return False


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
