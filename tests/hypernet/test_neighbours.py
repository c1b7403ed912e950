"""Retrieval (ocd/hypernet/neighbours.py), and the generators conditioned on what it finds."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synthetic import synthetic_store

from ocd import presets
from ocd.delta import COND
from ocd.fitting import open_fit
from ocd.hypernet import diffusion, regressor, targets
from ocd.hypernet.neighbours import NEIGHBOURS, Retriever, knn_mix, nearest, neighbours, with_neighbours
from ocd.params import ComputeParams, DiffusionParams, RegressorParams


def test_nearest_finds_the_closest_row():
    pool = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    query = torch.tensor([[9.0, 1.0], [0.5, -0.5], [1.0, 8.0]])
    assert nearest(query, pool, batch=2).tolist() == [1, 0, 2]


def test_neighbours_come_nearest_first_and_never_a_row_itself():
    pool = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    dist, idx = neighbours(pool[[1, 2]], pool, 2, own=torch.tensor([1, -1]), batch=1)
    assert idx.tolist() == [[0, 2], [2, 1]]  # row 1 may not retrieve itself; the second query may
    assert dist.tolist() == [[1.0, 2.0], [0.0, 2.0]]


def test_knn_mix_weights_the_neighbours_deltas():
    deltas = torch.arange(3.0)[:, None, None] * torch.ones(3, 2, 2)  # row j's delta is j everywhere
    dist, idx = torch.tensor([[1.0, 3.0, 9.0]]), torch.tensor([[0, 1, 2]])
    assert knn_mix(deltas, dist, idx, 1, "uniform").unique().tolist() == [0.0]
    assert knn_mix(deltas, dist, idx, 3, "uniform").unique().tolist() == [1.0]
    # 1/d weights 1, 1/3, normalised 3/4, 1/4: 0 * 3/4 + 1 * 1/4
    assert knn_mix(deltas, dist, idx, 2, "inverse").unique().tolist() == [0.25]
    with pytest.raises(ValueError, match="uniform, inverse"):
        knn_mix(deltas, dist, idx, 2, "softmax")



def test_a_retriever_averages_the_targets_of_the_nearest_pool_rows_in_the_standardised_space():
    # the second column is 100x wider: unstandardised, it alone would decide who is near
    parts = [torch.tensor([[0.0, 0.0], [1.0, 300.0], [0.1, 100.0], [5.0, 0.0]])]
    targets = torch.tensor([[1.0], [2.0], [4.0], [8.0]])
    retriever = Retriever(parts, targets, k=2)
    own = torch.arange(4)
    got = retriever(parts, own)[:, 0]
    # standardised (SDs 2.36 and 141), row 2's nearest others are rows 0 and 1 (mean 1.5); in the
    # raw space they would be rows 0 and 3 (4.5); and no row is its own neighbour
    assert got.tolist() == [6.0, 2.5, 1.5, 2.5]
    assert with_neighbours(parts, None) == parts and len(with_neighbours(parts, retriever)) == 2
    with pytest.raises(ValueError, match="k >= 1"):
        Retriever(parts, targets, k=0)


@pytest.mark.parametrize("target", ["rank1", "flat", "matrix"])
def test_target_of_undoes_to_matrix(target):
    meta = diffusion.make_meta("tiny", (4, 6), False, 0, "x0", "fro", "paper", 100, target=target, basis="sign")
    torch.manual_seed(0)
    layer_input = torch.randn(5, 6)
    rep = torch.randn(5, *meta.rep_shape)
    omega = targets.to_matrix(rep, layer_input, meta)
    delta = 0.3 * omega / meta.unit
    back = targets.target_of(delta, layer_input, meta)
    # the same direction; at unit scale (rho = |delta|_F), whatever size rep had
    assert torch.allclose(F.cosine_similarity(back.flatten(1), rep.flatten(1)), torch.ones(5), atol=1e-5)


@pytest.mark.parametrize("target", ["rank1", "flat", "matrix"])
def test_the_generators_conditioned_on_retrieval_train_save_and_sample(tmp_path, target, params_yaml):
    # rank1: delta = u_kind sign(i_L)^T; flat: delta = a pattern per kind (the conditioning reveals the kind)
    root = synthetic_store(tmp_path / "s.zarr", rank_one="sign" if target == "rank1" else None, attrs={
        "weight_shape": [4, 6], "base_sha256": "b", "layer": "fc", "overfit": {"rho": "fro"}})
    p = presets.apply(params_yaml, {"diffusion": {"neighbours": 3, "target": target, "preset": "tiny",
                                                    "holdout": 0.25}})
    fit = open_fit(p, tmp_path / "s.zarr")
    assert fit.target.neighbours == 3 and set(fit.stats) == {*COND, NEIGHBOURS}
    rows = fit.reader.read(fit.reader.chunks)
    made, parts, _ = targets.batch_tensors(rows, fit.target, "cpu")
    assert len(parts) == 4 and parts[3].shape == made.flatten(1).shape
    # the store's delta is a function of the sample's kind: the 3 nearest others share it
    cos = F.cosine_similarity(parts[3], made.flatten(1))
    assert (cos > 0.9).float().mean() > 0.9
    held = fit.held()
    assert held[NEIGHBOURS].shape == (len(held["rho"]), made.flatten(1).shape[1])
    # without retrieval the scale model's view is I(x) alone
    assert open_fit(p, tmp_path / "s.zarr", neighbours=False).target.neighbours == 0

    model = diffusion.build(diffusion.meta_of(fit.target, p.diffusion), fit.stats)
    ema, history = diffusion.train(model, fit.reader, DiffusionParams(steps=20, epochs=0, batch_size=16),
                                   ComputeParams(), "cpu", progress=False)
    reg = regressor.DeltaRegressor(fit.target, fit.stats, [8])
    reg_history = regressor.train(reg, fit.reader, RegressorParams(steps=20, epochs=0, batch_size=16),
                                  ComputeParams(), "cpu", progress=False)
    assert all(np.isfinite(v) for _, v in history + reg_history)
    diffusion.save(tmp_path / "d.pt", ema, fit.stats, {})
    loaded, _ = diffusion.load(tmp_path / "d.pt")
    assert loaded.meta.neighbours == 3 and len(loaded.cond.encoders) == 4
    # at inference the retrieved part comes from the store's train rows, as evaluate and predict make it
    train_parts = [torch.as_tensor(root["train"][n][:]) for n in COND]
    retriever = targets.retriever_of(loaded.meta, train_parts, root["train"]["delta"], batch=10)
    given = with_neighbours([torch.as_tensor(root["test"][n][:]) for n in COND], retriever)
    rep = loaded.sample(loaded.embed(given), steps=3, generator=torch.Generator().manual_seed(0))
    assert rep.shape == (8, *fit.target.rep_shape) and torch.isfinite(rep).all()
    assert reg.omega(given).shape == (8, 4, 6)


def test_a_pool_smaller_than_k_gives_all_it_has_and_knn_mix_names_a_k_beyond_it():
    parts = [torch.tensor([[0.0], [1.0], [2.0]])]
    retriever = Retriever(parts, torch.tensor([[1.0], [2.0], [6.0]]), k=8)
    assert retriever(parts, own=torch.arange(3))[:, 0].tolist() == [4.0, 3.5, 1.5]  # the 2 others each
    dist, idx = neighbours(parts[0], parts[0], 8, own=torch.arange(3))
    assert idx.shape == (3, 2)
    with pytest.raises(ValueError, match="3 neighbours asked of 2 retrieved"):
        knn_mix(torch.zeros(3, 1), dist, idx, 3, "uniform")
