"""The model families and their registry, keyed by ``model.name`` in params.yaml.

A model family is a builder ``build(in_shape, n_outputs, **options)`` (a function,
or the model's class itself) and the options it reads from params: ``lenet5`` and
``mlp`` (ocd/models/sequential.py), ``tinynerf`` (ocd/models/nerf.py), ``setfit``
(ocd/models/sentence.py), and the speech separators ``mulcat``
(ocd/models/mulcat.py) and ``convtasnet`` (ocd/models/convtasnet.py). Each is
cut at a layer under the contract of ocd/models/cut.py.

The registry names each family's module without importing it: a stage that
builds a LeNet5 imports ocd/models/sequential.py and no other family (no
transformers, no separator), and DVC makes it depend on that family alone
(stages/deps/models/<name>/). No family imports the registry.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from ocd.errors import ModelError
from ocd.params import ModelParams

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Architecture:
    """A model family: the module that defines it, its builder
    ``build(in_shape, n_outputs, **options)`` and the function of its options,
    read from the ``model:`` params and the dataset's info (e.g. a camera):
    names in ``module``, imported on first use (or, for options, a function here)."""

    module: str
    build: str
    options: str | Callable[[ModelParams, dict], dict] | None = None

    def builder(self) -> Callable[..., "nn.Module"]:
        return getattr(importlib.import_module(self.module), self.build)

    def options_of(self, params: ModelParams, info: dict) -> dict:
        if self.options is None:
            return {}
        if callable(self.options):
            return self.options(params, info)
        return getattr(importlib.import_module(self.module), self.options)(params, info)


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
        arch = architecture(params.name)
        return cls(params.name, tuple(in_shape), int(n_outputs), arch.options_of(params, info or {}))

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return cls(d["name"], tuple(d["in_shape"]), int(d["n_outputs"]), dict(d.get("options", {})))

    def to_dict(self) -> dict:
        return {"name": self.name, "in_shape": list(self.in_shape),
                "n_outputs": self.n_outputs, "options": self.options}

    def build(self) -> "nn.Module":
        return architecture(self.name).builder()(self.in_shape, self.n_outputs, **self.options)

    def family_module(self) -> str:
        """The module that builds this family (its code decides what the model computes)."""
        return architecture(self.name).module


def architecture(name: str) -> Architecture:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; valid choices: {', '.join(sorted(MODELS))}") from None


# --------------------------------------------------------------------------
# The registry: ``model.name`` -> family

MODELS: dict[str, Architecture] = {
    "lenet5": Architecture("ocd.models.sequential", "lenet5"),
    "mlp": Architecture("ocd.models.sequential", "mlp",
                        lambda p, info: {"hidden": list(p.hidden), "dropout": p.dropout}),
    "tinynerf": Architecture("ocd.models.nerf", "tinynerf", "options"),
    "setfit": Architecture("ocd.models.sentence", "setfit", "options"),
    "mulcat": Architecture("ocd.models.mulcat", "MulCatSeparator", "options"),
    "convtasnet": Architecture("ocd.models.convtasnet", "ConvTasNet", "options"),
}
