"""The base model f(x; theta): train, evaluate, save and load.

A saved base model is a folder with ``model.pt`` (the state dict) and
``model.json`` (the :class:`ocd.models.registry.ModelSpec`, the sha256 of the weights,
the dataset and the params it was trained with). Later stages rebuild the
model from that folder alone and record the sha256, so a store or a diffusion
model made from one base model is never mixed with another.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm import tqdm

from ocd.artifacts import CheckpointError, save_tensors, write_json
from ocd.device import CPU, Compute, generator
from ocd.models.cut import ModelError, rows_per_pass
from ocd.models.fit import fit_minibatches
from ocd.models.registry import ModelSpec
from ocd.params import BaseParams
from ocd.tasks import Task

WEIGHTS = "model.pt"
META = "model.json"


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


def train(model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor,
          params: BaseParams, progress: bool = True, compute: Compute = CPU) -> list[float]:
    """Minibatch Adam on the task's loss; returns the mean loss of each epoch.

    Deterministic for a given ``params.seed`` on a given device (``compute``'s): the seed sets
    the initialisation (when the caller seeds before building), the shuffling
    and dropout. A model family with its own way of training (a NeRF trains
    on rays, not views) defines ``fit(task, x, y, params, device, progress)``.
    """
    device = compute.device
    own = getattr(model, "fit", None)
    if callable(own):
        return own(task, x, y, params, device, progress)
    model.to(device)
    seed_everything(params.seed)

    def loss_of(idx):
        return task.loss(model(x[idx].to(device)), y[idx].to(device))

    return fit_minibatches(model, params, len(y), loss_of, "train base", progress)


def train_seeds(spec: ModelSpec, task: Task, x: torch.Tensor, y: torch.Tensor, params: BaseParams,
                seeds: list[int], progress: bool = True, compute: Compute = CPU) -> list[nn.Module]:
    """Fresh base models trained like the base model, one per seed (a deep ensemble's members),
    all at once.

    Each member has its seed's initialisation, shuffling order and Adam state,
    as if trained alone by :func:`train`; the members run as one batched model
    (``torch.func.stack_module_state`` + ``vmap``), so a step costs one launch
    of each kernel for all of them instead of one per member. Adam and the
    schedule act entry by entry, so one optimizer over the stacked weights is
    exactly one optimizer per member; the numbers differ from separate runs
    only by float summation order (and dropout draws).
    """
    if not seeds:
        return []
    if callable(getattr(spec.build(), "fit", None)):  # a family with its own training: one by one
        return train_seeds_one_by_one(spec, task, x, y, params, seeds, progress, compute)
    device = compute.device
    members = []
    for seed in seeds:
        seed_everything(seed)
        members.append(spec.build().to(device))
    weights, buffers = stack_module_state(members)
    template = copy.deepcopy(members[0]).to("meta").train()

    def forward(w, b, xb):
        return functional_call(template, (w, b), (xb,))

    batched = vmap(forward, randomness="different")
    opt = torch.optim.Adam(weights.values(), lr=params.lr, weight_decay=params.weight_decay)
    n, k = len(y), len(seeds)
    steps = (n + params.batch_size - 1) // params.batch_size
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=params.epochs * steps)
             if params.schedule == "cosine" else None)  # base.schedule: ocd.models.fit.SCHEDULES
    orders = [generator(seed) for seed in seeds]
    bar = tqdm(total=params.epochs * steps, desc=f"train {k} ensemble members", disable=not progress,
               mininterval=1.0, unit="step")
    for _ in range(params.epochs):
        perms = torch.stack([torch.randperm(n, generator=g) for g in orders])  # [k, n]
        for i in range(steps):
            idx = perms[:, i * params.batch_size:(i + 1) * params.batch_size]  # [k, B]
            xb, yb = x[idx].to(device), y[idx].to(device)
            out = batched(weights, buffers, xb)  # [k, B, ...]
            # the sum of the members' mean losses: each member's gradient is its own
            loss = task.per_sample_loss(out.flatten(0, 1), yb.flatten(0, 1)).view(k, -1).mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            bar.update()
    bar.close()
    with torch.no_grad():
        for j, member in enumerate(members):
            member.load_state_dict({name: v[j] for name, v in {**weights, **buffers}.items()})
    return [m.eval() for m in members]


def train_seeds_one_by_one(spec: ModelSpec, task: Task, x: torch.Tensor, y: torch.Tensor, params: BaseParams,
                           seeds: list[int], progress: bool = True, compute: Compute = CPU) -> list[nn.Module]:
    """The reference for :func:`train_seeds`: :func:`train` once per seed."""
    members = []
    for seed in seeds:
        seed_everything(seed)
        model = spec.build()
        train(model, task, x, y, dataclasses.replace(params, seed=seed), progress, compute)
        members.append(model.eval())
    return members


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int | None = None,
            compute: Compute = CPU) -> torch.Tensor:
    """Outputs of the model in eval mode, computed on ``compute``'s device and batched (by default
    1,024 rows, or the model's rows_per_pass); returned on the CPU."""
    batch_size = batch_size or rows_per_pass(model, 1024)
    device = compute.device
    model.eval().to(device)
    return torch.cat([model(x[i:i + batch_size].to(device)).cpu()
                      for i in range(0, len(x), batch_size)])


def check_learned(outputs: torch.Tensor, history: list[float], task: Task | None = None,
                  targets: torch.Tensor | None = None, params: BaseParams | None = None) -> None:
    """Refuse a base model that learned nothing: one whose output is the same
    for every training sample, one whose training loss is no lower than what
    the task's trivial predictor (``Task.constant``: the class frequencies, the
    mean) scores on the same rows, or one whose loss never moved.

    Such a model learned a constant (a rendered scene that is mostly background
    made TinyNeRF render black: its loss flat at the mean squared pixel), or
    nothing at all (``base.lr: 1e-12`` kept the loss at 2.3505 and the test
    accuracy below chance), and every later stage would spend minutes on it:
    layer scores of -inf, a store of zero deltas, a full results table with no
    word of the cause. Its training loss is named, since it alone looks healthy.
    """
    losses = f"; its training loss went {history[0]:.4g} -> {history[-1]:.4g}" if history else ""
    knobs = (f": raise base.lr (now {params.lr:g}) or base.epochs (now {params.epochs})" if params is not None
             else ": check base.lr and base.epochs")
    flat = outputs.detach().flatten(1).double()
    if len(flat) >= 2:
        spread = float(flat.std(dim=0).max())
        size = float(flat.abs().max())
        if spread <= 1e-6 * size + 1e-12:
            raise ModelError(f"the base model gives the same output for all {len(flat)} training samples: it "
                             f"learned a constant (largest spread across samples {spread:.2g}){losses}. Nothing "
                             "later can use it: check the data (are the inputs or the targets nearly all the "
                             "same?) and base.lr")
    if task is not None and targets is not None and task.constant is not None:
        got, trivial = float(task.loss(outputs, targets)), trivial_loss(task, targets, outputs.shape[-1])
        if not got < trivial:
            raise ModelError(f"the base model did not learn: its training loss {got:.4g} is no lower than "
                             f"{trivial:.4g}, what always predicting {task.constant_name} scores on the same "
                             f"rows{losses}{knobs}")
    if len(history) >= 2 and max(history) - min(history) <= 1e-6 * abs(history[0]):
        raise ModelError(f"the base model did not learn: its training loss never moved ({history[0]:.6g} in "
                         f"each of {len(history)} epochs){knobs}")


def constant_outputs(task: Task, targets: torch.Tensor, width: int, n: int) -> torch.Tensor:
    """The task's trivial predictor (the best output that ignores the input,
    fitted on ``targets``) repeated for ``n`` rows: ``[n, width]``."""
    return task.constant(targets, width).reshape(1, width).expand(n, width)


def trivial_loss(task: Task, targets: torch.Tensor, width: int) -> float:
    """The task's loss of its trivial predictor on ``targets``, fitted on them."""
    return float(task.loss(constant_outputs(task, targets, width, len(targets)), targets))


def evaluate(model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor,
             compute: Compute = CPU) -> dict[str, float]:
    return task.metrics(predict(model, x, compute=compute), y)


def weights_sha256(model: nn.Module) -> str:
    """A digest of the weights (names, dtypes, shapes and values), independent of file format."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass
class BaseModel:
    model: nn.Module
    spec: ModelSpec
    meta: dict

    @property
    def sha256(self) -> str:
        return self.meta["sha256"]


def save(folder: str | Path, model: nn.Module, spec: ModelSpec, **meta) -> dict:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    # weights first: a kill between the two files leaves a model.json whose
    # sha256 does not match, which load() reports
    save_tensors(folder / WEIGHTS, model.state_dict())
    record = {"spec": spec.to_dict(), "sha256": weights_sha256(model), **meta}
    write_json(folder / META, record)
    return record


ENSEMBLE = "ensemble.json"


def save_ensemble(folder: str | Path, members: list[nn.Module], spec: ModelSpec, seeds: list[int], **meta) -> dict:
    """The deep ensemble's other members (``member_SEED.pt``), then ``ensemble.json``
    (spec, seeds, each member's sha256 and ``meta``), written last; member files
    of an earlier, larger ensemble are removed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = [f"member_{seed}.pt" for seed in seeds]
    for stale in folder.glob("member_*.pt"):
        if stale.name not in files:
            stale.unlink()
    for member, name in zip(members, files):
        save_tensors(folder / name, member.cpu().eval().state_dict())
    record = {"spec": spec.to_dict(), "seeds": seeds,
              "members": [{"file": f, "seed": s, "sha256": weights_sha256(m)}
                          for f, s, m in zip(files, seeds, members)],
              **meta}
    write_json(folder / ENSEMBLE, record)
    return record


def load_ensemble(folder: str | Path, compute: Compute = CPU) -> tuple[list[nn.Module], dict]:
    """The members saved by :func:`save_ensemble`, in eval mode on ``compute``'s device, and their record."""
    folder = Path(folder)
    if not (folder / ENSEMBLE).is_file():
        raise FileNotFoundError(f"{folder / ENSEMBLE} is missing; run the train_ensemble stage first")
    try:
        record = json.loads((folder / ENSEMBLE).read_text())
        spec = ModelSpec.from_dict(record["spec"])
        listed = record["members"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{folder / ENSEMBLE} is damaged ({type(exc).__name__}: {exc}); "
                              "rerun train_ensemble") from None
    members = []
    for entry in listed:
        model = spec.build()
        path = folder / entry["file"]
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:
            raise CheckpointError(f"{path} is not a readable member of this ensemble ({type(exc).__name__}); "
                                  "rerun train_ensemble") from None
        if weights_sha256(model) != entry.get("sha256"):
            raise CheckpointError(f"{path} does not match the sha256 in {folder / ENSEMBLE}; rerun train_ensemble")
        members.append(model.eval().to(compute.device))
    return members, record


def load(folder: str | Path, compute: Compute = CPU) -> BaseModel:
    """Rebuild a saved base model in eval mode on ``compute``'s device."""
    folder = Path(folder)
    for f in (WEIGHTS, META):
        if not (folder / f).is_file():
            raise FileNotFoundError(f"{folder / f} is missing; run the train_base stage first")
    try:
        meta = json.loads((folder / META).read_text())
        spec = ModelSpec.from_dict(meta["spec"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{folder / META} is damaged ({type(exc).__name__}: {exc}); rerun train_base") from None
    model = spec.build()
    try:
        state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{folder / WEIGHTS} holds Python objects beyond tensors, which would run code "
                              "when loaded; refusing it. Rerun train_base") from None
    except Exception as exc:
        raise CheckpointError(f"{folder / WEIGHTS} is not a readable state dict of a {spec.name} "
                              f"({type(exc).__name__}); rerun train_base") from None
    if weights_sha256(model) != meta.get("sha256"):
        raise CheckpointError(f"{folder / WEIGHTS} does not match the sha256 in {folder / META}; "
                              "the folder mixes two base models, rerun train_base")
    return BaseModel(model.eval().to(compute.device), spec, meta)
