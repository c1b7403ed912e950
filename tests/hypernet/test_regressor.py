import numpy as np
import pytest
import torch
from synthetic import SHAPE, synthetic_store

from ocd.delta import COND, rho_of
from ocd.hypernet import conditioning, diffusion, regressor
from ocd.params import ComputeParams, RegressorParams
from ocd.store import ChunkReader


@pytest.mark.parametrize("target", ["matrix", "rank1"])
def test_the_regressor_learns_the_direction_and_leaves_the_size_to_the_scale_model(tmp_path, target):
    root = synthetic_store(tmp_path / "s.zarr", rank_one="input")
    reader = ChunkReader(root["train"], ("delta", "u", "rho", *COND), list(range(4)))
    stats = conditioning.cond_stats(reader)
    meta = diffusion.make_meta("tiny", SHAPE, False, 0, "x0", "fro", "paper", 100, target=target)
    torch.manual_seed(0)
    model = regressor.DeltaRegressor(meta, stats, [32])
    history = regressor.train(model, reader, RegressorParams(steps=300, epochs=0, batch_size=16, lr=3e-3),
                              ComputeParams(), device="cpu", progress=False)
    assert np.mean([v for _, v in history[-30:]]) < 0.1 * np.mean([v for _, v in history[:30]])
    diag = regressor.diagnose(model, reader.read(reader.chunks), "cpu")
    assert diag["cosine_mean"] > 0.9, diag
    parts = [torch.as_tensor(reader.read([0])[n]) for n in COND]
    omega = model.omega(parts)
    torch.testing.assert_close(rho_of(omega / meta.unit, "fro"), torch.ones(len(omega)))
    regressor.save(tmp_path / "r.pt", model, stats, {"provenance": {"layer": "fc"}})
    loaded, _ = regressor.load(tmp_path / "r.pt")
    torch.testing.assert_close(loaded.omega(parts), omega)
