"""Does the denoiser predict the delta better when the conditioning sees more? One base, one
layer; the store and the denoiser remade for each variant of the conditioning; the held-out
train rows' figures compared (never test).

    .venv/bin/python scripts/conditioning.py --base BASE_DIR --preset speech --layer proj1_inter \
        --work /tmp/cond --seeds 0 1 2 --variant "model.time_scales=[1]" "model.time_scales=[1,2,4]" \
        "model.spectrum_grid=32 diffusion.output_encoder=conv"

A variant is a set of ``key=value`` params (values in YAML) over the preset's. Keys of ``model``
may only be the ones that change how the conditioning reads the base, not its weights
(``model.time_scales``, ``model.spectrum_grid``): a copy of the base model (the same weights)
gets the spec the family's own options make of the variant's model params, and any other
difference from the base's spec is refused. For each variant it
writes the params and a scores.json naming the layer, runs ``ocd overfit`` once and ``ocd
train-diffusion`` once per ``diffusion.seed`` in ``--seeds``, as a user would, and prints the
denoiser's held-out diagnostics (the loss beside its references, and the cosine of sampled to
true deltas) as one JSON line per variant and seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from ocd.models.registry import ModelSpec
from ocd.params import parse_params
from ocd.presets import load

ROOT = Path(__file__).resolve().parents[1]
OCD = str(Path(sys.executable).parent / "ocd")
READ_ONLY = ("time_scales", "spectrum_grid")  # model keys that leave the base's weights as they are


def parse_variant(text: str) -> dict[str, object]:
    """``"a.b=1 c.d=[1,2]"`` -> {"a.b": 1, "c.d": [1, 2]}."""
    out = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"a variant is section.key=value pairs; got {item!r}")
        if key.startswith("model.") and key[len("model."):] not in READ_ONLY:
            raise SystemExit(f"{key} changes the base model's weights; a variant may set "
                             f"model.{', model.'.join(READ_ONLY)}")
        out[key] = yaml.safe_load(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--preset", default="speech")
    ap.add_argument("--layer", default="proj1_inter")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="diffusion.seed of each denoiser")
    ap.add_argument("--variant", nargs="+", default=["model.time_scales=[1]"])
    args = ap.parse_args()
    for text in args.variant:
        variant = parse_variant(text)
        run = args.work / hashlib.sha256(text.encode()).hexdigest()[:10]
        run.mkdir(parents=True, exist_ok=True)
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        for section, values in load(args.preset).items():
            raw.setdefault(section, {}).update(values)
        for key, value in variant.items():
            section, name = key.split(".", 1)
            raw[section][name] = value
        shutil.copytree(args.base, run / "base", dirs_exist_ok=True)
        meta = json.loads((run / "base/model.json").read_text())
        spec = meta["spec"]  # as the family writes it (ModelSpec.from_params), e.g. left out at a default
        options = ModelSpec.from_params(parse_params(raw).model, spec["in_shape"], spec["n_outputs"],
                                        meta["data_info"]).options
        other = sorted(k for k in set(options) | set(spec["options"])
                       if k not in READ_ONLY and options.get(k) != spec["options"].get(k))
        if other:
            raise SystemExit(f"the {args.preset} preset's model differs from the base's in {', '.join(other)}")
        spec["options"] = options
        (run / "base/model.json").write_text(json.dumps(meta))
        (run / "layers").mkdir(exist_ok=True)
        (run / "layers/scores.json").write_text(json.dumps({"selected": args.layer, "runner_up": None,
                                                            "base_sha256": meta["sha256"]}))
        for seed in args.seeds:
            raw["diffusion"]["seed"] = seed
            (run / "params.yaml").write_text(yaml.safe_dump(raw))
            for cmd in (["overfit", "--params", "params.yaml", "--base", "base", "--scores", "layers/scores.json",
                         "--out", "deltas.zarr", "--metrics", "overfit.json", "--no-progress"],
                        ["train-diffusion", "--params", "params.yaml", "--store", "deltas.zarr",
                         "--out", f"models{seed}", "--no-progress"]):
                subprocess.run([OCD, *cmd], cwd=run, check=True, stdout=subprocess.DEVNULL)
            held = json.loads((run / f"models{seed}/metrics.json").read_text())["diffusion"]
            print(json.dumps({"variant": variant, "seed": seed, **held}), flush=True)


if __name__ == "__main__":
    main()
