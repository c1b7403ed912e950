"""The rows the models that train on a store fit: train_diffusion (the
denoiser), train_scale (the scale model) and train_regressor (the
no-diffusion baseline) each fit one model on the same rows of the store's
train group, with the same conditioning statistics and held-out chunks, so
each can rerun alone when only its own params change (the stages:
stages/train_diffusion.py, stages/train_scale.py, stages/train_regressor.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr

from ocd.delta import COND, StoreError
from ocd.device import runtime
from ocd.hypernet import scale
from ocd.hypernet.conditioning import cond_stats
from ocd.hypernet.neighbours import NEIGHBOURS, Retriever
from ocd.hypernet.targets import TargetMeta, batch_tensors, reader_names, require_rank1, target_meta
from ocd.params import Params
from ocd.store import ChunkReader, open_store, split_chunks


@dataclass
class Fit:
    """The fit rows of a store (``reader``) and what every model trained on them records."""

    train: zarr.Group
    reader: ChunkReader
    held_chunks: list[int]
    stats: dict  # the conditioning's mean and SD over the fit rows
    provenance: dict
    target: TargetMeta  # what the denoiser and the regressor generate, and at what scale
    train_mean: float  # the fit rows' mean rho
    rho_floor: float  # ocd.hypernet.scale.rho_floor of the fit rows
    ram_mb: float  # diffusion.ram_mb
    note: str  # what diffusion.holdout held out (:func:`holdout_note`), for the stage to print

    # diffusion.neighbours > 0: the fit rows' retriever (each held-out row retrieves from them)
    retriever: Retriever | None = None
    # the output part of I(x) as a picture (channels, height, width): the store's output_grid (LayerCut.output_grid)
    output_grid: tuple[int, ...] = ()

    def held(self, names: tuple[str, ...] = ("delta", "u", "rank1_share", "rho", *COND)) -> dict[str, np.ndarray]:
        """The held-out rows (diagnostics only), every array in ``names`` (and what they retrieve)."""
        rows = ChunkReader(self.train, names, self.held_chunks, ram_mb=self.ram_mb).read(self.held_chunks)
        if self.retriever is not None:
            rows[NEIGHBOURS] = self.retriever([torch.as_tensor(rows[n]) for n in COND]).numpy()
        return rows


class ReaderWithColumns(ChunkReader):
    """The fit rows in RAM, with columns computed beside the store's arrays (``cond/neighbours``)."""

    def require_ram(self) -> None:
        if not self.in_ram:
            raise StoreError(f"diffusion.neighbours needs the {self.rows} fit rows in RAM: raise "
                             "diffusion.ram_mb, or set diffusion.neighbours 0")

    def add(self, name: str, values: np.ndarray) -> None:
        self.require_ram()
        if len(values) != self.rows:
            raise ValueError(f"a column of {len(values)} rows beside {self.rows} fit rows")
        self._ram[name] = values
        self.names = (*self.names, name)


def open_fit(p: Params, store: Path, neighbours: bool = True) -> Fit:
    """The store's fit rows as every training stage reads them: the same arrays (so the
    same in-RAM or streamed reader, hence the same minibatches) and the same statistics.
    With diffusion.neighbours > 0 (and ``neighbours``: the scale model reads I(x) alone)
    each fit row also carries the mean target of its nearest other fit rows
    (ocd.hypernet.neighbours), and its statistics join the conditioning's.

    Before any training, a store whose every delta is zero is refused (ocd.hypernet.scale.rho_floor).
    """
    dp = p.diffusion
    root = open_store(store)
    train = root["train"]  # never the test group: that is the oracle's alone
    weight_shape = tuple(root.attrs["weight_shape"])
    if dp.target == "rank1":
        require_rank1(weight_shape, train["cond/layer_input"].shape[1])
    fit_chunks, held_chunks = split_chunks(train["done"].shape[0], dp.holdout)
    k = dp.neighbours if neighbours else 0
    reader = ReaderWithColumns(train, reader_names(dp.target), fit_chunks, ram_mb=dp.ram_mb)
    note = holdout_note(dp.holdout, train["rho"].shape[0], reader.rows, len(held_chunks))
    stats = cond_stats(reader)
    fit_rho = scale.rhos(reader)
    train_mean, floor = float(fit_rho.mean()), scale.rho_floor(fit_rho)
    provenance = {"base_sha256": root.attrs["base_sha256"], "layer": root.attrs["layer"],
                  "store_fingerprint": root.attrs["fingerprint"], "rho": root.attrs["overfit"]["rho"],
                  "runtime": runtime(), "compute": {k: v for k, v in p.section("compute").items() if k != "nproc"}}
    target = target_meta(weight_shape, provenance["rho"], dp.target, root.attrs["rank1_basis"], k)
    retriever = None
    if k:
        reader.require_ram()  # before reading them all
        rows = reader.read(reader.chunks)
        targets, parts, _ = batch_tensors({n: rows[n] for n in reader_names(dp.target)},
                                          dataclasses.replace(target, neighbours=0), "cpu")
        retriever = Retriever(parts, targets, k)
        reader.add(NEIGHBOURS, retriever(parts, own=torch.arange(len(targets))).numpy())
        stats.update(cond_stats(reader, (NEIGHBOURS,)))
    return Fit(train, reader, held_chunks, stats, provenance, target, train_mean, floor, dp.ram_mb, note, retriever,
               tuple(root.attrs.get("output_grid", ())))


def holdout_note(holdout: float, rows: int, fit_rows: int, held_chunks: int) -> str:
    """What diffusion.holdout held out: whole store chunks, so its share can be far from the one asked."""
    if not held_chunks:
        return f"every one of the {rows} train rows fits the models (diffusion.holdout 0: no diagnostics)"
    held = rows - fit_rows
    note = (f"held out for the diagnostics: the last {held_chunks} store chunk(s), {held} of {rows} train rows "
            f"({held / rows:.0%}); the models fit {fit_rows}")
    if abs(held / rows - holdout) > 0.5 * holdout:
        note += (f". diffusion.holdout asks {holdout:.0%}, but rows are held out in whole chunks of "
                 "overfit.batch_size rows: a smaller overfit.batch_size splits finer")
    return note
