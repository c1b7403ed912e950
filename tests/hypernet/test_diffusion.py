import numpy as np
import pytest
import torch
import zarr
from synthetic import SHAPE, synthetic_store

from ocd.delta import COND, StoreError
from ocd.hypernet import conditioning, diffusion, scale, targets
from ocd.params import ComputeParams, DiffusionParams, ScaleParams
from ocd.store import ChunkReader, split_chunks


@pytest.mark.parametrize("ram_mb", [2048, 0])
def test_chunk_reader_covers_every_row_once_per_epoch(tmp_path, ram_mb):
    root = synthetic_store(tmp_path / "s.zarr")
    fit, held = split_chunks(4, 0.25)
    assert fit == [0, 1, 2] and held == [3]
    reader = ChunkReader(root["train"], ("rho", "cond/output"), fit, ram_mb=ram_mb)
    assert reader.in_ram == (ram_mb > 0) and reader.rows == 48
    batches = reader.batches(8, np.random.default_rng(0))
    seen = np.concatenate([next(batches)["rho"] for _ in range(6)])
    assert len(seen) == 48
    np.testing.assert_array_equal(np.sort(seen), np.sort(root["train/rho"][:48]))


@pytest.mark.parametrize("ram_mb", [2048, 0])
def test_ranks_share_out_every_global_batch(tmp_path, ram_mb):
    """In RAM each rank takes its slice of the one-process batch; streamed, each rank
    reads the chunks dealt to it, and together they still read every row once an epoch."""
    from ocd.distributed import Group

    root = synthetic_store(tmp_path / "s.zarr")
    reader = ChunkReader(root["train"], ("rho", "index"), [0, 1, 2, 3], ram_mb=ram_mb)
    one = reader.batches(10, np.random.default_rng(0))
    ranks = [reader.batches(10, np.random.default_rng(0), Group(r, 3)) for r in range(3)]
    if ram_mb:
        for _ in range(12):  # 10 rows a batch split 4, 3, 3
            whole = next(one)["index"]
            np.testing.assert_array_equal(np.concatenate([next(b)["index"] for b in ranks]), whole)
        return
    # the 4 chunks of 16 rows of an epoch dealt to 3 ranks: 2, 1 and 1 chunks, read by that rank alone
    firsts = [[next(b) for _ in range(n)] for b, n in zip(ranks, (8, 5, 5))]
    assert [{len(batch["index"]) for batch in f} for f in firsts] == [{4}, {3}, {3}]
    chunks = [set((np.concatenate([batch["index"] for batch in f]) // 16).tolist()) for f in firsts]
    assert sorted(len(c) for c in chunks) == [1, 1, 2] and set().union(*chunks) == {0, 1, 2, 3}
    with pytest.raises(StoreError, match="leaves rank 3 of 4 no rows"):
        next(reader.batches(3, np.random.default_rng(0), Group(3, 4)))


def _fit(tmp_path, prediction, steps, target="matrix"):
    root = synthetic_store(tmp_path / "s.zarr", rank_one="input" if target == "rank1" else None)
    reader = ChunkReader(root["train"], ("delta", "u", "rho", *COND), list(range(4)))
    stats = conditioning.cond_stats(reader)
    meta = diffusion.make_meta("tiny", SHAPE, square=False, pad_to=0, prediction=prediction, rho="fro",
                               schedule="paper", T=100, target=target)
    torch.manual_seed(0)
    model = diffusion.build(meta, stats)
    ema, history = diffusion.train(model, reader,
                                   DiffusionParams(steps=steps, epochs=0, batch_size=16, lr=3e-3, ema=0.9),
                                   ComputeParams(), device="cpu", progress=False)
    return reader, stats, ema, history


@pytest.mark.parametrize("prediction, steps, target", [("x0", 300, "matrix"), ("eps", 1000, "matrix"),
                                                        ("x0", 300, "rank1"), ("eps", 2000, "rank1")])
def test_the_denoiser_learns_a_tinysynthetic_store(tmp_path, prediction, steps, target):
    reader, _, ema, history = _fit(tmp_path, prediction, steps=steps, target=target)
    assert np.mean([v for _, v in history[-30:]]) < np.mean([v for _, v in history[:30]])
    diag = diffusion.diagnose(ema, reader.read(reader.chunks), sample_steps=10, eta=0.0, seed=0,
                              max_samples=32, device="cpu")
    assert diag["cosine_mean"] > 0.9, diag


@pytest.mark.parametrize("prediction", ["x0", "eps"])
def test_a_trained_denoiser_beats_both_references_and_an_untrained_one_does_not(tmp_path, prediction):
    """Issue 40: the held-out loss is reported beside predicting zero (or the mean) and the best
    predictor linear in x_t; a trained denoiser beats both, an untrained one neither."""
    reader, stats, ema, _ = _fit(tmp_path, prediction, steps=300)
    rows = reader.read(reader.chunks)
    diag = diffusion.diagnose(ema, rows, 10, 0.0, 0, 8, "cpu")
    assert diag["denoise_loss"] < diag["denoise_loss_linear"] < diag["denoise_loss_zero"], diag
    assert diag["learned"] is True
    torch.manual_seed(1)
    untrained = diffusion.build(ema.meta, stats)
    raw = diffusion.diagnose(untrained, rows, 10, 0.0, 0, 8, "cpu")
    assert raw["learned"] is False and raw["denoise_loss"] > raw["denoise_loss_linear"], raw
    # the references are the model's own rows and noise: the same whatever the network
    assert (raw["denoise_loss_zero"], raw["denoise_loss_linear"]) == (diag["denoise_loss_zero"],
                                                                       diag["denoise_loss_linear"])
    line = diffusion.not_learned_warning(raw, prediction)
    assert "\n" not in line and f"{raw['denoise_loss_zero']:.4f}" in line
    assert f"{raw['denoise_loss_linear']:.4f}" in line


def test_the_linear_reference_scores_the_mean_abar_on_unit_variance_targets():
    """For zero-mean unit-variance targets and eps prediction, the best predictor linear in x_t
    scores abar_t at each t (issue 40: 0.395 on the reference schedule, averaged over t)."""
    meta = diffusion.make_meta("tiny", (4, 6), square=False, pad_to=0, prediction="eps", rho="fro",
                               schedule="reference", T=1000, target="flat")
    model = diffusion.build(meta, {n: (np.zeros(3, np.float32), np.ones(3, np.float32)) for n in COND})
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(20000, 24, generator=g)
    t = torch.randint(0, 1000, (20000,), generator=g)
    eps = torch.randn(20000, 24, generator=g)
    refs = diffusion.reference_losses(model, x0, t, eps)
    assert refs["denoise_loss_zero"] == pytest.approx(1.0, abs=0.01)
    assert refs["denoise_loss_linear"] == pytest.approx(float(model.schedule().abar[t].mean()), abs=0.01)
    assert float(model.schedule().abar.mean()) == pytest.approx(0.395, abs=0.001)


@pytest.mark.parametrize("basis", ["input", "sign"])
def test_rank1_target_rebuilds_a_rank_one_delta_exactly(tmp_path, basis):
    root = synthetic_store(tmp_path / "s.zarr", rank_one=basis)
    assert root.attrs["rank1_basis"] == basis
    data = ChunkReader(root["train"], ("delta", "u", "rho", *COND), [0, 1]).read([0, 1])
    meta = diffusion.make_meta("tiny", SHAPE, False, 0, "x0", "fro", "paper", 100, target="rank1", basis=basis)
    rep, parts, _ = targets.batch_tensors(data, meta, "cpu")
    assert rep.shape == (32, SHAPE[0])
    # unit-scale: entries of unit mean square, like the matrix target's
    torch.testing.assert_close(rep.pow(2).mean(1), torch.ones(32), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(targets.to_matrix(rep, parts[0], meta), targets.true_omega(data, meta, "cpu"),
                               rtol=1e-4, atol=1e-5)


def test_rank1_is_refused_for_a_layer_without_one_input_vector():
    targets.require_rank1((4, 6), 6)
    with pytest.raises(StoreError, match="rank1 needs a matrix weight"):
        targets.require_rank1((4, 6, 3, 3), 6)
    with pytest.raises(StoreError, match="input width 5"):
        targets.require_rank1((4, 6), 5)


def test_checkpoint_round_trip(tmp_path):
    reader, stats, ema, _ = _fit(tmp_path, "x0", steps=5)
    diffusion.save(tmp_path / "d.pt", ema, stats, {"provenance": {"layer": "fc"}})
    loaded, ckpt = diffusion.load(tmp_path / "d.pt")
    assert loaded.meta == ema.meta and ckpt["provenance"] == {"layer": "fc"}
    data = reader.read(reader.chunks)
    parts = [torch.as_tensor(data[n]) for n in COND]
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    torch.testing.assert_close(loaded.sample(loaded.embed(parts), generator=g1),
                               ema.sample(ema.embed(parts), generator=g2))


@pytest.mark.parametrize("loss, bound", [("logmse", 0.05), ("paper", 0.3)])
def test_scale_model_beats_the_mean_when_rho_depends_on_the_input(tmp_path, loss, bound):
    root = synthetic_store(tmp_path / "s.zarr")
    reader = ChunkReader(root["train"], ("rho", *COND), list(range(4)))
    stats = conditioning.cond_stats(reader)
    mean = scale.mean_rho(reader)
    torch.manual_seed(0)
    model = scale.ScaleModel(stats, [32], mean)
    scale.train(model, reader, ScaleParams(loss=loss, steps=300, epochs=0, batch_size=16, lr=3e-3), ComputeParams(),
                device="cpu", progress=False)
    diag = scale.diagnose(model, reader.read(reader.chunks), mean, "cpu")
    # the constant mean is off by 36% in median here; the paper's loss gets to
    # ~22% in this budget, logmse to nearly 0 (see ocd/hypernet/scale.py)
    assert diag["median_rel_error"] < bound < diag["median_rel_error_mean_rho"]


@pytest.mark.parametrize("loss", ["logmse", "paper"])
def test_zero_and_tiny_deltas_train_at_a_floor_and_never_make_the_scale_model_nan(tmp_path, loss):
    # a sample the base model already fits to float32 precision overfits to a
    # zero delta (rho = 0), or nearly: log 0 made the whole scale model NaN
    # before, and rho = 1e-23 (seen on Fashion-MNIST) overflows it as surely
    root = synthetic_store(tmp_path / "s.zarr")
    rho = zarr.open_group(tmp_path / "s.zarr", mode="r+")["train"]["rho"]
    rho[:12] = 0.0
    rho[12:14] = 1e-23
    reader = ChunkReader(root["train"], ("rho", *COND), list(range(4)))
    fit_rho = scale.rhos(reader)
    assert (fit_rho == 0).sum() == 12
    assert scale.rho_floor(fit_rho) == pytest.approx(1e-3 * np.median(fit_rho[fit_rho > 0]))
    stats = conditioning.cond_stats(reader)

    def fit(floor):
        torch.manual_seed(0)
        model = scale.ScaleModel(stats, [32], float(fit_rho.mean()))
        scale.train(model, reader, ScaleParams(loss=loss, steps=50, epochs=0, batch_size=16, lr=3e-3),
                    ComputeParams(), device="cpu", progress=False, floor=floor)
        return model

    with pytest.raises(FloatingPointError, match="train scale: the training loss is .* at step 1 "):
        fit(0.0)  # no floor: the guard refuses to hand on a NaN model
    model = fit(scale.rho_floor(fit_rho))
    assert all(torch.isfinite(w).all() for w in model.parameters())
    diag = scale.diagnose(model, reader.read(reader.chunks), float(fit_rho.mean()), "cpu", scale.rho_floor(fit_rho))
    assert diag["zero_rows"] == 12 and np.isfinite([diag["median_rel_error"], diag["loss"]]).all()


def test_a_store_whose_every_delta_is_zero_has_no_scale_to_learn():
    with pytest.raises(StoreError, match="every one of the 3 fit rows has a zero delta"):
        scale.rho_floor(np.zeros(3, np.float32))


def test_an_all_zero_store_is_refused_when_its_rows_are_opened(tmp_path, params_yaml):
    """Every trainer stage opens its rows (ocd.fitting.open_fit) before it builds or trains
    anything: a store with no scale to learn stops there."""
    from ocd.fitting import open_fit
    from ocd.params import load_params

    synthetic_store(tmp_path / "s.zarr", rho=(0.0, 0.0), attrs={
        "base_sha256": "0" * 64, "layer": "fc", "weight_shape": list(SHAPE), "overfit": {"rho": "frobenius"}})
    with pytest.raises(StoreError, match="every one of the 48 fit rows has a zero delta"):
        open_fit(load_params(params_yaml), tmp_path / "s.zarr")


def test_scale_loss_is_the_papers_formula():
    rho = torch.tensor([1.0, 2.0])
    hat = torch.tensor([1.1, 1.0])
    expected = (10 * np.log10(0.01) + 10 * np.log10(0.25)) / 2
    assert scale.scale_loss(hat, rho).item() == pytest.approx(expected, rel=1e-5)


def test_chunk_reader_in_ram_reads_a_chunk_like_the_store(tmp_path):
    root = synthetic_store(tmp_path / "s.zarr")
    ram = ChunkReader(root["train"], ("rho", "cond/output"), [0, 1, 2], ram_mb=2048)
    disk = ChunkReader(root["train"], ("rho", "cond/output"), [0, 1, 2], ram_mb=0)
    for chunks in ([1], [2, 0]):
        a, b = ram.read(chunks), disk.read(chunks)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


def test_a_matrix_target_whose_attention_cannot_fit_is_refused_before_training():
    from ocd.delta import StoreError
    from ocd.hypernet.diffusion import make_meta

    make_meta("cpu", (84, 120), False, 0, "eps", "fro", "paper", 100)  # LeNet's fc1: fits
    with pytest.raises(StoreError, match=r"384 x 1536 delta .* use diffusion.target rank1 or flat"):
        make_meta("tiny", (384, 1536), False, 0, "eps", "fro", "paper", 100)  # SetFit's ffn_out
