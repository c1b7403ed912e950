"""The trust drills of issues 30 and 41, rerunnable: each does what a careless
or hostile user would, by the commands a user types, and the table says PASS
or FAIL with the line the user saw.

    .venv/bin/python benchmarks/drills.py [--work DIR] [--only 41 30.2 ...]

It makes a fresh copy of the project (tiny params: digits and an MLP, one
torch thread a process), with git and DVC initialised, and runs the pipeline
there with `dvc repro`. Every drill then runs `ocd ...`, `dvc repro` or `dvc
status` in that copy as a subprocess, and checks three things: the exit code,
the one line the user sees (a refusal: exit 1 or 2, one line on stderr, no
traceback) and what is left on disk (nothing written where a refusal stopped,
nothing of the user's deleted, no file left untracked). Inputs a user could
make by hand (a cut CSV, an edited zarr.json, a model whose layer is dead)
are made with Python first; no drill calls the library to check an answer.
About 8 minutes on 2 cores. Every drill has a unit or end-to-end test beside
it in tests/; this script is the view a maintainer reruns as a whole.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COPY = ["dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "ocd", "stages", "data", "presets"]
TINY = {
    "data": {"name": "digits"},
    "model": {"name": "mlp", "hidden": [32]},
    "base": {"epochs": 3, "lr": 0.01, "batch_size": 64},
    "layers": {"draws": 64, "samples": 16},
    "overfit": {"batch_size": 128},
    "diffusion": {"preset": "tiny", "steps": 20, "epochs": 0, "batch_size": 16, "diag_samples": 8, "T": 100},
    "scale": {"hidden": [16], "steps": 20, "epochs": 0},
    "regressor": {"hidden": [16], "steps": 20, "epochs": 0},
    "evaluate": {"k": 2, "tent_steps": [1], "deep_ensemble": False},
}
STAGES = ("train-base", "score-layers", "overfit", "train-diffusion", "train-scale", "train-regressor", "evaluate")
UP_TO_DATE = "Data and pipelines are up to date."
DRILLS = []


def drill(item: str, what: str):
    def wrap(fn):
        DRILLS.append((item, what, fn))
        return fn
    return wrap


class Work:
    """The fresh copy, and the commands a user types in it."""

    def __init__(self, root: Path):
        self.root = root
        # PYTHONPATH: the `ocd` of this environment runs the copy's code
        self.env = dict(os.environ, DVC_NO_ANALYTICS="1", OCD_THREADS="1", PYTHONPATH=str(root),
                        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")

    def run(self, argv: list, timeout=600, check=False):
        return subprocess.run([str(a) for a in argv], cwd=self.root, env=self.env, capture_output=True, text=True,
                              check=check, timeout=timeout)

    def ocd(self, *args, params: dict | None = None, check=False, timeout=600):
        extra = ["--params", self.params(params)] if params is not None else []
        return self.run([BIN / "ocd", *args, *extra], timeout, check)

    def dvc(self, *args, check=False, timeout=600):
        return self.run([BIN / "dvc", *args], timeout, check)

    def popen(self, *args, params: dict | None = None):
        extra = ["--params", str(self.params(params))] if params is not None else []
        return subprocess.Popen([str(BIN / "ocd"), *map(str, args), *extra], cwd=self.root, env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def params(self, overrides: dict) -> Path:
        """A params file as a user writes one: the copy's params.yaml with ``overrides``."""
        raw = yaml.safe_load((self.root / "params.yaml").read_text())
        for section, values in overrides.items():
            raw.setdefault(section, {}).update(values)
        path = Path(tempfile.mkstemp(suffix=".yaml", dir=self.root)[1])
        path.write_text(yaml.safe_dump(raw))
        return path


def refused(run, *needles: str) -> tuple[bool, str]:
    """A refusal as a user should see it: exit code 1 or 2, one line on stderr,
    no traceback, and the line names what it should (``needles``)."""
    err = [line for line in run.stderr.strip().splitlines() if line.strip()]
    ok = run.returncode in (1, 2) and len(err) == 1 and "Traceback" not in run.stderr
    shown = err[0] if len(err) == 1 else f"{len(err)} lines on stderr: {' | '.join(err[-2:])[:200]}"
    missing = [n for n in needles if n not in shown]
    return ok and not missing, f"exit {run.returncode}: {shown}" + (f" (NOT NAMED: {missing})" if missing else "")


def on_disk(ok_line: tuple[bool, str], **checks: bool) -> tuple[bool, str]:
    """A drill's verdict with what it found on disk: every check must hold."""
    ok, line = ok_line
    failed = [name.replace("_", " ") for name, held in checks.items() if not held]
    return ok and not failed, line + (f" (ON DISK: {', '.join(failed)})" if failed else "")


def last_line(run) -> str:
    lines = [line for line in (run.stdout + run.stderr).strip().splitlines() if line.strip()]
    return lines[-1][:220] if lines else ""


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def setup(root: Path) -> Work:
    """The copy: the project's files, tiny params, git and DVC, and the pipeline by `dvc repro`."""
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"), symlinks=True)
        elif src.exists():
            shutil.copy2(src, root / name)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in TINY.items():
        raw.setdefault(section, {}).update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    w = Work(root)
    for argv in (["git", "init", "-q"], ["git", "config", "user.email", "drills@ocd"],
                 ["git", "config", "user.name", "drills"]):
        w.run(argv, check=True)
    w.dvc("init", "-q", check=True)
    w.dvc("config", "core.analytics", "false", check=True)
    w.dvc("repro", check=True)
    w.run(["git", "add", "-A"], check=True)
    w.run(["git", "commit", "-qm", "the pipeline on tiny params"], check=True)
    return w


# ------------------------------------------------------------- the pipeline, as DVC runs it
@drill("41.0", "dvc status after dvc repro on a fresh copy")
def _(w):
    run = w.dvc("status")
    return run.returncode == 0 and UP_TO_DATE in run.stdout, f"exit {run.returncode}: {last_line(run)}"


@drill("30.4", "dvc repro -f -s train_base twice: model.pt md5s, then dvc status")
def _(w):
    sums = []
    for _ in range(2):
        run = w.dvc("repro", "-f", "-s", "train_base")
        if run.returncode:
            return False, f"exit {run.returncode}: {last_line(run)}"
        sums.append(md5(w.root / "artifacts/base/model.pt"))
    status = w.dvc("status")
    ok = sums[0] == sums[1] and UP_TO_DATE in status.stdout
    return ok, f"{sums[0]} / {sums[1]}; dvc status: {last_line(status)}"


@drill("41.8", "dvc repro -f -s evaluate: every file it writes is tracked by git or DVC")
def _(w):
    run = w.dvc("repro", "-f", "-s", "evaluate")
    loose = [line[3:] for line in w.run(["git", "status", "--porcelain", "--untracked-files=all"]).stdout.splitlines()
             if line.startswith("??")]
    return on_disk((run.returncode == 0, f"exit {run.returncode}: {len(loose)} untracked file(s)"
                    + (f": {', '.join(loose[:3])}" if loose else "")), nothing_left_untracked=not loose)


# ---------------------------------------------------------------- issue 30, item 1
@drill("30.1", "ocd overfit --out a folder holding a file of the user's")
def _(w):
    d = w.root / "thesis"
    d.mkdir(exist_ok=True)
    (d / "thesis.txt").write_text("x")
    return on_disk(refused(w.ocd("overfit", "--no-progress", "--out", d)), users_file_kept=(d / "thesis.txt").exists())


# ---------------------------------------------------------------- 30.2
@drill("30.2", "a second ocd overfit on the store while another writes it")
def _(w):
    out = w.root / "shared.zarr"
    first = w.popen("overfit", "--no-progress", "--out", out, "--metrics", w.root / "a.json",
                    params={"overfit": {"steps": 3000, "batch_size": 16}})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (out / "zarr.json").exists():
            time.sleep(0.1)
        second = w.ocd("overfit", "--no-progress", "--out", out, "--metrics", w.root / "b.json",
                       params={"overfit": {"lr": 0.001}})
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    return on_disk(refused(second, "another run is writing"), no_second_metrics=not (w.root / "b.json").exists())


@drill("30.2", "kill -9 of a compute.nproc=2 ocd overfit's process group: do its ranks die?")
def _(w):
    out = w.root / "ranks.zarr"
    proc = w.popen("overfit", "--no-progress", "--out", out, "--metrics", w.root / "r.json",
                   params={"compute": {"nproc": 2}, "overfit": {"steps": 2000, "batch_size": 16}})
    done = out / "train/done/c"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (done.exists() and any(done.iterdir())):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(5)
    alive = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, str(out))]
    return not alive, f"{len(alive)} process(es) still writing {out.name} 5 s after the kill"


def _cmdline_has(proc: Path, text: str) -> bool:
    try:
        return text in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


# ---------------------------------------------------------------- 30.3
@drill("30.3", "two valid train/delta chunk files swapped, then ocd inspect --verify")
def _(w):
    store = w.root / "swap.zarr"
    shutil.copytree(w.root / "artifacts/deltas.zarr", store)
    chunks = sorted((store / "train/delta/c").iterdir(), key=lambda p: int(p.name))[:2]
    if len(chunks) < 2:
        return False, "fewer than two chunks"
    a, b = (c / "0" / "0" for c in chunks)
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)
    run = w.ocd("inspect", "--verify", store)
    named = [line for line in run.stdout.splitlines() if line.startswith("damaged:")]
    return run.returncode == 1 and len(named) == 2, f"exit {run.returncode}: {named[0] if named else run.stdout[-150:]}"


# ---------------------------------------------------------------- 30.4
@drill("30.4", "two ocd train-base runs: model.pt md5s")
def _(w):
    for out in ("b1", "b2"):
        w.ocd("train-base", "--no-progress", "--out", w.root / out, check=True)
    one, two = md5(w.root / "b1/model.pt"), md5(w.root / "b2/model.pt")
    return one == two, f"{one} / {two}"


@drill("30.4", "two runs of the model stages: diffusion.pt, scale.pt, regressor.pt md5s")
def _(w):
    for out in ("d1", "d2"):
        for stage in ("train-diffusion", "train-scale", "train-regressor"):
            w.ocd(stage, "--no-progress", "--out", w.root / out, check=True)
    names = ("diffusion.pt", "scale.pt", "regressor.pt")
    same = [md5(w.root / "d1" / n) == md5(w.root / "d2" / n) for n in names]
    return all(same), ", ".join(f"{n} {'equal' if s else 'DIFFER'}" for n, s in zip(names, same))


# ---------------------------------------------------------------- 30.5
@drill("30.5", "evaluate.eta: .nan")
def _(w):
    e = w.root / "e"
    return on_disk(refused(w.ocd("evaluate", "--no-progress", "--out", e, params={"evaluate": {"eta": float("nan")}}),
                           "evaluate.eta"), nothing_written=not e.exists())


@drill("30.5", "diffusion.grad_clip: .nan")
def _(w):
    d = w.root / "d"
    return on_disk(refused(w.ocd("train-diffusion", "--no-progress", "--out", d,
                                 params={"diffusion": {"grad_clip": float("nan")}}), "diffusion.grad_clip"),
                   nothing_written=not (d / "diffusion.pt").exists())


def _california(w, name: str, text: bytes):
    path = w.root / name
    path.write_bytes(text)
    out = w.root / f"{name}.base"
    run = w.ocd("train-base", "--no-progress", "--out", out, params={"data": {"name": "california", "path": str(path)}})
    return run, out


@drill("30.5", "a California CSV whose last row lost its tail")
def _(w):
    lines = (ROOT / "data/california_housing/housing.csv").read_bytes().splitlines()[:300]
    run, out = _california(w, "cut.csv", b"\n".join(lines) + b"\n" + lines[-1][: len(lines[-1]) // 2] + b"\n")
    return on_disk(refused(run, "cut"), nothing_written=not out.exists())


@drill("41.2", "a California CSV copy stopped at byte 700,000 (inside a number)")
def _(w):
    run, out = _california(w, "cut700k.csv", (ROOT / "data/california_housing/housing.csv").read_bytes()[:700_000])
    return on_disk(refused(run, "fields, the header 10"), nothing_written=not out.exists())


@drill("41.2", "a California CSV cut inside the last row's unused ocean_proximity")
def _(w):
    whole = (ROOT / "data/california_housing/housing.csv").read_bytes()
    run, out = _california(w, "cutword.csv", whole.rstrip(b"\n")[:-3])
    return on_disk(refused(run, "does not end with a line end"), nothing_written=not out.exists())


# ---------------------------------------------------------------- 30.6 / 41.1: a base model that learned nothing
@drill("30.6", "a data set of identical images")
def _(w):
    folder = _idx(w.root / "flat_idx", np.zeros((60, 28, 28), np.uint8), np.arange(60, dtype=np.uint8) % 10)
    out = w.root / "flat"
    return on_disk(refused(w.ocd("train-base", "--no-progress", "--out", out,
                                 params={"data": {"name": "mnist_idx", "path": str(folder)}})),
                   nothing_written=not out.exists())


@drill("41.1", "base.lr: 1e-12 (the loss never moves)")
def _(w):
    out = w.root / "lazy"
    return on_disk(refused(w.ocd("train-base", "--no-progress", "--out", out, params={"base": {"lr": 1e-12}}),
                           "did not learn", "base.lr"), nothing_written=not out.exists())


@drill("30.6", "ocd overfit on a layer whose units never fire (fc1 dead: zero weight, bias -1)")
def _(w):
    import torch

    from ocd.models import base

    # the input, made with the library (as a training gone wrong would leave it): fc1 never fires
    trained = base.load(w.root / "artifacts/base")
    model = trained.model.cpu()
    with torch.no_grad():
        model.fc1.weight.zero_()
        model.fc1.bias.fill_(-1.0)
    dead = w.root / "dead"
    base.save(dead, model, trained.spec, **{k: v for k, v in trained.meta.items() if k not in ("spec", "sha256")})
    w.ocd("score-layers", "--no-progress", "--base", dead, "--out", dead / "layers",
          params={"layers": {"force": "fc1"}}, check=True)
    store = dead / "d.zarr"
    return on_disk(refused(w.ocd("overfit", "--no-progress", "--base", dead, "--scores", dead / "layers/scores.json",
                                 "--out", store, "--metrics", dead / "m.json")),
                   no_metrics=not (dead / "m.json").exists())


# ---------------------------------------------------------------- 30.7 / 41.6: small data, end to end
def _pipeline(w, folder: Path, params: dict):
    """Every stage by `ocd STAGE`, each writing under ``folder``: None, or the
    (exit code, line) of the first that failed."""
    paths = {"--base": folder / "base", "--scores": folder / "layers/scores.json", "--store": folder / "d.zarr",
             "--models": folder / "m"}
    outs = {"train-base": folder / "base", "score-layers": folder / "layers", "overfit": folder / "d.zarr",
            "train-diffusion": folder / "m", "train-scale": folder / "m", "train-regressor": folder / "m",
            "evaluate": folder / "eval"}
    takes = {"score-layers": ["--base"], "overfit": ["--base", "--scores"], "train-diffusion": ["--store"],
             "train-scale": ["--store"], "train-regressor": ["--store"], "evaluate": ["--base", "--store", "--models"]}
    for stage in STAGES:
        extra = [a for key in takes.get(stage, []) for a in (key, paths[key])]
        if stage == "overfit":
            extra += ["--metrics", folder / "o.json"]
        run = w.ocd(stage, "--no-progress", "--out", outs[stage], *extra, params=params)
        if run.returncode:
            return run.returncode, f"{stage}: exit {run.returncode}: {last_line(run)}"
    return None


@drill("41.6", "breast cancer cut to 113 train rows (one chunk of 128 before): every stage, then ocd inspect")
def _(w):
    small = w.root / "small"
    failed = _pipeline(w, small, {"data": {"name": "breast_cancer", "max_train": 113}})
    if failed:
        return False, failed[1]
    shown = json.loads(w.ocd("inspect", "--json", "--sample", "0", small / "d.zarr", check=True).stdout)
    chunks = shown["splits"]["train"]["chunks_done"]
    w.small = small  # for the drill that reads its results
    best = next((line for line in (small / "eval/results.md").read_text().splitlines() if line.startswith("Best")), "")
    return on_disk((True, f"every stage exit 0; train chunks {chunks}; {best}"),
                   ten_chunks=chunks == "10/10", results_written=bool(best))


@drill("30.7", "every calibration row right (ten well-apart digit prototypes): the temperature row's note")
def _(w):
    rng = np.random.default_rng(0)
    prototypes = rng.integers(0, 256, (10, 28, 28))
    y = np.arange(200) % 10
    x = np.clip(prototypes[y] + rng.normal(0, 8, (200, 28, 28)), 0, 255).astype(np.uint8)
    easy = w.root / "easy"
    failed = _pipeline(w, easy, {"data": {"name": "mnist_idx", "path": str(_idx(w.root / "easy_idx", x, y))}})
    if failed:
        return False, failed[1]
    import csv

    with open(easy / "eval/results.csv", newline="") as fh:
        note = next(row["note"] for row in csv.DictReader(fh) if row["row"] == "temperature")
    return "T = 1: not fitted, all" in note, note


@drill("41.7", "the small table's step sizes: one at the grid's end (8) says how the search went on")
def _(w):
    small = getattr(w, "small", None)
    if small is None or not (small / "eval/metrics.json").is_file():
        return None, "needs drill 41.6's run"
    chosen = json.loads((small / "eval/metrics.json").read_text()).get("chosen", {})
    edge = {name: lam for name, lam in chosen.get("lambda", {}).items() if lam >= 8}
    if not edge:
        return None, f"no step size reached the grid's end here: {chosen.get('lambda')}"
    widened = chosen.get("widened", {})
    return all(name in widened for name in edge), "; ".join(f"{n} {lam:g}: {widened.get(n, 'NOT SAID')}"
                                                            for n, lam in edge.items())


# ---------------------------------------------------------------- 30.8
@drill("30.8", "diffusion.holdout on the store's chunks: what ocd train-diffusion holds out")
def _(w):
    run = w.ocd("train-diffusion", "--no-progress", "--out", w.root / "h", check=True)
    line = next((line for line in run.stdout.splitlines() if line.startswith("held out")), "")
    return "whole chunks" in line or "chunk(s)" in line, line


# ---------------------------------------------------------------- 30.9 / 41.4: refusals in one line
def _refusal(item, what, *args, params=None, prepare=None, names=()):
    @drill(item, what)
    def run(w):
        extra = prepare(w) if prepare else ()
        x = w.root / "x"
        return on_disk(refused(w.ocd(*args, *extra, params=params), *names), nothing_written=not x.exists())
    return run


_refusal("30.9", "data.seed: -1", "train-base", "--no-progress", "--out", "x", params={"data": {"seed": -1}},
         names=("data.seed",))
_refusal("30.9", "a params file that is not UTF-8", "train-base", "--no-progress", "--out", "x",
         prepare=lambda w: ("--params", _write(w.root / "latin1.yaml",
                                               "base:\n  lr: 0.001 # \xe9t\xe9\n".encode("latin-1"))))
_refusal("30.9", "--params naming a folder", "train-base", "--no-progress", "--out", "x", "--params", "ocd")
_refusal("30.9", "diffusion.epochs: .inf", "train-diffusion", "--no-progress", "--out", "x",
         params={"diffusion": {"epochs": float("inf")}}, names=("diffusion.epochs",))
_refusal("30.9", "data.max_train: 1", "train-base", "--no-progress", "--out", "x", params={"data": {"max_train": 1}},
         names=("data.max_train",))
_refusal("30.9", "an empty California CSV", "train-base", "--no-progress", "--out", "x",
         prepare=lambda w: ("--params", str(w.params({"data": {"name": "california",
                                                               "path": str(_write(w.root / "e.csv", b""))}}))))
_refusal("30.9", "ocd predict on a (0, 1, 8, 8) array", "predict",
         prepare=lambda w: (str(_npy(w.root / "empty.npy", np.zeros((0, 1, 8, 8)))),))
_refusal("30.9", "ocd predict on PNGs of two sizes", "predict",
         prepare=lambda w: (str(_pngs(w.root / "two", [8, 9])),))
_refusal("30.9", "ocd predict on a 20000x20000 PNG", "predict",
         prepare=lambda w: (str(_pngs(w.root / "huge", [20000])),))
_refusal("30.9", "train-diffusion on a store whose zarr.json is empty", "train-diffusion", "--no-progress",
         "--out", "x", prepare=lambda w: ("--store", str(_emptied(w))))
_refusal("30.9", "diffusion.lr: 1e30", "train-diffusion", "--no-progress", "--out", "x",
         params={"diffusion": {"lr": 1e30}})
_refusal("30.9", "a user error on compute.nproc: 2", "train-diffusion", "--no-progress", "--out", "x",
         "--store", "none.zarr", params={"compute": {"nproc": 2}})
_refusal("41.4", "overfit.batch_size: 1e20", "overfit", "--no-progress", "--out", "x", "--metrics", "x.json",
         params={"overfit": {"batch_size": int(1e20)}}, names=("overfit.batch_size",))
_refusal("41.4", "diffusion.steps: 1e12", "train-diffusion", "--no-progress", "--out", "x",
         params={"diffusion": {"steps": int(1e12)}}, names=("diffusion.steps",))
_refusal("41.8", "ocd predict on bytes that are not a .npy", "predict",
         prepare=lambda w: (str(_write(w.root / "junk.npy", b"these are not numbers\n" * 10)),),
         names=("not a .npy file",))


@drill("30.9", "plain ocd inspect on a damaged store")
def _(w):
    store = w.root / "damaged.zarr"
    shutil.copytree(w.root / "artifacts/deltas.zarr", store)
    chunk = next((store / "train/rho/c").iterdir())
    chunk.write_bytes(chunk.read_bytes()[:-3] + b"xyz")
    return refused(w.ocd("inspect", store))


def _tmpfs(options: str):
    """A small tmpfs mounted with ``options`` (root only), or None."""
    if os.geteuid() != 0:
        return None
    mount = Path(tempfile.mkdtemp())
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)]).returncode:
        return None
    return mount


@drill("30.9", "a disk that fills during ocd overfit (a 2 MB tmpfs)")
def _(w):
    mount = _tmpfs("size=2m")
    if mount is None:
        return None, "needs root to mount a small tmpfs"
    try:
        return refused(w.ocd("overfit", "--no-progress", "--out", mount / "s.zarr", "--metrics", mount / "m.json"),
                       "the disk is full")
    finally:
        subprocess.run(["umount", str(mount)])


@drill("41.5", "ocd train-base --out on a read-only file system")
def _(w):
    mount = _tmpfs("ro,size=1m")
    if mount is None:
        return None, "needs root to mount a read-only tmpfs"
    try:
        return on_disk(refused(w.ocd("train-base", "--no-progress", "--out", mount / "base"),
                               "Read-only file system"), nothing_written=not any(mount.iterdir()))
    finally:
        subprocess.run(["umount", str(mount)])


# ---------------------------------------------------------------- 41.3: the store's attributes edited by hand
def _edited_store(w) -> tuple[Path, str]:
    store = w.root / "edited.zarr"
    if not store.exists():
        shutil.copytree(w.root / "artifacts/deltas.zarr", store)
        meta = json.loads((store / "zarr.json").read_text())
        layer = meta["attributes"]["layer"]
        meta["attributes"]["layer"] = "fc1" if layer != "fc1" else "fc2"  # as a user's editor would
        (store / "zarr.json").write_text(json.dumps(meta, indent=2))
    return store, md5(store / "zarr.json")


@drill("41.3", "a store whose layer attribute was edited by hand: ocd inspect --verify")
def _(w):
    store, before = _edited_store(w)
    run = w.ocd("inspect", "--verify", store)
    named = [line for line in run.stdout.splitlines() if line.startswith("damaged:")]
    ok = run.returncode == 1 and named and named[0].startswith("damaged: attribute layer:")
    return on_disk((bool(ok), f"exit {run.returncode}: {named[0] if named else last_line(run)}"),
                   store_untouched=md5(store / "zarr.json") == before)


@drill("41.3", "the edited store given to ocd train-diffusion")
def _(w):
    store, before = _edited_store(w)
    out = w.root / "edited_models"
    return on_disk(refused(w.ocd("train-diffusion", "--no-progress", "--store", store, "--out", out),
                           "attribute layer"), nothing_written=not out.exists(),
                   store_untouched=md5(store / "zarr.json") == before)


@drill("41.3", "the pipeline's own store edited: dvc status names it, dvc repro heals it")
def _(w):
    zarr_json = w.root / "artifacts/deltas.zarr/zarr.json"
    clean = zarr_json.read_bytes()
    meta = json.loads(clean)
    meta["attributes"]["layer"] = "fc1" if meta["attributes"]["layer"] != "fc1" else "fc2"
    zarr_json.write_text(json.dumps(meta, indent=2))
    status = w.dvc("status")
    named = "artifacts/deltas.zarr" in status.stdout
    repro = w.dvc("repro")
    after = w.dvc("status")
    verify = w.ocd("inspect", "--verify", "artifacts/deltas.zarr")
    return on_disk((named and repro.returncode == 0 and UP_TO_DATE in after.stdout and verify.returncode == 0,
                    f"dvc status {'names' if named else 'DOES NOT NAME'} the store; dvc repro exit {repro.returncode}; "
                    f"then: {last_line(after)}; {last_line(verify)}"),
                   attributes_restored=zarr_json.read_bytes() == clean)


# ---------------------------------------------------------------- 30.10
@drill("30.10", "ocd inspect on a Zarr group that is not a store")
def _(w):
    import zarr

    zarr.open_group(w.root / "foreign.zarr", mode="w").attrs["x"] = 1
    ok, line = refused(w.ocd("inspect", w.root / "foreign.zarr"))
    return ok and "recomputes" not in line, line


_refusal("30.10", "ocd preset ../../x", "preset", "../../etc/x")
_refusal("30.10", "a California data.path that is not a .csv", "train-base", "--no-progress", "--out", "x",
         params={"data": {"name": "california", "path": "/tmp"}})


@drill("30.10", "a killed writer's 0-byte .diffusion.pt.PID.tmp, then ocd train-diffusion")
def _(w):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = w.root / "t"
    out.mkdir(exist_ok=True)
    stale = out / f".diffusion.pt.{dead.pid}.tmp"
    stale.write_bytes(b"")
    run = w.ocd("train-diffusion", "--no-progress", "--out", out)
    shown = f"exit {run.returncode}; {stale.name} {'left' if stale.exists() else 'removed'}"
    return on_disk((run.returncode == 0, shown),
                   stale_file_removed=not stale.exists(), model_written=(out / "diffusion.pt").is_file())


@drill("30.10", "ocd predict on a table (diabetes, MLP)")
def _(w):
    p = {"data": {"name": "diabetes"}, "model": {"name": "mlp"}}
    a = w.root / "tab"
    w.ocd("train-base", "--no-progress", "--out", a / "base", params=p, check=True)
    w.ocd("score-layers", "--no-progress", "--base", a / "base", "--out", a / "layers", params=p, check=True)
    w.ocd("overfit", "--no-progress", "--base", a / "base", "--scores", a / "layers/scores.json", "--out",
          a / "d.zarr", "--metrics", a / "o.json", params=p, check=True)
    for stage in ("train-diffusion", "train-scale", "train-regressor"):
        w.ocd(stage, "--no-progress", "--store", a / "d.zarr", "--out", a / "m", params=p, check=True)
    rows = _npy(w.root / "rows.npy", np.full((2, 10), 0.01))
    run = w.ocd("predict", rows, "--base", a / "base", "--models", a / "m", "--row", "ocd_ensemble", params=p)
    lines = run.stdout.strip().splitlines()
    return run.returncode == 0 and len(lines) >= 2, (lines or [run.stderr.strip()[-150:]])[0]


@drill("30.10", "the results table's ms/sample: does OCD cost at least the base pass?")
def _(w):
    m = json.loads((w.root / "artifacts/eval/metrics.json").read_text())
    base, ocd, reg = (m[r]["ms_per_sample"] for r in ("base", "ocd", "regressor"))
    return ocd >= base and reg >= base, f"base {base:.4f}, ocd {ocd:.4f}, regressor {reg:.4f} ms"


# ---------------------------------------------------------------- 41.8: smaller
@drill("41.8", "ocd score-layers with layers.force naming the layer the scores rank second")
def _(w):
    scores = json.loads((w.root / "artifacts/layers/scores.json").read_text())
    forced = scores["runner_up"]
    run = w.ocd("score-layers", "--no-progress", "--out", w.root / "forced", params={"layers": {"force": forced}})
    line = next((line for line in run.stdout.splitlines() if line.startswith("selected")), last_line(run))
    expected = f"selected {forced} (forced by layers.force; the scores rank {scores['selected']} first)"
    return run.returncode == 0 and line.startswith(expected), f"exit {run.returncode}: {line[:160]}"


@drill("41.8", "ocd predict with a base model.pt that is a legacy raw pickle")
def _(w):
    import pickle

    legacy = w.root / "legacy"
    shutil.copytree(w.root / "artifacts/base", legacy)
    before = (legacy / "model.pt").read_bytes()
    (legacy / "model.pt").write_bytes(pickle.dumps({"fc1.weight": [0.0]}, protocol=2))
    shown = (legacy / "model.pt").read_bytes()
    ok_line = refused(w.ocd("predict", _npy(w.root / "rows8.npy", np.zeros((1, 64))), "--base", legacy))
    return on_disk(ok_line, file_kept=(legacy / "model.pt").read_bytes() == shown and shown != before)


@drill("41.8", "ocd overfit --out a symbolic link to a folder of the user's")
def _(w):
    target = w.root / "photos"
    target.mkdir(exist_ok=True)
    (target / "cat.jpg").write_bytes(b"meow")
    link = w.root / "link.zarr"
    if not link.is_symlink():
        link.symlink_to(target)
    return on_disk(refused(w.ocd("overfit", "--no-progress", "--out", link, "--metrics", w.root / "l.json"),
                           "symbolic link"), users_file_kept=(target / "cat.jpg").exists(), link_kept=link.is_symlink())


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _npy(path: Path, arr) -> Path:
    np.save(path, arr)
    return path


def _idx(folder: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """IDX files as MNIST ships them (the mnist_idx data set reads a folder of them)."""
    folder.mkdir(exist_ok=True)
    for stem, arr in (("train-images-idx3-ubyte", x), ("train-labels-idx1-ubyte", y),
                      ("t10k-images-idx3-ubyte", x[:20]), ("t10k-labels-idx1-ubyte", y[:20])):
        header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        (folder / stem).write_bytes(header + arr.astype(np.uint8).tobytes())
    return folder


def _pngs(folder: Path, sides: list[int]) -> Path:
    from PIL import Image

    folder.mkdir(exist_ok=True)
    for i, side in enumerate(sides):
        Image.new("L", (side, side)).save(folder / f"{i}.png")
    return folder


def _emptied(w) -> Path:
    store = w.root / "nojson.zarr"
    shutil.copytree(w.root / "artifacts/deltas.zarr", store)
    (store / "zarr.json").write_text("")
    return store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=None, help="the project copy (kept); a temporary one by default")
    ap.add_argument("--only", nargs="+", default=None, help="drills to run: an issue (41) or an item (30.2)")
    args = ap.parse_args()
    root = args.work or Path(tempfile.mkdtemp(prefix="ocd-drills-"))
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if (root / "artifacts/eval/metrics.json").exists():  # a kept work folder: this checkout's code, its artifacts
        for name in ("ocd", "stages", "presets"):
            shutil.rmtree(root / name)
            shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"), symlinks=True)
        w = Work(root)
    else:
        w = setup(root)
    print(f"the copy: {root}, `dvc repro` in {time.perf_counter() - start:.0f} s", flush=True)
    rows = []
    for item, what, fn in DRILLS:
        if args.only and not any(item == o or item.split(".")[0] == o for o in args.only):
            continue
        began = time.perf_counter()
        try:
            ok, line = fn(w)
        except Exception as exc:  # a drill that breaks is a failure, shown as such
            ok, line = False, f"the drill raised {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        verdict = "SKIP" if ok is None else "PASS" if ok else "FAIL"
        rows.append((item, what, verdict, line))
        print(f"[{verdict}] {item}: {what}: {line} ({time.perf_counter() - began:.0f} s)", flush=True)
    print("\n| item | drill | result | observed |\n|---|---|---|---|")
    for item, what, verdict, line in rows:
        print(f"| {item} | {what} | {verdict} | {line.replace('|', '/')} |")
    print(f"\n{sum(r[2] == 'PASS' for r in rows)} pass, {sum(r[2] == 'FAIL' for r in rows)} fail, "
          f"{sum(r[2] == 'SKIP' for r in rows)} skipped, in {time.perf_counter() - start:.0f} s; work in {root}")
    sys.exit(1 if any(r[2] == "FAIL" for r in rows) else 0)


if __name__ == "__main__":
    main()
