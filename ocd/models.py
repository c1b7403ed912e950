"""Model registry and the per-sample-weight primitive.

Every model is an ``nn.Sequential`` with named children (``conv1``, ``fc1``,
...). That one convention gives every later stage what it needs: the model can
be cut at any named layer into ``prefix -> layer -> suffix``, so the layer's
input is computed once per sample, and the layer can run with a different
weight for every sample of a batch (:func:`forward_with_layer_weights`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

from ocd.params import ModelParams


class ModelError(ValueError):
    """A model cannot be built or cut as asked; the message says why."""


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
    build: Callable[..., nn.Sequential]
    # Which ModelParams fields the architecture takes, as keyword options.
    options: Callable[[ModelParams], dict] = lambda p: {}


MODELS: dict[str, Architecture] = {
    "lenet5": Architecture(lenet5),
    "mlp": Architecture(mlp, lambda p: {"hidden": list(p.hidden), "dropout": p.dropout}),
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model: saved beside its weights."""

    name: str
    in_shape: tuple[int, ...]
    n_outputs: int
    options: dict = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: ModelParams, in_shape, n_outputs: int) -> "ModelSpec":
        arch = _architecture(params.name)
        return cls(params.name, tuple(in_shape), int(n_outputs), arch.options(params))

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return cls(d["name"], tuple(d["in_shape"]), int(d["n_outputs"]), dict(d.get("options", {})))

    def to_dict(self) -> dict:
        return {"name": self.name, "in_shape": list(self.in_shape),
                "n_outputs": self.n_outputs, "options": self.options}

    def build(self) -> nn.Sequential:
        return _architecture(self.name).build(self.in_shape, self.n_outputs, **self.options)


def _architecture(name: str) -> Architecture:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; valid choices: {', '.join(sorted(MODELS))}") from None


# --------------------------------------------------------------------------
# Layers, cuts and the per-sample-weight primitive


def weight_layers(model: nn.Sequential) -> list[str]:
    """Names of the layers with a weight of two or more dimensions, in order."""
    return [name for name, m in model.named_children()
            if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() >= 2]


def check_layer(model: nn.Sequential, name: str) -> nn.Module:
    if name not in weight_layers(model):
        raise ModelError(f"{name!r} is not a weight layer of this model; "
                         f"valid names: {', '.join(weight_layers(model))}")
    return getattr(model, name)


@dataclass
class LayerCut:
    """The model cut at one layer: ``model(x) == suffix(layer(prefix(x)))``."""

    name: str
    prefix: nn.Sequential
    layer: nn.Module
    suffix: nn.Sequential


def cut_at(model: nn.Sequential, name: str) -> LayerCut:
    check_layer(model, name)
    names = [n for n, _ in model.named_children()]
    i = names.index(name)
    children = list(model.children())
    return LayerCut(name, nn.Sequential(*children[:i]), children[i], nn.Sequential(*children[i + 1:]))


def layer_with_weights(layer: nn.Module, weights: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Apply ``layer`` to ``h[b]`` with weight ``weights[b]`` for every b.

    ``weights`` is ``[B, *layer.weight.shape]``, ``h`` is ``[B, ...]`` (the
    layer's input, without the batch dimension per sample). Works for any
    layer whose forward reads ``self.weight`` (Linear, Conv).
    """
    if weights.shape[1:] != layer.weight.shape:
        raise ModelError(f"per-sample weights have shape {tuple(weights.shape[1:])}, "
                         f"the layer's weight is {tuple(layer.weight.shape)}")
    if weights.shape[0] != h.shape[0]:
        raise ModelError(f"{weights.shape[0]} weights for a batch of {h.shape[0]} inputs")

    def one(w: torch.Tensor, hb: torch.Tensor) -> torch.Tensor:
        return functional_call(layer, {"weight": w}, (hb.unsqueeze(0),)).squeeze(0)

    return vmap(one)(weights, h)


def forward_with_layer_weights(model: nn.Sequential, name: str, weights: torch.Tensor,
                               x: torch.Tensor) -> torch.Tensor:
    """``model(x[b])`` with layer ``name``'s weight replaced by ``weights[b]``, batched.

    The rest of the model (every other layer, and this layer's bias) keeps its
    own parameters. One forward pass for the whole batch, no model copies.
    """
    cut = cut_at(model, name)
    return cut.suffix(layer_with_weights(cut.layer, weights, cut.prefix(x)))


def layer_with_weight_stack(layer: nn.Module, weights: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Apply ``layer`` with each of ``weights[k]`` to the whole batch ``h``: ``[K, B, ...]``.

    The all-pairs sibling of :func:`layer_with_weights`: K weight draws times
    B inputs in one batched call, without copying the weights B times.
    """
    if weights.shape[1:] != layer.weight.shape:
        raise ModelError(f"weight stack has shape {tuple(weights.shape[1:])}, "
                         f"the layer's weight is {tuple(layer.weight.shape)}")
    return vmap(lambda w: functional_call(layer, {"weight": w}, (h,)))(weights)


@torch.no_grad()
def layer_io(cut: LayerCut, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """I(x) parts for the cut layer, with the model's own weights.

    Returns the layer's input, its activation (the output of the element-wise
    non-linearity right after the layer, or the layer's output when none
    follows) and the model's output.
    """
    h = cut.prefix(x)
    z = cut.layer(h)
    first = cut.suffix[0] if len(cut.suffix) else None
    a = first(z) if isinstance(first, ACTIVATIONS) else z
    return h, a, cut.suffix(z)


# Element-wise non-linearities whose output counts as the layer's activation.
ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU)
