"""The Dataset every loader returns, and the steps loaders share: stratified
splits, caps, the calibration rows, the scaling of images and the
preprocessing of tables (ocd/data/registry.py holds the loaders and their registry;
ocd/data/scenes.py and ocd/data/texts.py are loaders of their own).

Image scaling (:func:`finish_images`): pixels are divided by their maximum
(255, or 16 for digits), then standardised with one mean and one standard
deviation computed on the train split only; both are recorded in
``Dataset.info``. ``data.cal_fraction`` of train is carved out, stratified, as
the calibration rows.

Tables (:func:`finish_tabular`), as Gorishniy et al. (2021): a random split
into test (``data.test_fraction``, 20%) and the rest, of which
``data.val_fraction`` (20%) is validation, the calibration rows (stratified
for a classification table); features quantile-transformed to a normal
distribution (scikit-learn's QuantileTransformer fitted on train only, saved
as numbers for ``ocd predict``); a regression target standardised with the
train mean and SD; blank feature values take the column's train median.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from ocd.errors import DataError

DATA_DIR = Path(__file__).resolve().parents[2] / "data"




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


def stratified_split(x, y, test_fraction: float, seed: int):
    return train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed)


def _carve(x, y, fraction: float, seed: int):
    """Split off ``fraction`` of the rows, stratified where every class can have a row on both sides."""
    try:
        return stratified_split(x, y, fraction, seed)
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


def finish_images(name, params, x_train, y_train, x_test, y_test, pixel_max, info) -> Dataset:
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


def finish_tabular(name, params, x, y, info, task: str = "regression") -> Dataset:
    """Gorishniy et al.'s split and preprocessing for a table whose target is a
    number (``regression``: standardised with the train mean and SD) or a class
    (``classification``: labels 0..C-1, every split stratified)."""
    from sklearn.preprocessing import QuantileTransformer

    if task not in ("regression", "classification"):
        raise DataError(f"{name}: a table's task is regression or classification, not {task!r}")
    classes = task == "classification"
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

    if classes:
        labels, y = np.unique(y, return_inverse=True)  # labels 0..C-1, in the order of the values
        info = dict(info, classes=labels.tolist())
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=params.test_fraction,
                                                      stratify=y if classes else None, random_state=params.seed)
    x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=params.val_fraction,
                                                      stratify=y_rest if classes else None,
                                                      random_state=params.seed)
    x_train, y_train = _cap(x_train, y_train, params.max_train, params.seed, stratify=classes)
    x_test, y_test = _cap(x_test, y_test, params.max_test, params.seed, stratify=classes, what="data.max_test")
    medians = np.nanmedian(x_train, axis=0)  # blank feature values take the train median
    x_train, x_test = (np.where(np.isnan(a), medians, a) for a in (x_train, x_test))
    qt = QuantileTransformer(n_quantiles=min(1000, len(x_train)), output_distribution="normal",
                             subsample=10**9, random_state=params.seed).fit(x_train)
    to_x = lambda a: torch.from_numpy(qt.transform(a).astype(np.float32))  # noqa: E731
    info = dict(info, n_train=len(y_train), n_val=len(y_val), n_test=len(y_test),
                features="quantile-transformed to normal, fitted on train",
                feature_transform={"medians": medians.tolist(), "quantiles": qt.quantiles_.tolist(),
                                   "references": qt.references_.tolist()})
    x_val = np.where(np.isnan(x_val), medians, x_val)
    if classes:
        if len(np.unique(y_train)) < 2:
            raise DataError(f"{name}: every train row has the same class: there is nothing to learn")
        to_y = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64))  # noqa: E731
        return Dataset(name, "classification", to_x(x_train), to_y(y_train), to_x(x_test), to_y(y_test),
                       len(labels), info, x_cal=to_x(x_val), y_cal=to_y(y_val))
    mean, scale = float(np.mean(y_train)), float(np.std(y_train))
    if not scale > 0:
        raise DataError(f"{name}: every train target is {mean:g}: there is nothing to learn")
    to_y = lambda a: torch.from_numpy(((np.asarray(a) - mean) / scale).astype(np.float32))  # noqa: E731
    info = dict(info, target_mean=mean, target_scale=scale)
    return Dataset(name, "regression", to_x(x_train), to_y(y_train), to_x(x_test), to_y(y_test), 1, info,
                   {"target_mean": mean, "target_scale": scale}, x_cal=to_x(x_val), y_cal=to_y(y_val))
