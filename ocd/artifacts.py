"""Writing and reading stage artifacts safely.

- Every file a stage writes goes to a temporary name in the same folder and is
  renamed over the target (:func:`atomic_path`), so a kill at any moment leaves
  either the old file or the new one, never half of one. (The Zarr store's own
  files are written the same way by Zarr's LocalStore.)
- Checkpoints hold tensors and one JSON document, nothing else, and are read
  with ``torch.load(weights_only=True)``: a checkpoint from someone else's DVC
  remote cannot run code when it is loaded (a pickle can).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from ocd.errors import CheckpointError

if TYPE_CHECKING:  # torch is imported where a checkpoint is read or written: the writers of text need none
    import torch

# The key of a checkpoint that holds its JSON configuration.
CONFIG = "config_json"




@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    The rename is atomic on one file system. On an error the temporary file is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # the data reaches the disk before the name does
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files of ``path`` left by writers that were killed
    (``kill -9`` skips the cleanup): ``.NAME.PID.tmp`` whose process is gone."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:-len(".tmp")]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            pass


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path: str | Path, rows: Iterable[dict]) -> None:
    rows = list(rows)
    if not rows:
        raise ValueError(f"{path}: no rows to write")
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def write_wav(path: str | Path, signal, rate: int) -> None:
    """A mono 16-bit WAV file of ``signal`` (numbers in [-1, 1]; clipped there), written atomically."""
    import numpy as np
    from scipy.io import wavfile

    buffer = io.BytesIO()
    wavfile.write(buffer, rate, np.round(np.clip(np.asarray(signal, np.float64), -1, 1) * 32767).astype(np.int16))
    write_bytes(path, buffer.getvalue())


def checkpoint_bytes(obj) -> bytes:
    """``torch.save(obj)`` as bytes that depend on ``obj`` alone.

    Saved to a path, torch names the archive's records after the file
    (``.model.pt.6902.tmp/data.pkl`` for the temporary name): equal weights
    then hashed differently run after run, and DVC reran every later stage.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_tensors(path: str | Path, state: dict[str, torch.Tensor]) -> None:
    """A plain state dict (tensors only), written atomically."""
    write_bytes(path, checkpoint_bytes(state))


def save_checkpoint(path: str | Path, state: dict[str, torch.Tensor], config: dict) -> None:
    """A state dict and a JSON-able configuration, written atomically."""
    write_bytes(path, checkpoint_bytes({"state": state, CONFIG: json.dumps(config, sort_keys=True)}))


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, configuration) of a checkpoint written by :func:`save_checkpoint`.

    Refuses anything else, and never unpickles arbitrary objects.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        with warnings.catch_warnings():  # torch warns of a legacy pickle's protocol before refusing it
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} holds Python objects beyond tensors and plain values, which would run "
                              f"code when loaded; refusing it ({first}). Rerun the stage that writes it.") from None
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc}); "
                              "rerun the stage that writes it") from None
    if not isinstance(ckpt, dict) or CONFIG not in ckpt or "state" not in ckpt:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no state and {CONFIG}); "
                              "rerun the stage that writes it")
    try:
        config = json.loads(ckpt[CONFIG])
    except (TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: its configuration is not valid JSON ({exc})") from None
    return ckpt["state"], config
