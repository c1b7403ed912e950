"""Stage 5's computations: base vs OCD vs ablations vs ensembles on the test split.

The rows themselves are classes of :mod:`ocd.rows`; here is what they share:
the blocks of test rows they are computed on (:class:`Block`: one model pass,
OCD's k samples, the retrievals, each made once and timed), the calibration
rows' choices (:func:`choose`: the knn row's retrieval, every stepped row's
step size; the temperatures are fitted by the temperature rows), and
:func:`evaluate`, a loop over the rows.

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

from ocd import rows as rows_module
from ocd.calibration import reliability
from ocd.distributed import Group
from ocd.hypernet.diffusion import DeltaDiffusion
from ocd.hypernet.neighbours import (
    WEIGHTINGS,
    Retriever,
    knn_mix,
    neighbours,
    standardiser,
    with_neighbours,
)
from ocd.hypernet.regressor import DeltaRegressor
from ocd.hypernet.scale import ScaleModel
from ocd.hypernet.targets import retriever_of
from ocd.models.cut import layer_io, layer_with_weights, linear_cut, rows_per_pass
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
    # Its outputs come from the denoiser's samples (ocd.rows.EvalRow.denoiser): :func:`mark_unlearned` marks it.
    denoiser: bool = False

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

    def on(self) -> str:
        """Where the choices were made, for the rows' notes."""
        return f"on {self.rows} {self.source}"

    def serve_losses(self) -> dict[str, float]:
        """Every row that ``ocd predict`` can serve and its mean loss on these rows, in
        :data:`SERVED`'s order: the untrained rows from ``losses``, the temperature rows
        as evaluate fitted them (``row_losses``)."""
        keys = {"base": "base", **{name: f"{name}/1" for name in self.lambdas}}
        keys.update((f"{name}_lambda", f"{name}/{lam:g}") for name, lam in self.lambdas.items())
        got = {name: self.losses[key] for name, key in keys.items() if key in self.losses}
        got.update(self.row_losses)
        return {name: got[name] for name in rows_module.SERVED if name in got}

    def best(self) -> str | None:
        """The servable row of least mean loss on these rows (ties: the earlier in
        :data:`SERVED`, so the simpler row)."""
        losses = self.serve_losses()
        return min(losses, key=lambda name: (losses[name], rows_module.SERVED.index(name))) if losses else None


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


@dataclass
class Setting:
    """What every row of one evaluation reads (:mod:`ocd.rows`): the inputs, the layer's cut, the
    sampling and TENT params, the deep ensemble's other members, the block size, and what the
    calibration rows chose (None until :func:`choose` ran, and where there are none)."""

    inp: EvalInputs
    cut: object
    k: int
    steps: int
    eta: float
    seed: int
    tent_steps: list[int]
    tent_lr: float
    extra_members: list[nn.Module] | None
    size: int
    choice: Choice | None = None

    @property
    def calibrated(self) -> bool:
        """There are calibration rows (or held-out train rows standing in for them)."""
        return self.inp.x_cal is not None and len(self.inp.x_cal) > 0


@dataclass
class Samples:
    """OCD's k samples on a block: the deltas [k, N, out, in] sized by rho_hat, the first sized
    by the mean train rho instead, and the model's outputs under each of the k [k, N, ...]."""

    deltas: torch.Tensor
    no_scale: torch.Tensor
    members: torch.Tensor


class _Shared:
    """What several rows read on one block of rows, each made once, on first use."""

    def __init__(self, s: Setting, x: torch.Tensor, lo: int, own: torch.Tensor | None = None):
        self.s, self.x, self.lo, self.own = s, x, lo, own
        self._made: dict[str, object] = {}

    def _once(self, key: str, make):
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def apply(self, deltas: torch.Tensor) -> torch.Tensor:
        return _apply_at(self.s.cut, self.io.inp, deltas)

    @property
    def given(self) -> list[torch.Tensor]:
        """What the generators read: I(x), with the retrieved train rows where they retrieve."""
        return self._once("given", lambda: with_neighbours(self.io.cond, self.s.inp.retriever, self.own))


class Block(_Shared):
    """One block of test rows, as the rows read it (:meth:`ocd.rows.EvalRow.block`): one
    model pass (``io``, timed as ``base``), OCD's k samples and their outputs (``ocd``), the
    regressor's and the knn row's deltas and outputs, and the retrieval queries. A timed part's
    seconds are kept in ``times`` under its name."""

    def __init__(self, s: Setting, spaces, lo: int, hi: int, clock):
        inp = s.inp
        super().__init__(s, inp.x_test[lo:hi], lo)
        self.y, self.spaces, self.clock = inp.y_test[lo:hi], spaces, clock
        self.oracle = torch.as_tensor(inp.oracle_delta[lo:hi]).to(self.y.device).float()
        self.times: dict[str, float] = {}
        self.io = self._timed("base", lambda: layer_io(s.cut, self.x))  # the block is one model pass

    def _timed(self, key: str, make):
        def timed():
            start = self.clock()
            made = make()
            self.times[key] = self.clock() - start
            return made

        return self._once(key, timed)

    @property
    def ocd(self) -> Samples:
        def sample():
            s = self.s
            omegas, rho_hat = sample_deltas(s.inp.diff, s.inp.scaler, self.given, s.k, s.steps, s.eta, s.seed,
                                            first_row=self.lo)
            unit = s.inp.diff.meta.unit
            no_scale = s.inp.mean_rho * omegas[0] / unit
            # sized by rho_hat in place, as ocd_deltas sizes them: the same numbers, one [k, N, out, in] fewer
            deltas = omegas.mul_(rho_hat[None, :, None, None]).div_(unit)
            return Samples(deltas, no_scale, torch.stack([self.apply(d) for d in deltas]))

        return self._timed("ocd", sample)  # all k members

    @property
    def regressor(self) -> tuple[torch.Tensor, torch.Tensor]:
        def make():
            delta = regressor_deltas(self.s.inp.scaler, self.s.inp.regressor, self.given, self.s.inp.diff.meta.unit)
            return delta, self.apply(delta)

        return self._timed("regressor", make)

    @property
    def queries(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return self._once("queries", lambda: _queries(self.spaces, self.x, self.io.cond))

    @property
    def knn(self) -> tuple[torch.Tensor, torch.Tensor]:
        def make():
            space, kk, weighting = self.s.choice.knn
            delta = knn_mix(self.s.inp.train_delta, *neighbours(*self.queries[space], kk), kk, weighting)
            return delta, self.apply(delta)

        return self._timed("knn", make)

    def warm_up(self) -> None:
        """Every timed part once, results dropped: the first call of each pays for lazy set-up
        (allocations, kernel choice) that would otherwise be charged to whichever row is timed first."""
        self.ocd
        if self.s.inp.regressor is not None:
            self.regressor
        if self.s.choice is not None:
            self.knn


class CalibrationBlock(_Shared):
    """One block of calibration rows, as :func:`choose` reads them: one model pass, every
    candidate retrieval (``found``), and each stepped row's delta
    (:meth:`ocd.rows.EvalRow.calibration_delta`). Held-out train rows standing in for
    calibration rows never retrieve themselves (``own``)."""

    def __init__(self, s: Setting, spaces, lo: int, hi: int, seed: int):
        inp = s.inp
        own = None if inp.cal_own is None else inp.cal_own[lo:hi]
        super().__init__(s, inp.x_cal[lo:hi], lo, own)
        self.y, self.seed = inp.y_cal[lo:hi], seed
        self.io = layer_io(s.cut, self.x)
        self.found = {space: neighbours(query, pool, max(KNN_K), own)
                      for space, (query, pool) in _queries(spaces, self.x, self.io.cond).items()}
        self.knn: tuple[str, int, str] | None = None  # the retrieval chosen, once chosen

    def ocd_sample(self) -> torch.Tensor:
        """OCD's one sample, seeded by the block's first row: the same on every call."""
        s = self.s
        return ocd_deltas(s.inp.diff, s.inp.scaler, self.given, 1, s.steps, s.eta, self.seed, first_row=self.lo)[1][0]

    def regressor_delta(self) -> torch.Tensor:
        s = self.s
        return regressor_deltas(s.inp.scaler, s.inp.regressor, self.given, s.inp.diff.meta.unit)

    def knn_delta(self) -> torch.Tensor:
        space, kk, weighting = self.knn
        return knn_mix(self.s.inp.train_delta, *self.found[space], kk, weighting)


def _apply_at(cut, layer_input, deltas: torch.Tensor) -> torch.Tensor:
    """The model's outputs with ``W + deltas[i]`` for row i, from the layer's input
    already computed for the block (the layers before the cut do not run again)."""
    return cut.leave(layer_with_weights(cut.layer, cut.layer.weight + deltas, layer_input.h), layer_input.ctx)


def make_rows(s: Setting, row_kinds: tuple = rows_module.ROWS) -> tuple[dict[str, rows_module.EvalRow], dict]:
    """The rows of this evaluation by name, in the table's order, and the kinds that make
    none here, with why (the table's "Skipped")."""
    rows: dict[str, rows_module.EvalRow] = {}
    skipped = {}
    for kind in row_kinds:
        made = kind.made(s, dict(rows))
        if isinstance(made, str):
            skipped[kind.kind] = made
        else:
            rows.update((row.name, row) for row in made)
    return rows, skipped


def choose(s: Setting, rows: list, spaces, seed: int) -> Choice | None:
    """The knn row's space, k and weighting, and every stepped row's step size, each the
    candidate of least mean loss on the calibration rows (ties: the first, so the smaller
    step); None without calibration rows. Every rank works through all of them, in the
    blocks one process takes, so all choose alike. OCD's sample there is seeded ``seed``.
    The rows whose temperature is fitted there keep their outputs (``Choice.outputs``)."""
    if not s.calibrated:
        return None
    inp, task, n = s.inp, s.inp.task, len(s.inp.y_cal)
    blocks = [CalibrationBlock(s, spaces, lo, hi, seed) for lo, hi in _blocks(n, s.size, Group())]
    totals: dict[str, float] = defaultdict(float)
    outputs: dict[str, list[torch.Tensor]] = defaultdict(list)
    kept = {source for _, source, _ in rows_module.Tempered.sources()} if task.with_temperature else set()

    def add(key: str, out: torch.Tensor, y: torch.Tensor) -> None:
        totals[key] += float(task.per_sample_loss(out, y).sum())

    for c in blocks:  # the base model and every candidate retrieval
        add("base", c.io.output, c.y)
        if "base" in kept:
            outputs["base"].append(c.io.output)
        for space, found in c.found.items():
            for kk in [kk for kk in KNN_K if kk <= found[1].shape[1]]:  # no more than the pool holds
                for weighting in WEIGHTINGS[:1 if kk == 1 else None]:
                    add(f"knn/{space}/{kk}/{weighting}", c.apply(knn_mix(inp.train_delta, *found, kk, weighting)),
                        c.y)
    best = min((key for key in totals if key.startswith("knn/")), key=totals.__getitem__)
    _, space, kk, weighting = best.split("/")
    for c in blocks:
        c.knn = (space, int(kk), weighting)

    stepped = [row for row in rows if row.steps]
    norms: dict[str, float] = defaultdict(float)  # per stepped row, the sum of its deltas' norms
    # per stepped row whose stepped outputs take a temperature: its outputs at every step
    at_step: dict[str, dict[float, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))

    def steps(row, lams, count_norms: bool) -> None:
        for c in blocks:
            d = row.calibration_delta(c)
            if count_norms:  # once, on the grid: the bound of a search beyond it
                norms[row.kind] += float(d.flatten(1).norm(dim=1).sum())
            for lam in lams:
                out = c.apply(lam * d)
                add(f"{row.kind}/{lam:g}", out, c.y)
                if lam == 1 and row.kind in kept:  # the row itself (a step of 1 is exact)
                    outputs[row.kind].append(out)
                if f"{row.kind}_lambda" in kept:
                    at_step[row.kind][lam].append(out)

    for row in stepped:
        steps(row, LAMBDAS, count_norms=True)
    lambdas = {row.kind: min(LAMBDAS, key=lambda lam: totals[f"{row.kind}/{lam:g}"]) for row in stepped}
    # a row whose loss was least at the grid's largest step: the search goes on while it falls
    weight_norm = float(s.cut.layer.weight.detach().double().norm())
    bounds = {name: weight_norm / max(norms[name] / n, 1e-30) for name in lambdas}
    edge = [name for name, lam in lambdas.items() if lam == LAMBDAS[-1]]
    wider = {name: [lam for lam in WIDER if lam <= bounds[name]] for name in edge}
    for row in stepped:
        if wider.get(row.kind):
            steps(row, tuple(wider[row.kind]), count_norms=False)
    widened = {}
    for name in edge:
        lambdas[name], widened[name] = _widen([totals[f"{name}/{lam:g}"] for lam in wider[name]], wider[name],
                                              totals[f"{name}/{LAMBDAS[-1]:g}"], bounds[name])
    for name, by_step in at_step.items():  # a stepped row's outputs at its step, for its temperature
        outputs[f"{name}_lambda"] = by_step[lambdas[name]]
    source = "calibration rows" if inp.cal_own is None else "held-out train rows"
    return Choice((space, int(kk), weighting), lambdas, n, source, {key: v / n for key, v in totals.items()},
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
             tent_lr: float, extra_members: list[nn.Module] | None = None, group: Group = Group(),
             row_kinds: tuple = rows_module.ROWS) -> tuple[list[Row], dict, dict] | None:
    """Every row of the results table (``row_kinds``, :data:`ocd.rows.ROWS`), per-sample data
    for the plots, and the rows skipped for this task (name -> why), which are never faked.

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
    cut = linear_cut(model, inp.layer)
    cuda = inp.y_test.device.type == "cuda"

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize(inp.y_test.device)  # kernels run asynchronously: time them to the end
        return time.perf_counter()

    if inp.diff.meta.neighbours and inp.retriever is None:
        inp = dataclasses.replace(inp, retriever=retriever_of(inp.diff.meta, inp.train_parts, inp.train_delta))
    s = Setting(inp, cut, k, steps, eta, seed, tent_steps, tent_lr, extra_members,
                block_rows(model, cut.layer.weight.numel(), k))
    rows, skipped = make_rows(s, row_kinds)
    spaces = _nn_spaces(inp)
    s.choice = choose(s, list(rows.values()), spaces, seed + CALIBRATION_STREAM)
    mine = _blocks(len(inp.y_test), s.size, group)
    if mine:  # the timed work once, untimed, on the first block: every row is then timed warm
        Block(s, spaces, *mine[0], clock).warm_up()
    blocks = []
    for lo, hi in mine:
        b = Block(s, spaces, lo, hi, clock)
        got = {"oracle/norm": b.oracle.flatten(1).norm(dim=1)}
        for row in rows.values():
            made = row.block(b)
            if made is not None:
                outputs, delta = made
                got[f"{row.name}/out"] = outputs
                if delta is not None:
                    got[f"{row.name}/cos"] = F.cosine_similarity(delta.flatten(1), b.oracle.flatten(1), dim=1)
                    got[f"{row.name}/norm"] = delta.flatten(1).norm(dim=1)
        got.update((f"time/{key}", torch.tensor([t])) for key, t in b.times.items())
        blocks.append(got)
    local = _stack(blocks)
    my_rows = sum(hi - lo for lo, hi in mine)
    # per test sample, as measured on this rank's rows
    per = {key[5:]: 1000 * float(local.pop(key).sum()) / max(my_rows, 1)
           for key in [key for key in local if key.startswith("time/")]}
    got = group.gather_rows(local)
    if not group.main:
        return None
    got = {key: v.to(inp.y_test.device) for key, v in got.items()}
    y = inp.y_test
    ref = got["oracle/norm"]

    # every time is per test sample, warm, in the same blocks, and a delta row's includes the
    # base pass that computes its conditioning
    table, reliability_of = [], {}
    for row in rows.values():
        outputs = row.outputs(got)
        cosine = scale_error = None
        if f"{row.name}/cos" in got:
            cosine = float(got[f"{row.name}/cos"].mean())
            scale_error = float(((got[f"{row.name}/norm"] - ref).abs() / ref.clamp_min(1e-12)).median())
        table.append(Row(row.name, task.metrics(outputs, y), cosine, scale_error, row.note(),
                         task.per_sample_loss(outputs, y).cpu().numpy(), row.ms(per), row.denoiser))
        if row.reliability:
            reliability_of[row.kind] = outputs

    base_out = got["base/out"]
    if task.correct is not None:
        # every row's mean test loss = the part from the samples the base model gets right + the rest
        right = task.correct(base_out, y).cpu().numpy()
        for r in table:
            r.metrics["loss_base_right"] = float(r.per_sample_loss[right].sum() / len(y))
            r.metrics["loss_base_wrong"] = float(r.per_sample_loss[~right].sum() / len(y))

    plots = {"rho": {"true": ref.cpu().numpy(), "predicted": got["ocd/norm"].cpu().numpy()}}
    if s.choice is not None:
        plots["chosen"] = s.choice.record()
    if task.with_temperature is not None:
        plots["reliability"] = {name: reliability(out, y) for name, out in reliability_of.items()}
    # a few test samples, evenly spaced: the truth and three rows' outputs (arranged as the truth, if the task says how)
    n_test = len(y)
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
    return table, plots, skipped


VIEWS_SHOWN = 4


def mark_unlearned(rows: list[Row], held_out: dict) -> str | None:
    """Mark the rows sampled from a denoiser (``Row.denoiser``) whose held-out
    denoising loss did not beat its references (``held_out``: the checkpoint's record of
    ocd.hypernet.diffusion.diagnose); returns the mark, or None where it learned or
    nothing was held out."""
    if not held_out or held_out.get("learned", True):
        return None
    mark = (f"UNLEARNED denoiser (held-out loss {held_out['denoise_loss']:.4f}, "
            f"zero {held_out['denoise_loss_zero']:.4f}, linear in x_t {held_out['denoise_loss_linear']:.4f})")
    for r in rows:
        if r.denoiser:
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
