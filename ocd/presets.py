"""Params presets: a named set of params.yaml values applied at once (``presets/NAME.yaml``).

``paper`` sets every choice of the paper as written; ``project`` sets the same
keys to this project's defaults, read from ``ocd.params``'s dataclasses (no file:
the defaults are kept there and in params.yaml, not a third time). A preset may start from another
(``extends: NAME``) and set only what differs. A preset is checked by parsing params.yaml
with it applied (so a typo in either is named before anything runs) and
turned into ``-S section.key=value`` flags for ``dvc exp run``, which leaves
params.yaml and its comments alone. The ``paper`` U-Net needs a GPU: without
CUDA the ``cpu`` preset stands in, and :func:`resolve` says so.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from ocd.params import Params, ParamsError, load_params, parse_params

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
GPU_ONLY = {("diffusion", "preset"): ("paper", "cpu")}  # (section, key): (value, its CPU stand-in)


# The preset made from the defaults: the keys the paper preset sets, at ocd.params' values.
PROJECT, PROJECT_OF = "project", "paper"


def names() -> list[str]:
    return sorted({p.stem for p in PRESETS_DIR.glob("*.yaml")} | {PROJECT})


def project() -> dict:
    """Every key of the paper preset at this project's default (each chosen on held-out train rows)."""
    defaults = Params()
    return {section: {key: getattr(getattr(defaults, section), key) for key in keys}
            for section, keys in load(PROJECT_OF).items()}


def load(name: str) -> dict:
    path = PRESETS_DIR / f"{name}.yaml"
    if name == PROJECT and not path.is_file():
        return project()
    if name not in names():  # a name, never a path: `ocd preset ../../x` reads nothing outside presets/
        raise ParamsError(f"unknown preset {name!r}; valid presets: {', '.join(names())}")
    raw = yaml.safe_load(path.read_text())
    parent = raw.pop("extends", None) if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ParamsError(f"{path}: a preset maps params sections to their keys (and may name one it extends)")
    if parent is None:
        return raw
    if parent == name or not isinstance(parent, str):
        raise ParamsError(f"{path}: 'extends' names another preset, not {parent!r}")
    merged = load(parent)  # its keys, then this preset's over them
    for section, values in raw.items():
        merged.setdefault(section, {}).update(values)
    return merged


def resolve(preset: dict, cuda: bool) -> tuple[dict, list[str]]:
    """The preset for this machine, and a note for every value swapped for a stand-in."""
    preset, notes = copy.deepcopy(preset), []
    for (section, key), (value, stand_in) in GPU_ONLY.items():
        if preset.get(section, {}).get(key) == value and not cuda:
            preset[section][key] = stand_in
            notes.append(f"{section}.{key}={value} needs a GPU and none is present: "
                         f"{section}.{key}={stand_in} stands in")
    return preset, notes


def apply(params_path: str | Path, preset: dict) -> Params:
    """params.yaml with the preset applied, parsed and validated (a dry run)."""
    load_params(params_path)  # the file itself must be valid
    raw = yaml.safe_load(Path(params_path).read_text()) or {}
    for section, values in preset.items():
        raw.setdefault(section, {}).update(values)
    return parse_params(raw, source=f"{params_path} with the preset")


def flags(preset: dict) -> list[str]:
    """``-S section.key=value`` arguments for ``dvc exp run`` (values in YAML, as -S reads them)."""
    out = []
    for section, values in preset.items():
        for key, value in values.items():
            text = yaml.safe_dump(value, default_flow_style=True).removesuffix("\n").removesuffix("\n...")
            if any(c.isspace() for c in text):  # the flags are meant for $( ): no quoting survives it
                raise ParamsError(f"preset value {section}.{key}={value!r} holds whitespace; use a value without")
            out += ["-S", f"{section}.{key}={text}"]
    return out
