"""The trust drills of issue 30, rerunnable: each tries what a careless or hostile
user would, and the table says PASS or FAIL with the line the user saw.

    .venv/bin/python benchmarks/drills.py [--work DIR] [--only N ...]

Works in a fresh copy of the project (tiny params: digits and an MLP, one torch
thread per process), runs the real `ocd` commands and prints, for every drill,
its item number in the issue, what it tries, PASS/FAIL/SKIP and the observed
line. About 4 minutes on 2 cores. Every drill has a unit or end-to-end test
beside it in tests/; this script is the view a maintainer reruns as a whole.
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
COPY = ["dvc.yaml", "params.yaml", ".dvcignore", "ocd", "stages", "data", "presets"]
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
DRILLS = []


def drill(item: str, what: str):
    def wrap(fn):
        DRILLS.append((item, what, fn))
        return fn
    return wrap


class Work:
    def __init__(self, root: Path):
        self.root = root
        self.env = dict(os.environ, DVC_NO_ANALYTICS="1", OCD_THREADS="1", PYTHONPATH=str(root),
                        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")

    def ocd(self, *args, params: dict | None = None, check=False, timeout=600):
        argv = [sys.executable, "-m", "stages", *map(str, args)]
        if params is not None:
            argv += ["--params", str(self.params(params))]
        return subprocess.run(argv, cwd=self.root, env=self.env, capture_output=True, text=True, check=check,
                              timeout=timeout)

    def params(self, overrides: dict) -> Path:
        raw = yaml.safe_load((self.root / "params.yaml").read_text())
        for section, values in overrides.items():
            raw.setdefault(section, {}).update(values)
        path = Path(tempfile.mkstemp(suffix=".yaml", dir=self.root)[1])
        path.write_text(yaml.safe_dump(raw))
        return path


def one_line(run) -> tuple[bool, str]:
    """A refusal as a user should see it: exit code 1 or 2, one line on stderr, no traceback."""
    err = [line for line in run.stderr.strip().splitlines() if line.strip()]
    ok = run.returncode in (1, 2) and len(err) == 1 and "Traceback" not in run.stderr
    shown = err[0] if len(err) == 1 else f"{len(err)} lines on stderr: {' | '.join(err[-2:])[:200]}"
    return ok, f"exit {run.returncode}: {shown}"


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def setup(root: Path) -> Work:
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, root / name)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in TINY.items():
        raw.setdefault(section, {}).update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    w = Work(root)
    for stage in ("train-base", "train-ensemble", "score-layers", "overfit", "train-diffusion", "train-scale",
                  "train-regressor", "evaluate"):
        w.ocd(stage, "--no-progress", check=True)
    return w


# ---------------------------------------------------------------- 1
@drill("1", "ocd overfit --out a folder holding a file of the user's")
def _(w):
    d = w.root / "thesis"
    d.mkdir(exist_ok=True)
    (d / "thesis.txt").write_text("x")
    ok, line = one_line(w.ocd("overfit", "--no-progress", "--out", d))
    return ok and (d / "thesis.txt").exists(), line + ("" if (d / "thesis.txt").exists() else " (FILE GONE)")


# ---------------------------------------------------------------- 2
@drill("2", "a second overfit on the store while another writes it")
def _(w):
    slow = w.params({"overfit": {"steps": 3000, "batch_size": 16}})
    out = w.root / "shared.zarr"
    first = subprocess.Popen([sys.executable, "-m", "stages", "overfit", "--no-progress", "--params", str(slow),
                              "--out", str(out), "--metrics", str(w.root / "a.json")], cwd=w.root, env=w.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (out / "zarr.json").exists():
            time.sleep(0.1)
        second = w.ocd("overfit", "--no-progress", "--out", out, "--metrics", w.root / "b.json",
                       params={"overfit": {"lr": 0.001}})
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    ok, line = one_line(second)
    return ok and "another run is writing" in line, line


@drill("2", "kill -9 of a compute.nproc=2 overfit's process group: do its ranks die?")
def _(w):
    out = w.root / "ranks.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "stages", "overfit", "--no-progress", "--out", str(out),
                             "--metrics", str(w.root / "r.json"), "--params",
                             str(w.params({"compute": {"nproc": 2}, "overfit": {"steps": 2000, "batch_size": 16}}))],
                            cwd=w.root, env=w.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
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


# ---------------------------------------------------------------- 3
@drill("3", "two valid train/delta chunk files swapped, then ocd inspect --verify")
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


# ---------------------------------------------------------------- 4
@drill("4", "two train-base runs: model.pt md5s")
def _(w):
    for out in ("b1", "b2"):
        w.ocd("train-base", "--no-progress", "--out", w.root / out, check=True)
    one, two = md5(w.root / "b1/model.pt"), md5(w.root / "b2/model.pt")
    return one == two, f"{one} / {two}"


@drill("4", "two runs of the model stages: diffusion.pt, scale.pt, regressor.pt md5s")
def _(w):
    for out in ("d1", "d2"):
        for stage in ("train-diffusion", "train-scale", "train-regressor"):
            w.ocd(stage, "--no-progress", "--out", w.root / out, check=True)
    names = ("diffusion.pt", "scale.pt", "regressor.pt")
    same = [md5(w.root / "d1" / n) == md5(w.root / "d2" / n) for n in names]
    return all(same), ", ".join(f"{n} {'equal' if s else 'DIFFER'}" for n, s in zip(names, same))


# ---------------------------------------------------------------- 5
@drill("5", "evaluate.eta: .nan")
def _(w):
    return one_line(w.ocd("evaluate", "--no-progress", "--out", w.root / "e",
                          params={"evaluate": {"eta": float("nan")}}))


@drill("5", "diffusion.grad_clip: .nan")
def _(w):
    return one_line(w.ocd("train-diffusion", "--no-progress", "--out", w.root / "d",
                          params={"diffusion": {"grad_clip": float("nan")}}))


@drill("5", "a California CSV cut mid-row")
def _(w):
    lines = (ROOT / "data/california_housing/housing.csv").read_text().splitlines()[:300]
    cut = w.root / "cut.csv"
    cut.write_text("\n".join(lines) + "\n" + lines[-1][: len(lines[-1]) // 2])
    return one_line(w.ocd("train-base", "--no-progress", "--out", w.root / "c",
                          params={"data": {"name": "california", "path": str(cut)}}))


# ---------------------------------------------------------------- 6
@drill("6", "a data set of identical images")
def _(w):
    from ocd.data.images import write_idx

    x = np.zeros((60, 28, 28), np.uint8)
    y = np.arange(60, dtype=np.uint8) % 10
    folder = w.root / "flat_idx"
    folder.mkdir(exist_ok=True)
    for stem, arr in (("train-images-idx3-ubyte", x), ("train-labels-idx1-ubyte", y),
                      ("t10k-images-idx3-ubyte", x[:20]), ("t10k-labels-idx1-ubyte", y[:20])):
        write_idx(folder / stem, arr)
    return one_line(w.ocd("train-base", "--no-progress", "--out", w.root / "flat",
                          params={"data": {"name": "mnist_idx", "path": str(folder)}, "model": {"name": "mlp"}}))


@drill("6", "overfit on a layer whose units never fire (fc1 dead: zero weight, bias -1)")
def _(w):
    import torch

    from ocd.models import base

    trained = base.load(w.root / "artifacts/base")
    model = trained.model.cpu()
    with torch.no_grad():
        model.fc1.weight.zero_()
        model.fc1.bias.fill_(-1.0)
    dead = w.root / "dead"
    base.save(dead, model, trained.spec, **{k: v for k, v in trained.meta.items() if k not in ("spec", "sha256")})
    w.ocd("score-layers", "--no-progress", "--base", dead, "--out", dead / "layers",
          params={"layers": {"force": "fc1"}}, check=True)
    return one_line(w.ocd("overfit", "--no-progress", "--base", dead, "--scores", dead / "layers/scores.json",
                          "--out", dead / "d.zarr", "--metrics", dead / "m.json"))


# ---------------------------------------------------------------- 7
@drill("7", "every calibration row right: the fitted temperature")
def _(w):
    import torch

    from ocd.calibration import choose_temperature
    from ocd.tasks import get_task

    task = get_task("classification")
    g = torch.Generator().manual_seed(0)
    logits = 5 * torch.randn(91, 2, generator=g, dtype=torch.float64)
    t, note = choose_temperature(task.per_sample_loss, logits, logits.argmax(-1), task.with_temperature)
    return t == 1.0, note


# ---------------------------------------------------------------- 8
@drill("8", "diffusion.holdout on 2 store chunks: what is held out")
def _(w):
    run = w.ocd("train-diffusion", "--no-progress", "--out", w.root / "h", check=True)
    line = next((line for line in run.stdout.splitlines() if line.startswith("held out")), "")
    return "whole chunks" in line, line


# ---------------------------------------------------------------- 9
def _refusal(item, what, *args, params=None, prepare=None):
    @drill(item, what)
    def run(w):
        extra = prepare(w) if prepare else ()
        return one_line(w.ocd(*args, *extra, params=params))
    return run


_refusal("9", "data.seed: -1", "train-base", "--no-progress", "--out", "x", params={"data": {"seed": -1}})
_refusal("9", "a params file that is not UTF-8", "train-base", "--no-progress", "--out", "x",
         prepare=lambda w: ("--params", _write(w.root / "latin1.yaml",
                                               "base:\n  lr: 0.001 # \xe9t\xe9\n".encode("latin-1"))))
_refusal("9", "--params naming a folder", "train-base", "--no-progress", "--out", "x", "--params", "ocd")
_refusal("9", "diffusion.epochs: .inf", "train-diffusion", "--no-progress", "--out", "x",
         params={"diffusion": {"epochs": float("inf")}})
_refusal("9", "data.max_train: 1", "train-base", "--no-progress", "--out", "x", params={"data": {"max_train": 1}})
_refusal("9", "an empty California CSV", "train-base", "--no-progress", "--out", "x",
         prepare=lambda w: ("--params", str(w.params({"data": {"name": "california",
                                                               "path": str(_write(w.root / "e.csv", b""))}}))))
_refusal("9", "ocd predict on a (0, 1, 8, 8) array", "predict",
         prepare=lambda w: (str(_npy(w.root / "empty.npy", np.zeros((0, 1, 8, 8)))),))
_refusal("9", "ocd predict on PNGs of two sizes", "predict", prepare=lambda w: (str(_pngs(w.root / "two", [8, 9])),))
_refusal("9", "ocd predict on a 20000x20000 PNG", "predict",
         prepare=lambda w: (str(_pngs(w.root / "huge", [20000])),))
_refusal("9", "train-diffusion on a store whose zarr.json is empty", "train-diffusion", "--no-progress",
         "--out", "x", prepare=lambda w: ("--store", str(_emptied(w))))
_refusal("9", "diffusion.lr: 1e30", "train-diffusion", "--no-progress", "--out", "x",
         params={"diffusion": {"lr": 1e30}})
_refusal("9", "a user error on compute.nproc: 2", "train-diffusion", "--no-progress", "--store", "none.zarr",
         params={"compute": {"nproc": 2}})


@drill("9", "plain ocd inspect on a damaged store")
def _(w):
    store = w.root / "damaged.zarr"
    shutil.copytree(w.root / "artifacts/deltas.zarr", store)
    chunk = next((store / "train/rho/c").iterdir())
    chunk.write_bytes(chunk.read_bytes()[:-3] + b"xyz")
    return one_line(w.ocd("inspect", store))


@drill("9", "a disk that fills during overfit (a 2 MB tmpfs)")
def _(w):
    if os.geteuid() != 0:
        return None, "needs root to mount a small tmpfs"
    mount = Path(tempfile.mkdtemp())
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)]).returncode:
        return None, "could not mount a tmpfs"
    try:
        return one_line(w.ocd("overfit", "--no-progress", "--out", mount / "s.zarr", "--metrics", mount / "m.json"))
    finally:
        subprocess.run(["umount", str(mount)])


# ---------------------------------------------------------------- 10
@drill("10", "ocd inspect on a Zarr group that is not a store")
def _(w):
    import zarr

    zarr.open_group(w.root / "foreign.zarr", mode="w").attrs["x"] = 1
    ok, line = one_line(w.ocd("inspect", w.root / "foreign.zarr"))
    return ok and "recomputes" not in line, line


_refusal("10", "ocd preset ../../x", "preset", "../../etc/x")
_refusal("10", "a California data.path that is not a .csv", "train-base", "--no-progress", "--out", "x",
         params={"data": {"name": "california", "path": "/tmp"}})


@drill("10", "a killed writer's 0-byte .diffusion.pt.PID.tmp, then train-diffusion")
def _(w):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = w.root / "t"
    out.mkdir(exist_ok=True)
    stale = out / f".diffusion.pt.{dead.pid}.tmp"
    stale.write_bytes(b"")
    w.ocd("train-diffusion", "--no-progress", "--out", out, check=True)
    return not stale.exists(), f"{stale.name} {'left' if stale.exists() else 'removed'}"


@drill("10", "ocd predict on a table (diabetes, MLP)")
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
    return run.returncode == 0, (run.stdout.strip().splitlines() or [run.stderr.strip()[-150:]])[0]


@drill("10", "the results table's ms/sample: does OCD cost at least the base pass?")
def _(w):
    m = json.loads((w.root / "artifacts/eval/metrics.json").read_text())
    base, ocd, reg = (m[r]["ms_per_sample"] for r in ("base", "ocd", "regressor"))
    return ocd >= base and reg >= base, f"base {base:.4f}, ocd {ocd:.4f}, regressor {reg:.4f} ms"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _npy(path: Path, arr) -> Path:
    np.save(path, arr)
    return path


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
    ap.add_argument("--only", nargs="+", default=None, help="item numbers to run, e.g. 2 9")
    args = ap.parse_args()
    root = args.work or Path(tempfile.mkdtemp(prefix="ocd-drills-"))
    root.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    start = time.perf_counter()
    if (root / "artifacts/eval/metrics.json").exists():  # a kept work folder: this checkout's code, its artifacts
        for name in ("ocd", "stages", "presets"):
            shutil.rmtree(root / name)
            shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        w = Work(root)
    else:
        w = setup(root)
    rows = []
    for item, what, fn in DRILLS:
        if args.only and item not in args.only:
            continue
        try:
            ok, line = fn(w)
        except Exception as exc:  # a drill that breaks is a failure, shown as such
            ok, line = False, f"the drill raised {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        verdict = "SKIP" if ok is None else "PASS" if ok else "FAIL"
        rows.append((item, what, verdict, line))
        print(f"[{verdict}] {item}: {what}: {line}", flush=True)
    print("\n| item | drill | result | observed |\n|---|---|---|---|")
    for item, what, verdict, line in rows:
        print(f"| {item} | {what} | {verdict} | {line.replace('|', '/')} |")
    print(f"\n{sum(r[2] == 'PASS' for r in rows)} pass, {sum(r[2] == 'FAIL' for r in rows)} fail, "
          f"{sum(r[2] == 'SKIP' for r in rows)} skipped, in {time.perf_counter() - start:.0f} s; work in {root}")
    sys.exit(1 if any(r[2] == "FAIL" for r in rows) else 0)


if __name__ == "__main__":
    main()
