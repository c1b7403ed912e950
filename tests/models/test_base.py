import json

import pytest
import torch

from ocd.data.registry import load_dataset
from ocd.models import base
from ocd.models.registry import ModelSpec
from ocd.params import BaseParams, ModelParams
from ocd.tasks import get_task

TASK = get_task("classification")


def _train(digits_params, seed=0, epochs=2):
    d = load_dataset(digits_params)
    task = d.make_task()
    spec = ModelSpec.from_params(ModelParams(name="mlp", hidden=[32]), d.in_shape, d.n_outputs)
    base.seed_everything(seed)
    model = spec.build()
    history = base.train(model, task, d.x_train, d.y_train,
                         BaseParams(epochs=epochs, lr=1e-2, batch_size=64, seed=seed, schedule="cosine"),
                         progress=False)
    return d, task, spec, model, history


def test_training_learns_and_is_deterministic(digits_params):
    d, task, _, m1, history = _train(digits_params)
    assert history[-1] < history[0]
    assert base.evaluate(m1, task, d.x_test, d.y_test)["acc"] > 0.8
    _, _, _, m2, _ = _train(digits_params)
    _, _, _, m3, _ = _train(digits_params, seed=1)
    assert base.weights_sha256(m1) == base.weights_sha256(m2)
    assert base.weights_sha256(m1) != base.weights_sha256(m3)


def test_save_load_roundtrip_and_tamper_check(digits_params, tmp_path):
    d, task, spec, model, _ = _train(digits_params, epochs=1)
    record = base.save(tmp_path, model, spec, note="x")
    loaded = base.load(tmp_path)
    assert loaded.sha256 == record["sha256"] == base.weights_sha256(model)
    assert not loaded.model.training
    torch.testing.assert_close(base.predict(loaded.model, d.x_test), base.predict(model, d.x_test))
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["sha256"] = "0" * 64
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not match the sha256"):
        base.load(tmp_path)


def test_load_from_an_empty_folder_says_which_stage_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the train_base stage"):
        base.load(tmp_path)


@pytest.mark.parametrize("name, options, schedule", [
    ("mlp", {"hidden": [16], "dropout": 0.0}, "cosine"), ("lenet5", {}, "constant")])
def test_ensemble_members_trained_together_equal_members_trained_alone(name, options, schedule):
    torch.manual_seed(0)
    shape = (1, 28, 28) if name == "lenet5" else (1, 8, 8)
    x, y = torch.randn(100, *shape), torch.randint(0, 10, (100,))
    spec = ModelSpec(name, shape, 10, options)
    params = BaseParams(epochs=2, lr=1e-3, batch_size=16, schedule=schedule)
    together = base.train_seeds(spec, TASK, x, y, params, [3, 4], progress=False)
    alone = base.train_seeds_one_by_one(spec, TASK, x, y, params, [3, 4], progress=False)
    # float summation order differs (typically 1e-7 relative per tensor); Adam can blow
    # that up on an entry whose gradient is near zero (seen: 1 entry of 48,000 off by 2.5e-5)
    for a, b in zip(together, alone):
        for (key, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            assert float((va - vb).norm() / vb.norm().clamp_min(1e-12)) < 1e-5, key
    first = next(iter(together[0].state_dict()))
    assert not torch.equal(together[0].state_dict()[first], together[1].state_dict()[first])  # seeds differ


def test_a_base_model_that_learned_a_constant_is_refused():
    from ocd.models.base import check_learned
    from ocd.models.cut import ModelError

    constant = torch.zeros(50, 3) + torch.tensor([0.2, 0.0, -1.0])
    with pytest.raises(ModelError, match=r"same output for all 50 training samples.*loss went 0.9 -> 0.5"):
        check_learned(constant, [0.9, 0.5, 0.5])
    check_learned(constant + 1e-3 * torch.randn(50, 3), [0.9, 0.5])  # a model whose output varies


def test_a_base_model_no_better_than_the_class_frequencies_or_the_mean_is_refused():
    from ocd.models.base import check_learned, trivial_loss
    from ocd.models.cut import ModelError
    from ocd.params import BaseParams
    from ocd.tasks import classification, regression

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (200,), generator=g)
    task = classification()
    assert abs(trivial_loss(task, y, 10) - float(-(torch.bincount(y) / 200 * (torch.bincount(y) / 200).log()).sum())) \
        < 1e-5  # the entropy of the labels
    untrained = 0.01 * torch.randn(200, 10, generator=g)  # base.lr 1e-12: CE about log 10, above the entropy
    with pytest.raises(ModelError, match=r"did not learn: its training loss 2.30\d* is no lower than 2.2\d*, "
                                         r"what always "
                                         r"predicting the training class frequencies scores on the same rows; its "
                                         r"training loss went 2.35 -> 2.35: raise base.lr \(now 1e-12\)"):
        check_learned(untrained, [2.3505, 2.3505], task, y, BaseParams(lr=1e-12))
    learned = untrained + 3 * torch.nn.functional.one_hot(y, 10)
    check_learned(learned, [2.3, 0.4], task, y, BaseParams())
    t = torch.randn(100, generator=g)
    regressor = regression()
    with pytest.raises(ModelError,
                       match=r"no lower than 1\.1\d*, what always predicting the training mean scores.*: check base.lr"):
        check_learned(0.1 * torch.randn(100, 1, generator=g), [1.1, 1.0], regressor, t)
    check_learned(t[:, None] + 0.1 * torch.randn(100, 1, generator=g), [1.0, 0.1], regressor, t)
    # a task with no trivial predictor: a loss that never moved
    with pytest.raises(ModelError, match=r"never moved \(-2.49 in each of 3 epochs\): raise base.lr"):
        check_learned(torch.randn(10, 4, generator=g), [-2.49, -2.49, -2.49], None, None, BaseParams(lr=1e-12))
