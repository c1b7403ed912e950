"""The maths of a weight delta, apart from where deltas are stored: its scale rho,
its rank-one factors, the conditioning's parts. The denoiser, the scale model
and the regressor use it without the store (and without Zarr).
"""

from __future__ import annotations

import numpy as np
import torch

from ocd.errors import StoreError

# The conditioning I(x), in the order every model takes its parts (the store's arrays of the same names).
COND = ("cond/layer_input", "cond/layer_activation", "cond/output")





# overfit.rho: the definitions of a delta's scale, and what the store's attrs say of each
RHO = {"fro": "Frobenius norm of delta (the paper)",
       "std": "standard deviation of delta's entries (the authors' code)"}
DTYPES = ("float32", "float16")  # overfit.dtype: how a store keeps its deltas (float16: half the bytes)


def rho_of(delta: torch.Tensor, definition: str) -> torch.Tensor:
    """The scale of each delta: Frobenius norm (the paper) or std (the authors' code)."""
    flat = delta.flatten(1)
    if definition == "fro":
        return flat.norm(dim=1)
    if definition == "std":
        return flat.std(dim=1)
    raise StoreError(f"unknown rho definition {definition!r}; valid: {', '.join(RHO)}")


# The right factor r of a rank-one delta u r^T, known from the layer input h:
# plain gradient steps on one sample add g_t h^T, so r = h ("input"); Adam
# divides every entry by its own running RMS, m_ij / sqrt(v_ij) =
# m_i h_j / (sqrt(v_i) |h_j|) = (m_i / sqrt(v_i)) sign(h_j) (eps aside), so
# r = sign(h) ("sign"). Measured on California's fc1 Adam store: u h^T explains
# 68% of |delta|^2, u sign(h)^T 99.99% (docs/RESULTS.md).
RANK1_BASES = ("input", "sign")
BASIS_OF_OPTIMIZER = {"sgd": "input", "adam": "sign"}


def rank1_right(layer_input, basis: str):
    """r(h) for a basis of RANK1_BASES; numpy arrays or torch tensors."""
    if basis == "input":
        return layer_input
    if basis == "sign":
        return layer_input.sign() if isinstance(layer_input, torch.Tensor) else np.sign(layer_input)
    raise StoreError(f"unknown rank-one basis {basis!r}; valid: {', '.join(RANK1_BASES)}")


def rank_one_factor(delta: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: u = delta r / |r|^2, the output factor of the rank-one matrix
    u r^T nearest to delta for the given right factor r (least squares), and
    the share of |delta|_F^2 it explains, |u|^2 |r|^2 / |delta|_F^2 (the
    residual is orthogonal to u r^T).
    """
    delta = np.asarray(delta, dtype=np.float32)
    x = np.asarray(right, dtype=np.float32)
    if delta.ndim != 3 or x.ndim != 2 or x.shape != (delta.shape[0], delta.shape[2]):
        raise StoreError(f"a rank-one factor needs deltas [N, out, in] and right factors [N, in]; "
                         f"got {delta.shape} and {x.shape}")
    xx = np.einsum("bi,bi->b", x, x)
    u = np.einsum("boi,bi->bo", delta, x) / np.maximum(xx, 1e-30)[:, None]
    energy = np.einsum("boi,boi->b", delta, delta)
    share = np.where(energy > 0, np.einsum("bo,bo->b", u, u) * xx / np.maximum(energy, 1e-30), 1.0)
    return u.astype(np.float32), np.minimum(share, 1.0).astype(np.float32)
