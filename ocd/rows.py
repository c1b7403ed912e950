"""The rows of the results table (stage 5), one class each.

Every row is the base model with one weight matrix replaced per test sample,
``W_L(x) = W_L + delta(x)``; the rows differ only in where ``delta(x)`` comes
from. A row says what it needs (:meth:`EvalRow.made`: the rows it makes for
one evaluation, or why it makes none), how it computes its outputs on a block
of test rows (:meth:`EvalRow.block`, from what :class:`ocd.evaluation.Block`
shares between rows), and whether the calibration rows choose a step size
(``steps``: a ``{kind}_lambda`` row) or a temperature (``temperature``,
``step_temperature``: the name of the row that divides its outputs, or its
stepped row's, by one fitted there) for it. ``evaluate`` is a loop over
:data:`ROWS`; ``ocd predict``'s servable rows, ``scripts/seeds.py``'s order,
the reliability diagram's columns (dvc.yaml) and README's table of rows are
read from it (tests keep dvc.yaml and README equal to it).

A new row is one class here, added to :data:`ROWS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # the rows only read what evaluation hands them; importing this module loads no torch
    import torch

    from ocd.evaluation import Block, CalibrationBlock, Setting


class EvalRow:
    """One row of the results table. A subclass sets ``kind`` and ``about`` and
    implements :meth:`block` (or :meth:`outputs`, for a row made from what the
    blocks gathered)."""

    kind: ClassVar[str]  # the row's name; rows made several times per run add "_N" (tent_1, deep_ensemble_5)
    about: ClassVar[str]  # one line for README's table of rows
    steps: ClassVar[bool] = False  # the calibration rows choose a step size for its delta: a `{kind}_lambda` row
    temperature: ClassVar[str | None] = None  # the row of its outputs over a temperature fitted there
    step_temperature: ClassVar[str | None] = None  # the same, for its `_lambda` row's outputs
    served: ClassVar[bool] = False  # `ocd predict` can serve it, and its step and temperature rows
    reliability: ClassVar[bool] = False  # a column of the reliability diagram
    denoiser: bool = False  # its outputs come from the denoiser's samples: marked where the denoiser did not learn

    def __init__(self, s: Setting, name: str | None = None):
        self.s = s
        self.name = name or self.kind

    @classmethod
    def made(cls, s: Setting, before: dict[str, EvalRow]) -> list[EvalRow] | str:
        """The rows of this kind in this evaluation (``before``: the rows made by the kinds
        listed earlier), or why there are none, which the table reports as skipped."""
        return [cls(s)]

    @classmethod
    def kinds(cls) -> list[tuple[str, str]]:
        """(kind, about) of every row this class can make, for the lists read from :data:`ROWS`."""
        return [(cls.kind, cls.about)]

    def block(self, b: Block) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Its outputs on the block's test rows, and the delta it applied (None: none); None for
        a row made from what every block gathered (:meth:`outputs`)."""
        return None

    def outputs(self, got: dict[str, torch.Tensor]) -> torch.Tensor:
        """Its outputs on every test row, from what the blocks gathered."""
        return got[f"{self.name}/out"]

    def note(self) -> str:
        return ""

    def ms(self, per: dict[str, float]) -> float | None:
        """Milliseconds per test sample, from the block's timed parts (None: not timed)."""
        return None

    def calibration_delta(self, c: CalibrationBlock) -> torch.Tensor:
        """A stepped row's delta on a block of calibration rows, which its step sizes scale."""
        raise NotImplementedError(f"the {self.kind} row takes no step size")


class Base(EvalRow):
    kind = "base"
    about = "the base model, no delta"
    temperature = "temperature"
    served = reliability = True

    def block(self, b):
        return b.io.output, None

    def ms(self, per):
        return per["base"]


class OCD(EvalRow):
    kind = "ocd"
    about = "rho(I(x)) Omega_0 / unit: one DDIM sample from pure noise, sized by the scale model"
    steps, temperature, served, reliability, denoiser = True, "ocd_temperature", True, True, True

    def block(self, b):
        return b.ocd.members[0], b.ocd.deltas[0]

    def note(self):
        k = self.s.k
        return f"{self.s.steps} DDIM steps; time: the base pass + the {k}-member pass / {k}"

    def ms(self, per):
        return per["base"] + per["ocd"] / self.s.k

    def calibration_delta(self, c):
        return c.ocd_sample()


class Tempered(EvalRow):
    kind = "temperature"
    about = "a row's outputs divided by one temperature fitted on the calibration rows (never test)"
    reliability = True

    def __init__(self, s, name: str, source: str, denoiser: bool = False):
        super().__init__(s, name)
        self.kind, self.source, self.how, self.denoiser = name, source, "", denoiser

    @classmethod
    def sources(cls) -> list[tuple[str, str, bool]]:
        """(temperature row, the row whose outputs it divides, whether that row samples the
        denoiser), in :data:`ROWS`' order."""
        pairs = []
        for row in ROWS:
            if row.temperature:
                pairs.append((row.temperature, row.kind, row.denoiser))
            if row.step_temperature:
                pairs.append((row.step_temperature, f"{row.kind}_lambda", row.denoiser))
        return pairs

    @classmethod
    def made(cls, s, before):
        if s.inp.task.with_temperature is None:
            return f"{s.inp.task.name} outputs take no temperature"
        if not s.calibrated or s.inp.cal_own is not None:
            return "no calibration rows (data.cal_fraction is 0)"
        return [cls(s, *pair) for pair in cls.sources()]

    @classmethod
    def kinds(cls):
        return [(name, f"{source}'s outputs divided by one temperature fitted on the calibration rows (never test)")
                for name, source, _ in cls.sources()]

    def outputs(self, got):
        from ocd.calibration import choose_temperature

        task, choice = self.s.inp.task, self.s.choice
        t, self.how = choose_temperature(task.per_sample_loss, choice.outputs[self.source], self.s.inp.y_cal,
                                         task.with_temperature)
        choice.temperatures[self.name] = t
        choice.row_losses[self.name] = float(task.per_sample_loss(
            task.with_temperature(choice.outputs[self.source], t), self.s.inp.y_cal).mean())
        return task.with_temperature(got[f"{self.source}/out"], t)

    def note(self):
        return f"{self.source} / T, {self.how}"


class OCDEnsemble(EvalRow):
    kind = "ocd_ensemble"
    about = ("`ocd_ensemble_K`: K noises, the K members' predictions combined by the task (the mean of the "
             "predicted distributions)")
    denoiser = True

    def __init__(self, s):
        super().__init__(s, f"ocd_ensemble_{s.k}")

    def block(self, b):
        return b.ocd.members.transpose(0, 1), None  # [rows, k, ...]: gathered by row

    def outputs(self, got):
        return self.s.inp.task.ensemble(got[f"{self.name}/out"].transpose(0, 1))

    def note(self):
        return f"{self.s.k} noises"

    def ms(self, per):
        return per["base"] + per["ocd"]


class OCDMeanNetwork(EvalRow):
    kind = "ocd_mean_network"
    about = "the mean of OCD's K deltas, applied once"
    denoiser = True

    def block(self, b):
        mean = b.ocd.deltas.mean(0)
        return b.apply(mean), mean

    def note(self):
        return f"mean of {self.s.k} deltas"


class OCDNoScale(EvalRow):
    kind = "ocd_no_scale"
    about = "OCD's sample sized by the mean train rho instead of the scale model"
    denoiser = True

    def block(self, b):
        return b.apply(b.ocd.no_scale), b.ocd.no_scale

    def note(self):
        return "rho = mean train rho"


class Regressor(EvalRow):
    kind = "regressor"
    about = "no diffusion: an MLP's predicted direction, sized by the scale model"
    steps = served = True

    @classmethod
    def made(cls, s, before):
        return [] if s.inp.regressor is None else [cls(s)]

    def block(self, b):
        delta, out = b.regressor
        return out, delta

    def note(self):
        return f"no diffusion: MLP direction ({self.s.inp.regressor.meta.target}) x rho_hat"

    def ms(self, per):
        return per["base"] + per["regressor"]

    def calibration_delta(self, c):
        return c.regressor_delta()


class Nearest(EvalRow):
    space: ClassVar[str]

    def block(self, b):
        from ocd.hypernet.neighbours import nearest

        d = self.s.inp.train_delta[nearest(*b.queries[self.space])].float()
        return b.apply(d), d


class NearestInput(Nearest):
    kind, space = "nn_input", "input"
    about = "the stored delta of the nearest training sample in input space"


class NearestCond(Nearest):
    kind, space = "nn_cond", "cond"
    about = "the stored delta of the nearest training sample in standardised conditioning space"


class KNN(EvalRow):
    kind = "knn"
    about = ("retrieval as a method: the k nearest training samples' stored deltas, weighted; the space, k and "
             "the weighting chosen on the calibration rows")
    steps, step_temperature, served = True, "knn_temperature", True

    @classmethod
    def made(cls, s, before):
        if not s.calibrated:
            return "no calibration rows and no held-out train rows (data.cal_fraction, diffusion.holdout)"
        return [cls(s)]

    def block(self, b):
        delta, out = b.knn
        return out, delta

    def note(self):
        space, kk, weighting = self.s.choice.knn
        return f"{kk} nearest in {space} space, {weighting} weights: chosen {self.s.choice.on()}"

    def ms(self, per):
        return per["base"] + per["knn"]

    def calibration_delta(self, c):
        return c.knn_delta()


class Stepped(EvalRow):
    kind = "lambda"
    about = "that row's delta times one step size fitted on the calibration rows"

    def __init__(self, s, source: EvalRow):
        super().__init__(s, f"{source.kind}_lambda")
        self.kind, self.source, self.denoiser = self.name, source, source.denoiser

    @classmethod
    def made(cls, s, before):
        return [cls(s, row) for row in before.values() if row.steps] if s.calibrated else []

    @classmethod
    def kinds(cls):
        return [(f"{row.kind}_lambda", f"the {row.kind} row's delta times one step size (0 to 8, and beyond while "
                 "the loss still falls) fitted on the calibration rows") for row in ROWS if row.steps]

    def block(self, b):
        d = self.s.choice.lambdas[self.source.kind] * self.source.block(b)[1]
        return b.apply(d), d

    def note(self):
        choice, of = self.s.choice, self.source.kind
        top = f" ({choice.widened[of]})" if of in choice.widened else ""
        return f"{choice.lambdas[of]:g}{top} x the {of} row's delta: fitted {choice.on()}"

    def ms(self, per):
        return self.source.ms(per)


class Tent(EvalRow):
    kind = "tent"
    about = "`tent_N`: N Adam steps minimising each test sample's prediction entropy, on the same layer"

    def __init__(self, s, n: int):
        super().__init__(s, f"tent_{n}")
        self.n = n

    @classmethod
    def made(cls, s, before):
        task = s.inp.task
        if task.unsupervised_loss is None:
            return f"{task.name} has no label-free loss to minimise at test time"
        if not s.tent_steps:
            return "evaluate.tent_steps is empty"
        return [cls(s, n) for n in s.tent_steps]

    def block(self, b):
        from ocd.overfit import overfit_batch
        from ocd.tasks import Task

        task = self.s.inp.task
        tent_task = Task("tent", lambda out, _y: task.unsupervised_loss(out), task.metrics, task.ensemble)
        d = overfit_batch(self.s.cut, tent_task, b.io.inp, b.y, steps=self.n, optimizer="adam",
                          lr=self.s.tent_lr).delta
        return b.apply(d), d

    def note(self):
        return f"{self.n} Adam steps on the entropy, lr {self.s.tent_lr:g}"


class Oracle(EvalRow):
    kind = "oracle"
    about = "the test sample's own overfit delta (it used the label): an upper bound"

    def block(self, b):
        return b.apply(b.oracle), b.oracle

    def note(self):
        return "overfit on the test label: upper bound"


class DeepEnsemble(EvalRow):
    kind = "deep_ensemble"
    about = "`deep_ensemble_K`: K base models trained with different seeds, no delta"
    reliability = True

    @classmethod
    def made(cls, s, before):
        return [cls(s)] if s.extra_members else []

    def outputs(self, got):
        import torch

        inp, size = self.s.inp, self.s.size

        def outputs(m):
            m.eval().to(inp.x_test.device)
            return torch.cat([m(inp.x_test[i:i + size]) for i in range(0, len(inp.x_test), size)])

        outs = [got["base/out"]] + [outputs(m) for m in self.s.extra_members]
        self.name = f"deep_ensemble_{len(outs)}"
        return inp.task.ensemble(torch.stack(outs))

    def note(self):
        return f"{len(self.s.extra_members) + 1} base models, seeds differ"


# The results table's rows, in its order.
ROWS: tuple[type[EvalRow], ...] = (Base, OCD, Tempered, OCDEnsemble, OCDMeanNetwork, OCDNoScale, Regressor,
                                   NearestInput, NearestCond, KNN, Stepped, Tent, Oracle, DeepEnsemble)


def kinds() -> list[tuple[str, str]]:
    """(kind, about) of every row :data:`ROWS` can make, in the table's order."""
    return [pair for row in ROWS for pair in row.kinds()]


def _served() -> tuple[str, ...]:
    names = []
    for row in ROWS:
        if row.served:
            names += [row.kind, *([f"{row.kind}_lambda"] if row.steps else []),
                      *[t for t in (row.temperature, row.step_temperature) if t]]
    return tuple(names)


# The rows ``ocd predict`` can serve, simplest first: the calibration rows choose among them.
SERVED = _served()
# The reliability diagram's columns (reliability.csv; dvc.yaml plots them).
RELIABILITY = tuple(kind for row in ROWS if row.reliability for kind, _ in row.kinds())


def readme_table() -> str:
    """README's table of rows."""
    return "\n".join(["| row | what it is |", "|---|---|", *(f"| `{kind}` | {about} |" for kind, about in kinds())])


if __name__ == "__main__":
    print(readme_table())
