"""Why OCD learns little on a regression store: the delta's direction is fixed
by I(x) only up to the sign of the base model's residual f(x) - y, and that
sign is the label's information.

    .venv/bin/python scripts/residual_sign.py artifacts/deltas.zarr

Fits a ridge map from the standardised conditioning I(x) to the direction of
u (the rank-one output factor) on 80% of the train rows and reports the mean
held-out cosine, once for u and once for sign(f(x) - y) * u. Train rows only.
"""
import sys, zarr, numpy as np
g = zarr.open_group(sys.argv[1], mode="r")["train"]
u = g["u"][:]; out = g["cond/output"][:, 0]; y = g["label"][:]
X = np.concatenate([g[n][:] for n in ("cond/layer_input", "cond/layer_activation", "cond/output")], 1)
X = (X - X.mean(0)) / (X.std(0) + 1e-6); X = np.concatenate([X, np.ones((len(X), 1))], 1)
s = np.sign(out - y)
n = int(0.8 * len(u))
def fit(T):
    W = np.linalg.solve(X[:n].T @ X[:n] + 1e-2 * np.eye(X.shape[1]), X[:n].T @ T[:n])
    P = X[n:] @ W; t = T[n:]
    return float(np.mean((P * t).sum(1) / (np.linalg.norm(P, axis=1) * np.linalg.norm(t, axis=1) + 1e-12)))
un = u / np.linalg.norm(u, axis=1, keepdims=True)
print("share residual>0:", float((s > 0).mean()))
print("held-out cosine, linear map I(x) -> u direction:", fit(un))
print("held-out cosine, linear map I(x) -> sign(f(x)-y) * u direction:", fit(un * s[:, None]))
print("mean |cos| between u of two random samples:", float(np.abs(un[:2000] @ un[2000:4000].T).mean()))
