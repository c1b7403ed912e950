import copy

import pytest
import torch
from synthetic import SHAPE, synthetic_store

from ocd.delta import COND
from ocd.evaluation import LAMBDAS, EvalInputs, Setting, _nn_spaces, choose, make_rows
from ocd.hypernet import conditioning, diffusion, regressor, scale
from ocd.hypernet.neighbours import nearest, neighbours
from ocd.models.cut import linear_cut
from ocd.models.registry import ModelSpec
from ocd.models.sequential import lenet5
from ocd.pipeline import apply_deltas
from ocd.rows import SERVED
from ocd.store import ChunkReader
from ocd.tasks import get_task


def test_apply_deltas_equals_a_loop_over_model_copies():
    torch.manual_seed(0)
    model = lenet5((1, 28, 28), 10).eval()
    x = torch.randn(5, 1, 28, 28)
    deltas = 0.1 * torch.randn(5, 84, 120)
    got = apply_deltas(model, "fc1", deltas, x, batch=2)
    for i in range(5):
        m = copy.deepcopy(model)
        with torch.no_grad():
            m.fc1.weight.add_(deltas[i])
        torch.testing.assert_close(got[i], m(x[i:i + 1])[0], rtol=1e-5, atol=1e-5)


def test_ensemble_of_identical_members_is_the_member_and_mixes_distributions():
    task = get_task("classification")
    out = torch.randn(4, 3)
    torch.testing.assert_close(task.ensemble(torch.stack([out, out])).softmax(-1), out.softmax(-1))
    a, b = torch.tensor([[10.0, 0.0]]), torch.tensor([[0.0, 10.0]])
    torch.testing.assert_close(task.ensemble(torch.stack([a, b])).softmax(-1), torch.tensor([[0.5, 0.5]]),
                               atol=1e-4, rtol=0)


def _inputs(tmp_path, delta_scale: float = 1.0) -> EvalInputs:
    """A tiny MLP whose fc2 has the synthetic store's shape, untrained hypernetworks."""
    root = synthetic_store(tmp_path / "s.zarr", rank_one="sign")
    stats = conditioning.cond_stats(ChunkReader(root["train"], ("delta", "u", "rho", *COND), list(range(4))))
    torch.manual_seed(0)
    model = ModelSpec("mlp", (6,), 2, {"hidden": [6, 4], "dropout": 0.0}).build().eval()
    meta = diffusion.make_meta("tiny", SHAPE, False, 0, "x0", "fro", "paper", 100, target="rank1", basis="sign")
    tensor = lambda name, split="train": torch.as_tensor(root[split][name][:])  # noqa: E731
    return EvalInputs(
        model=model, layer="fc2", task=get_task("classification"), x_test=torch.randn(8, 6),
        y_test=torch.randint(0, 2, (8,)), x_train=torch.randn(64, 6), train_delta=delta_scale * tensor("delta"),
        train_parts=[tensor(n) for n in COND], oracle_delta=tensor("delta", "test"), diff=diffusion.build(meta, stats),
        scaler=scale.ScaleModel(stats, [8], 1.0), mean_rho=1.0, regressor=regressor.DeltaRegressor(meta, stats, [8]),
        x_cal=torch.randn(16, 6), y_cal=torch.randint(0, 2, (16,)))


def _choose(inp: EvalInputs, size: int, seed: int = 1):
    """What the calibration rows choose, worked through in blocks of ``size`` rows, OCD's sample seeded ``seed``."""
    s = Setting(inp, linear_cut(inp.model, inp.layer), 1, 3, 0.0, 0, [], 0.0, None, size)
    rows, _ = make_rows(s)
    return choose(s, list(rows.values()), _nn_spaces(inp), seed)


@pytest.mark.parametrize("delta_scale", [1.0, 1e3])
def test_the_calibration_rows_choose_the_retrieval_and_step_sizes_that_lose_least_there(tmp_path, delta_scale):
    inp = _inputs(tmp_path, delta_scale)
    with torch.no_grad():
        choice = _choose(inp, 5)  # blocks of 5 rows: 5, 5, 5, 1
        base = float(inp.task.per_sample_loss(inp.model(inp.x_cal), inp.y_cal).mean())
    assert choice.rows == 16 and choice.source == "calibration rows"
    assert set(choice.lambdas) == {"ocd", "regressor", "knn"}
    for name, lam in choice.lambdas.items():
        assert choice.losses[f"{name}/0"] == pytest.approx(base, rel=1e-5)  # a step of 0 is the base model
        assert choice.losses[f"{name}/{lam:g}"] == min(choice.losses[f"{name}/{step:g}"] for step in LAMBDAS)
    space, k, weighting = choice.knn
    knn = {key: v for key, v in choice.losses.items() if key.startswith("knn/") and key.count("/") == 3}
    assert len(knn) == 2 * 11 and choice.losses[f"knn/{space}/{k}/{weighting}"] == min(knn.values())
    # the step sizes are tried on the chosen retrieval's delta: a step of 1 is that retrieval
    assert choice.losses["knn/1"] == pytest.approx(choice.losses[f"knn/{space}/{k}/{weighting}"], rel=1e-6)
    torch.testing.assert_close(choice.outputs["base"], inp.model(inp.x_cal))
    # knn_lambda's outputs there, whose temperature knn_temperature fits, are at the chosen step
    lam = choice.lambdas["knn"]
    assert float(inp.task.per_sample_loss(choice.outputs["knn_lambda"], inp.y_cal).mean()) == pytest.approx(
        choice.losses[f"knn/{lam:g}"], rel=1e-5)
    if delta_scale > 1:  # deltas a thousand times too large only hurt: every step size is 0
        assert set(choice.lambdas.values()) == {0.0}
    # the row ocd predict serves: the least calibration loss among the untrained rows (issue 40)
    assert choice.losses["base"] == pytest.approx(base, rel=1e-6)
    served = choice.serve_losses()
    assert list(served) == [r for r in SERVED if not r.endswith("temperature")]  # none fitted yet
    assert served["ocd"] == choice.losses["ocd/1"] and served["knn_lambda"] == choice.losses[f"knn/{lam:g}"]
    best = choice.best()
    assert served[best] == min(served.values())
    if delta_scale > 1:  # every delta hurts: the base model is served (a step of 0 ties it; the simpler wins)
        assert best == "base"
    choice.row_losses["temperature"] = served[best] - 1.0  # as evaluate records a fitted temperature's loss
    assert choice.best() == "temperature" and choice.record()["best"] == {"row": "temperature",
                                                                          "loss": served[best] - 1.0}


def test_held_out_train_rows_stand_in_for_calibration_rows_and_never_retrieve_themselves(tmp_path):
    inp = _inputs(tmp_path)
    own = torch.arange(48, 64)
    inp.x_cal, inp.cal_own = inp.x_train[own], own
    with torch.no_grad():
        choice = _choose(inp, 16)
        _, idx = neighbours(inp.x_cal, inp.x_train, 1, own)
    assert choice.source == "held-out train rows"
    assert not (idx[:, 0] == own).any()  # in input space, a row's nearest is otherwise itself
    assert (nearest(inp.x_cal, inp.x_train) == own).all()


def test_a_step_size_still_falling_at_the_grids_end_is_searched_further_within_the_bound(tmp_path):
    """Issue 41: ocd_lambda, regressor_lambda and knn_lambda all chose the grid's largest step, 8, with the
    calibration loss still falling, and the table said only "(the candidates' largest)"."""
    inp = _inputs(tmp_path)
    cut = linear_cut(inp.model, inp.layer)
    weight = cut.layer.weight.detach()
    d = torch.randn(weight.shape, generator=torch.Generator().manual_seed(2))
    d = d * float(weight.norm() / d.norm()) / 40  # every stored delta the same: knn's delta is d, bound 40
    inp.train_delta = d.expand(len(inp.train_delta), *d.shape).clone()
    pushed = copy.deepcopy(inp.model)
    with torch.no_grad():
        getattr(pushed, inp.layer).weight.add_(400 * d)
        inp.y_cal = pushed(inp.x_cal).argmax(-1)  # the labels a long step along d predicts
        choice = _choose(inp, 5)
    knn = [choice.losses[f"knn/{lam:g}"] for lam in (*LAMBDAS[-2:], 12, 16, 24, 32)]
    assert knn == sorted(knn, reverse=True)  # falling through the grid's end and beyond
    assert "knn/48" not in choice.losses  # past the bound: never tried
    assert choice.lambdas["knn"] == 32
    assert choice.widened["knn"] == ("the grid ended at 8 with the loss still falling; widened to 32, "
                                     "still falling at the largest step within the bound |W|/|delta| = 40")
    assert choice.record()["widened"]["knn"] == choice.widened["knn"]
    assert choice.serve_losses()["knn_lambda"] == choice.losses["knn/32"]


def test_the_search_beyond_the_grid_stops_where_the_loss_stops_falling():
    from ocd.evaluation import _widen

    lam, how = _widen([0.5, 0.4, 0.45, 0.3], [12, 16, 24, 32], 0.6, 100.0)
    assert lam == 16 and how.endswith("widened to 16, where it stopped falling (24 was worse)")
    lam, how = _widen([], [], 0.6, 9.0)  # the bound below the first wider candidate
    assert lam == 8 and how.endswith("widened to 8, still falling at the largest step within the bound |W|/|delta| = 9")
