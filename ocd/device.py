"""The one place that decides where tensors live and how many threads run."""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from pathlib import Path
import warnings
from dataclasses import dataclass

import torch


# compute.precision (:func:`use_precision`)
PRECISIONS = ("fp32", "tf32", "bf16")


def get_device() -> torch.device:
    """CUDA when present, else CPU; ``OCD_DEVICE`` (e.g. ``cpu``) overrides."""
    wanted = os.environ.get("OCD_DEVICE")
    if wanted:
        return torch.device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def use_precision(precision: str) -> None:
    """How float32 matrix products and convolutions run in this process (``compute.precision``).

    ``fp32``: IEEE float32 throughout (torch's own default lets cuDNN
    convolutions use TF32; this turns that off too). ``tf32`` and ``bf16``: the
    GPU's TF32 matrix units for float32 products and convolutions (a 10-bit
    mantissa). ``bf16`` further runs the diffusion denoiser under bfloat16
    autocast (:func:`autocast`). A CPU has no TF32 units: there ``tf32`` is fp32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


@dataclass(frozen=True)
class Compute:
    """Where and how an entry point computes: the device its tensors live on and the precision
    of its float32 products (``compute.precision``). A stage makes one, which sets this
    process's precision once (:func:`use_precision`), and hands it to what it loads, builds
    and trains: the library looks up no device (``CPU`` where its caller names none), and the
    denoiser takes its precision at construction, never from a write afterwards. Seeded draws
    come from :func:`generator`. Precision ``None``: torch's own defaults, left as they are
    (the stages that ``compute.precision`` does not cover: train_base, score_layers, overfit)."""

    device: torch.device
    precision: str | None = "fp32"

    @classmethod
    def of(cls, precision: str | None = "fp32") -> "Compute":
        """The context of this process: :func:`get_device`'s device, ``precision`` set process-wide
        (``None``: left as it is)."""
        if precision is not None:
            use_precision(precision)
        return cls(get_device(), precision)


CPU = Compute(torch.device("cpu"))  # what the library computes on when its caller names no context


def generator(seed: int, stream: int = 0) -> torch.Generator:
    """The generator of every seeded draw in the library: a CPU one, so that a seed draws the
    same numbers on every device, seeded ``seed + stream``. Two draws from one seed that must
    differ take streams of their own, named where they are drawn (e.g. ``REMIX_STREAM``)."""
    return torch.Generator().manual_seed(seed + stream)


def autocast(device: torch.device | str, precision: str):
    """bfloat16 autocast on ``device`` where precision is ``bf16``; a no-op context otherwise."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


class Steps:
    """Runs a training step ``fn(*inputs) -> loss`` as written or, with ``graphs`` on CUDA,
    as a replayed CUDA graph (``compute.graphs``).

    A small model on a GPU is bound by launching its kernels from Python, one
    by one: the default denoiser's training step took 10.4 ms on an H100
    (docs/RESULTS.md, "GPU"). With graphs, the first ``warmup`` steps run as
    written (on a side stream, as graph capture asks), the next is captured,
    and every later step copies its inputs into the captured ones and replays
    the whole step in one launch. The numbers differ from the step as written
    by rounding (Adam runs ``capturable``): on an H200 the default denoiser's
    held-out cosine moved by 3e-4 and it trained 2.7x faster. ``fn``
    must keep to the device (no ``.item()``, no CPU tensor), take its random
    draws as inputs and step an optimizer made by :func:`adam` with
    ``capturable``. A step that cannot be captured runs as written, with a
    warning. Returns each step's output as a tensor of its own.
    """

    def __init__(self, fn, device, graphs: bool = False, warmup: int = 3):
        self.fn, self.warmup, self.calls = fn, warmup, 0
        self.graphs = graphs and torch.device(device).type == "cuda"
        self.graph = None
        self.static: list[torch.Tensor] = []
        self.out: torch.Tensor | None = None

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if not self.graphs:
            return self.fn(*inputs)
        if self.graph is None and self.calls <= self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self.fn(*inputs)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.graph is None:
            self._capture(inputs)
            if self.graph is None:  # the capture failed: this step and the rest as written
                return self.fn(*inputs)
        for static, x in zip(self.static, inputs):
            static.copy_(x)
        self.graph.replay()
        return self.out.clone()

    def _capture(self, inputs) -> None:
        self.static = [x.detach().clone() for x in inputs]
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.out = self.fn(*self.static)
        except RuntimeError as exc:  # an operation that cannot be captured
            warnings.warn(f"the training step could not be captured as a CUDA graph ({exc}); it runs as written",
                          stacklevel=3)
            self.graphs = False
            return
        self.graph = graph


def adam(params, lr: float, capturable: bool = False) -> torch.optim.Adam:
    """torch.optim.Adam; ``capturable`` keeps its step counts on the device (for :class:`Steps`'s graphs)."""
    return torch.optim.Adam(params, lr=lr, capturable=capturable)


def configure_threads(keep_freed: bool = True) -> None:
    """Apply ``OCD_THREADS`` to torch's intra-op pool when it is set, and
    (``keep_freed``) keep large freed blocks in the process (:func:`keep_freed_memory`).

    Several processes each running two torch threads on a 2-core machine slow
    each other down many times over; side-by-side runs set OCD_THREADS=1.
    """
    threads = os.environ.get("OCD_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    if keep_freed:
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


def cpu_model() -> str:
    """The CPU's model name: two CPUs with the same instruction set (AVX512, say) can
    still run other oneDNN kernels and sum floats in another order."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runtime() -> dict:
    """What a seeded run's numbers depend on besides the code, params and data.

    On one machine a run is bit-for-bit repeatable; another torch build,
    device, CPU instruction set or number of threads sums floats in another
    order, so trained weights (and every later number) differ slightly.
    Recorded in the artifacts so that two runs can be compared knowingly.
    """
    device = get_device()
    info = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu_model()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
