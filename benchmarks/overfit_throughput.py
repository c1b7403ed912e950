"""Overfit-stage throughput: the vectorised path against the naive loop, side by side.

    .venv/bin/python benchmarks/overfit_throughput.py [--samples 4000] [--naive 200]

LeNet5 / fc1 on mnist5k, 3 Adam steps (lr 5e-4), batches of 256. Prints
samples/s of (a) the vectorised path writing a real Zarr store, (b) the same
without writing, (c) the naive loop research code uses (a deepcopy of the
model and a torch.optim.Adam per sample, full forward each step), and the
ratio (a)/(c). Targets (issue 4): ratio >= 10, (a) >= 5,000 samples/s.
Then what bounds (a): (b) on the threads the store path leaves to compute,
the writer's side alone (write_chunk), and the delta's bytes written as a
plain file. Issue 18 asks (a) >= 85% of (b).
The overfit stage itself in one process and on two torchrun ranks: benchmarks/ranks.py.
Uses artifacts/base when it exists, else a seeded untrained LeNet5 (speed does
not depend on the weights).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from ocd.data.registry import load_dataset
from ocd.device import get_device
from ocd.models import base
from ocd.models.cut import linear_cut
from ocd.models.sequential import lenet5
from ocd.overfit import default_writers, fill_store, overfit_batch, overfit_naive
from ocd.params import DataParams
from ocd.store import DeltaStore, Layout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--naive", type=int, default=200)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4],
                    help="writer threads of the store path, each measured (fill_store's writers)")
    args = ap.parse_args()

    data = load_dataset(DataParams(name="mnist5k"))
    task = data.make_task()
    device = get_device()  # as the stage: the GPU where there is one
    if Path("artifacts/base/model.pt").exists():
        model = base.load("artifacts/base").model.to(device)
    else:
        torch.manual_seed(0)
        model = lenet5((1, 28, 28), 10).eval().to(device)
    x, y = data.x_train[: args.samples], data.y_train[: args.samples]
    xd, yd = x.to(device), y.to(device)  # compute only: the batches already on the device
    cut = linear_cut(model, "fc1")
    hyper = dict(steps=3, optimizer="adam", lr=5e-4)

    # warm-up (allocator, vmap tracing)
    with torch.no_grad():
        overfit_batch(cut, task, cut.enter(xd[:32]), yd[:32], **hyper)

    with_store = {}
    for writers in args.writers:
        with tempfile.TemporaryDirectory() as tmp:
            layout = Layout(n={"train": len(y), "test": 0}, out_features=84, in_features=120,
                            n_outputs=10, chunk=args.batch, dtype="float32")
            store = DeltaStore.create_or_resume(Path(tmp) / "bench.zarr", layout, {"bench": 1}, {},
                                                log=lambda m: None)
            t = time.perf_counter()
            fill_store(store, cut, task, {"train": (x, y)}, rho="fro", writers=writers, **hyper)
            with_store[writers] = len(y) / (time.perf_counter() - t)

    def compute() -> float:
        t = time.perf_counter()
        for i in range(0, len(y), args.batch):
            with torch.no_grad():
                h = cut.enter(xd[i:i + args.batch])
            r = overfit_batch(cut, task, h, yd[i:i + args.batch], **hyper)
        r.delta.sum().item()  # wait for the device
        return len(y) / (time.perf_counter() - t)

    threads = torch.get_num_threads()
    compute_only = compute()
    torch.set_num_threads(max(1, threads - 1))  # what the store path leaves to compute
    compute_fewer = compute()
    torch.set_num_threads(threads)

    # the writer's side alone: one chunk written again and again, and the same bytes as a plain file
    delta = overfit_batch(cut, task, cut.enter(xd[: args.batch]).detach(), yd[: args.batch], **hyper)
    delta = type(delta)(*(t.detach().cpu() for t in (delta.delta, delta.loss_before, delta.loss_after)))
    with tempfile.TemporaryDirectory() as tmp:
        chunks = max(1, len(y) // args.batch)
        layout = Layout(n={"train": chunks * args.batch, "test": 0}, out_features=84, in_features=120,
                        n_outputs=10, chunk=args.batch, dtype="float32")
        store = DeltaStore.create_or_resume(Path(tmp) / "w.zarr", layout, {"bench": 2}, {}, log=lambda m: None)
        h = cut.enter(xd[: args.batch]).h[:, 0].detach().cpu()
        rows = {"delta": delta.delta.numpy(), "rho": delta.delta.flatten(1).norm(dim=1).numpy(),
                "cond/layer_input": h.numpy(), "cond/layer_activation": h.numpy()[:, :84],
                "cond/output": model(xd[: args.batch]).detach().cpu().numpy(), "label": y[: args.batch].numpy(),
                "loss_before": delta.loss_before.numpy(), "loss_after": delta.loss_after.numpy(),
                "index": torch.arange(args.batch).numpy()}
        t = time.perf_counter()
        for c in range(chunks):
            store.write_chunk("train", c, rows)
        write_only = chunks * args.batch / (time.perf_counter() - t)
        raw = rows["delta"].tobytes()
        t = time.perf_counter()
        for c in range(chunks):
            (Path(tmp) / f"raw{c}").write_bytes(raw)
        file_only = chunks * args.batch / (time.perf_counter() - t)

    t = time.perf_counter()
    overfit_naive(model, "fc1", task, xd[: args.naive], yd[: args.naive], **hyper)
    naive = args.naive / (time.perf_counter() - t)

    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{len(y)} samples (naive: {args.naive})")
    print(f"default writer threads on {device}: {default_writers(device)}")
    for writers, rate in with_store.items():
        print(f"vectorised + Zarr store, {writers} writer(s): {rate:10.0f} samples/s  (/ compute only: "
              f"{rate / compute_only:.0%})")
    print(f"vectorised, no writing  : {compute_only:10.0f} samples/s")
    print(f"  the same, {max(1, threads - 1)} thread(s)    : {compute_fewer:10.0f} samples/s  "
          "(compute beside the writer)")
    print(f"write_chunk alone       : {write_only:10.0f} samples/s  (checks, derived u, zarr, checksums)")
    print(f"  delta bytes as a file : {file_only:10.0f} samples/s  (the file system's floor)")
    print(f"naive loop              : {naive:10.0f} samples/s")
    print(f"ratio (store / naive)   : {max(with_store.values()) / naive:10.1f}x")


if __name__ == "__main__":
    main()
