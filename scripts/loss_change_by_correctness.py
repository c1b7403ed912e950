"""Where OCD's test loss changes: samples the base model gets right vs wrong.

    .venv/bin/python scripts/loss_change_by_correctness.py [artifacts]

Reads artifacts/eval/per_sample_loss.csv and the base model (classification only).
"""

import sys
from pathlib import Path

import pandas as pd

from ocd import base
from ocd.data import load_dataset
from ocd.params import load_params

root = Path(sys.argv[1] if len(sys.argv) > 1 else "artifacts")
data = load_dataset(load_params("params.yaml").data)
model = base.load(root / "base")
right = (base.predict(model.model, data.x_test).argmax(1) == data.y_test).numpy()
df = pd.read_csv(root / "eval/per_sample_loss.csv")
change = df["ocd"] - df["base"]
for name, mask in (("base right", right), ("base wrong", ~right)):
    print(f"{name}: n={mask.sum()}, mean loss change {change[mask].mean():+.5f}, sum {change[mask].sum():+.2f}")
