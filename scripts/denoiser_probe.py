"""Train the denoiser on a store under one params change at a time, and print what it learned.

Issue 40's probe: why the paper's denoiser did not train. For each variant
(``section.key=value`` changes to the params file), it trains on the store's fit rows exactly as train_diffusion
does and prints one JSON line: the training loss (mean of the last tenth of the
steps), the held-out denoising loss of the trained network and of its EMA copy
(what every later stage samples) beside the two references of
``ocd.hypernet.diffusion.reference_losses``, and the held-out cosine of the
sampled deltas.

    .venv/bin/python scripts/denoiser_probe.py --params P --store S -v "" -v "diffusion.lr=1e-4"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ocd.device import get_device  # noqa: E402
from ocd.fitting import open_fit  # noqa: E402
from ocd.hypernet import diffusion  # noqa: E402
from ocd.params import parse_params  # noqa: E402


def variant(raw: dict, spec: str) -> dict:
    """The params with ``spec``'s comma-separated ``section.key=value`` changes."""
    raw = json.loads(json.dumps(raw))
    for item in filter(None, spec.split(",")):
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        raw[section][name] = yaml.safe_load(value)
    return raw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, required=True)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("-v", "--variant", action="append", default=[],
                    help="comma-separated section.key=value changes ('' = as the params say)")
    args = ap.parse_args()
    raw = yaml.safe_load(args.params.read_text())
    device = get_device()
    for spec in args.variant or [""]:
        p = parse_params(variant(raw, spec))
        fit = open_fit(p, args.store)
        torch.manual_seed(p.diffusion.seed)
        model = diffusion.build(diffusion.meta_of(fit.target, p.diffusion), fit.stats)
        start = time.perf_counter()
        ema, history = diffusion.train(model, fit.reader, p.diffusion, p.compute, device, progress=False)
        seconds = time.perf_counter() - start
        held = fit.held()
        dp = p.diffusion
        tail = history[-max(1, len(history) // 10):]
        out = {"variant": spec or "(as params)", "steps": len(history), "seconds": round(seconds, 1),
               "train_loss": round(sum(v for _, v in tail) / len(tail), 4)}
        for name, net in (("net", model), ("ema", ema)):
            d = diffusion.diagnose(net, held, dp.sample_steps, dp.eta, dp.seed, dp.diag_samples, device)
            out[name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()
                         if k in ("denoise_loss", "denoise_loss_zero", "denoise_loss_linear", "cosine_mean")}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
