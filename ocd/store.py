"""The weight-delta store: a Zarr v3 group that describes itself.

Layout (N rows per split, chunked along N; one chunk holds one overfit batch)::

    deltas.zarr/                 attrs: format_version, layer, weight_shape, base_sha256,
                                        dataset, overfit params, rho definition, ... (no time:
                                        equal rows give a store of equal bytes, hence one DVC hash)
      train/                     every training sample
        delta            [N, out, in]  W' - W of the selected layer
        rho              [N]           scale of delta (attrs "rho": "fro" norm or "std")
        cond/layer_input      [N, in]  i_L(x): the layer's input, base weights
        cond/layer_activation [N, out x sum(scales)] a_L(x): its activation, base weights (LayerCut.scales)
        cond/output           [N, C]   f(x; theta): the base model's output
        label            [N]           y
        loss_before      [N]           the sample's loss with the base weights
        loss_after       [N]           ... after overfitting
        index            [N]           row of the sample in the dataset split
        u                [N, out]      derived: the least-squares output factor of delta,
                                       u = delta r / |r|^2 (delta ~ u r^T), r = rank1_right(i_L)
        rank1_share      [N]           derived: share of |delta|^2 that u r^T explains
        done             [n_chunks]    1 once every array of that chunk is written
      test/                      every TEST sample overfitted with its own label:
                                 the "overfitting on test" upper bound only,
                                 never input to any model

Writers own whole chunks (Zarr rewrites a whole chunk on every write), and a
chunk's ``done`` flag is written last, so a killed run resumes at the first
chunk not marked done. Every chunk of every array ends in a crc32c checksum
(Zarr v3's ``crc32c`` codec), and ``seal[c, j]`` binds chunk c of array j to
its place and its run: the crc32c of the store's fingerprint, the array's path,
the chunk index and the chunk's values. ``attrs_seal`` does the same for the
attributes that say what the chunks are (the layer, the base model's sha256,
the data): one crc32c per attribute, so an attribute edited by hand is named.
:func:`verify` reads each chunk and
names the ones that fail either check (a damaged file, a chunk file moved to
another index, a chunk written by a run with other inputs) and every edited
attribute; a resumed overfit
run recomputes them, and readers (:func:`open_store`) refuse a damaged store
with the command that repairs it. The derived arrays are computed by
:meth:`DeltaStore.write_chunk` from ``delta`` and ``cond/layer_input``, never
given by a writer. A store whose fingerprint (base model, layer, data, overfit
params, format) differs from the run's is rebuilt, never extended; a folder
that is not recognisably a store of this project is refused, never deleted.
One run writes a store at a time: :meth:`DeltaStore.create_or_resume` holds
an exclusive lock on ``STORE.lock`` beside it until the process ends (the
kernel releases it when the holder dies, so a killed run leaves no stale lock).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np
import torch
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.sync import sync as zarr_sync

from ocd.delta import StoreError, rank1_right, rank_one_factor
from ocd.distributed import Group

# 2: the derived rank-one arrays u and rank1_share; 3: u's right factor follows
# the overfit optimizer (attrs rank1_basis); 4: a crc32c checksum on every chunk;
# 5: seal, each chunk bound to its array, index and run; 6: attrs_seal, the attributes sealed too
FORMAT_VERSION = 6
REPAIR = "`dvc repro overfit` (or `ocd overfit`) recomputes the damaged chunks (and rewrites edited attributes)"
REWRITE = "`dvc repro overfit` (or `ocd overfit`) writes it anew"
# The entries of a store's folder; anything else in it means the folder is not only a store.
OWN_ENTRIES = {"zarr.json", "train", "test"}
SPLITS = ("train", "test")
TEST_ROLE = ("oracle only: test samples overfitted with their own labels, for the "
             "'overfitting on test' upper bound; never input to any model")


@dataclass(frozen=True)
class Layout:
    """Shapes of one store: rows per split and the per-row shapes."""

    n: dict[str, int]  # rows per split
    out_features: int
    in_features: int
    n_outputs: int  # width of cond/output: the model's output, as the cut encodes it
    chunk: int
    dtype: str  # of delta
    label_dtype: str = "int64"
    rank1_basis: str = "input"  # the right factor of u: BASIS_OF_OPTIMIZER[overfit optimizer]
    label_shape: tuple[int, ...] = ()  # per row: () for a class or a number, [H * W * 3] for a view
    activation_width: int = 0  # of cond/layer_activation: out_features, or more where pooled at several scales

    def arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Array path -> (row shape, dtype)."""
        return {
            "delta": ((self.out_features, self.in_features), self.dtype),
            "rho": ((), "float32"),
            "cond/layer_input": ((self.in_features,), "float32"),
            "cond/layer_activation": ((self.activation_width or self.out_features,), "float32"),
            "cond/output": ((self.n_outputs,), "float32"),
            "label": (tuple(self.label_shape), self.label_dtype),
            "loss_before": ((), "float32"),
            "loss_after": ((), "float32"),
            "index": ((), "int64"),
            "u": ((self.out_features,), "float32"),
            "rank1_share": ((), "float32"),
        }

    def n_chunks(self, split: str) -> int:
        return -(-self.n[split] // self.chunk)


DERIVED = ("u", "rank1_share")


def run_key(fingerprint: dict) -> bytes:
    """The digest of a run's fingerprint that every chunk's seal starts from."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).digest()


def chunk_seal(key: bytes, array: str, chunk: int, values: np.ndarray) -> int:
    """crc32c of (run key, array path, chunk index, the chunk's values as stored)."""
    head = key + array.encode() + b"\0" + int(chunk).to_bytes(8, "little")
    return google_crc32c.extend(google_crc32c.value(head), np.ascontiguousarray(values).tobytes())


def attrs_seal(key: bytes, attrs: dict) -> dict[str, int]:
    """Per attribute (of the root, and ``split/name`` of each split's group),
    the crc32c of (run key, its name, its value as sorted JSON); ``attrs_seal`` itself is left out."""
    return {name: google_crc32c.value(key + name.encode() + b"\0" + json.dumps(value, sort_keys=True).encode())
            for name, value in attrs.items() if name != "attrs_seal"}


def _all_attrs(root: zarr.Group) -> dict:
    got = dict(root.attrs)
    for split in SPLITS:
        if split in root:
            got.update({f"{split}/{name}": value for name, value in root[split].attrs.items()})
    return got


def edited_attrs(root: zarr.Group) -> list[str]:
    """The attributes whose value no longer matches ``attrs_seal`` (edited by
    hand, added or removed since the run wrote the store), sorted."""
    sealed = root.attrs.get("attrs_seal")
    if not isinstance(sealed, dict):
        return ["attrs_seal"]
    now = attrs_seal(run_key(root.attrs.get("fingerprint")), _all_attrs(root))
    return sorted(name for name in set(now) | set(sealed) if now.get(name) != sealed.get(name))


def lock_path(path: str | Path) -> Path:
    """The writer lock of the store at ``path``: ``STORE.lock`` beside it."""
    path = Path(path).resolve()
    return path.with_name(path.name + ".lock")


def _take_lock(path: Path):
    """Hold the exclusive writer lock of ``path`` for this process's lifetime, or
    refuse: another live run holds it. (flock: the kernel releases it when the
    holder exits or is killed, so there is never a stale lock to clear.)"""
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    made = not lock.exists()
    fh = open(lock, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        raise StoreError(f"another run is writing {path} ({holder}); wait for it to finish or stop it, "
                         f"or give this run another --out") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {socket.gethostname()} since "
             f"{dt.datetime.now().isoformat(timespec='seconds')}: {' '.join(sys.argv[:3])}")
    fh.flush()
    fh.made = made  # type: ignore[attr-defined]  # whether this run created the lock file
    return fh


def _drop_lock(fh) -> None:
    """Release a lock taken for a path that is then refused, and delete its file if this run made it."""
    if getattr(fh, "made", False):
        Path(fh.name).unlink(missing_ok=True)
    fh.close()


def _check_ours(path: Path) -> None:
    """Refuse, touching nothing, a path that is not recognisably a store of this
    project: a file, a link, or a folder holding anything but a store's own
    entries (an empty folder is fine)."""
    if path.is_symlink():  # rebuilding it would write (and clear) wherever it points
        raise StoreError(f"{path} is a symbolic link (to {os.readlink(path)}), not a weight-delta store's own "
                         "folder; nothing was deleted: give the folder itself as --out, or another --out")
    if not path.is_dir():
        raise StoreError(f"{path} exists and is not a weight-delta store (not a folder); "
                         "give another --out, or remove it yourself")
    entries = {e.name for e in path.iterdir()}
    foreign = sorted(e for e in entries - OWN_ENTRIES if not e.endswith(".partial"))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise StoreError(f"{path} exists and is not a weight-delta store (it holds {shown}); nothing was "
                         "deleted: give another --out, or remove it yourself")
    if entries and "zarr.json" not in entries:
        raise StoreError(f"{path} holds {', '.join(sorted(entries))} but no zarr.json: not recognisably a "
                         "weight-delta store; nothing was deleted: give another --out, or remove it yourself")
    if "zarr.json" in entries:
        try:
            meta = json.loads((path / "zarr.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return  # a damaged store: its entries are a store's own, so it is rebuilt
        attrs = meta.get("attributes", {}) if isinstance(meta, dict) else {}
        if not isinstance(attrs, dict) or not ({"format_version", "fingerprint"} & set(attrs)):
            raise StoreError(f"{path} is a Zarr group but not a weight-delta store of this project (no "
                             "format_version or fingerprint); nothing was deleted: give another --out, or "
                             "remove it yourself")


def _remove_store(path: Path) -> None:
    """Delete a store's own entries (checked by :func:`_check_ours`), then its folder."""
    for name in OWN_ENTRIES:
        entry = path / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()
    for partial in path.glob("*.partial"):
        partial.unlink()
    path.rmdir()


class DeltaStore:
    """Writing side of a store. Open it with :meth:`create_or_resume`."""

    def __init__(self, root: zarr.Group, layout: Layout):
        self.root = root
        self.layout = layout
        # Array handles opened once: each group[name] lookup re-reads metadata.
        # write_empty_chunks is a setting of the handle, not of the stored array:
        # without it Zarr skips writing a chunk that equals the fill value (a
        # chunk of labels that are all 0), which verify() then finds missing.
        self._arrays = {(split, name): root[split][name].with_config({"write_empty_chunks": True})
                        for split in SPLITS for name in [*layout.arrays(), "seal", "done"]}
        self.key = run_key(root.attrs["fingerprint"])
        self.lock = None  # the writer lock's file, held by the run that made or resumed the store

    @classmethod
    def create_or_resume(cls, path: str | Path, layout: Layout, fingerprint: dict,
                         attrs: dict, log=print) -> "DeltaStore":
        """Resume ``path`` if its fingerprint equals ``fingerprint``, else (re)create it.

        ``fingerprint`` holds everything that determines the rows (JSON-able);
        ``attrs`` is extra description for readers.
        """
        path = Path(path)
        fingerprint = json.loads(json.dumps(fingerprint))  # normalise tuples etc.
        lock = _take_lock(path)  # before anything is read: another run may be writing
        if path.exists() or path.is_symlink():
            try:
                _check_ours(path)
            except StoreError:
                _drop_lock(lock)
                raise
            try:
                old = zarr.open_group(path, mode="r").attrs.get("fingerprint")
            except Exception:  # a damaged store (its own entries only: _check_ours)
                old = None
            edited = _edited_or_unknown(path) if old == fingerprint else []
            if edited:
                log(f"rebuilding {path}: its attributes {', '.join(edited)} were edited after the run wrote it")
            elif old == fingerprint:
                # Zarr writes each file to a temporary name and renames it: a
                # killed run can leave such a half-written file behind.
                for partial in path.rglob("*.partial"):
                    partial.unlink()
                try:
                    store = cls(zarr.open_group(path, mode="r+"), layout)
                except Exception as exc:  # an array's metadata is unreadable
                    log(f"rebuilding {path}: its layout is damaged ({type(exc).__name__}: {exc})")
                else:
                    store.lock = lock
                    store.heal(log)
                    log(f"resuming {path}: {cls._done_summary(store.root, layout)}")
                    return store
            else:
                log(f"rebuilding {path}: it was written for {_diff(old, fingerprint)}")
            _remove_store(path)
        root = zarr.open_group(path, mode="w")
        root.attrs.update({
            **attrs,
            "format_version": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "chunk_rows": layout.chunk,
            "rank1_basis": layout.rank1_basis,
            "splits": {"train": "every training sample", "test": TEST_ROLE},
            "done_flag": "split/done[c] == 1 once every array's chunk c is written",
        })
        for split in SPLITS:
            group = root.create_group(split)
            group.attrs["role"] = "training data for the diffusion and scale models" \
                if split == "train" else TEST_ROLE
            n = layout.n[split]
            for name, (row, dtype) in layout.arrays().items():
                # delta is written uncompressed (the write rate is the stage's
                # ceiling); the small arrays take Zarr's default compression
                # (zstd). Every chunk ends in its crc32c.
                compressors = [Crc32cCodec()] if name == "delta" else [ZstdCodec(level=0), Crc32cCodec()]
                group.create_array(name, shape=(n, *row), chunks=(layout.chunk, *row), dtype=dtype,
                                   fill_value=0, compressors=compressors,
                                   config={"write_empty_chunks": True})  # as the handles that write
            group.create_array("seal", shape=(layout.n_chunks(split), len(layout.arrays())),
                               chunks=(1, len(layout.arrays())), dtype="uint32", fill_value=0,
                               compressors=[Crc32cCodec()], config={"write_empty_chunks": True})
            group.create_array("done", shape=(layout.n_chunks(split),), chunks=(1,),
                               dtype="uint8", fill_value=0, compressors=[Crc32cCodec()])
        root.attrs["seal"] = ("seal[c, j]: crc32c of sha256(fingerprint), the path of array j of "
                              "seal_arrays, the index c and the chunk's values as stored")
        root.attrs["seal_arrays"] = list(layout.arrays())
        root.attrs["attrs_seal"] = attrs_seal(run_key(fingerprint), _all_attrs(root))  # last: every attribute set
        store = cls(root, layout)
        store.lock = lock
        return store

    @classmethod
    def attach(cls, path: str | Path, layout: Layout, fingerprint: dict) -> "DeltaStore":
        """Open the store another process made with :meth:`create_or_resume`
        (a rank of a multi-process run after rank 0 made it); it must carry ``fingerprint``."""
        fingerprint = json.loads(json.dumps(fingerprint))
        try:
            root = zarr.open_group(Path(path), mode="r+")
        except Exception as exc:
            raise StoreError(f"{path}: no store to attach to ({type(exc).__name__}: {exc})") from None
        if root.attrs.get("fingerprint") != fingerprint:
            raise StoreError(f"{path} was written for {_diff(root.attrs.get('fingerprint'), fingerprint)}")
        return cls(root, layout)

    @staticmethod
    def _done_summary(root: zarr.Group, layout: Layout) -> str:
        return ", ".join(f"{s} {int(np.sum(root[s]['done'][:]))}/{layout.n_chunks(s)} chunks"
                         for s in SPLITS)

    def pending_chunks(self, split: str) -> list[int]:
        done = self._arrays[split, "done"][:]
        return [c for c in range(self.layout.n_chunks(split)) if done[c] != 1]

    def pending_rows(self, split: str) -> int:
        n, chunk = self.layout.n[split], self.layout.chunk
        return sum(min(chunk, n - c * chunk) for c in self.pending_chunks(split))

    def heal(self, log=print) -> list["Damage"]:
        """Clear the done flag of every finished chunk that fails to read or
        verify (one line each), so that the run recomputes it; an unreadable
        flag counts as not done."""
        damaged = [d for d in verify(self.root, layout=self.layout) if d.chunk >= 0]  # attributes: rebuilt
        for d in damaged:
            log(f"damaged: {d}; recomputing it")
            self._arrays[d.split, "done"][d.chunk] = 0
        return damaged

    def write_chunk(self, split: str, chunk: int, rows: dict[str, np.ndarray]) -> None:
        """Write chunk ``chunk`` of every array of ``split`` (the derived ones
        computed here), then mark it done."""
        start = chunk * self.layout.chunk
        stop = min(start + self.layout.chunk, self.layout.n[split])
        expected = set(self.layout.arrays()) - set(DERIVED)
        if set(rows) != expected:
            raise StoreError(f"chunk rows must hold exactly {sorted(expected)}, got {sorted(rows)}")
        rows = {name: np.asarray(values) for name, values in rows.items()}
        right = rank1_right(rows["cond/layer_input"], self.layout.rank1_basis)
        rows["u"], rows["rank1_share"] = rank_one_factor(rows["delta"], right)
        seal = np.zeros(len(rows), dtype=np.uint32)
        for j, (name, (_, dtype)) in enumerate(self.layout.arrays().items()):  # check everything first
            values = rows[name] = np.ascontiguousarray(rows[name], dtype=dtype)  # as stored
            if len(values) != stop - start:
                raise StoreError(f"{name}: {len(values)} rows for chunk {chunk} of {stop - start}")
            if not np.all(np.isfinite(values)):
                raise StoreError(f"{split}/{name} has NaN or infinite values in chunk {chunk} "
                                 f"(rows {start}..{stop - 1}); the overfit diverged: lower overfit.lr")
            seal[j] = chunk_seal(self.key, f"{split}/{name}", chunk, values)
        self._write_all([(self._arrays[split, name], values) for name, values in rows.items()],
                        slice(start, stop))
        self._arrays[split, "seal"][chunk] = seal
        self._arrays[split, "done"][chunk] = 1  # last: a chunk is done only once all of it is written

    @staticmethod
    def _write_all(targets: list[tuple[zarr.Array, np.ndarray]], rows: slice) -> None:
        """Write the same rows of several arrays concurrently (zarr's async API):
        one round trip instead of one per array. It runs on Zarr's own
        long-lived event loop (``zarr.core.sync.sync``, as zarr's synchronous
        API does): ``asyncio.run`` made a new loop and thread pool per chunk."""

        async def gather():
            await asyncio.gather(*(arr.async_array.setitem(rows, values) for arr, values in targets))

        zarr_sync(gather())

    def complete(self) -> bool:
        return all(not self.pending_chunks(s) for s in SPLITS)

    def close(self) -> None:
        """Release the writer lock (it is released anyway when the process ends)."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None


def open_store(path: str | Path) -> zarr.Group:
    """Open a finished store read-only; refuse an unfinished, foreign or damaged one.

    Every chunk is read once and its checksum verified (:func:`verify`) before
    any work that would otherwise stop half-way on the first bad chunk.
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path} does not exist; run the overfit stage first")
    try:
        root = zarr.open_group(path, mode="r")
    except Exception as exc:
        raise StoreError(f"{path} is not a readable weight-delta store ({type(exc).__name__}: "
                         f"{_first_line(exc)}); {REWRITE}") from None
    version = root.attrs.get("format_version")
    if version is None:
        raise StoreError(f"{path} is not a weight-delta store (no format_version attribute); {REWRITE}")
    if version != FORMAT_VERSION:
        raise StoreError(f"{path} is a weight-delta store of format {version}, this code reads format "
                         f"{FORMAT_VERSION}; rerun the overfit stage to rebuild it")
    try:
        damaged = verify(root)
    except Exception as exc:  # an array's metadata is unreadable
        raise StoreError(f"{path}: its layout cannot be read ({type(exc).__name__}: {_first_line(exc)}); "
                         f"{REWRITE}") from None
    if damaged:
        raise StoreError(f"{path} has {len(damaged)} damaged chunk(s) or attribute(s): {damaged[0]}"
                         + (f" and {len(damaged) - 1} more (`ocd inspect --verify {path}` lists them)"
                            if len(damaged) > 1 else "") + f"; {REPAIR}")
    for split in SPLITS:
        done = root[split]["done"][:]
        if not np.all(done == 1):
            raise StoreError(f"{path}: {split} has {int(np.sum(done != 1))} unfinished chunks; "
                             "rerun the overfit stage to finish it")
    return root


@dataclass(frozen=True)
class Damage:
    """One chunk of one array that cannot be read back as written."""

    split: str
    array: str
    chunk: int  # the row chunk (the index into done); -1: an attribute (array names it)
    rows: tuple[int, int]
    reason: str

    def __str__(self) -> str:
        if self.chunk < 0:
            return f"{self.array}: {self.reason}"
        return f"{self.split}/{self.array} chunk {self.chunk} (rows {self.rows[0]}..{self.rows[1] - 1}): {self.reason}"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else ""


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    if "checksum" in text.lower():
        return "checksum mismatch"
    return f"unreadable ({type(exc).__name__}: {text[:120]})"


def verify_path(path: str | Path) -> list[Damage]:
    """:func:`verify` for the store at ``path``; a StoreError if it cannot be opened at all."""
    root = _open_for_reading(path)
    try:
        return verify(root)
    except Exception as exc:
        raise StoreError(f"{path}: its layout cannot be read ({type(exc).__name__}: {_first_line(exc)}); "
                         f"{REWRITE}") from None


def _open_for_reading(path: str | Path) -> zarr.Group:
    """A store opened read-only for inspection (finished or not); anything else refused."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path} does not exist")
    try:
        root = zarr.open_group(path, mode="r")
    except Exception as exc:
        raise StoreError(f"{path} is not a readable weight-delta store ({type(exc).__name__}: "
                         f"{_first_line(exc)}); {REWRITE}") from None
    if "format_version" not in root.attrs or not all(split in root for split in SPLITS):
        raise StoreError(f"{path} is a Zarr group but not a weight-delta store of this project "
                         "(no format_version, or no train and test groups)")
    return root


def verify(root: zarr.Group, splits=SPLITS, layout: Layout | None = None) -> list[Damage]:
    """Every chunk marked done that fails to read, fails its checksum, is
    missing (Zarr would read a missing chunk as zeros) or does not match its
    seal (a chunk file moved to another index, or written by a run with another
    fingerprint), for every array of ``splits``. An unreadable done flag or
    seal is reported as damage of ``done`` or ``seal``; an attribute edited
    since the run wrote it, first, as a damage of chunk -1."""
    damaged = [Damage("", f"attribute {name}", -1, (0, 0), "does not match its seal: edited after the overfit run "
                      "wrote the store, so its chunks may not be what it says") for name in edited_attrs(root)]
    store_root = Path(str(root.store.root)) if hasattr(root.store, "root") else None
    key = run_key(root.attrs.get("fingerprint"))
    sealed = list(root.attrs.get("seal_arrays") or [])
    for split in splits:
        group = root[split]
        n_chunks = group["done"].shape[0]
        done = np.zeros(n_chunks, dtype=bool)
        for c in range(n_chunks):
            try:
                done[c] = group["done"][c] == 1
            except Exception as exc:
                damaged.append(Damage(split, "done", c, (c, c + 1), _reason(exc)))
        seals: dict[int, np.ndarray] = {}
        if "seal" in group:
            for c in np.flatnonzero(done):
                try:
                    seals[int(c)] = group["seal"][int(c)]
                except Exception as exc:
                    damaged.append(Damage(split, "seal", int(c), (int(c), int(c) + 1), _reason(exc)))
        names = list(layout.arrays()) if layout is not None else \
            [name for name, node in group.members(max_depth=None)
             if isinstance(node, zarr.Array) and name not in ("done", "seal")]
        for name in names:
            arr = group[name]
            rows_per_chunk, n = arr.chunks[0], arr.shape[0]
            j = sealed.index(name) if name in sealed else None
            for c in np.flatnonzero(done):
                lo, hi = int(c) * rows_per_chunk, min((int(c) + 1) * rows_per_chunk, n)
                chunk_key = arr.metadata.encode_chunk_key((int(c),) + (0,) * (arr.ndim - 1))
                if store_root is not None and not (store_root / arr.path / chunk_key).is_file():
                    damaged.append(Damage(split, name, int(c), (lo, hi), "chunk file missing"))
                    continue
                try:
                    values = arr[lo:hi]
                except Exception as exc:
                    damaged.append(Damage(split, name, int(c), (lo, hi), _reason(exc)))
                    continue
                if j is not None and int(c) in seals and \
                        chunk_seal(key, f"{split}/{name}", int(c), values) != int(seals[int(c)][j]):
                    damaged.append(Damage(split, name, int(c), (lo, hi), "does not match its seal (a chunk "
                                          "moved from another index, or written by another run)"))
    return damaged


def _edited_or_unknown(path: Path) -> list[str]:
    try:
        return edited_attrs(zarr.open_group(path, mode="r"))
    except Exception:  # unreadable attributes: the resume below names the damage
        return []


def _diff(old: dict | None, new: dict) -> str:
    if not isinstance(old, dict):
        return "nothing this run recognises (no fingerprint)"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "another run: " + "; ".join(f"{k} was {old.get(k)!r}, now {new.get(k)!r}" for k in keys)


def _array_info(arr: zarr.Array) -> dict:
    return {"shape": list(arr.shape), "dtype": str(arr.dtype), "chunks": list(arr.chunks),
            "compressors": [type(c).__name__ for c in arr.compressors]}


def _stats(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {}
    q = np.quantile(values, [0.05, 0.5, 0.95])
    mean = float(values.mean())
    return {"mean": mean, "sd": float(values.std()), "min": float(values.min()),
            "p05": float(q[0]), "median": float(q[1]), "p95": float(q[2]), "max": float(values.max()),
            "cv": float(values.std() / mean) if mean else None}


def rank_one_share(delta: np.ndarray) -> np.ndarray:
    """Per delta: the share of its squared Frobenius norm in the top singular value,
    sigma_1^2 / sum sigma_i^2 (1.0 for an exactly rank-one matrix)."""
    s = torch.linalg.svdvals(torch.as_tensor(np.asarray(delta, dtype=np.float32)))
    energy = (s**2).sum(dim=-1).clamp_min(1e-30)
    return ((s[..., 0] ** 2) / energy).numpy()


def summarize(path: str | Path, sample: int = 256) -> dict:
    """What `ocd inspect` shows: layout, attrs and the distributions of a store.

    Statistics cover the rows of finished chunks; the rank-one share covers up
    to ``sample`` evenly spaced deltas per split.
    """
    if sample < 0:  # a bad argument, not a damaged store
        raise ValueError(f"sample is the number of deltas per split to read, >= 0; got {sample}")
    root = _open_for_reading(path)
    summary = {"path": str(path), "attrs": dict(root.attrs), "splits": {}}
    for split in SPLITS:
        if split not in root:
            continue
        try:
            summary["splits"][split] = _split_summary(root, split, sample)
        except Exception as exc:  # a damaged chunk or array: name it, never a traceback
            raise StoreError(f"{path}: {split} cannot be read ({_reason(exc)}); `ocd inspect --verify {path}` "
                             f"lists every damaged chunk; {REPAIR}") from None
    return summary


def _split_summary(root: zarr.Group, split: str, sample: int) -> dict:
    group = root[split]
    arrays = {name: _array_info(node) for name, node in group.members(max_depth=None)
              if isinstance(node, zarr.Array)}
    chunk = root.attrs.get("chunk_rows", group["rho"].chunks[0])
    done = group["done"][:] == 1
    rows = np.concatenate([np.arange(c * chunk, min((c + 1) * chunk, group["rho"].shape[0]))
                           for c in np.flatnonzero(done)] or [np.zeros(0, int)])
    pick = rows[np.linspace(0, len(rows) - 1, min(sample, len(rows))).astype(int)] if len(rows) else rows
    return {
        "role": group.attrs.get("role"),
        "n": int(group["rho"].shape[0]),
        "rows_done": int(len(rows)),
        "chunks_done": f"{int(done.sum())}/{len(done)}",
        "arrays": dict(sorted(arrays.items())),
        "rho": _stats(group["rho"][:][rows]),
        "loss_before": _stats(group["loss_before"][:][rows]),
        "loss_after": _stats(group["loss_after"][:][rows]),
        "rank1_share": _stats(group["rank1_share"][:][rows]) if "rank1_share" in group else {},
        "rank_one_share": _stats(rank_one_share(group["delta"].get_orthogonal_selection(
            (pick, slice(None), slice(None))))) if len(pick) else {},
    }




# A store has at least this many train chunks when it has the rows: diffusion.holdout holds out whole
# chunks, so with fewer a small table's held-out share would be one chunk of two (or none: a 113-row table
# in one chunk of 256 left no room at all, found only two minutes into train_diffusion).
MIN_CHUNKS = 10


def chunk_rows(n_train: int, batch_size: int) -> int:
    """Rows per store chunk: ``overfit.batch_size``, fewer for a table too small
    to fill ``MIN_CHUNKS`` chunks of it (the held-out share then stays within one
    chunk of ``diffusion.holdout`` for any holdout of 0.1 and above)."""
    return max(1, min(batch_size, -(-n_train // MIN_CHUNKS)))


def split_chunks(n_chunks: int, holdout: float) -> tuple[list[int], list[int]]:
    """Chunks for fitting and the trailing chunks held out for diagnostics."""
    k = min(n_chunks - 1, max(1, round(holdout * n_chunks))) if holdout > 0 else 0
    if n_chunks < 2 and holdout > 0:
        raise StoreError("the store has one chunk: no room for a held-out slice (lower overfit.batch_size)")
    return list(range(n_chunks - k)), list(range(n_chunks - k, n_chunks))


class ChunkReader:
    """Rows of a finished store's split, read as whole chunks.

    Gathering rows scattered over many chunks is ~100x slower than reading
    whole chunks, so minibatches come from whole chunks read in a shuffled
    order and shuffled within a small buffer; or from RAM when everything fits
    in ``ram_mb``.
    """

    def __init__(self, group: zarr.Group, names: tuple[str, ...], chunks: list[int], ram_mb: float = 2048):
        self.group, self.names, self.chunks = group, names, list(chunks)
        self.chunk_rows = group["rho"].chunks[0]
        self.n_rows = group["rho"].shape[0]
        row_bytes = sum(int(np.prod(group[n].shape[1:])) * group[n].dtype.itemsize for n in names)
        self.rows = sum(self._bounds(c)[1] - self._bounds(c)[0] for c in self.chunks)
        self.in_ram = self.rows * row_bytes <= ram_mb * 2**20
        self._ram = None
        if self.in_ram:
            self._ram = self.read(self.chunks)

    def _bounds(self, c: int) -> tuple[int, int]:
        return c * self.chunk_rows, min((c + 1) * self.chunk_rows, self.n_rows)

    def read(self, chunks: list[int]) -> dict[str, np.ndarray]:
        """All rows of ``chunks``, in order."""
        if self._ram is not None and list(chunks) == self.chunks:
            return self._ram
        if self._ram is not None and set(chunks) <= set(self.chunks):
            # in RAM already: slice it instead of reading the chunks again
            starts = np.cumsum([0] + [self._bounds(c)[1] - self._bounds(c)[0] for c in self.chunks])
            pos = {c: i for i, c in enumerate(self.chunks)}
            rows = np.concatenate([np.arange(starts[pos[c]], starts[pos[c] + 1]) for c in chunks])
            return {n: v[rows] for n, v in self._ram.items()}
        parts = {n: [] for n in self.names}
        for c in chunks:
            lo, hi = self._bounds(c)
            for n in self.names:
                parts[n].append(self.group[n][lo:hi])
        return {n: np.concatenate(v) for n, v in parts.items()}

    def batches(self, batch: int, rng: np.random.Generator, group: Group = Group()):
        """Endless shuffled minibatches (dicts of arrays), epoch after epoch: this rank's
        share of each global minibatch of ``batch`` rows (all of it in one process).

        Every rank passes the same ``rng`` state. In RAM, each global minibatch
        is the one a single process draws, and a rank takes its slice of it
        (:meth:`Group.span`). Streamed from disk, the chunks of each epoch are
        dealt out to the ranks, and each rank shuffles its own chunks within
        its buffer: every rank reads only its chunks; the order differs from
        one process's.
        """
        lo, hi = group.span(batch)
        if hi <= lo:
            raise StoreError(f"a global batch of {batch} rows leaves rank {group.rank} of {group.world} "
                             "no rows: raise the batch size or lower compute.nproc")
        if not self.in_ram and len(self.chunks) < group.world:
            raise StoreError(f"{len(self.chunks)} store chunks cannot be dealt out to {group.world} ranks")
        # streamed: the chunk order comes from the shared rng, each rank's shuffles from its own
        local = rng
        if group.world > 1 and not self.in_ram:
            local = np.random.default_rng([int(rng.integers(2**63)), group.rank])
        while True:
            if self.in_ram:
                order = rng.permutation(self.rows)
                for i in range(0, self.rows - batch + 1, batch):
                    yield {n: v[order[i + lo:i + hi]] for n, v in self._ram.items()}
                continue
            buffer = None
            size = hi - lo
            for c in group.deal(rng.permutation(self.chunks)):
                block = self.read([int(c)])
                buffer = block if buffer is None else {n: np.concatenate([buffer[n], block[n]]) for n in block}
                order = local.permutation(len(buffer["rho"]))
                buffer = {n: v[order] for n, v in buffer.items()}
                while len(buffer["rho"]) >= size:
                    yield {n: v[:size] for n, v in buffer.items()}
                    buffer = {n: v[size:] for n, v in buffer.items()}
