"""The inputs ``ocd predict`` reads for the families without a reader of their own: images
(a .npy array or a folder of PNGs) and table rows (a .npy array of raw features). Every
problem is one :class:`~ocd.errors.InputError` that names the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ocd.errors import InputError


def read_images(path: Path, in_shape: tuple[int, ...], pixel_max: float) -> tuple[list[str], np.ndarray]:
    """Raw images [N, *in_shape] in the dataset's pixel range (a .npy file, or a folder of PNGs)
    and their names; every problem is an InputError naming the file."""
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if path.is_dir():
        files = sorted(path.glob("*.png"))
        if not files:
            raise InputError(f"{path} holds no .png files")
        names, raw = [f.name for f in files], np.stack([_read_png(f, pixel_max, in_shape) for f in files])
    elif path.suffix == ".npy":
        raw = read_npy(path)
        names = [f"{path.name}[{i}]" for i in range(len(raw))]
    else:
        raise InputError(f"{path}: expected a .npy file or a folder of PNG images")
    if len(raw) == 0:
        raise InputError(f"{path} holds no inputs (shape {raw.shape})")
    if raw.shape[1:] != in_shape and raw.shape[1:] == in_shape[1:] and in_shape[0] == 1:
        raw = raw[:, None]  # grey images without a channel axis
    if raw.shape[1:] != in_shape:
        raise InputError(f"{path}: inputs of shape {raw.shape[1:]}; the model takes {in_shape}")
    if not np.all(np.isfinite(raw)):
        raise InputError(f"{path}: inputs contain NaN or infinite values")
    lo, hi = float(raw.min()), float(raw.max())
    if lo < 0 or hi > pixel_max:
        raise InputError(f"{path}: values range over [{lo:.4g}, {hi:.4g}]; the model's pixels lie in "
                         f"[0, {pixel_max:g}] (raw values, as the dataset ships them)")
    return names, raw


def read_table(path: Path, width: int) -> tuple[list[str], np.ndarray]:
    """Raw feature rows [N, width] from a .npy file (a blank is NaN) and their names."""
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if path.suffix != ".npy":
        raise InputError(f"{path}: a table's rows are read from a .npy file of raw features [N, {width}]")
    raw = read_npy(path)
    if raw.ndim == 1 and len(raw) == width:
        raw = raw[None]
    if raw.ndim != 2 or raw.shape[1] != width:
        raise InputError(f"{path}: rows of shape {raw.shape[1:]}; the model takes {width} raw features a row")
    if len(raw) == 0:
        raise InputError(f"{path} holds no inputs (shape {raw.shape})")
    if np.isinf(raw).any():
        raise InputError(f"{path}: infinite feature values (a blank is NaN, and takes the train median)")
    return [f"{path.name}[{i}]" for i in range(len(raw))], raw


NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file


def read_npy(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(NPY_MAGIC))
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    if head != NPY_MAGIC:  # numpy would call any other bytes "pickled data"
        raise InputError(f"{path}: not a .npy file (it does not begin with the .npy header); save the inputs "
                         "with numpy.save")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # not a .npy, truncated, or an object array (would need pickle)
        raise InputError(f"{path}: not a readable .npy array of numbers ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim < 1 or not (np.issubdtype(arr.dtype, np.number)
                                                                or arr.dtype == bool):
        raise InputError(f"{path}: holds {getattr(arr, 'dtype', type(arr).__name__)} values; "
                         "expected an array of numbers [N, ...]")
    if np.iscomplexobj(arr):
        raise InputError(f"{path}: holds complex numbers; expected real pixel values")
    return arr.astype(np.float64)


def _read_png(path: Path, pixel_max: float, in_shape: tuple[int, ...]) -> np.ndarray:
    """One grey image in the dataset's pixel range; its size is checked against
    the model's before its pixels are decoded (a 20000x20000 image is refused, not read)."""
    from PIL import Image, UnidentifiedImageError

    height, width = in_shape[-2:]
    try:
        with Image.open(path) as img:
            if img.size != (width, height):
                raise InputError(f"{path} is {img.size[0]}x{img.size[1]} pixels; the model takes "
                                 f"{width}x{height} images")
            grey = img.convert("L")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path}: not a readable PNG image ({type(exc).__name__}: {exc})") from None
    return np.asarray(grey, dtype=np.float64) / 255.0 * pixel_max
