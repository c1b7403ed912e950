"""A tiny synthetic weight-delta store for the diffusion, scale and regressor tests."""

import numpy as np

from ocd.store import DeltaStore, Layout, open_store

SHAPE = (4, 6)


def synthetic_store(path, n=64, chunk=16, seed=0, rank_one=None, rho=(0.5, 2.0), attrs=None, outputs=None,
                    input_reveals=True):
    """``attrs``: the store's description, as the overfit stage gives it (sealed with the store).
    ``outputs``: ``(kind [rows], rng) -> cond/output [rows, C]``; by default the kind one-hot.
    ``input_reveals`` false: the layer input is noise, and only ``outputs`` tell the kinds apart.

    Two kinds of samples; the delta (and its scale, ``rho`` per kind) is a function
    of the kind, which the conditioning reveals. ``rank_one`` (a basis): delta = u_kind r^T
    with r the sample's own layer input i_L ("input", as plain gradient steps
    make it) or sign(i_L) ("sign", as Adam does)."""
    rng = np.random.default_rng(seed)
    patterns = rng.normal(size=(2, *SHAPE)).astype(np.float32)
    factors = np.random.default_rng(seed + 1).normal(size=(2, SHAPE[0])).astype(np.float32)
    outputs = outputs or (lambda kind, rng: np.eye(2, dtype=np.float32)[kind])
    width = outputs(np.zeros(1, int), np.random.default_rng(0)).shape[1]
    layout = Layout(n={"train": n, "test": 8}, out_features=SHAPE[0], in_features=SHAPE[1], n_outputs=width,
                    chunk=chunk, dtype="float32", rank1_basis=rank_one or "input")
    store = DeltaStore.create_or_resume(path, layout, {"synthetic": seed}, attrs or {}, log=lambda m: None)
    for split, rows in layout.n.items():
        kind = rng.integers(0, 2, rows)
        rho_kind = np.where(kind == 0, *rho).astype(np.float32)
        layer_input = (np.eye(2)[kind] @ rng.normal(size=(2, SHAPE[1])) * input_reveals).astype(np.float32) \
            + (0.3 if rank_one else 0.01) * rng.normal(size=(rows, SHAPE[1])).astype(np.float32)
        right = np.sign(layer_input) if rank_one == "sign" else layer_input
        shape = factors[kind][:, :, None] * right[:, None, :] if rank_one else patterns[kind]
        unit = shape / np.linalg.norm(shape.reshape(rows, -1), axis=1)[:, None, None]
        data = {
            "delta": unit * rho_kind[:, None, None],
            "rho": rho_kind,
            "cond/layer_input": layer_input,
            "cond/layer_activation": rng.normal(size=(rows, SHAPE[0])).astype(np.float32),
            "cond/output": outputs(kind, rng),
            "label": kind, "loss_before": np.ones(rows, np.float32), "loss_after": np.ones(rows, np.float32),
            "index": np.arange(rows),
        }
        for c in range(layout.n_chunks(split)):
            sl = slice(c * chunk, (c + 1) * chunk)
            store.write_chunk(split, c, {k: v[sl] for k, v in data.items()})
    return open_store(path)
