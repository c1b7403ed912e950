"""params.yaml, parsed into typed, validated sections.

Every stage reads its knobs from its own section (as DVC's example projects
do), so ``dvc exp run -S base.lr=3e-3`` and ``dvc params diff`` work without
extra code. A malformed file, an unknown key or a value of the wrong type is
a :class:`ParamsError` that names the key and what was expected, raised
before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml


class ParamsError(ValueError):
    """params.yaml is malformed; the message names the offending key."""


@dataclass(frozen=True)
class DataParams:
    """``data:`` which dataset and how it is split (see ``ocd.data``)."""

    name: str = "mnist5k"
    # Seed of the stratified train/test split for sets without an official one.
    seed: int = 0
    # Share of samples held out as test, for sets without an official split.
    test_fraction: float = 0.2
    # Folder of the four IDX files, for ``mnist_idx``.
    path: str = "/usr/share/datasets/fashion-mnist"
    # Optional caps (first N after a seeded stratified subsample); 0 = all.
    max_train: int = 0
    max_test: int = 0


@dataclass(frozen=True)
class ModelParams:
    """``model:`` which architecture (see ``ocd.models``)."""

    name: str = "lenet5"
    # MLP only: widths of the hidden layers and dropout after each.
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    dropout: float = 0.0


@dataclass(frozen=True)
class BaseParams:
    """``base:`` training of the base model f(x; theta)."""

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 16
    weight_decay: float = 0.0
    # Learning-rate schedule over all steps: "constant" or "cosine" (decay to 0).
    schedule: str = "constant"
    seed: int = 0

    def __post_init__(self):
        _positive(self, "base", "epochs", "lr", "batch_size")
        _choice(self, "base", "schedule", ("constant", "cosine"))


@dataclass(frozen=True)
class LayersParams:
    """``layers:`` perturbation-entropy layer scores and the selection."""

    # K: Gaussian draws of the layer's weight, shared by the scored samples
    # (the paper: 10,000).
    draws: int = 10000
    # M: training samples whose loss distributions are scored.
    samples: int = 100
    # Noise standard deviation relative to the std of the layer's weight.
    noise: float = 0.1
    seed: int = 0
    # A layer name overrides the selection; "" selects the highest score.
    force: str = ""

    def __post_init__(self):
        _positive(self, "layers", "draws", "samples", "noise")


@dataclass(frozen=True)
class OverfitParams:
    """``overfit:`` per-sample fine-tuning of the selected layer into the store."""

    steps: int = 3
    # "adam" (the authors' code: lr 5e-4) or "sgd" (the paper's text).
    optimizer: str = "adam"
    lr: float = 5e-4
    # Samples per vectorised batch, and rows per store chunk.
    batch_size: int = 256
    # Scale rho of a delta: "fro" (Frobenius norm, the paper) or "std" (the authors' code).
    rho: str = "fro"
    # dtype of the stored deltas: float32 or float16.
    dtype: str = "float32"

    def __post_init__(self):
        _positive(self, "overfit", "steps", "lr", "batch_size")
        _choice(self, "overfit", "optimizer", ("adam", "sgd"))
        _choice(self, "overfit", "rho", ("fro", "std"))
        _choice(self, "overfit", "dtype", ("float32", "float16"))


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    base: BaseParams = field(default_factory=BaseParams)
    layers: LayersParams = field(default_factory=LayersParams)
    overfit: OverfitParams = field(default_factory=OverfitParams)

    def section(self, name: str) -> dict[str, Any]:
        """One section as a plain dict (for provenance records)."""
        return dataclasses.asdict(getattr(self, name))


def _positive(section, where: str, *names: str) -> None:
    for name in names:
        if not getattr(section, name) > 0:
            raise ParamsError(f"{where}.{name} must be positive, got {getattr(section, name)!r}")


def _choice(section, where: str, name: str, choices: tuple[str, ...]) -> None:
    if getattr(section, name) not in choices:
        raise ParamsError(f"{where}.{name} is {getattr(section, name)!r}; valid choices: {', '.join(choices)}")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; missing keys take their defaults."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such params file") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw if raw is not None else {}, source=str(path))


def parse_params(raw: Any, source: str = "params") -> Params:
    return _build(Params, raw, source)


def _build(cls: type, raw: Any, where: str):
    if not isinstance(raw, dict):
        raise ParamsError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ParamsError(
            f"{where}: unknown key(s) {', '.join(map(str, unknown))}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    values = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in raw.items()}
    return cls(**values)


def _coerce(hint: Any, value: Any, where: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        return _coerce(options[0], value, where)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float:
        # YAML reads "1e-3" (no dot) as a string; accept it as a float.
        if isinstance(value, bool):
            raise ParamsError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ParamsError(f"{where}: expected a number, got {value!r}") from None
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ParamsError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported params type {hint!r} at {where}")  # a bug of ours
