"""The model families and their registry, keyed by ``model.name`` in params.yaml.

A model family is a builder ``build(in_shape, n_outputs, **options)`` and the
options it reads from params: ``lenet5`` and ``mlp`` are ``nn.Sequential``s
here; ``tinynerf`` (ocd/nerf.py) and ``setfit`` (ocd/sentence.py) are modules
of their own. Each is cut at a layer under the contract of ocd/cut.py; this
registry imports the families, and no family imports it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from ocd import nerf, sentence
from ocd.cut import ModelError
from ocd.params import ModelParams


# --------------------------------------------------------------------------
# Architectures


def lenet5(in_shape: tuple[int, ...], n_outputs: int) -> nn.Sequential:
    """LeNet5 as in the OCD paper: three convolutions, two fully connected layers."""
    if tuple(in_shape) != (1, 28, 28):
        raise ModelError(f"lenet5 needs inputs of shape (1, 28, 28), the dataset has {tuple(in_shape)}; "
                         "use model.name=mlp for other shapes")
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 6, 5, padding=2)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(6, 16, 5)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
        ("conv3", nn.Conv2d(16, 120, 5)), ("relu3", nn.ReLU()), ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(120, 84)), ("relu4", nn.ReLU()),
        ("fc2", nn.Linear(84, n_outputs)),
    ]))


def mlp(in_shape: tuple[int, ...], n_outputs: int, hidden: list[int], dropout: float) -> nn.Sequential:
    """The plain MLP of Gorishniy et al. (2021): (Linear, ReLU, Dropout) blocks and a linear head.

    Layers are ``fc1``..``fc{len(hidden)+1}``; inputs of any shape are flattened.
    """
    if not hidden:
        raise ModelError("model.hidden must list at least one hidden width")
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    width = 1
    for d in in_shape:
        width *= d
    for i, h in enumerate(hidden, start=1):
        layers += [(f"fc{i}", nn.Linear(width, h)), (f"relu{i}", nn.ReLU())]
        if dropout > 0:
            layers.append((f"dropout{i}", nn.Dropout(dropout)))
        width = h
    layers.append((f"fc{len(hidden) + 1}", nn.Linear(width, n_outputs)))
    return nn.Sequential(OrderedDict(layers))


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


def _architecture(name: str) -> Architecture:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; valid choices: {', '.join(sorted(MODELS))}") from None


# --------------------------------------------------------------------------
# The registry: ``model.name`` -> family

MODELS: dict[str, Architecture] = {
    "lenet5": Architecture(lenet5),
    "mlp": Architecture(mlp, lambda p, info: {"hidden": list(p.hidden), "dropout": p.dropout}),
    "tinynerf": Architecture(nerf.tinynerf, nerf.options),
    "setfit": Architecture(sentence.setfit, sentence.options),
}
