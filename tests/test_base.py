import json

import pytest
import torch

from ocd import base
from ocd.data import load_dataset
from ocd.models import ModelSpec
from ocd.params import BaseParams, ModelParams


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
