"""What the hypernetwork generates from a delta: the *target*, at unit scale.

Every delta is generated at unit scale, ``omega = delta / rho * unit``, with
``unit = sqrt(out * in)`` when rho is the Frobenius norm (so omega's entries
have unit mean square, like the noise) and 1 when rho is the std; a delta is
rebuilt as ``rho * omega / unit``. What the network generates (the *target*):

- ``matrix`` (the paper): omega itself, zero-padded for the U-Net;
- ``rank1``: ``v = omega r_hat / sqrt(in)``, the output factor of the rank-one
  matrix ``u r^T`` nearest omega, with unit mean-square entries; r_hat = r / |r|
  with r = i_L(x) (plain-SGD overfits) or sign(i_L(x)) (Adam), the store's
  ``rank1_basis`` (ocd/store.py says why). omega is rebuilt as
  ``sqrt(in) v r_hat^T``. i_L(x) is part of the conditioning, so r is known at
  test time; only u (stored as ``u``) is learnt.
- ``flat``: omega itself, flattened to out x in numbers, with the VecNet
  denoiser instead of the U-Net. For deltas that are not rank one (a layer
  that sees a set of inputs per sample, as TinyNeRF's) at a CPU's cost: the
  ``cpu`` U-Net takes 1.8 s a step on TinyNeRF's 128 x 63 layer, this about 0.03 s.

The denoiser (ocd.hypernet.diffusion) and the regressor (ocd.hypernet.regressor)
both generate a target; :class:`TargetMeta` says which, and at what scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from ocd.delta import COND, StoreError, rank1_right, rho_of
from ocd.hypernet.neighbours import NEIGHBOURS, Retriever

TARGETS = ("matrix", "rank1", "flat")


def unit_factor(rho: str, shape: tuple[int, int]) -> float:
    return math.sqrt(shape[0] * shape[1]) if rho == "fro" else 1.0


@dataclass(frozen=True)
class TargetMeta:
    """What a generator of deltas needs besides its weights: the layer, the target and its scale."""

    shape: tuple[int, int]  # the layer's weight [out, in]
    unit: float
    target: str = "matrix"  # matrix | rank1 | flat
    rho: str = "fro"  # the store's scale definition
    basis: str = "input"  # rank1: the right factor r(i_L), the store's rank1_basis
    neighbours: int = 0  # > 0: also conditioned on the mean target of that many retrieved train rows

    @property
    def rep_shape(self) -> tuple[int, ...]:
        """Shape of one generated target: [out, in] (matrix), [out] (rank1) or [out * in] (flat)."""
        if self.target == "matrix":
            return self.shape
        return (self.shape[0],) if self.target == "rank1" else (self.shape[0] * self.shape[1],)

    @classmethod
    def from_config(cls, meta: dict):
        """The meta a checkpoint's configuration holds (its keys of this class; a later class adds its own)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if k in ("shape", "padded", "output_grid") else v for k, v in meta.items()
                      if k in names})


def target_meta(shape, rho: str, target: str = "matrix", basis: str = "input", neighbours: int = 0) -> TargetMeta:
    if target not in TARGETS:
        raise ValueError(f"unknown diffusion target {target!r}; valid: {', '.join(TARGETS)}")
    shape = (int(shape[0]), int(shape[1]))
    return TargetMeta(shape, unit_factor(rho, shape), target, rho, basis, neighbours)


def cond_names(meta: TargetMeta) -> tuple[str, ...]:
    """The conditioning parts the denoiser and the regressor read: I(x)'s, and the retrieved one
    (ocd.hypernet.neighbours) where ``meta.neighbours`` > 0."""
    return (*COND, NEIGHBOURS) if meta.neighbours else COND


def reader_names(target: str) -> tuple[str, ...]:
    """The store arrays training on ``target`` reads (rank1 never reads the matrices)."""
    return ("u" if target == "rank1" else "delta", "rho", *COND)


def batch_tensors(batch: dict, meta: TargetMeta, device) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """(the unit-scale target, conditioning parts, rho) of a store minibatch."""
    rho = torch.as_tensor(batch["rho"], dtype=torch.float32, device=device).clamp_min(1e-12)
    parts = [torch.as_tensor(batch[n], dtype=torch.float32, device=device) for n in cond_names(meta)]
    if meta.target != "rank1":
        delta = torch.as_tensor(batch["delta"], dtype=torch.float32, device=device)
        omega = delta / rho[:, None, None] * meta.unit
        return omega.reshape(len(omega), *meta.rep_shape), parts, rho
    # omega r_hat / sqrt(in) with omega r_hat = u |r| unit / rho
    u = torch.as_tensor(batch["u"], dtype=torch.float32, device=device)
    factor = rank1_right(parts[0], meta.basis).norm(dim=1) * meta.unit / (rho * math.sqrt(meta.shape[1]))
    return u * factor[:, None], parts, rho


def true_omega(batch: dict, meta: TargetMeta, device) -> torch.Tensor:
    """The stored deltas at unit scale, [B, out, in] (for diagnostics)."""
    rho = torch.as_tensor(batch["rho"], dtype=torch.float32, device=device).clamp_min(1e-12)
    return torch.as_tensor(batch["delta"], dtype=torch.float32, device=device) / rho[:, None, None] * meta.unit


def target_of(delta: torch.Tensor, layer_input: torch.Tensor, meta: TargetMeta) -> torch.Tensor:
    """Deltas [B, out, in] -> the unit-scale targets the generator makes [B, *rep_shape]
    (:func:`to_matrix` undone; for rank1 the output factor nearest omega, as ``u`` is stored)."""
    omega = normalised(delta.float(), meta)
    if meta.target != "rank1":
        return omega.reshape(len(omega), *meta.rep_shape)
    r = rank1_right(layer_input, meta.basis)
    r_hat = r / r.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (omega @ r_hat[:, :, None])[:, :, 0] / math.sqrt(meta.shape[1])


def retriever_of(meta: TargetMeta, parts: list[torch.Tensor], deltas, batch: int = 1024) -> Retriever:
    """What a generator trained with ``meta.neighbours`` > 0 retrieves from at inference: the
    train rows' conditioning ``parts`` and their targets, made from their stored ``deltas``
    (a tensor or a store array, read ``batch`` rows at a time)."""
    device = parts[0].device
    targets = torch.cat([target_of(torch.as_tensor(deltas[i:i + batch]).to(device), parts[0][i:i + batch], meta)
                         for i in range(0, len(parts[0]), batch)])
    return Retriever(parts, targets, meta.neighbours)


def to_matrix(rep: torch.Tensor, layer_input: torch.Tensor, meta: TargetMeta) -> torch.Tensor:
    """Generated targets [B, *rep_shape] -> unit-scale deltas omega [B, out, in]."""
    if meta.target != "rank1":
        return rep.reshape(len(rep), *meta.shape)
    r = rank1_right(layer_input, meta.basis)
    r_hat = r / r.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return math.sqrt(meta.shape[1]) * rep[:, :, None] * r_hat[:, None, :]


def normalised(omega: torch.Tensor, meta: TargetMeta) -> torch.Tensor:
    """omega rescaled so that rho_of(omega / unit) == 1: its size left to the scale model."""
    return omega * meta.unit / rho_of(omega, meta.rho).clamp_min(1e-12)[:, None, None]


def require_rank1(weight_shape, input_width: int) -> None:
    """The rank1 target needs a matrix weight applied to one input vector per sample."""
    if len(weight_shape) != 2 or weight_shape[1] != input_width:
        raise StoreError(f"diffusion.target rank1 needs a matrix weight [out, in] applied to a per-sample "
                         f"input vector of width in; the store's layer has weight {tuple(weight_shape)} and "
                         f"input width {input_width}; use diffusion.target: matrix")


def cosine_summary(omega: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    cos = F.cosine_similarity(omega.flatten(1), truth.flatten(1), dim=1)
    n = len(cos)
    return {"cosine_mean": float(cos.mean()), "cosine_sd": float(cos.std()) if n > 1 else 0.0,
            "cosine_samples": n}
