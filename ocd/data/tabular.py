"""The tables: ``california`` (regression, from the CSV under data/), ``diabetes``
(regression) and ``breast_cancer`` (classification), both bundled with
scikit-learn. Each loader ends in :func:`ocd.data.core.finish_tabular`, which
preprocesses the features and splits the rows (stratified for classification).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ocd.data.core import DATA_DIR, DataError, Dataset, finish_tabular
from ocd.params import DataParams


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
    _check_fields(path)
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
    _check_line_end(path, len(df) + 1)
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


def _check_fields(path: Path) -> None:
    """Every row has as many fields as the header. pandas reads a row that lost
    its tail with the missing fields blank, and an unused last column
    (``ocean_proximity``) would hide a row cut inside a number before it."""
    import csv

    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        rows = csv.reader(fh)
        header = next(rows, None)
        for row in rows if header else ():
            if row and len(row) != len(header):
                raise DataError(f"{path}: line {rows.line_num} has {len(row)} fields, the header "
                                f"{len(header)}: the file is cut or damaged there")


def _check_line_end(path: Path, lines: int) -> None:
    """The file ends with a line end. A file cut at any byte (a copy stopped
    part-way) ends inside its last row, and a row cut inside its last number
    still parses: ``...,41.0,3.1042,1`` for ``...,41.0,3.1042,104200.0``."""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        fh.seek(max(fh.tell() - 40, 0))
        tail = fh.read()
    if tail and not tail.endswith((b"\n", b"\r")):
        last = tail.decode(errors="replace").splitlines()[-1]
        raise DataError(f"{path} does not end with a line end, so its last row (line {lines}, ending "
                        f"{last!r}) may be cut inside a value; if that row is whole, end the file with a newline")


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
