"""Stage 5's computations: base vs OCD vs ablations vs ensembles on the test split.

Every row is the base model with one weight matrix replaced per test sample,
``W_L(x) = W_L + delta(x)``, applied with the per-sample-weight primitive; the
rows differ only in where ``delta(x)`` comes from:

- ``ocd``: rho(I(x)) * Omega_0 / unit, Omega sampled by DDIM from pure noise;
- ``ocd_ensemble``: k noises, the k predictions combined by the task (mean of
  the predicted distributions); ``ocd_mean_network``: the k deltas averaged;
- ``ocd_no_scale``: rho = the mean train rho;
- ``regressor``: no diffusion, an MLP's predicted direction sized by the scale model;
- ``nn_input`` / ``nn_cond``: the stored delta of the nearest training sample,
  nearest in input space / in standardised conditioning space;
- ``knn``: retrieval as a method: the k nearest training samples' stored
  deltas, weighted by similarity; the space, k and the weighting chosen on the
  calibration rows (:func:`choose`);
- ``ocd_lambda`` / ``regressor_lambda`` / ``knn_lambda``: that row's delta times
  one scalar step size (0 to 8, and beyond while the loss still falls there,
  within |W|/|delta|: :data:`WIDER`) fitted on the calibration rows (0, the
  base model, is among the candidates, so on those rows no such row loses to the base);
- ``tent_{n}``: n steps minimising the prediction's entropy on the same layer;
- ``oracle``: the test sample's own overfit delta (it used the label: an upper bound);
- ``deep_ensemble``: k base models trained with different seeds, no delta;
- ``temperature`` / ``ocd_temperature`` / ``knn_temperature``: the base model's /
  OCD's / ``knn_lambda``'s outputs divided by one temperature fitted on the
  calibration rows (never test); knn's step first, then its temperature.

The calibration rows are the data's own (no model trains on them); a task
without them (TinyNeRF) lends the train rows the diffusion model held out
(``diffusion.holdout``), each retrieving from the train rows but itself.

Every row of a classification run also reports its ECE and its mean test loss
split into the part from the samples the base model gets right and the rest
(``loss_base_right + loss_base_wrong = ce``). A rendering run (TinyNeRF)
reports the image MSE and PSNR of every row, and a few test views as the
truth, base, oracle and OCD renderings (:func:`views_figure`).
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ocd.calibration import choose_temperature, reliability
from ocd.distributed import Group
from ocd.hypernet.diffusion import DeltaDiffusion
from ocd.hypernet.neighbours import (
    WEIGHTINGS,
    Retriever,
    knn_mix,
    nearest,
    neighbours,
    standardiser,
    with_neighbours,
)
from ocd.hypernet.regressor import DeltaRegressor
from ocd.hypernet.scale import ScaleModel
from ocd.hypernet.targets import retriever_of
from ocd.models.cut import layer_io, layer_with_weights, linear_cut, rows_per_pass
from ocd.overfit import overfit_batch
from ocd.pipeline import ocd_deltas, regressor_deltas, sample_deltas
from ocd.tasks import Task


@dataclass
class Row:
    name: str
    metrics: dict[str, float]
    # Mean cosine between the applied delta and the oracle's, and the median
    # relative error of its scale against the oracle's rho (None where no delta).
    cosine: float | None = None
    scale_error: float | None = None
    note: str = ""
    per_sample_loss: np.ndarray | None = field(default=None, repr=False)
    # Wall time per test sample of making the delta and the prediction, batched (None: not timed).
    ms_per_sample: float | None = None

    def flat(self) -> dict:
        return {"row": self.name, **self.metrics, "cosine": self.cosine, "scale_error": self.scale_error,
                "ms_per_sample": self.ms_per_sample, "note": self.note}


# What :func:`choose` tries on the calibration rows: the retrieval's k (each with both
# weightings above but k = 1) in both spaces, and the step sizes of the delta rows.
KNN_K = (1, 2, 4, 8, 16, 32)
LAMBDAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
# Beyond the grid, tried only for a row whose loss was least at its largest step, in order while the
# loss keeps falling, and only up to the bound |W|_F / mean |delta|_F (the layer's weight norm over the
# row's mean delta norm on the calibration rows): past it the "step" outweighs the weights it adjusts,
# replacing the layer rather than fitting it to the sample.
WIDER = (12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 96.0, 128.0, 192.0, 256.0)


@dataclass
class Choice:
    """What the calibration rows chose (:func:`choose`), and what they were."""

    knn: tuple[str, int, str]  # space (input | cond), k, weighting
    lambdas: dict[str, float]  # delta row -> its step size
    rows: int
    source: str  # "calibration rows" | "held-out train rows"
    # their mean loss per candidate, for the record: "knn/SPACE/K/WEIGHTING", "ROW/LAMBDA"
    losses: dict[str, float]
    # the base model's, one OCD sample's and knn_lambda's outputs on them (the temperatures' fit)
    outputs: dict[str, torch.Tensor]
    # per delta row whose grid ended with its loss still falling: how the search went beyond it
    widened: dict[str, str] = field(default_factory=dict)
    # the temperature rows' T (set by evaluate once fitted) and every servable row's mean loss
    temperatures: dict[str, float] = field(default_factory=dict)
    row_losses: dict[str, float] = field(default_factory=dict)

    def record(self) -> dict:
        space, k, weighting = self.knn
        best = self.best()
        return {"rows": self.rows, "source": self.source, "knn": {"space": space, "k": k, "weighting": weighting},
                "lambda": self.lambdas, "widened": self.widened, "temperature": self.temperatures,
                "loss": self.losses,
                "served": self.serve_losses(),
                **({"best": {"row": best, "loss": self.serve_losses()[best]}} if best else {})}

    def serve_losses(self) -> dict[str, float]:
        """Every row that ``ocd predict`` can serve and its mean loss on these rows, in
        :data:`SERVED`'s order: the untrained rows from ``losses``, the temperature rows
        as evaluate fitted them (``row_losses``)."""
        keys = {"base": "base", "ocd": "ocd/1", "regressor": "regressor/1", "knn": "knn/1"}
        keys.update((f"{name}_lambda", f"{name}/{lam:g}") for name, lam in self.lambdas.items())
        got = {name: self.losses[key] for name, key in keys.items() if key in self.losses}
        got.update(self.row_losses)
        return {name: got[name] for name in SERVED if name in got}

    def best(self) -> str | None:
        """The servable row of least mean loss on these rows (ties: the earlier in
        :data:`SERVED`, so the simpler row)."""
        losses = self.serve_losses()
        return min(losses, key=lambda name: (losses[name], SERVED.index(name))) if losses else None


# The rows ``ocd predict`` can serve, simplest first: the calibration rows choose among them.
SERVED = ("base", "temperature", "ocd", "ocd_lambda", "ocd_temperature", "regressor", "regressor_lambda",
          "knn", "knn_lambda", "knn_temperature")


@dataclass
class EvalInputs:
    model: nn.Module
    layer: str
    task: Task
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_train: torch.Tensor
    train_delta: torch.Tensor  # [N_train, out, in], from the store (in its dtype: float16 stays float16)
    train_parts: list[torch.Tensor]  # the store's conditioning of the train rows
    # [N_test, out, in], the store's test group: a tensor, or the store's array itself, whose
    # rows each block reads as it needs them (SetFit's 2,000 float16 deltas are 2.4 GB)
    oracle_delta: torch.Tensor
    diff: DeltaDiffusion
    scaler: ScaleModel
    mean_rho: float
    regressor: DeltaRegressor | None = None
    # calibration rows (ocd.data.core: carved from train, seen by no model); None: none
    x_cal: torch.Tensor | None = None
    y_cal: torch.Tensor | None = None
    # where they are held-out train rows instead (a task without calibration rows): each
    # one's row of the train pool, which it may not retrieve; no temperature is fitted on them
    cal_own: torch.Tensor | None = None
    # diffusion.neighbours > 0: what the generators retrieve from the train rows (made by evaluate)
    retriever: Retriever | None = None

    def to(self, device) -> "EvalInputs":
        """Every tensor and model on ``device`` (models move in place)."""
        def move(v):
            if isinstance(v, list):
                return [move(t) for t in v]
            return v.to(device) if isinstance(v, (torch.Tensor, nn.Module)) else v

        return dataclasses.replace(self, **{f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self)})


def _block(inp: EvalInputs, cut, spaces, lo: int, hi: int, k: int, steps: int, eta: float, seed: int,
           tent_steps: list[int], tent_lr: float, clock, choice: Choice | None) -> dict[str, torch.Tensor]:
    """Every row's per-sample results for test rows ``lo:hi`` (one pass of the model): for
    each row name, ``name/out`` (outputs), and where it applies a delta ``name/cos`` (cosine
    to the oracle's delta) and ``name/norm`` (the delta's norm); ``ocd/members`` [N, k, ...];
    ``time/...``: seconds spent on the base, OCD, regressor and knn rows. ``spaces``: the
    nearest-neighbour spaces, made once for every block (:func:`_nn_spaces`); ``choice``: the
    knn row's retrieval and the step sizes (None: no calibration rows, no such rows)."""
    task = inp.task
    x, y = inp.x_test[lo:hi], inp.y_test[lo:hi]
    oracle = torch.as_tensor(inp.oracle_delta[lo:hi]).to(y.device).float()
    unit = inp.diff.meta.unit
    got: dict[str, torch.Tensor] = {"oracle/norm": oracle.flatten(1).norm(dim=1)}

    def put(name: str, outputs: torch.Tensor, deltas: torch.Tensor | None = None) -> None:
        got[f"{name}/out"] = outputs
        if deltas is not None:
            got[f"{name}/cos"] = F.cosine_similarity(deltas.flatten(1), oracle.flatten(1), dim=1)
            got[f"{name}/norm"] = deltas.flatten(1).norm(dim=1)

    start = clock()
    io = layer_io(cut, x)  # the block is one model pass: the layer's input is computed once
    parts, base_out = io.cond, io.output
    got["time/base"] = torch.tensor([clock() - start])
    put("base", base_out)

    def apply(deltas: torch.Tensor) -> torch.Tensor:
        return _apply_at(cut, io.inp, deltas)

    start = clock()
    given = with_neighbours(parts, inp.retriever)  # what the generators read
    omegas, rho_hat = sample_deltas(inp.diff, inp.scaler, given, k, steps, eta, seed, first_row=lo)
    no_scale = inp.mean_rho * omegas[0] / unit
    # sized by rho_hat in place, as ocd_deltas sizes them: the same numbers, one [k, N, out, in] fewer
    deltas = omegas.mul_(rho_hat[None, :, None, None]).div_(unit)
    member_out = torch.stack([apply(d) for d in deltas])
    got["time/ocd"] = torch.tensor([clock() - start])  # all k members
    put("ocd", member_out[0], deltas[0])
    got["ocd/members"] = member_out.transpose(0, 1)
    mean_delta = deltas.mean(0)
    put("ocd_mean_network", apply(mean_delta), mean_delta)
    put("ocd_no_scale", apply(no_scale), no_scale)
    if inp.regressor is not None:
        start = clock()
        reg_delta = regressor_deltas(inp.scaler, inp.regressor, given, unit)
        put("regressor", apply(reg_delta), reg_delta)
        got["time/regressor"] = torch.tensor([clock() - start])

    queries = _queries(spaces, x, parts)
    for space, (query, pool) in queries.items():
        d = inp.train_delta[nearest(query, pool)].float()
        put(f"nn_{space}", apply(d), d)
    if choice is not None:
        space, kk, weighting = choice.knn
        start = clock()
        knn_delta = knn_mix(inp.train_delta, *neighbours(*queries[space], kk), kk, weighting)
        put("knn", apply(knn_delta), knn_delta)
        got["time/knn"] = torch.tensor([clock() - start])
        stepped = {"ocd": deltas[0], "knn": knn_delta}
        if inp.regressor is not None:
            stepped["regressor"] = reg_delta
        for name, d in stepped.items():
            d = choice.lambdas[name] * d
            put(f"{name}_lambda", apply(d), d)

    if task.unsupervised_loss is not None:
        tent_task = Task("tent", lambda out, _y: task.unsupervised_loss(out), task.metrics, task.ensemble)
        for n in tent_steps:
            d = overfit_batch(cut, tent_task, io.inp, y, steps=n, optimizer="adam", lr=tent_lr).delta
            put(f"tent_{n}", apply(d), d)
    put("oracle", apply(oracle), oracle)
    return got


def _warm_up(inp: EvalInputs, cut, lo: int, hi: int, k: int, steps: int, eta: float, seed: int) -> None:
    """The base pass, OCD's sampling and applying, and the regressor on rows ``lo:hi``, results
    dropped: the first call of each pays for lazy set-up (allocations, kernel choice) that
    would otherwise be charged to whichever row is timed first."""
    io = layer_io(cut, inp.x_test[lo:hi])
    given = with_neighbours(io.cond, inp.retriever)
    _, deltas = ocd_deltas(inp.diff, inp.scaler, given, k, steps, eta, seed, first_row=lo)
    _apply_at(cut, io.inp, deltas[0])
    if inp.regressor is not None:
        _apply_at(cut, io.inp, regressor_deltas(inp.scaler, inp.regressor, given, inp.diff.meta.unit))


def _apply_at(cut, layer_input, deltas: torch.Tensor) -> torch.Tensor:
    """The model's outputs with ``W + deltas[i]`` for row i, from the layer's input
    already computed for the block (the layers before the cut do not run again)."""
    return cut.leave(layer_with_weights(cut.layer, cut.layer.weight + deltas, layer_input.h), layer_input.ctx)


def choose(inp: EvalInputs, cut, spaces, size: int, steps: int, eta: float, seed: int) -> Choice | None:
    """The knn row's space, k and weighting, and every delta row's step size, each the
    candidate of least mean loss on the calibration rows (ties: the first, so the smaller
    step); None without calibration rows. Every rank works through all of them, in the
    blocks one process takes, so all choose alike. OCD's sample there is seeded ``seed``."""
    if inp.x_cal is None or not len(inp.x_cal):
        return None
    task, n = inp.task, len(inp.y_cal)
    blocks = _blocks(n, size, Group())
    totals: dict[str, float] = defaultdict(float)
    outputs: dict[str, list[torch.Tensor]] = {"base": [], "ocd": []}

    def add(key: str, out: torch.Tensor, y: torch.Tensor) -> None:
        totals[key] += float(task.per_sample_loss(out, y).sum())

    def retrieved(io, lo: int, hi: int):
        own = None if inp.cal_own is None else inp.cal_own[lo:hi]
        return {space: neighbours(query, pool, max(KNN_K), own)
                for space, (query, pool) in _queries(spaces, inp.x_cal[lo:hi], io.cond).items()}

    def stepped_deltas(io, lo: int, hi: int, names=("ocd", "regressor")) -> dict[str, torch.Tensor]:
        """The ocd row's one sample (seeded by its rows: the same on every call) and the regressor's delta."""
        given = with_neighbours(io.cond, inp.retriever, None if inp.cal_own is None else inp.cal_own[lo:hi])
        got = {}
        if "ocd" in names:
            got["ocd"] = ocd_deltas(inp.diff, inp.scaler, given, 1, steps, eta, seed, first_row=lo)[1][0]
        if inp.regressor is not None and "regressor" in names:
            got["regressor"] = regressor_deltas(inp.scaler, inp.regressor, given, inp.diff.meta.unit)
        return got

    norms: dict[str, float] = defaultdict(float)  # per delta row, the sum of its deltas' norms
    kept = []  # per block: labels, the layer's input and the retrievals, for the knn step below
    for lo, hi in blocks:
        y, io = inp.y_cal[lo:hi], layer_io(cut, inp.x_cal[lo:hi])
        add("base", io.output, y)
        kept.append((y, io.inp, retrieved(io, lo, hi)))
        for space, found in kept[-1][2].items():
            for kk in [kk for kk in KNN_K if kk <= found[1].shape[1]]:  # no more than the pool holds
                for weighting in WEIGHTINGS[:1 if kk == 1 else None]:
                    add(f"knn/{space}/{kk}/{weighting}",
                        _apply_at(cut, io.inp, knn_mix(inp.train_delta, *found, kk, weighting)), y)
        stepped = stepped_deltas(io, lo, hi)
        outputs["base"].append(io.output)
        outputs["ocd"].append(_apply_at(cut, io.inp, stepped["ocd"]))
        for name, d in stepped.items():
            norms[name] += float(d.flatten(1).norm(dim=1).sum())
            for lam in LAMBDAS:
                add(f"{name}/{lam:g}", _apply_at(cut, io.inp, lam * d), y)
    best = min((key for key in totals if key.startswith("knn/")), key=totals.__getitem__)
    _, space, kk, weighting = best.split("/")
    kk = int(kk)
    # the chosen retrieval's step size; a classifier's outputs at every step are kept (a few
    # numbers a row) for the temperature of the step chosen
    knn_out: dict[float, list[torch.Tensor]] = defaultdict(list)

    def knn_steps(lams, count_norms: bool) -> None:
        for y, layer_in, found in kept:
            d = knn_mix(inp.train_delta, *found[space], kk, weighting)
            if count_norms:  # once, on the grid: the bound of a search beyond it
                norms["knn"] += float(d.flatten(1).norm(dim=1).sum())
            for lam in lams:
                out = _apply_at(cut, layer_in, lam * d)
                add(f"knn/{lam:g}", out, y)
                if task.with_temperature is not None:
                    knn_out[lam].append(out)

    knn_steps(LAMBDAS, count_norms=True)
    lambdas = {name: min(LAMBDAS, key=lambda lam: totals[f"{name}/{lam:g}"])
               for name in ("ocd", "regressor", "knn") if f"{name}/1" in totals}
    # a row whose loss was least at the grid's largest step: the search goes on while it falls
    weight_norm = float(cut.layer.weight.detach().double().norm())
    bounds = {name: weight_norm / max(norms[name] / n, 1e-30) for name in lambdas}
    edge = [name for name, lam in lambdas.items() if lam == LAMBDAS[-1]]
    wider = {name: [lam for lam in WIDER if lam <= bounds[name]] for name in edge}
    if any(name in wider and wider[name] for name in ("ocd", "regressor")):
        for lo, hi in blocks:
            io = layer_io(cut, inp.x_cal[lo:hi])
            for name, d in stepped_deltas(io, lo, hi, [name for name in wider if wider[name]]).items():
                for lam in wider[name]:
                    add(f"{name}/{lam:g}", _apply_at(cut, io.inp, lam * d), inp.y_cal[lo:hi])
    if wider.get("knn"):
        knn_steps(tuple(wider["knn"]), count_norms=False)
    widened = {}
    for name in edge:
        lambdas[name], widened[name] = _widen([totals[f"{name}/{lam:g}"] for lam in wider[name]], wider[name],
                                              totals[f"{name}/{LAMBDAS[-1]:g}"], bounds[name])
    if knn_out:  # knn_lambda's outputs, for its temperature
        outputs["knn_lambda"] = knn_out[lambdas["knn"]]
    source = "calibration rows" if inp.cal_own is None else "held-out train rows"
    return Choice((space, kk, weighting), lambdas, n, source, {key: v / n for key, v in totals.items()},
                  {name: torch.cat(v) for name, v in outputs.items()}, widened)


def _widen(losses: list[float], lams: list[float], at_edge: float, bound: float) -> tuple[float, str]:
    """The step chosen beyond the grid: the first of ``lams`` (ascending, all
    within ``bound``) after which the loss stops falling, and how the search
    ended, for the record and the results table."""
    best, best_loss = LAMBDAS[-1], at_edge
    for lam, loss in zip(lams, losses):
        if loss >= best_loss:
            return best, (f"the grid ended at {LAMBDAS[-1]:g} with the loss still falling; widened to {best:g}, "
                          f"where it stopped falling ({lam:g} was worse)")
        best, best_loss = lam, loss
    why = (f"the largest step within the bound |W|/|delta| = {bound:.3g}" if not lams or lams[-1] < WIDER[-1]
           else f"the last candidate, {WIDER[-1]:g}")
    return best, (f"the grid ended at {LAMBDAS[-1]:g} with the loss still falling; widened to {best:g}, "
                  f"still falling at {why}")


# OCD's noise on the calibration rows: evaluate.seed + 1, apart from the test rows' (evaluate.seed).
CALIBRATION_STREAM = 1


# Numbers of a block's deltas held at once (float32: 1 GiB): a block holds the k
# sampled deltas and about four more per row (the mean, no-scale, nearest and
# oracle deltas), each [rows, out, in].
BLOCK_NUMBERS = 1 << 28


def block_rows(model: nn.Module, weight_numel: int, k: int) -> int:
    """Test rows per block: one model pass, fewer when the layer's deltas are large
    (SetFit's ffn_out: 589,824 numbers a delta, 50 rows a block at k = 5)."""
    return max(1, min(rows_per_pass(model), BLOCK_NUMBERS // ((k + 4) * weight_numel)))


def _blocks(n: int, size: int, group: Group) -> list[tuple[int, int]]:
    """This rank's blocks of ``size`` rows of ``n`` (all of them in one process), in order."""
    lo, hi = group.blocks(n, size)
    return [(i, min(i + size, hi)) for i in range(lo, hi, size)]


def _stack(blocks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.cat([b[key] for b in blocks]) for key in blocks[0]} if blocks else {}


def evaluate(inp: EvalInputs, k: int, steps: int, eta: float, seed: int, tent_steps: list[int],
             tent_lr: float, extra_members: list[nn.Module] | None = None, group: Group = Group()
             ) -> tuple[list[Row], dict, dict] | None:
    """Every row of the results table, per-sample data for the plots, and the
    rows skipped for this task (name -> why), which are never faked.

    The test rows (and the calibration rows) are worked through in blocks of
    one model pass (:func:`block_rows`), each block alone: its
    OCD noise is seeded by its first row's number. On several ranks
    (``group``) each rank takes a contiguous run of blocks, and rank 0
    gathers the per-sample results, fits the temperatures and makes the
    table, the same as one process makes (the others return None).
    ``extra_members`` (the deep ensemble) are needed on rank 0 only.
    """
    task, model = inp.task, inp.model
    model.eval()
    n_test = len(inp.y_test)
    cut = linear_cut(model, inp.layer)
    size = block_rows(model, cut.layer.weight.numel(), k)
    cuda = inp.y_test.device.type == "cuda"

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize(inp.y_test.device)  # kernels run asynchronously: time them to the end
        return time.perf_counter()

    if inp.diff.meta.neighbours and inp.retriever is None:
        inp = dataclasses.replace(inp, retriever=retriever_of(inp.diff.meta, inp.train_parts, inp.train_delta))
    spaces = _nn_spaces(inp)
    choice = choose(inp, cut, spaces, size, steps, eta, seed + CALIBRATION_STREAM)
    mine = _blocks(n_test, size, group)
    if mine:  # the timed work once, untimed, on the first block: every row is then timed warm
        _warm_up(inp, cut, *mine[0], k, steps, eta, seed)
    local = _stack([_block(inp, cut, spaces, lo, hi, k, steps, eta, seed, tent_steps, tent_lr, clock, choice)
                    for lo, hi in mine])
    my_rows = sum(hi - lo for lo, hi in mine)
    timed = {key: float(local.pop(key).sum()) for key in [key for key in local if key.startswith("time/")]}
    skipped = {}
    if task.with_temperature is None:
        skipped["temperature"] = f"{task.name} outputs take no temperature"
    elif choice is None or inp.cal_own is not None:
        skipped["temperature"] = "no calibration rows (data.cal_fraction is 0)"
    if choice is None:
        skipped["knn"] = "no calibration rows and no held-out train rows (data.cal_fraction, diffusion.holdout)"
    got = group.gather_rows(local)
    if not group.main:
        return None
    got = {key: v.to(inp.y_test.device) for key, v in got.items()}
    y = inp.y_test
    ref = got["oracle/norm"]

    def row(name: str, outputs: torch.Tensor | None = None, note: str = "") -> Row:
        outputs = got[f"{name}/out"] if outputs is None else outputs
        cosine = scale_error = None
        if f"{name}/cos" in got:
            cosine = float(got[f"{name}/cos"].mean())
            scale_error = float(((got[f"{name}/norm"] - ref).abs() / ref.clamp_min(1e-12)).median())
        return Row(name, task.metrics(outputs, y), cosine, scale_error, note,
                   task.per_sample_loss(outputs, y).cpu().numpy())

    def ms(name: str) -> float:  # per sample, as measured on this rank's rows
        return 1000 * timed[f"time/{name}"] / my_rows

    base_out, members = got["base/out"], got["ocd/members"].transpose(0, 1)
    # every time is per test sample, warm, in the same blocks, and a delta row's includes the
    # base pass that computes its conditioning
    rows = [row("base")]
    rows[0].ms_per_sample = ms("base")
    rows.append(row("ocd", note=f"{steps} DDIM steps; time: the base pass + the {k}-member pass / {k}"))
    rows[-1].ms_per_sample = ms("base") + ms("ocd") / k
    reliability_of = {"base": base_out, "ocd": got["ocd/out"]}
    if "temperature" not in skipped:
        # fitted on the calibration rows, never on test; OCD's own temperature on OCD's outputs there
        for name, source in (("temperature", "base"), ("ocd_temperature", "ocd"),
                             ("knn_temperature", "knn_lambda")):
            t, how = choose_temperature(task.per_sample_loss, choice.outputs[source], inp.y_cal,
                                        task.with_temperature)
            scaled = task.with_temperature(got[f"{source}/out"], t)
            rows.append(row(name, scaled, note=f"{source} / T, {how}"))
            reliability_of[name] = scaled
            choice.temperatures[name] = t
            choice.row_losses[name] = float(task.per_sample_loss(
                task.with_temperature(choice.outputs[source], t), inp.y_cal).mean())
    rows.append(row(f"ocd_ensemble_{k}", task.ensemble(members), note=f"{k} noises"))
    rows[-1].ms_per_sample = ms("base") + ms("ocd")
    rows.append(row("ocd_mean_network", note=f"mean of {k} deltas"))
    rows.append(row("ocd_no_scale", note="rho = mean train rho"))
    if inp.regressor is not None:
        rows.append(row("regressor", note=f"no diffusion: MLP direction ({inp.regressor.meta.target}) x rho_hat"))
        rows[-1].ms_per_sample = ms("base") + ms("regressor")
    rows += [row("nn_input"), row("nn_cond")]
    if choice is not None:
        space, kk, weighting = choice.knn
        on = f"on {choice.rows} {choice.source}"
        rows.append(row("knn", note=f"{kk} nearest in {space} space, {weighting} weights: chosen {on}"))
        rows[-1].ms_per_sample = ms("base") + ms("knn")
        for name, lam in choice.lambdas.items():
            top = f" ({choice.widened[name]})" if name in choice.widened else ""
            rows.append(row(f"{name}_lambda", note=f"{lam:g}{top} x the {name} row's delta: fitted {on}"))
            rows[-1].ms_per_sample = next(r.ms_per_sample for r in rows if r.name == name)
    if task.unsupervised_loss is None:
        skipped["tent"] = f"{task.name} has no label-free loss to minimise at test time"
    elif not tent_steps:
        skipped["tent"] = "evaluate.tent_steps is empty"
    else:
        rows += [row(f"tent_{n}", note=f"{n} Adam steps on the entropy, lr {tent_lr:g}") for n in tent_steps]
    rows.append(row("oracle", note="overfit on the test label: upper bound"))

    if extra_members:
        def outputs(m):
            m.eval().to(inp.x_test.device)
            return torch.cat([m(inp.x_test[i:i + size]) for i in range(0, n_test, size)])

        outs = [base_out] + [outputs(m) for m in extra_members]
        reliability_of["deep_ensemble"] = task.ensemble(torch.stack(outs))
        rows.append(row(f"deep_ensemble_{len(outs)}", reliability_of["deep_ensemble"],
                        note=f"{len(outs)} base models, seeds differ"))

    if task.correct is not None:
        # every row's mean test loss = the part from the samples the base model gets right + the rest
        right = task.correct(base_out, y).cpu().numpy()
        for r in rows:
            r.metrics["loss_base_right"] = float(r.per_sample_loss[right].sum() / n_test)
            r.metrics["loss_base_wrong"] = float(r.per_sample_loss[~right].sum() / n_test)

    plots = {"rho": {"true": ref.cpu().numpy(), "predicted": got["ocd/norm"].cpu().numpy()}}
    if choice is not None:
        plots["chosen"] = choice.record()
    if task.with_temperature is not None:
        plots["reliability"] = {name: reliability(out, y) for name, out in reliability_of.items()}
    # a few test samples, evenly spaced: the truth and three rows' outputs (arranged as the truth, if the task says how)
    pick = torch.linspace(0, n_test - 1, min(VIEWS_SHOWN, n_test)).round().long().to(y.device)
    arrange = task.aligned or (lambda out, truth: out)
    shown = {name: arrange(out[pick], y[pick]) for name, out in
             (("truth", y), ("base", base_out), ("oracle", got["oracle/out"]), ("ocd", got["ocd/out"]))}
    if task.as_images is not None:
        views = {} if task.inputs_as_images is None else {task.input_name: task.inputs_as_images(inp.x_test[pick])}
        views.update((n, task.as_images(o)) for n, o in shown.items())
        plots["views"] = {n: v.cpu() for n, v in views.items()}
    if task.as_signals is not None:  # and as sound
        plots["signals"] = {task.input_name: inp.x_test[pick].cpu(),
                            **{n: task.as_signals(o).cpu() for n, o in shown.items()}}
        plots["sample_rate"] = task.sample_rate
    return rows, plots, skipped


VIEWS_SHOWN = 4


def mark_unlearned(rows: list[Row], held_out: dict) -> str | None:
    """Mark the OCD rows (every row named ``ocd...``) of a denoiser whose held-out
    denoising loss did not beat its references (``held_out``: the checkpoint's record of
    ocd.hypernet.diffusion.diagnose); returns the mark, or None where it learned or
    nothing was held out."""
    if not held_out or held_out.get("learned", True):
        return None
    mark = (f"UNLEARNED denoiser (held-out loss {held_out['denoise_loss']:.4f}, "
            f"zero {held_out['denoise_loss_zero']:.4f}, linear in x_t {held_out['denoise_loss_linear']:.4f})")
    for r in rows:
        if r.name.startswith("ocd"):
            r.note = f"{mark}; {r.note}" if r.note else mark
    return mark


def views_figure(views: dict[str, torch.Tensor], zoom: int | None = None, gap: int = 4,
                 header: int = 14) -> np.ndarray:
    """One picture [rows, cols, 3] (uint8): a row per sample, a column per name of ``views``
    (each ``[V, H, W, 3]`` in [0, 1]), every image ``zoom`` times larger (default: 3 for
    images up to 64 pixels wide, else 1), ``gap`` pixels between, and each column's name
    written above it on a band of ``header`` pixels."""
    from PIL import Image, ImageDraw

    columns = list(views.values())
    n, h, w = columns[0].shape[:3]
    zoom = zoom or (3 if w <= 64 else 1)
    h, w = h * zoom, w * zoom
    canvas = np.full((header + n * h + (n + 1) * gap, len(columns) * w + (len(columns) + 1) * gap, 3), 255, np.uint8)
    for c, images in enumerate(columns):
        big = images.repeat_interleave(zoom, 1).repeat_interleave(zoom, 2).numpy()
        for r in range(n):
            top, left = header + gap + r * (h + gap), gap + c * (w + gap)
            canvas[top:top + h, left:left + w] = np.round(big[r] * 255).astype(np.uint8)
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for c, name in enumerate(views):
        left = gap + c * (w + gap)
        width = draw.textlength(name)
        draw.text((left + max(0.0, (w - width) / 2), 2), name, fill=(0, 0, 0))
    return np.asarray(picture)


def _queries(spaces, x: torch.Tensor, parts: list[torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Space name -> (the rows' query, the train pool) for inputs ``x`` and their conditioning ``parts``."""
    standardise, cond_pool, features, input_pool = spaces
    return {"input": (features(x), input_pool), "cond": (standardise(parts), cond_pool)}


def _nn_spaces(inp: EvalInputs):
    """(standardise, the standardised train conditioning, input features, the train rows' features).
    A model family whose raw inputs are no space for distances (token ids) says where to look
    with ``input_features``."""
    standardise = standardiser(inp.train_parts)
    features = getattr(inp.model, "input_features", lambda t: t)
    return standardise, standardise(inp.train_parts), features, features(inp.x_train)
