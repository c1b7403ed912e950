"""Does the denoiser predict the delta better when the conditioning sees time? One base, one
layer, the store and the denoiser remade for each ``model.time_scales``; the held-out train
rows' figures compared (never test).

    .venv/bin/python scripts/time_scales.py --base BASE_DIR --preset speech --layer proj1_inter \
        --work /tmp/scales --scales 1 1,2,4 1,4,16 1,2,4,8,16,32

For each scales list it writes the preset's params with ``model.time_scales`` set, a copy
of the base model whose spec carries them (the same weights), and a scores.json naming the
layer; then runs ``ocd overfit`` and ``ocd train-diffusion`` as a user would, and prints the
denoiser's held-out diagnostics (loss beside its references, and the cosine of sampled to
true deltas) as one JSON line per list.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from ocd.presets import load

ROOT = Path(__file__).resolve().parents[1]
OCD = str(Path(sys.executable).parent / "ocd")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--preset", default="speech")
    ap.add_argument("--layer", default="proj1_inter")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--scales", nargs="+", default=["1", "1,2,4"])
    args = ap.parse_args()
    for scales in ([int(s) for s in v.split(",")] for v in args.scales):
        run = args.work / ("s" + "_".join(map(str, scales)))
        run.mkdir(parents=True, exist_ok=True)
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        for section, values in load(args.preset).items():
            raw.setdefault(section, {}).update(values)
        raw["model"]["time_scales"] = scales
        (run / "params.yaml").write_text(yaml.safe_dump(raw))
        shutil.copytree(args.base, run / "base", dirs_exist_ok=True)
        meta = json.loads((run / "base/model.json").read_text())
        meta["spec"]["options"].pop("time_scales", None)
        if scales != [1]:  # the spec's form at the default, as ocd.models.mulcat.options writes it
            meta["spec"]["options"]["time_scales"] = scales
        (run / "base/model.json").write_text(json.dumps(meta))
        (run / "layers").mkdir(exist_ok=True)
        (run / "layers/scores.json").write_text(json.dumps({"selected": args.layer, "runner_up": None,
                                                            "base_sha256": meta["sha256"]}))
        for cmd in (["overfit", "--params", "params.yaml", "--base", "base", "--scores", "layers/scores.json",
                     "--out", "deltas.zarr", "--metrics", "overfit.json", "--no-progress"],
                    ["train-diffusion", "--params", "params.yaml", "--store", "deltas.zarr", "--out", "models",
                     "--no-progress"]):
            subprocess.run([OCD, *cmd], cwd=run, check=True, stdout=subprocess.DEVNULL)
        held = json.loads((run / "models/metrics.json").read_text())["diffusion"]
        print(json.dumps({"time_scales": scales, **held}), flush=True)


if __name__ == "__main__":
    main()
