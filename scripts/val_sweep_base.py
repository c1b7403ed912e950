"""Validation sweep behind the base-model defaults (see docs/RESULTS.md).

    python scripts/val_sweep_base.py epochs=10 schedule=cosine

Trains LeNet5 on 80% of the mnist5k TRAIN split with seeds 0 and 1 and prints
cross-entropy and accuracy on the other 20%. The test split is never read.
"""

import sys

import torch
from sklearn.model_selection import train_test_split

from ocd.data.registry import load_dataset
from ocd.models import base
from ocd.models.registry import ModelSpec
from ocd.params import DataParams, ModelParams, parse_params

torch.set_num_threads(1)
overrides = dict(arg.split("=", 1) for arg in sys.argv[1:])
overrides = {k: int(v) if v.isdigit() else v for k, v in overrides.items()}
d = load_dataset(DataParams())
task = d.make_task()
train, val = train_test_split(list(range(len(d.y_train))),
                              test_size=0.2, stratify=d.y_train.numpy(), random_state=1)
for seed in (0, 1):
    bp = parse_params({"base": dict(overrides, seed=seed)}).base
    spec = ModelSpec.from_params(ModelParams(), d.in_shape, d.n_outputs)
    base.seed_everything(seed)
    model = spec.build()
    base.train(model, task, d.x_train[train], d.y_train[train], bp, progress=False)
    print(overrides, "seed", seed, base.evaluate(model, task, d.x_train[val], d.y_train[val]), flush=True)
