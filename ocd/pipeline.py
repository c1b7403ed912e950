"""Inference: OCD's deltas sampled for new inputs and applied to the base model
(what ``ocd predict`` and the evaluation both use), and the trained pipeline
as one object: base model, selected layer, diffusion and scale models,
checked to belong together."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ocd.delta import StoreError
from ocd.device import get_device, use_precision
from ocd.hypernet import diffusion, regressor, scale
from ocd.hypernet.diffusion import DeltaDiffusion
from ocd.hypernet.neighbours import Retriever, with_neighbours
from ocd.hypernet.regressor import DeltaRegressor
from ocd.hypernet.scale import ScaleModel
from ocd.models import base
from ocd.models.cut import forward_with_layer_weights, layer_io, linear_cut, rows_per_pass


@torch.no_grad()
def apply_deltas(model: nn.Module, layer: str, deltas: torch.Tensor, x: torch.Tensor,
                 batch: int | None = None) -> torch.Tensor:
    """Outputs of ``model`` with ``W + deltas[i]`` as layer's weight for ``x[i]``
    (``batch`` samples per pass, by default the model's :func:`rows_per_pass`)."""
    weight = getattr(model, layer).weight
    batch = batch or rows_per_pass(model)
    return torch.cat([forward_with_layer_weights(model, layer, weight + deltas[i:i + batch].to(weight),
                                                 x[i:i + batch]) for i in range(0, len(x), batch)])


@torch.no_grad()
def sample_deltas(diff: DeltaDiffusion, scaler: ScaleModel, parts: list[torch.Tensor], k: int,
                  steps: int, eta: float, seed: int, rows_per_pass: int = 128,
                  first_row: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """k sampled unit-scale deltas per sample [k, N, out, in] and rho_hat [N].
    ``parts[0]`` is the layer input (the rank1 target rebuilds the matrix from it).
    ``first_row``: the number of ``parts``' first row in the whole split; a
    batch's noise is seeded by its first row's number, so a block of rows
    gets the same draws wherever it is sampled (evaluation on several ranks).

    The k members of a batch are sampled in one batched DDIM pass of about
    ``rows_per_pass`` rows (larger passes ran slower on the CPU: 54 rows/s at
    128, 25 at 1,250); the conditioning is embedded once per sample.
    """
    omegas, rhos = [], []
    n = len(parts[0])
    batch = max(1, rows_per_pass // k)
    for i in range(0, n, batch):
        p = [v[i:i + batch] for v in parts]
        c = diff.embed(p)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + first_row + i)
        rep = diff.sample(c.repeat(k, 1), steps=steps, eta=eta, generator=gen)
        omega = diff.omega(rep, p[0].repeat(k, 1))
        omegas.append(omega.view(k, len(c), *omega.shape[1:]))
        rhos.append(scaler(p))
    return torch.cat(omegas, dim=1), torch.cat(rhos)


def ocd_deltas(diff: DeltaDiffusion, scaler: ScaleModel, parts: list[torch.Tensor], k: int, steps: int,
               eta: float, seed: int, first_row: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """OCD's deltas for every sample: (unit-scale omegas, deltas sized by rho_hat), both [k, N, out, in]."""
    omegas, rho_hat = sample_deltas(diff, scaler, parts, k, steps, eta, seed, first_row=first_row)
    return omegas, rho_hat[None, :, None, None] * omegas / diff.meta.unit


@torch.no_grad()
def conditioning(cut, x: torch.Tensor, batch: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """I(x) parts and the model's outputs for every row of x, ``batch`` rows
    per pass (a NeRF view's layer inputs are 131,072 points: none is kept)."""
    parts, outputs = [], []
    for i in range(0, len(x), batch):
        io = layer_io(cut, x[i:i + batch])
        parts.append(io.cond)
        outputs.append(io.output)
    return [torch.cat(p) for p in zip(*parts)], torch.cat(outputs)



@dataclass
class Trained:
    base: base.BaseModel
    layer: str
    diff: DeltaDiffusion
    scaler: ScaleModel
    mean_rho: float
    regressor: DeltaRegressor
    # diffusion.neighbours > 0: the train rows the generators retrieve from (set by who has the store)
    retriever: Retriever | None = None


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
    if t.diff.meta.neighbours and t.retriever is None:
        raise StoreError("these models were trained with diffusion.neighbours > 0: they retrieve from the "
                         "store's train rows, so predicting needs the store (ocd predict --store)")
    parts = with_neighbours(parts, t.retriever.to(device) if t.retriever is not None else None)
    _, deltas = ocd_deltas(t.diff.to(device), t.scaler.to(device), parts, k, steps, eta, seed)
    members = torch.stack([apply_deltas(model, t.layer, d, x) for d in deltas])
    return out.cpu(), members.cpu()
