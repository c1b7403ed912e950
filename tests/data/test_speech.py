"""The speech mixtures (ocd/data/speech.py, ocd/data/espeak.py): reproducible synthesis,
unseen test speakers and sentences, mixtures that are the sum of their sources, the missing extra."""

import importlib.util

import numpy as np
import pytest
import torch

from ocd.data import espeak, speech
from ocd.data.registry import load_dataset
from ocd.params import DataParams

audio = pytest.mark.skipif(importlib.util.find_spec("espeakng_loader") is None
                           or importlib.util.find_spec("scattertext") is None,
                           reason="the audio extra is not installed (pip install -e '.[audio]'; `make test` does)")


@audio
def test_the_same_utterances_come_out_bit_for_bit_every_time():
    jobs = [("The plot is thin but the acting carries it.", "m3", 160, 50),
            ("A warm and funny film.", "f2", 180, 60), ("The plot is thin but the acting carries it.", "m3", 160, 50)]
    first, again = espeak.synthesise(jobs), espeak.synthesise(jobs)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert all(a.dtype == np.float32 and 0.5 * espeak.SYNTHESIS_RATE < len(a) for a in first)
    assert not np.array_equal(first[1][:1000], first[0][:1000])


@audio
def test_speech_mixtures_are_sums_of_unseen_test_speakers_and_sentences():
    data = load_dataset(DataParams(name="speech_mix", mixtures=60, seconds=0.5, speakers=3))
    t = 4000
    assert data.x_train.shape[1:] == (1, t) and data.y_train.shape[1:] == (3 * t,) and data.n_outputs == 3 * t
    assert (len(data.y_train), len(data.y_test), len(data.y_cal)) == (43, 12, 5)
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test), (data.x_cal, data.y_cal)):
        sources = y.reshape(len(y), 3, t)
        assert torch.allclose(x[:, 0], sources.sum(1), atol=1e-6) and float(x.abs().max()) <= 0.99 + 1e-6
        assert bool((sources.pow(2).mean(-1) > 0).all())  # every source speaks in its window
    voices = speech.speakers()
    assert len(voices["train"]) + len(voices["test"]) == 104
    assert not {v for v, _, _ in voices["train"]} & {v for v, _, _ in voices["test"]}
    texts = speech.sentences()
    assert len(set(texts)) == len(texts)
    other = load_dataset(DataParams(name="speech_mix", mixtures=60, seconds=0.5, speakers=3, seed=1))
    assert torch.equal(other.y_test, data.y_test) and not torch.equal(other.y_train, data.y_train)
    assert data.make_task().name == "separation" and data.info["speakers"] == 3


def test_a_missing_synthesiser_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_espeak(name, *args, **kwargs):
        if name == "espeakng_loader":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_espeak)
    with pytest.raises(speech.SpeechStackMissing, match=r"pip install -e '.\[audio\]'"):
        load_dataset(DataParams(name="speech_mix"))
