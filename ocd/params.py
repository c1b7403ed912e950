"""params.yaml, parsed into typed, validated sections.

Every stage reads its knobs from its own section (as DVC's example projects
do), so ``dvc exp run -S base.lr=3e-3`` and ``dvc params diff`` work without
extra code. A malformed file, an unknown key or a value of the wrong type is
a :class:`ParamsError` that names the key and what was expected, raised
before any work starts.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from ocd.errors import ParamsError

# Where each key that names a choice has its choices: the module that implements them,
# and the tuple of names, or the dict keyed by them, that it assigns at its top level. One
# list in one place: :func:`choices` reads it from the module's source without importing
# it, since importing those modules here would load torch before a mistake in params.yaml
# is named, and make a circle (they read params).
CHOICES_AT = {
    "model.encoder": ("models/nerf.py", "ENCODERS"),
    "base.schedule": ("models/fit.py", "SCHEDULES"),
    "layers.scope": ("layers.py", "SCOPES"),
    "overfit.optimizer": ("overfit.py", "OPTIMIZERS"),
    "overfit.rho": ("delta.py", "RHO"),
    "overfit.dtype": ("delta.py", "DTYPES"),
    "diffusion.preset": ("hypernet/unet.py", "PRESETS"),
    "diffusion.schedule": ("hypernet/schedule.py", "RANGES"),
    "diffusion.target": ("hypernet/targets.py", "TARGETS"),
    "diffusion.prediction": ("hypernet/schedule.py", "PREDICTIONS"),
    "diffusion.output_encoder": ("hypernet/conditioning.py", "OUTPUT_ENCODERS"),
    "scale.loss": ("hypernet/scale.py", "LOSSES"),
    "compute.precision": ("device.py", "PRECISIONS"),
}


@functools.cache
def choices(key: str) -> tuple[str, ...]:
    """The choices of ``key`` (e.g. ``"scale.loss"``), in the order its module lists them."""
    module, name = CHOICES_AT[key]
    path = Path(__file__).resolve().parent / module
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]:
            names = node.value.keys if isinstance(node.value, ast.Dict) else node.value.elts
            return tuple(ast.literal_eval(n) for n in names)
    raise LookupError(f"{path} assigns no {name} at its top level: the choices of {key}")


# The largest integer a param may hold (a seed aside): a count of steps, rows or draws beyond
# it cannot be run here (overfit.batch_size 1e20 ended in a 99-line traceback; diffusion.steps
# 1e12 ran with no end in sight).
MAX_INT = 2**31 - 1


@dataclass(frozen=True)
class DataParams:
    """``data:`` which dataset and how it is split (see ``ocd.data.registry``)."""

    name: str = "mnist5k"
    # Seed of the stratified train/test split for sets without an official one.
    seed: int = 0
    # Share of samples held out as test, for sets without an official split.
    test_fraction: float = 0.2
    # Tabular sets: share of the non-test rows held out as validation (the
    # calibration rows of those sets).
    val_fraction: float = 0.2
    # Image sets: share of the train split carved out, stratified with data.seed,
    # as calibration rows (a temperature is fitted there); no model trains on them.
    # 0: none (the temperature rows are then skipped).
    cal_fraction: float = 0.1
    # Folder of the four IDX files, for ``mnist_idx`` (a .csv path for ``california``).
    path: str = "/usr/share/datasets/fashion-mnist"
    # Optional caps (first N after a seeded stratified subsample); 0 = all.
    max_train: int = 0
    max_test: int = 0
    # Rendered scenes (nerf_*) only: image side in pixels.
    image_size: int = 64
    # Text sets (ocd/data/texts.py) only: labelled sentences per class (the few-shot
    # draw, with data.seed) and tokens per sentence (truncated and padded).
    shots: int = 8
    max_tokens: int = 64
    # Speech mixtures (speech_mix, ocd/data/speech.py) only: voices per mixture,
    # seconds per mixture (at 8 kHz), and mixtures in all (test, train and calibration).
    speakers: int = 2
    seconds: float = 1.0
    mixtures: int = 800

    def __post_init__(self):
        _open_unit(self, "data", "test_fraction", "val_fraction")
        if not 0 <= self.cal_fraction < 1:
            raise ParamsError(f"data.cal_fraction must lie in [0, 1), got {self.cal_fraction}")
        _non_negative(self, "data", "max_train", "max_test")
        _seed(self, "data")
        _positive(self, "data", "image_size", "shots", "seconds", "mixtures")
        if self.speakers < 2:
            raise ParamsError(f"data.speakers must be at least 2 (a mixture of one voice needs no separating), "
                              f"got {self.speakers}")
        if self.max_tokens < 2:
            raise ParamsError(f"data.max_tokens must be at least 2 (the [CLS] and [SEP] tokens), got {self.max_tokens}")


@dataclass(frozen=True)
class ModelParams:
    """``model:`` which architecture (see ``ocd.models.registry``)."""

    name: str = "lenet5"
    # MLP only: widths of the hidden layers and dropout after each.
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    dropout: float = 0.0
    # tinynerf only: sine/cosine frequencies per axis of the point encoding,
    # depth samples per ray, and the conditioning's image encoder (ocd/models/nerf.py:
    # thumbnail | random).
    frequencies: int = 10
    depth_samples: int = 32
    encoder: str = "thumbnail"
    # the separators (ocd/models/mulcat.py, ocd/models/convtasnet.py): channels (mulcat:
    # and LSTM units), blocks (mulcat: pairs of MulCat blocks along and across chunks;
    # convtasnet: blocks per repeat, dilated 1, 2, 4, ...), the encoder's window in
    # samples (hop: half of it); mulcat only: frames per chunk; convtasnet only: repeats.
    width: int = 32
    blocks: int = 1
    window: int = 32
    chunk: int = 40
    repeats: int = 2
    # the separators: the conditioning pools the cut layer's activation over the whole
    # mixture (1) and over s equal stretches of time for each further s, e.g. [1, 2, 4].
    time_scales: list[int] = field(default_factory=lambda: [1])
    # the separators: the conditioning's pooled spectrogram of each separated signal has
    # spectrum_grid frequency bands by spectrum_grid time bins.
    spectrum_grid: int = 8

    def __post_init__(self):
        _widths(self, "model", "hidden")
        _positive(self, "model", "width", "blocks", "window", "chunk", "repeats", "spectrum_grid")
        if not self.time_scales or any(s < 1 for s in self.time_scales) or len(set(self.time_scales)) != len(
                self.time_scales):
            raise ParamsError(f"model.time_scales must list distinct positive counts of stretches, e.g. [1, 2, 4]; "
                              f"got {self.time_scales}")
        if not 0 <= self.dropout < 1:
            raise ParamsError(f"model.dropout must lie in [0, 1), got {self.dropout}")
        _non_negative(self, "model", "frequencies")
        if self.depth_samples < 2:
            raise ParamsError(f"model.depth_samples must be at least 2, got {self.depth_samples}")
        _choice(self, "model", "encoder", choices("model.encoder"))


@dataclass(frozen=True)
class BaseParams:
    """``base:`` training of the base model f(x; theta)."""

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 16
    weight_decay: float = 0.0
    # Learning-rate schedule over all steps: "constant" or "cosine" (decay to 0).
    schedule: str = "cosine"
    seed: int = 0
    # setfit only (ocd/models/sentence.py): the body's contrastive phase before the head
    # is trained with the keys above. SetFit's num_iterations (positive and negative
    # pairs per sentence; 0 skips the phase) and its body learning rate.
    pair_iterations: int = 20
    body_lr: float = 2e-5
    # the separators only: dynamic mixing, every minibatch's mixtures made anew from its
    # sources (each speaker's sources shuffled across the minibatch, new gains).
    dynamic_mixing: bool = False

    def __post_init__(self):
        _positive(self, "base", "epochs", "lr", "batch_size", "body_lr")
        _non_negative(self, "base", "weight_decay", "pair_iterations")
        _seed(self, "base")
        _choice(self, "base", "schedule", choices("base.schedule"))


@dataclass(frozen=True)
class LayersParams:
    """``layers:`` perturbation-entropy layer scores and the selection."""

    # K: Gaussian draws of the layer's weight, shared by the scored samples
    # (the paper: 10,000).
    draws: int = 10000
    # M: training samples whose loss distributions are scored.
    samples: int = 100
    # Noise standard deviation relative to the std of the layer's weight.
    noise: float = 0.1
    seed: int = 0
    # A layer name overrides the selection; "" selects the highest score.
    force: str = ""
    # Which layers are scored: selectable (the Linear layers, which the overfit
    # stage can use) | all (every weight layer, convolutions too: a report only,
    # ~5x the time on LeNet5).
    scope: str = "selectable"

    def __post_init__(self):
        _positive(self, "layers", "draws", "samples", "noise")
        _seed(self, "layers")
        _choice(self, "layers", "scope", choices("layers.scope"))


@dataclass(frozen=True)
class OverfitParams:
    """``overfit:`` per-sample fine-tuning of the selected layer into the store."""

    steps: int = 3
    # "adam" (the authors' code: lr 5e-4) or "sgd" (the paper's text).
    optimizer: str = "adam"
    lr: float = 5e-4
    # Samples per vectorised batch, and rows per store chunk.
    batch_size: int = 256
    # Scale rho of a delta: "fro" (Frobenius norm, the paper) or "std" (the authors' code).
    rho: str = "fro"
    # dtype of the stored deltas: float32 or float16.
    dtype: str = "float32"

    def __post_init__(self):
        _positive(self, "overfit", "steps", "lr", "batch_size")
        _choice(self, "overfit", "optimizer", choices("overfit.optimizer"))
        _choice(self, "overfit", "rho", choices("overfit.rho"))
        _choice(self, "overfit", "dtype", choices("overfit.dtype"))


@dataclass(frozen=True)
class DiffusionParams:
    """``diffusion:`` the conditional diffusion model over unit-scale deltas."""

    # U-Net preset: paper (128 channels, 5 downsamplings; GPU) | cpu | tiny (tests).
    preset: str = "cpu"
    # true: pad the matrix to a square (the paper); false: round each side up only.
    square: bool = False
    # Side of the square when square is true (the authors' code: 128); 0 = smallest.
    pad: int = 0
    # Linear betas: paper (1e-4..1e-2) | reference (the authors' code, 1e-6..1e-2).
    schedule: str = "paper"
    T: int = 1000
    # What is generated: matrix (the whole delta, the paper) | rank1 (its output
    # factor u, delta ~ u i_L^T) | flat (the whole delta as one vector, an MLP
    # denoiser; ocd/hypernet/targets.py). Also the regressor's target.
    target: str = "rank1"
    # What the network predicts: eps (the paper) | x0.
    prediction: str = "x0"
    steps: int = 1500
    # At least this many passes over the fit rows: the stage takes
    # max(steps, ceil(epochs * rows / batch_size)) steps (training_steps), so a
    # large store is not under-trained by a step count sized for a small one.
    # Chosen on held-out train rows of Fashion-MNIST (docs/RESULTS.md, "Scale"):
    # the sampled deltas' cosine reached 0.927 at 3 passes and stayed there at 10.
    epochs: float = 3.0
    batch_size: int = 32
    lr: float = 1e-3
    ema: float = 0.999
    # Warm the EMA's decay up from 0 over the first steps (ocd.hypernet.train.EMA), so that
    # the sampled copy forgets the random initial weights; false: decay from the first step.
    ema_warmup: bool = False
    grad_clip: float = 1.0
    seed: int = 0
    # DDIM at inference and for the diagnostics.
    sample_steps: int = 10
    eta: float = 0.0
    # Share of the train group's chunks held out for the diagnostics; 0: none
    # (every train row fits the models, no diagnostics: a few-shot store of 16 rows).
    holdout: float = 0.1
    diag_samples: int = 64
    # Train rows are kept in RAM when they fit in this many MiB, else streamed by chunk.
    ram_mb: int = 2048
    # > 0: the denoiser and the regressor also see the mean target of this many train
    # rows nearest in the conditioning space (a row never its own; ocd/hypernet/neighbours.py).
    neighbours: int = 0
    # How the denoiser embeds the base model's output part of I(x): linear (one Linear
    # layer, as every part) | conv (a small CNN trained with the denoiser, for a store whose
    # output part is a picture: a separator's pooled spectrograms, TinyNeRF's thumbnail;
    # ocd/hypernet/conditioning.py).
    output_encoder: str = "linear"

    def __post_init__(self):
        _positive(self, "diffusion", "T", "steps", "batch_size", "lr", "sample_steps", "diag_samples")
        _non_negative(self, "diffusion", "neighbours")
        _choice(self, "diffusion", "preset", choices("diffusion.preset"))
        _choice(self, "diffusion", "schedule", choices("diffusion.schedule"))
        _choice(self, "diffusion", "target", choices("diffusion.target"))
        _choice(self, "diffusion", "prediction", choices("diffusion.prediction"))
        _choice(self, "diffusion", "output_encoder", choices("diffusion.output_encoder"))
        _non_negative(self, "diffusion", "pad", "eta", "grad_clip", "ram_mb", "epochs")
        _seed(self, "diffusion")
        if not 0 <= self.holdout < 1:
            raise ParamsError(f"diffusion.holdout must lie in [0, 1), got {self.holdout}")
        if not 0 <= self.ema < 1:
            raise ParamsError(f"diffusion.ema must lie in [0, 1), got {self.ema}")


@dataclass(frozen=True)
class ScaleParams:
    """``scale:`` the MLP predicting rho from I(x)."""

    hidden: list[int] = field(default_factory=lambda: [128, 128])
    # paper: 10 log10((rho_hat - rho)^2 / rho^2); logmse: (log rho_hat - log rho)^2.
    loss: str = "logmse"
    steps: int = 1000
    epochs: float = 10.0  # at least this many passes (as diffusion.epochs; chosen as it)
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        _positive(self, "scale", "steps", "batch_size", "lr")
        _non_negative(self, "scale", "epochs")
        _seed(self, "scale")
        _widths(self, "scale", "hidden")
        _choice(self, "scale", "loss", choices("scale.loss"))


@dataclass(frozen=True)
class RegressorParams:
    """``regressor:`` the non-diffusion baseline, an MLP from I(x) to the
    delta's direction (same target as ``diffusion.target``), sized by the scale model."""

    hidden: list[int] = field(default_factory=lambda: [512, 512])
    steps: int = 2000
    epochs: float = 10.0  # at least this many passes (as diffusion.epochs; chosen as it)
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        _positive(self, "regressor", "steps", "batch_size", "lr")
        _non_negative(self, "regressor", "epochs")
        _seed(self, "regressor")
        _widths(self, "regressor", "hidden")


@dataclass(frozen=True)
class EvaluateParams:
    """``evaluate:`` the results table on the test split."""

    # OCD ensemble size (noises per test sample), also the deep ensemble's size.
    k: int = 5
    sample_steps: int = 10  # DDIM steps
    eta: float = 0.0
    seed: int = 0
    # Tent: Adam steps minimising the prediction's entropy on the same layer.
    tent_steps: list[int] = field(default_factory=lambda: [1, 10, 30])
    tent_lr: float = 5e-4
    # Train k - 1 more base models (seeds base.seed + 1, ...) for the deep-ensemble row.
    deep_ensemble: bool = True

    def __post_init__(self):
        _positive(self, "evaluate", "k", "sample_steps", "tent_lr")
        _non_negative(self, "evaluate", "eta")
        _seed(self, "evaluate")
        if any(n <= 0 for n in self.tent_steps):
            raise ParamsError(f"evaluate.tent_steps must hold positive step counts, got {self.tent_steps}")


@dataclass(frozen=True)
class ComputeParams:
    """``compute:`` how stages run. ``nproc`` changes outputs within rounding at most;
    ``precision``, ``compile`` and ``graphs`` change outputs on a GPU within rounding
    (docs/RESULTS.md, "GPU")."""

    # Processes of the score_layers, overfit, train_diffusion and evaluate stages on this
    # machine: above 1, the stage launches itself under torchrun (ocd/distributed.py).
    # score_layers deals out the draws, overfit the store's chunks, train_diffusion each
    # minibatch's rows (DDP), evaluate the test rows. Outputs equal the one-process ones;
    # train_diffusion's models within float rounding (README, "Many processes").
    nproc: int = 1
    # train_diffusion, evaluate, predict: fp32 | tf32 | bf16 (ocd.device.use_precision).
    # tf32 and bf16 act on a GPU only; on a CPU tf32 is fp32.
    precision: str = "tf32"
    # train_diffusion: the denoiser through torch.compile (pays off for long runs of a large net).
    compile: bool = False
    # train_diffusion on CUDA: every training step one replayed CUDA graph (ocd.device.Steps);
    # measured on an H200: the denoiser 2.7x faster, its diagnostics moved by rounding (3e-4),
    # so off by default (docs/RESULTS.md, "GPU (issue 33)").
    graphs: bool = False

    def __post_init__(self):
        _positive(self, "compute", "nproc")
        _choice(self, "compute", "precision", choices("compute.precision"))


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    base: BaseParams = field(default_factory=BaseParams)
    layers: LayersParams = field(default_factory=LayersParams)
    overfit: OverfitParams = field(default_factory=OverfitParams)
    diffusion: DiffusionParams = field(default_factory=DiffusionParams)
    scale: ScaleParams = field(default_factory=ScaleParams)
    regressor: RegressorParams = field(default_factory=RegressorParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    compute: ComputeParams = field(default_factory=ComputeParams)

    def section(self, name: str) -> dict[str, Any]:
        """One section as a plain dict (for provenance records)."""
        return dataclasses.asdict(getattr(self, name))


def training_steps(steps: int, epochs: float, rows: int, batch_size: int) -> int:
    """A training length: ``steps``, or more if that many minibatches of
    ``batch_size`` (at most ``rows``) make fewer than ``epochs`` passes over ``rows``."""
    batch = max(1, min(batch_size, rows))
    return max(steps, math.ceil(epochs * rows / batch))


def _positive(section, where: str, *names: str) -> None:
    for name in names:
        if not getattr(section, name) > 0:
            raise ParamsError(f"{where}.{name} must be positive, got {getattr(section, name)!r}")


def _non_negative(section, where: str, *names: str) -> None:
    for name in names:
        if getattr(section, name) < 0:
            raise ParamsError(f"{where}.{name} must not be negative, got {getattr(section, name)!r}")


def _seed(section, where: str) -> None:
    """Seeds go to numpy and scikit-learn as well as torch: 0 <= seed < 2**32."""
    if not 0 <= section.seed < 2**32:
        raise ParamsError(f"{where}.seed must lie in [0, 2**32), got {section.seed!r}")


def _open_unit(section, where: str, *names: str) -> None:
    for name in names:
        if not 0 < getattr(section, name) < 1:
            raise ParamsError(f"{where}.{name} must lie in (0, 1), got {getattr(section, name)!r}")


def _widths(section, where: str, name: str) -> None:
    widths = getattr(section, name)
    if not widths or any(w <= 0 for w in widths):
        raise ParamsError(f"{where}.{name} must list one or more positive layer widths, got {widths!r}")


def _choice(section, where: str, name: str, choices: tuple[str, ...]) -> None:
    if getattr(section, name) not in choices:
        raise ParamsError(f"{where}.{name} is {getattr(section, name)!r}; valid choices: {', '.join(choices)}")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; missing keys take their defaults."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such params file") from None
    except IsADirectoryError:
        raise ParamsError(f"{path} is a folder, not a params file") from None
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ParamsError(f"{path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    return parse_params(raw if raw is not None else {}, source=str(path))


def parse_params(raw: Any, source: str = "params") -> Params:
    """Every error names the file (``source``), then the key: ``params.yaml: base.lr: ...``."""
    try:
        return _build(Params, raw, "")
    except ParamsError as exc:
        raise ParamsError(f"{source}: {exc}") from None


def _build(cls: type, raw: Any, where: str):
    if not isinstance(raw, dict):
        raise ParamsError(f"{where}: expected a mapping, got {type(raw).__name__}" if where else
                          f"expected a mapping of sections, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ParamsError(
            (f"{where}: unknown key(s) " if where else "unknown section(s) ") + f"{', '.join(map(str, unknown))}; "
            f"valid {'keys' if where else 'sections'}: {', '.join(sorted(fields))}"
        )
    values = {name: _coerce(hints[name], value, f"{where}.{name}" if where else name) for name, value in raw.items()}
    return cls(**values)


def _coerce(hint: Any, value: Any, where: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        return _coerce(options[0], value, where)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float:
        # YAML reads "1e-3" (no dot) as a string; accept it as a float.
        if isinstance(value, bool):
            raise ParamsError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ParamsError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(number):  # .nan, .inf: every float knob here must be a finite number
            raise ParamsError(f"{where}: expected a finite number, got {value!r}")
        return number
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{where}: expected an integer, got {value!r}")
        if abs(value) > MAX_INT and not where.endswith(".seed"):  # a seed has its own range (_seed)
            raise ParamsError(f"{where}: {value:,} is more than any count this machine can run (at most "
                              f"{MAX_INT:,}: 2**31 - 1)")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ParamsError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported params type {hint!r} at {where}")  # a bug of ours
