"""The trained pipeline as one object: base model, selected layer, diffusion
and scale models, checked to belong together; and OCD predictions for new inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ocd import base, diffusion, regressor, scale
from ocd.device import get_device, use_precision
from ocd.diffusion import DeltaDiffusion
from ocd.evaluation import apply_deltas, conditioning, ocd_deltas
from ocd.models import rows_per_pass
from ocd.overfit import linear_cut
from ocd.regressor import DeltaRegressor
from ocd.scale import ScaleModel
from ocd.store import StoreError


@dataclass
class Trained:
    base: base.BaseModel
    layer: str
    diff: DeltaDiffusion
    scaler: ScaleModel
    mean_rho: float
    regressor: DeltaRegressor


def load_trained(base_dir: str | Path, models_dir: str | Path, precision: str = "fp32") -> Trained:
    """Load and cross-check: every checkpoint must come from this base model and one layer.
    ``precision`` (compute.precision) is set for this process and the denoiser."""
    use_precision(precision)
    b = base.load(base_dir)
    models_dir = Path(models_dir)
    loaders = {"diffusion.pt": diffusion.load, "scale.pt": scale.load, "regressor.pt": regressor.load}
    for f in loaders:
        if not (models_dir / f).is_file():
            raise FileNotFoundError(f"{models_dir / f} is missing; run the train_diffusion stage first")
    loaded = {f: load(models_dir / f) for f, load in loaders.items()}
    for name, (_, ckpt) in loaded.items():
        prov = ckpt["provenance"]
        if prov["base_sha256"] != b.sha256:
            raise StoreError(f"{models_dir / name} was trained for another base model "
                             f"({prov['base_sha256'][:12]}, this one is {b.sha256[:12]}); rerun train_diffusion")
    if len({ckpt["provenance"]["layer"] for _, ckpt in loaded.values()}) != 1:
        raise StoreError(f"{models_dir}: the diffusion, scale and regressor models were trained for different layers")
    (diff, dckpt), (scaler, sckpt), (reg, _) = loaded.values()
    diff.precision = precision
    return Trained(b, dckpt["provenance"]["layer"], diff, scaler, sckpt["mean_rho"], reg)


@torch.no_grad()
def predict(t: Trained, x: torch.Tensor, k: int = 1, steps: int = 10, eta: float = 0.0,
            seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Base outputs and OCD outputs (the task's ensemble of k samples) for inputs x,
    computed on the library's device and returned on the CPU."""
    device = get_device()
    model = t.base.model.to(device).eval()
    x = x.to(device)
    parts, out = conditioning(linear_cut(model, t.layer), x, rows_per_pass(model))
    _, deltas = ocd_deltas(t.diff.to(device), t.scaler.to(device), parts, k, steps, eta, seed)
    members = torch.stack([apply_deltas(model, t.layer, d, x) for d in deltas])
    return out.cpu(), members.cpu()
