"""How much of a delta could any encoding of the outputs tell? The denoiser of a speech store
trained again with the output part of I(x) replaced by the same encoding of the TRUE sources
(the mixture's labels, which no model sees at test time), beside the stored one (the base's
separated outputs). Held-out train rows only (never test).

    .venv/bin/python scripts/oracle_conditioning.py --run RUN_DIR --seeds 0 1 2

RUN_DIR is a folder that ``scripts/conditioning.py`` made (params.yaml, base/, deltas.zarr). One
JSON line per (output part, seed): the held-out diagnostics of the denoiser. If the sources'
encoding raises the cosine far above the outputs', the delta is told by what the base got
wrong, which the conditioning cannot hold; if not, these rows do not teach the map at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from ocd.fitting import open_fit
from ocd.hypernet import diffusion
from ocd.hypernet.conditioning import cond_stats
from ocd.models import base
from ocd.params import load_params
from ocd.store import ChunkReader

OUTPUT = "cond/output"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args()
    p = load_params(args.run / "params.yaml")
    model = base.load(args.run / "base").model
    fit = open_fit(p, args.run / "deltas.zarr")
    if not fit.reader.in_ram:
        raise SystemExit("the fit rows must be in RAM (diffusion.ram_mb) for their output part to be replaced")
    held = fit.held()
    with torch.no_grad():  # the store's layer's cut: the encoding its conditioning used
        encode = model.cut(fit.provenance["layer"]).encode_output
        sources = {split: encode(torch.as_tensor(ChunkReader(fit.train, ("label",), chunks).read(chunks)["label"]))
                   .numpy() for split, chunks in (("fit", fit.reader.chunks), ("held", fit.held_chunks))}
    stored = {"fit": fit.reader.read(fit.reader.chunks)[OUTPUT].copy(), "held": held[OUTPUT].copy()}
    for part, values in (("outputs", stored), ("sources", sources)):
        fit.reader.read(fit.reader.chunks)[OUTPUT] = values["fit"]  # the reader's rows in RAM
        held[OUTPUT] = values["held"]
        stats = cond_stats(fit.reader)
        for seed in args.seeds:
            dp = dataclasses.replace(p.diffusion, seed=seed)
            torch.manual_seed(seed)
            net = diffusion.build(diffusion.meta_of(fit.target, dp, fit.output_grid), stats)
            ema, _ = diffusion.train(net, fit.reader, dp, p.compute, "cpu", progress=False)
            diag = diffusion.diagnose(ema, held, dp.sample_steps, dp.eta, dp.seed, dp.diag_samples, "cpu")
            print(json.dumps({"output_part": part, "seed": seed, **diag}), flush=True)


if __name__ == "__main__":
    main()
