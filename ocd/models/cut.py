"""The layer contract: a model cut at one weight layer, and the per-sample-weight primitive.

Every model names its weight layers as children (``conv1``, ``fc1``,
``layer1``, ...) and can be cut at any of them, so the layer's input is
computed once per sample, and the layer can run with a different weight for
every sample of a batch (:func:`forward_with_layer_weights`). Model families
(ocd/models/registry.py, ocd/models/nerf.py, ocd/models/sentence.py) build on this module; it knows
none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

from ocd.errors import ModelError


# # The layer contract. A model is cut at one of its weight layers into
# ``enter -> layer -> leave``: ``enter(x)`` gives, per sample, the layer's
# input as a *set* ``h: [B, P, *in]`` (P = 1 for a model that feeds the layer
# one vector per sample; P = points per ray times rays for a NeRF view, tokens
# for a transformer) and ``ctx``, whatever the rest of the model needs to
# finish the forward pass (a tensor batched along dim 0, or None); the layer
# maps every one of the P inputs; ``leave(z, ctx)`` finishes the forward pass
# from the layer's outputs ``z: [B, P, *out]``. A cut also says how to
# summarise a sample's P points into one conditioning vector
# (``point_weights``, e.g. a NeRF's transmittance weights) and how to encode
# the model's output for the conditioning (``encode_output``).
#
# An ``nn.Sequential`` is cut by position (:func:`sequential_cut`, P = 1). A
# model family whose forward pass is not a chain of children defines
# ``cut(name) -> LayerCut`` itself (ocd/models/nerf.py); :func:`cut_at` asks the model
# first. Nothing else in the library knows which family it runs.


def weight_layers(model: nn.Module) -> list[str]:
    """Names of the layers with a weight of two or more dimensions, in order."""
    return [name for name, m in model.named_children()
            if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() >= 2]


def check_layer(model: nn.Module, name: str) -> nn.Module:
    if name not in weight_layers(model):
        raise ModelError(f"{name!r} is not a weight layer of this model; "
                         f"valid names: {', '.join(weight_layers(model))}")
    return getattr(model, name)


@dataclass
class LayerInput:
    """A batch of layer inputs: ``h [B, P, *in]`` and the rest's context (batched along dim 0, or None)."""

    h: torch.Tensor
    ctx: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.h)

    @property
    def points(self) -> int:
        """P: inputs of the layer per sample."""
        return self.h.shape[1]

    def __getitem__(self, rows) -> "LayerInput":
        return LayerInput(self.h[rows], None if self.ctx is None else self.ctx[rows])

    def repeat(self, k: int) -> "LayerInput":
        """The batch k times over (draw-major), as ``z.flatten(0, 1)`` of a [k, B, ...] stack."""
        def rep(t):
            return t.repeat(k, *[1] * (t.dim() - 1))

        return LayerInput(rep(self.h), None if self.ctx is None else rep(self.ctx))

    def detach(self) -> "LayerInput":
        return LayerInput(self.h.detach(), None if self.ctx is None else self.ctx.detach())


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass
class LayerCut:
    """The model cut at one layer: ``model(x) == leave(layer(h), ctx)`` with ``h, ctx = enter(x)``,
    the layer applied to each of a sample's P inputs (see the contract above)."""

    name: str
    layer: nn.Module
    enter: Callable[[torch.Tensor], LayerInput]
    leave: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    # the element-wise non-linearity right after the layer (its output is the layer's activation a_L)
    activation: Callable[[torch.Tensor], torch.Tensor] = _identity
    # (z [B, P, out], ctx) -> [B, P] weights summing to 1 per sample: how the conditioning
    # summarises a sample's points; None: the plain mean
    point_weights: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None
    # the model's outputs -> the conditioning's output part [B, C'] (e.g. an image encoder)
    encode_output: Callable[[torch.Tensor], torch.Tensor] = _identity
    # that part as a picture, (channels, height, width) with C' = their product (a pooled
    # spectrogram, a thumbnail), which a convolutional encoder may read; (): a plain vector
    output_grid: tuple[int, ...] = ()
    # how the conditioning pools the layer's activation over a sample's P points, in their
    # order (a signal's time): s = 1, over all of them; s > 1, over each of s equal stretches,
    # the parts side by side (:func:`pool_scales`). The layer's input stays pooled over all
    # points: the rank1 target and the store's u are made from it.
    scales: tuple[int, ...] = (1,)

    def apply(self, inp: LayerInput) -> torch.Tensor:
        """The layer with its own weight on every point: ``[B, P, *out]``."""
        return apply_pointwise(self.layer, inp.h)

    def forward(self, inp: LayerInput, z: torch.Tensor | None = None) -> torch.Tensor:
        """The model's outputs from the layer's input (and its output z, if already known)."""
        return self.leave(self.apply(inp) if z is None else z, inp.ctx)


def apply_pointwise(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``layer`` on every one of the P inputs of every sample: [B, P, *in] -> [B, P, *out]."""
    return layer(h.flatten(0, 1)).unflatten(0, h.shape[:2])


def sequential_cut(model: nn.Sequential, name: str) -> LayerCut:
    """Cut a chain of named children at ``name``: one input per sample (P = 1)."""
    check_layer(model, name)
    if not isinstance(model, nn.Sequential):
        raise ModelError(f"a {type(model).__name__} is not an nn.Sequential and defines no cut(name); "
                         "a model family that is not a chain of layers must define how it is cut")
    names = [n for n, _ in model.named_children()]
    i = names.index(name)
    children = list(model.children())
    prefix, suffix = nn.Sequential(*children[:i]), nn.Sequential(*children[i + 1:])
    first = suffix[0] if len(suffix) else None
    return LayerCut(
        name, children[i],
        enter=lambda x: LayerInput(prefix(x).unsqueeze(1)),
        leave=lambda z, ctx: suffix(z.squeeze(1)),
        activation=first if isinstance(first, ACTIVATIONS) else _identity,
    )


def cut_at(model: nn.Module, name: str) -> LayerCut:
    """The model cut at layer ``name``: the model's own ``cut(name)``, else the Sequential cut."""
    own = getattr(model, "cut", None)
    if callable(own):
        check_layer(model, name)
        return own(name)
    return sequential_cut(model, name)


def layer_with_weights(layer: nn.Module, weights: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Apply ``layer`` to the P inputs ``h[b]`` with weight ``weights[b]`` for every b.

    ``weights`` is ``[B, *layer.weight.shape]``, ``h`` is ``[B, P, ...]``.
    Works for any layer whose forward reads ``self.weight`` (Linear, Conv).
    """
    if weights.shape[1:] != layer.weight.shape:
        raise ModelError(f"per-sample weights have shape {tuple(weights.shape[1:])}, "
                         f"the layer's weight is {tuple(layer.weight.shape)}")
    if weights.shape[0] != h.shape[0]:
        raise ModelError(f"{weights.shape[0]} weights for a batch of {h.shape[0]} inputs")

    def one(w: torch.Tensor, hb: torch.Tensor) -> torch.Tensor:
        return functional_call(layer, {"weight": w}, (hb,))

    return vmap(one)(weights, h)


def forward_with_layer_weights(model: nn.Module, name: str, weights: torch.Tensor,
                               x: torch.Tensor) -> torch.Tensor:
    """``model(x[b])`` with layer ``name``'s weight replaced by ``weights[b]``, batched.

    The rest of the model (every other layer, and this layer's bias) keeps its
    own parameters. One forward pass for the whole batch, no model copies.
    """
    cut = cut_at(model, name)
    inp = cut.enter(x)
    return cut.leave(layer_with_weights(cut.layer, weights, inp.h), inp.ctx)


def layer_with_weight_stack(layer: nn.Module, weights: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Apply ``layer`` with each of ``weights[k]`` to the whole batch ``h [B, P, ...]``: ``[K, B, P, ...]``.

    The all-pairs sibling of :func:`layer_with_weights`: K weight draws times
    B inputs in one batched call, without copying the weights B times.
    """
    if weights.shape[1:] != layer.weight.shape:
        raise ModelError(f"weight stack has shape {tuple(weights.shape[1:])}, "
                         f"the layer's weight is {tuple(layer.weight.shape)}")
    flat = h.flatten(0, 1)
    return vmap(lambda w: functional_call(layer, {"weight": w}, (flat,)))(weights).unflatten(1, h.shape[:2])


def rows_per_pass(model: nn.Module, default: int = 256) -> int:
    """How many samples one batched pass of ``model`` should hold: a model
    whose sample is large (a NeRF view is 131,072 points) says so with a
    ``rows_per_pass`` attribute."""
    return int(getattr(model, "rows_per_pass", default))


@dataclass
class LayerIO:
    """One batch through the cut with the model's own weights."""

    inp: LayerInput  # the layer's input set and context
    z: torch.Tensor  # the layer's output [B, P, out]
    output: torch.Tensor  # the model's output f(x; theta)
    cond: list[torch.Tensor]  # I(x): [i_L (pooled), a_L (pooled), the encoded output], each [B, d]


def pool_points(cut: LayerCut, values: torch.Tensor, z: torch.Tensor, ctx) -> torch.Tensor:
    """A sample's P vectors ``[B, P, d]`` summarised as one ``[B, d]`` with the cut's point weights."""
    if values.shape[1] == 1:
        return values[:, 0]
    if cut.point_weights is None:
        return values.mean(1)
    return torch.einsum("bp,bpd->bd", cut.point_weights(z, ctx), values)


def pool_scales(cut: LayerCut, values: torch.Tensor, z: torch.Tensor, ctx) -> torch.Tensor:
    """``[B, P, d]`` pooled at each of the cut's scales: ``[B, d * sum(scales)]``, the whole
    first where scale 1 comes first. A stretch's points keep the cut's point weights,
    renormalised within it."""
    if cut.scales == (1,) or values.shape[1] == 1:
        return pool_points(cut, values, z, ctx)
    weights = (torch.full(values.shape[:2], 1.0 / values.shape[1], device=values.device, dtype=values.dtype)
               if cut.point_weights is None else cut.point_weights(z, ctx))
    parts = []
    for s in cut.scales:
        for w, v in zip(weights.tensor_split(s, dim=1), values.tensor_split(s, dim=1)):
            parts.append(torch.einsum("bp,bpd->bd", w / w.sum(1, keepdim=True).clamp_min(1e-12), v))
    return torch.cat(parts, dim=1)


def activation_width(cut: LayerCut) -> int:
    """The width of the conditioning's activation part: the layer's outputs at each scale."""
    return cut.layer.out_features * sum(cut.scales)


@torch.no_grad()
def layer_io(cut: LayerCut, x: torch.Tensor) -> LayerIO:
    """I(x) parts for the cut layer, with the model's own weights.

    The conditioning holds the layer's input, its activation (the output of
    the element-wise non-linearity right after the layer, or the layer's
    output when none follows), each summarised over the sample's points, and
    the model's output, encoded by the cut.
    """
    inp = cut.enter(x)
    z = cut.apply(inp)
    out = cut.leave(z, inp.ctx)
    a = cut.activation(z)
    cond = [pool_points(cut, inp.h.flatten(2), z, inp.ctx), pool_scales(cut, a.flatten(2), z, inp.ctx),
            cut.encode_output(out)]
    return LayerIO(inp, z, out, cond)


# Element-wise non-linearities whose output counts as the layer's activation.
ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU)


def linear_cut(model: nn.Module, name: str) -> LayerCut:
    """Cut at ``name``, which must be a Linear layer (a matrix applied to each of a sample's input vectors)."""
    cut = cut_at(model, name)
    if not isinstance(cut.layer, nn.Linear):
        raise ModelError(f"layer {name!r} is a {type(cut.layer).__name__}; the overfit stage "
                         "needs a Linear layer (a 2-D weight applied to each of a sample's input vectors)")
    return cut
