"""The ``nn.Sequential`` families: ``lenet5`` (the paper's MNIST model) and
``mlp`` (the tables' model). Their layers are cut by name (ocd/models/cut.py:
an ``nn.Linear`` is a matrix layer with one input per sample).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ocd.models.cut import ModelError


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
