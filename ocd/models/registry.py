"""The model families and their registry, keyed by ``model.name`` in params.yaml.

A model family is a builder ``build(in_shape, n_outputs, **options)`` and the
options it reads from params: ``lenet5`` and ``mlp`` (ocd/models/sequential.py),
``tinynerf`` (ocd/models/nerf.py), ``setfit`` (ocd/models/sentence.py) and
``mulcat`` (ocd/models/mulcat.py). Each
is cut at a layer under the contract of ocd/models/cut.py; this registry
imports the families, and no family imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from ocd.models import mulcat, nerf, sentence, sequential
from ocd.models.cut import ModelError
from ocd.params import ModelParams


@dataclass(frozen=True)
class Architecture:
    """A model family: ``build(in_shape, n_outputs, **options)`` and its options,
    read from the ``model:`` params and the dataset's info (e.g. a camera)."""

    build: Callable[..., nn.Module]
    options: Callable[[ModelParams, dict], dict] = lambda p, info: {}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model: saved beside its weights."""

    name: str
    in_shape: tuple[int, ...]
    n_outputs: int
    options: dict = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: ModelParams, in_shape, n_outputs: int, info: dict | None = None) -> "ModelSpec":
        """The spec for a dataset of inputs ``in_shape``, ``n_outputs`` outputs and ``info`` (Dataset.info)."""
        arch = _architecture(params.name)
        return cls(params.name, tuple(in_shape), int(n_outputs), arch.options(params, info or {}))

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return cls(d["name"], tuple(d["in_shape"]), int(d["n_outputs"]), dict(d.get("options", {})))

    def to_dict(self) -> dict:
        return {"name": self.name, "in_shape": list(self.in_shape),
                "n_outputs": self.n_outputs, "options": self.options}

    def build(self) -> nn.Module:
        return _architecture(self.name).build(self.in_shape, self.n_outputs, **self.options)

    def family_module(self) -> str:
        """The module that builds this family (its code decides what the model computes)."""
        return _architecture(self.name).build.__module__


def _architecture(name: str) -> Architecture:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; valid choices: {', '.join(sorted(MODELS))}") from None


# --------------------------------------------------------------------------
# The registry: ``model.name`` -> family

MODELS: dict[str, Architecture] = {
    "lenet5": Architecture(sequential.lenet5),
    "mlp": Architecture(sequential.mlp, lambda p, info: {"hidden": list(p.hidden), "dropout": p.dropout}),
    "tinynerf": Architecture(nerf.tinynerf, nerf.options),
    "setfit": Architecture(sentence.setfit, sentence.options),
    "mulcat": Architecture(mulcat.mulcat, mulcat.options),
}
