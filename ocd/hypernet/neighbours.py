"""Retrieval: the nearest training samples and their stored deltas.

Two users: the evaluation's retrieval rows (``nn_input``, ``nn_cond``, ``knn``)
and the generators conditioned on what retrieval finds
(``diffusion.neighbours`` > 0). There the denoiser and the regressor see, beside
I(x), one more conditioning part, ``cond/neighbours``: the mean unit-scale
target (what the generator itself makes: u for ``rank1``, the flattened
omega otherwise) of the k training rows nearest in the conditioning space,
each part standardised by the pool's own mean and SD. A training row never
retrieves itself; a test row retrieves from every training row.
"""

from __future__ import annotations

import torch

NEIGHBOURS = "cond/neighbours"
WEIGHTINGS = ("uniform", "inverse")  # equal weights | 1 / distance


def nearest(query: torch.Tensor, pool: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Index of the nearest pool row (Euclidean) for every query row."""
    query, pool = query.flatten(1).float(), pool.flatten(1).float()
    return torch.cat([torch.cdist(query[i:i + batch], pool).argmin(dim=1) for i in range(0, len(query), batch)])


def neighbours(query: torch.Tensor, pool: torch.Tensor, k: int, own: torch.Tensor | None = None,
               batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances and indices [N, k] of the ``k`` nearest pool rows (Euclidean), nearest first.
    ``own[i]``: pool row i may not retrieve (itself, when the queries are pool rows), or -1."""
    query, pool = query.flatten(1).float(), pool.flatten(1).float()
    k = min(k, len(pool) - (own is not None))
    dists, idx = [], []
    for i in range(0, len(query), batch):
        d = torch.cdist(query[i:i + batch], pool)
        if own is not None:
            mine = own[i:i + batch].to(d.device)
            hit = mine >= 0
            d[hit.nonzero()[:, 0], mine[hit]] = float("inf")
        top = d.topk(k, dim=1, largest=False)
        dists.append(top.values)
        idx.append(top.indices)
    return torch.cat(dists), torch.cat(idx)


def knn_mix(rows, dist: torch.Tensor, idx: torch.Tensor, k: int, weighting: str) -> torch.Tensor:
    """The weighted mean of the ``k`` nearest ``rows`` (deltas [N, out, in], or any [N, ...]),
    from :func:`neighbours`' first ``k`` columns, summed one neighbour at a time (no [N, k, ...])."""
    if k > idx.shape[1]:
        raise ValueError(f"{k} neighbours asked of {idx.shape[1]} retrieved")
    dist, idx = dist[:, :k], idx[:, :k]
    if weighting == "uniform":
        w = torch.full_like(dist, 1.0 / k)
    elif weighting == "inverse":
        w = 1.0 / dist.clamp_min(1e-8)
        w = w / w.sum(dim=1, keepdim=True)
    else:
        raise ValueError(f"unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
    out = None
    for j in range(k):
        picked = rows[idx[:, j].cpu()].to(w.device).float()
        term = w[:, j].view(-1, *[1] * (picked.dim() - 1)) * picked
        out = term if out is None else out.add_(term)
    return out


def part_stats(reference: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each part's mean and SD per column."""
    return [(r.float().mean(0), r.float().std(0).clamp_min(1e-6)) for r in reference]


def standardised(parts: list[torch.Tensor], stats: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``[N, sum of widths]``: each part standardised by ``stats`` (:func:`part_stats`)."""
    return torch.cat([(p.float() - mean) / std for p, (mean, std) in zip(parts, stats)], dim=1)


def standardiser(reference: list[torch.Tensor]):
    """``parts -> [N, sum of widths]``: each part standardised by ``reference``'s mean and SD per column."""
    stats = part_stats(reference)
    return lambda parts: standardised(parts, stats)


class Retriever:
    """``parts -> cond/neighbours``: the mean target of the ``k`` pool rows nearest in the
    standardised conditioning space (:mod:`this module <ocd.hypernet.neighbours>`)."""

    def __init__(self, pool_parts: list[torch.Tensor], pool_targets: torch.Tensor, k: int):
        if k < 1:
            raise ValueError(f"a retriever needs k >= 1 neighbours, not {k}")
        self.stats = part_stats(pool_parts)
        self.pool = standardised(pool_parts, self.stats)
        self.targets = pool_targets.flatten(1).float()
        self.k = k

    def __call__(self, parts: list[torch.Tensor], own: torch.Tensor | None = None) -> torch.Tensor:
        query = standardised([p.to(self.pool.device) for p in parts], self.stats)
        dist, idx = neighbours(query, self.pool, self.k, own)  # fewer where the pool is smaller
        return knn_mix(self.targets, dist, idx, idx.shape[1], "uniform").to(parts[0].device)

    def to(self, device) -> "Retriever":
        self.stats = [(m.to(device), s.to(device)) for m, s in self.stats]
        self.pool, self.targets = self.pool.to(device), self.targets.to(device)
        return self


def with_neighbours(parts: list[torch.Tensor], retriever: Retriever | None,
                    own: torch.Tensor | None = None) -> list[torch.Tensor]:
    """I(x)'s parts, and where the generators are conditioned on retrieval, the retrieved part last."""
    return parts if retriever is None else [*parts, retriever(parts, own)]
