"""One stage on many processes: ``torch.distributed``, launched by ``torchrun``.

A stage run by ``torchrun`` (``torch.distributed.run``) finds its rank and
the number of processes in the environment torchrun sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, the rendezvous address) and joins the group:
gloo on the CPU, NCCL on GPUs, one GPU per process (``LOCAL_RANK``). Work is
dealt out by rank (:meth:`Group.deal`); only rank 0 writes artifacts that are
not split by rank (metrics, logs). Run without torchrun, a stage is one
process, and nothing here does anything.

``compute.nproc`` in params.yaml asks a stage to launch itself under
torchrun with that many processes on this machine (:func:`relaunch`); for
several machines, run torchrun yourself (README, "Many processes").
"""

from __future__ import annotations

import ctypes
import datetime as dt
import inspect
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

from ocd.launch import ERRORS_ENV, launched, report_user_error  # noqa: F401  (torch-free: ocd/launch.py)

T = TypeVar("T")

# A rank that finishes its share waits at the next barrier for the slowest;
# torch's default (30 min) would fail a long stage that is merely uneven.
TIMEOUT = dt.timedelta(hours=24)


@dataclass(frozen=True)
class Group:
    """This process's place among the stage's processes."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes what is not split by rank."""
        return self.rank == 0

    def deal(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``, dealt round-robin (every rank must pass the same list)."""
        return list(items[self.rank::self.world])

    def span(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share ``[lo, hi)`` of ``n`` rows: shares differ by at most
        one row, the larger ones first, so rank 0 (which gathers and writes) always has some."""
        size, extra = divmod(n, self.world)
        lo = self.rank * size + min(self.rank, extra)
        return lo, lo + size + (self.rank < extra)

    def blocks(self, n: int, block: int) -> tuple[int, int]:
        """This rank's contiguous share ``[lo, hi)`` of ``n`` rows, cut at multiples of
        ``block``: a rank's batches then start where one process's start, and hold the
        same rows (a batched product can round differently when its rows change)."""
        lo, hi = self.span(-(-n // block))
        return min(n, lo * block), min(n, hi * block)

    def data_parallel(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` wrapped in DistributedDataParallel (its gradients averaged over the
        ranks in the backward pass), or itself in one process."""
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device = next(module.parameters()).device
        # the buffers (standardisation statistics) are equal on every rank: no sync at each forward
        # (torch 2.13 names it forward_sync_buffers; earlier versions broadcast_buffers)
        no_sync = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})
        return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None, **no_sync)

    def mean(self, local: torch.Tensor) -> torch.Tensor:
        """The mean over the ranks of ``local`` (the same shape on every rank), on every rank."""
        if self.world == 1:
            return local
        total = local.clone()
        dist.all_reduce(total)
        return total / self.world

    def gather_rows(self, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every rank's rows of each tensor in ``local``, concatenated in rank order (ranks hold
        contiguous, ordered shares: :meth:`span`, :meth:`blocks`), on the CPU; a rank with
        no rows of a key (no share) adds none. Every rank gets the whole."""
        if self.world == 1:
            return local
        parts: list = [None] * self.world
        dist.all_gather_object(parts, {k: v.cpu() for k, v in local.items()})
        keys = dict.fromkeys(k for p in parts for k in p)
        return {k: torch.cat([p[k] for p in parts if k in p]) for k in keys}

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.world > 1:
            dist.barrier()

    def gather_columns(self, local: torch.Tensor, indices: Sequence[int], total: int) -> torch.Tensor:
        """Every rank's columns ``local [M, len(indices)]`` (column j is item ``indices[j]``
        of ``total``), put together on every rank as ``[M, total]`` (on the CPU)."""
        if self.world == 1:
            return local
        parts: list = [None] * self.world
        dist.all_gather_object(parts, (list(indices), local.cpu()))
        out = torch.empty(local.shape[0], total, dtype=local.dtype)
        seen = torch.zeros(total, dtype=torch.bool)
        for idx, columns in parts:
            out[:, idx] = columns
            seen[idx] = True
        if not bool(seen.all()):
            raise RuntimeError(f"gather_columns: {int((~seen).sum())} of {total} columns came from no rank")
        return out


PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux).

    torchrun puts its ranks in process groups of their own, so a ``kill -9``
    of the launcher's group left them running, writing chunks of a run that no
    longer exists. Returns whether it is set.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        ok = ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
    if ok and os.getppid() == 1:  # the parent died before the request: go now
        os.kill(os.getpid(), sig)
    return ok


def start() -> Group:
    """Join the process group torchrun set up (one process without it)."""
    if not launched():
        return Group()
    die_with_parent()
    if not dist.is_initialized():
        if torch.cuda.is_available() and os.environ.get("OCD_DEVICE", "cuda").startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            backend = "nccl"
        else:
            backend = "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)
    return Group(dist.get_rank(), dist.get_world_size())


def stop(group: Group) -> None:
    if group.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def relaunch(nproc: int, argv: Sequence[str]) -> int:
    """Run the ``ocd`` command ``argv`` (e.g. ``["overfit", "--params", ...]``)
    under torchrun with ``nproc`` processes on this machine; returns its exit code.

    Each process gets ``cores // nproc`` torch threads unless ``OCD_THREADS``
    says otherwise: processes that together ask for more threads than there
    are cores slow each other down many times over.
    """
    env = dict(os.environ)
    env.setdefault("OCD_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("OMP_NUM_THREADS", env["OCD_THREADS"])  # as torchrun would, without its banner
    with tempfile.TemporaryDirectory(prefix="ocd-errors-") as errors:
        env[ERRORS_ENV] = errors
        cmd = [sys.executable, "-c", "from ocd.distributed import _agent; _agent()", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "stages", *argv]
        # the agent dies with this process, and the ranks with the agent (start)
        code = subprocess.run(cmd, env=env, preexec_fn=lambda: die_with_parent(signal.SIGTERM)).returncode
        messages = list(dict.fromkeys(f.read_text().strip() for f in sorted(Path(errors).iterdir())))
    for message in messages:  # every rank's user error, each distinct one once
        print(message, file=sys.stderr)
    return 2 if messages else code


def _agent() -> None:
    """torchrun's agent, as ``relaunch`` runs it: a rank's user error (exit code 2,
    its message left for the launcher) ends the run with code 2 and no report
    from the agent; any other failure prints torchrun's report."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(parse_args(sys.argv[1:]))
    except ChildFailedError as exc:
        folder = os.environ.get(ERRORS_ENV)
        if folder and os.listdir(folder):
            sys.exit(2)
        print(exc.format_msg(), file=sys.stderr)
        sys.exit(1)
