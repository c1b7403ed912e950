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
from ocd.device import CPU, Compute, generator
from ocd.hypernet import diffusion, regressor, scale
from ocd.hypernet.diffusion import DeltaDiffusion
from ocd.hypernet.neighbours import Retriever, with_neighbours
from ocd.hypernet.regressor import DeltaRegressor
from ocd.hypernet.scale import ScaleModel
from ocd.models import base
from ocd.models.cut import forward_with_layer_weights, layer_io, linear_cut, rows_per_pass
from ocd.rows import SERVED


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
        gen = generator(seed * 1_000_003, first_row + i)
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


def regressor_deltas(scaler: ScaleModel, reg: DeltaRegressor, parts: list[torch.Tensor],
                     unit: float) -> torch.Tensor:
    """The regressor row's deltas [N, out, in]: its direction sized by the scale model's rho_hat."""
    return scaler(parts)[:, None, None] * reg.omega(parts) / unit


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
    regressor: DeltaRegressor | None  # None: not asked for, and not there (load_trained)
    # diffusion.neighbours > 0: the train rows the generators retrieve from (set by who has the store)
    retriever: Retriever | None = None
    # the denoiser's held-out loss beside its references (ocd.hypernet.diffusion.diagnose); {}: none
    held_out: dict | None = None
    # where the models run (the context they were loaded in)
    compute: Compute = CPU


MODEL_STAGES = {"diffusion.pt": "train_diffusion", "scale.pt": "train_scale", "regressor.pt": "train_regressor"}


def missing_model(models_dir: str | Path, name: str) -> FileNotFoundError:
    return FileNotFoundError(f"{Path(models_dir) / name} is missing; run the {MODEL_STAGES[name]} stage first")


def load_trained(base_dir: str | Path, models_dir: str | Path, compute: Compute,
                 with_regressor: bool = True) -> Trained:
    """Load and cross-check: every checkpoint must come from this base model and one layer.
    The denoiser runs at ``compute``'s precision. Without ``with_regressor`` a missing
    regressor.pt is no error (``Trained.regressor`` None): only its rows need it."""
    b = base.load(base_dir, compute)
    models_dir = Path(models_dir)
    loaders = {"diffusion.pt": lambda path: diffusion.load(path, precision=compute.precision),
               "scale.pt": scale.load, "regressor.pt": regressor.load}
    stage = MODEL_STAGES
    if not with_regressor and not (models_dir / "regressor.pt").is_file():
        del loaders["regressor.pt"]
    for f in loaders:
        if not (models_dir / f).is_file():
            raise missing_model(models_dir, f)
    loaded = {f: load(models_dir / f) for f, load in loaders.items()}
    for name, (_, ckpt) in loaded.items():
        prov = ckpt["provenance"]
        if prov["base_sha256"] != b.sha256:
            raise StoreError(f"{models_dir / name} was trained for another base model "
                             f"({prov['base_sha256'][:12]}, this one is {b.sha256[:12]}); rerun {stage[name]}")
    if len({ckpt["provenance"]["layer"] for _, ckpt in loaded.values()}) != 1:
        names = [n.split(".")[0] for n in loaded]
        raise StoreError(f"{models_dir}: the {', '.join(names[:-1])} and {names[-1]} models were trained for "
                         "different layers")
    (diff, dckpt), (scaler, sckpt) = loaded["diffusion.pt"], loaded["scale.pt"]
    reg = loaded["regressor.pt"][0] if "regressor.pt" in loaded else None
    return Trained(b, dckpt["provenance"]["layer"], diff, scaler, sckpt["mean_rho"], reg,
                   held_out=dckpt.get("held_out") or {}, compute=compute)


# The rows `ocd predict` can serve: those the calibration rows choose among
# (ocd.rows.SERVED), and the OCD ensemble it served before it served the chosen row.
SERVABLE = (*SERVED, "ocd_ensemble")


@dataclass
class Pool:
    """The train rows the retrieval rows read: their stored deltas [N, out, in] (a tensor or
    a store array), their conditioning parts, and their input features (the knn row in
    input space; None where it retrieves in conditioning space)."""

    delta: object
    parts: list[torch.Tensor]
    features: torch.Tensor | None = None


@torch.no_grad()
def serve(t: Trained, task, x: torch.Tensor, row: str, chosen: dict, pool: Pool | None, k: int = 5,
          steps: int = 10, eta: float = 0.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(base outputs, ``row``'s outputs) for inputs x, on the CPU: the row as evaluate computed
    it, with the step size, temperature and retrieval that the calibration rows chose
    (``chosen``: evaluate's metrics.json ``chosen`` record). ``ocd`` is one sample, as the
    table's row; ``ocd_ensemble`` the task's ensemble of k; ``knn`` rows need ``pool``."""
    from ocd.hypernet.neighbours import knn_mix, neighbours, standardiser

    if row not in SERVABLE:
        raise ValueError(f"unknown row {row!r}; ocd predict serves {', '.join(SERVABLE)}")
    device = t.compute.device
    model = t.base.model.to(device).eval()
    x = x.to(device)
    parts, base_out = conditioning(linear_cut(model, t.layer), x, rows_per_pass(model))
    family = row.split("_")[0]
    step = chosen["lambda"][family] if row.endswith("_lambda") or row == "knn_temperature" else 1.0
    if family in ("ocd", "regressor"):  # the generators' conditioning
        if t.diff.meta.neighbours and t.retriever is None:
            raise StoreError("these models were trained with diffusion.neighbours > 0: they retrieve from the "
                             "store's train rows, so predicting needs the store (ocd predict --store)")
        given = with_neighbours(parts, t.retriever.to(device) if t.retriever is not None else None)
    if family == "base" or row == "temperature":
        out = base_out
    elif family == "ocd":
        _, deltas = ocd_deltas(t.diff.to(device), t.scaler.to(device), given, k if row == "ocd_ensemble" else 1,
                               steps, eta, seed)
        if row == "ocd_ensemble":
            out = task.ensemble(torch.stack([apply_deltas(model, t.layer, d, x) for d in deltas]))
        else:
            out = apply_deltas(model, t.layer, step * deltas[0], x)
    elif family == "regressor":
        delta = regressor_deltas(t.scaler.to(device), t.regressor.to(device), given, t.diff.meta.unit)
        out = apply_deltas(model, t.layer, step * delta, x)
    else:  # knn
        if pool is None:
            raise StoreError("the knn rows retrieve the store's train deltas: predicting needs the store")
        space, kk, weighting = (chosen["knn"][key] for key in ("space", "k", "weighting"))
        if space == "input":  # as evaluate's retrieval: the family's input features, if it has its own
            features = getattr(model, "input_features", lambda v: v)
            query, keys = features(x), features(pool.features.to(device))
        else:
            standardise = standardiser([p.to(device) for p in pool.parts])
            query, keys = standardise(parts), standardise([p.to(device) for p in pool.parts])
        delta = knn_mix(pool.delta, *neighbours(query, keys, kk), kk, weighting)
        out = apply_deltas(model, t.layer, step * delta, x)
    if row.endswith("temperature"):
        out = task.with_temperature(out, chosen["temperature"][row])
    return base_out.cpu(), out.cpu()
