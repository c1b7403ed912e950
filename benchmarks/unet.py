"""Training steps per second of the denoiser, for each compute.precision and compute.compile.

    .venv/bin/python benchmarks/unet.py [--preset paper] [--side 128] [--batch 32] [--steps 30] [--variants ...]

The step and loop are the train_diffusion stage's own (ocd.hypernet.train.step:
the denoising loss, backward, gradient clipping, Adam, EMA; on CUDA one
replayed graph a step with compute.graphs, ocd.device.Steps) on a batch of
random deltas of side x side, the paper's target (issue 18: the ``paper``
U-Net at >= 9 steps/s of 32 deltas at 128x128 on one H100). Variants:
PRECISION (fp32, tf32, bf16: compute.precision), PRECISION-graphs
(compute.graphs: true), PRECISION-compile (compute.compile: true).
Each is warmed up (compilation included) and then timed over --steps steps,
twice; the table gives both timings, and the loss of the first batch without
training against the first variant's (a check that the variant computes the
same function). On a CPU only the first variant runs unless --all.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from ocd.delta import COND
from ocd.device import Steps, adam, get_device, use_precision
from ocd.hypernet import diffusion, train

WIDTHS = dict(zip(COND, (256, 120, 10)))  # LeNet5 fc1: its input, activation and the 10 outputs


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def variant(model0, device, precision, compile, graphs, x0, parts, steps, warmup):
    """The stage's own loop (ocd.hypernet.diffusion.train), with compute.graphs or compute.compile as asked."""
    use_precision(precision)
    model = copy.deepcopy(model0).to(device).train()
    model.at_precision(precision)
    ema = train.EMA(model, 0.999)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        first = float(model.loss(x0, model.embed(parts), model.schedule(), gen).mean())
    if compile:
        model.net.compile()
    loss_of = diffusion.denoising_loss(model)
    runner = Steps(lambda *tensors: train.step(model, loss_of, opt, 1.0, ema, *tensors),
                   device, graphs=graphs and not compile)
    opt = adam(model.parameters(), 1e-3, runner.graphs)

    def run(n):
        for _ in range(n):
            runner(x0, *model.draw(x0, gen), *parts)
        sync(device)

    start = time.perf_counter()
    run(warmup)
    warm_s = time.perf_counter() - start
    rates = []
    for _ in range(2):
        start = time.perf_counter()
        run(steps)
        rates.append(steps / (time.perf_counter() - start))
    return first, warm_s, rates


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--side", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--all", action="store_true", help="every variant on a CPU too")
    ap.add_argument("--variants", nargs="+", default=None, help="e.g. fp32 tf32 bf16 tf32-graphs bf16-compile")
    args = ap.parse_args()

    device = get_device()
    rng = np.random.default_rng(0)
    stats = {n: (np.zeros(w, np.float32), np.ones(w, np.float32)) for n, w in WIDTHS.items()}
    meta = diffusion.make_meta(args.preset, (args.side, args.side), True, args.side, "eps", "fro", "paper", 1000)
    torch.manual_seed(0)
    model0 = diffusion.build(meta, stats)
    params = sum(p.numel() for p in model0.parameters())
    x0 = torch.as_tensor(rng.standard_normal((args.batch, args.side, args.side), np.float32), device=device)
    parts = [torch.as_tensor(rng.standard_normal((args.batch, w), np.float32), device=device) for w in WIDTHS.values()]
    names = args.variants or ["fp32", "tf32", "bf16", "tf32-graphs", "tf32-compile", "bf16-compile"]
    if device.type == "cpu" and not args.all:
        names = names[:1]
    print(f"device {device}; {args.preset} denoiser, {params / 1e6:.1f} M parameters; "
          f"batches of {args.batch} deltas at {args.side}x{args.side}; {args.steps} steps timed twice")
    rows = []
    for name in names:
        precision, _, how = name.partition("-")
        first, warm_s, rates = variant(model0, device, precision, how == "compile", how == "graphs", x0, parts,
                                       args.steps, args.warmup)
        rows.append((name, first, warm_s, rates))
        print(f"  {name}: {rates[0]:.2f} / {rates[1]:.2f} steps/s (warm-up {warm_s:.1f} s)", flush=True)
    ref = rows[0][1]
    base_rate = max(rows[0][3])
    print(f"\n| variant | steps/s (two timings) | vs {names[0]} | warm-up s | first loss, relative change |")
    print("|---|---|---|---|---|")
    for name, first, warm_s, rates in rows:
        print(f"| {name} | {rates[0]:.2f} / {rates[1]:.2f} | {max(rates) / base_rate:.2f}x | "
              f"{warm_s:.1f} | {abs(first - ref) / abs(ref):.1e} |")


if __name__ == "__main__":
    main()
