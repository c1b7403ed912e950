"""Run the pipeline for several seeds as DVC experiments and aggregate them.

    .venv/bin/python scripts/seeds.py run --tag mnist5k --seeds 0 1 2 [--jobs 2] [-S data.name=digits ...]
    .venv/bin/python scripts/seeds.py table docs/runs/mnist5k

    .venv/bin/python scripts/seeds.py compare docs/runs/mnist5k-rank1 docs/runs/mnist5k-matrix
    .venv/bin/python scripts/seeds.py pick docs/runs/pick-mnist5k-epochs1 docs/runs/pick-california ...
    .venv/bin/python scripts/seeds.py record --tag mnist5k --seed 3   # after a plain `dvc repro` of seed 3

`run` queues one DVC experiment per seed (`dvc exp run --queue`, named
TAG-seedN), from the committed pipeline, with base.seed, diffusion.seed,
scale.seed and evaluate.seed set to that seed (the data split and the layer
scores' draws stay fixed; with --draws data.seed too: a few-shot set's
training sentences are drawn anew), plus any extra `-S` overrides. `dvc queue
start -j N` then runs them in DVC's own temporary copies, N at a time (by
default as many as the cores, each with cores / N torch threads), so the
workspace (params.yaml, dvc.lock, artifacts/) is never touched. Each finished
experiment stays a git ref (`dvc exp show`, `dvc exp apply TAG-seedN`), and its
metrics, read from that ref, are copied to docs/runs/TAG/seedN.json. `table`
prints every row's mean ± SD over the seeds (sample SD), with the paired change
against the base model, as markdown for docs/RESULTS.md. `compare` puts several
runs (e.g. the two diffusion targets) side by side: the held-out (validation)
cosines that choose between them, then the paired test changes.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from ocd.rows import SERVED
from ocd.rows import kinds as row_kinds

# the keys of an evaluate metrics.json that are not rows of the table
NOT_ROWS = {"skipped", "chosen", "denoiser"}

SEEDED = ("base.seed", "diffusion.seed", "scale.seed", "evaluate.seed")
METRICS = {"eval": "artifacts/eval/metrics.json", "diffusion": "artifacts/diffusion/metrics.json",
           "layers": "artifacts/layers/scores.json", "overfit": "artifacts/overfit/metrics.json"}
# merged into the record's "diffusion" entry, as the one train_diffusion stage wrote them before the split
MODEL_METRICS = ("artifacts/diffusion/scale_metrics.json", "artifacts/diffusion/regressor_metrics.json")


# The venv's own dvc, beside this interpreter: README runs the script as .venv/bin/python with no
# activated venv, so `dvc` alone is not on PATH.
DVC = str(Path(sys.executable).parent / "dvc")


def _dvc(*args: str, env: dict | None = None, log: Path | None = None) -> str:
    """Run dvc, its output captured (or written to ``log``); exit with its error if it fails."""
    env = dict(os.environ if env is None else env)
    # DVC's queue starts its workers as `dvc` from PATH: the venv's bin goes first
    env["PATH"] = os.pathsep.join([str(Path(DVC).parent), env.get("PATH", "")])
    if log is None:
        done = subprocess.run([DVC, *args], capture_output=True, text=True, env=env)
        out, err = done.stdout, done.stderr
    else:
        with open(log, "w") as fh:
            done = subprocess.run([DVC, *args], stdout=fh, stderr=subprocess.STDOUT, env=env)
        out = err = log.read_text()
    if done.returncode:
        sys.exit(f"dvc {' '.join(args)} failed (exit {done.returncode}): {err.strip()[-1500:]}")
    return out


def run(tag: str, seeds: list[int], overrides: list[str], draws: bool = False, jobs: int = 0,
        poll: float = 10.0) -> None:
    out = Path("docs/runs") / tag
    changed = subprocess.run(["git", "status", "--porcelain", "--", "params.yaml"], capture_output=True, text=True)
    if changed.stdout.strip():  # a queued experiment would carry the working copy's edits into every seed
        sys.exit("params.yaml has uncommitted changes, which every queued seed would include: commit them, or "
                 "pass them as -S overrides (`git diff params.yaml` shows them)")
    seeded = SEEDED + (("data.seed",) if draws else ())
    names = {seed: f"{tag}-seed{seed}" for seed in seeds}
    for seed, name in names.items():
        sets = [a for key in seeded for a in ("-S", f"{key}={seed}")] + [a for o in overrides for a in ("-S", o)]
        _dvc("exp", "run", "--queue", "--name", name, *sets)
    cores = os.cpu_count() or 1
    jobs = jobs or max(1, min(len(seeds), cores))
    env = dict(os.environ)
    env.setdefault("OCD_THREADS", str(max(1, cores // jobs)))  # side by side, each process its share
    start = time.perf_counter()
    # the workers inherit `dvc queue start`'s output: captured, it would be waited on until the last
    # worker exits, and a worker told to shut down while it ran a seed was seen to stay, idle, for good
    # (the run hung after both seeds had succeeded). Its output goes to a file; the polling below ends
    # the run, and `dvc queue stop` sends any worker left home.
    log = Path(".dvc/tmp/seeds-queue-start.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    _dvc("queue", "start", "-j", str(jobs), env=env, log=log)
    print(f"queued {', '.join(names.values())}; running {jobs} at a time (`dvc queue status` shows them)",
          flush=True)
    pending, idle = set(names.values()), 0
    while pending:
        time.sleep(poll)
        status = _queue_status()
        # DVC's worker leaves once the queue is empty, while it still runs the last seed: no worker
        # with none of ours running is a stall, no worker with one running is not
        running = any(status.get(name) == "Running" for name in pending)
        idle = idle + 1 if status.get("workers") == "none" and not running else 0
        if idle >= max(3, round(60 / poll)):
            sys.exit(f"DVC's queue has no worker running and {', '.join(sorted(pending))} still waiting: "
                     "`dvc queue start` did not start one (.dvc/tmp/exps/celery/*.out says why)")
        for name in sorted(pending):
            state = status.get(name)
            if state in ("Success", "Failed"):
                pending.discard(name)
                print(f"{name}: {state} after {time.perf_counter() - start:.0f} s", flush=True)
    failed = [name for name in names.values() if _queue_status().get(name) != "Success"]
    _dvc("queue", "stop")
    refs = _experiment_refs()
    for seed, name in names.items():
        if name in refs and name not in failed:
            record(out, seed, overrides, read=lambda path, sha=refs[name]: _git_show(sha, path))
    print(f"{len(names) - len(failed)} of {len(names)} seeds in {time.perf_counter() - start:.0f} s "
          f"with {jobs} at a time", flush=True)
    if failed:
        sys.exit(f"failed: {', '.join(failed)} (`dvc queue logs NAME` shows why)")


def _queue_status() -> dict[str, str]:
    """Experiment name -> its state in DVC's queue (Queued, Running, Success, Failed); "workers":
    "none" when no worker is running."""
    got = {}
    for line in _dvc("queue", "status").splitlines():
        words = line.split()
        if len(words) >= 3 and words[-1] in ("Queued", "Running", "Success", "Failed"):
            got[words[1]] = words[-1]
        elif line.startswith("Worker status: 0 active, 0 idle"):
            got["workers"] = "none"
    return got


def _experiment_refs() -> dict[str, str]:
    """Experiment name -> the commit DVC keeps it as (refs/exps/.../NAME)."""
    shown = subprocess.run(["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"],
                           capture_output=True, text=True, check=True).stdout
    return {ref.rsplit("/", 1)[-1]: sha for sha, ref in (line.split() for line in shown.splitlines())}


def _git_show(sha: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{sha}:{path}"], capture_output=True, text=True, check=True).stdout


def _workspace(path: str) -> str:
    return Path(path).read_text()


def record(out: Path, seed: int, overrides: list[str], read: Callable[[str], str] = _workspace) -> None:
    """Copy a run's metrics to OUT/seedN.json: the workspace's (the run just made), or
    through ``read`` an experiment's, from the commit DVC keeps it as."""
    out.mkdir(parents=True, exist_ok=True)
    got = {name: json.loads(read(path)) for name, path in METRICS.items()}
    for extra in MODEL_METRICS:  # the scale model's and the regressor's stages write their own
        for key, value in json.loads(read(extra)).items():
            if isinstance(value, dict) and isinstance(got["diffusion"].get(key), dict):
                got["diffusion"][key] = {**got["diffusion"][key], **value}
            else:
                got["diffusion"].setdefault(key, value)
    got["overrides"] = overrides
    # each row's note (e.g. the fitted temperature) from the results table
    got["notes"] = {row["row"]: row["note"] for row in csv.DictReader(io.StringIO(read("artifacts/eval/results.csv")))}
    got["layers"] = {k: got["layers"][k] for k in ("selected", "runner_up", "layers")}
    (out / f"seed{seed}.json").write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    print(f"seed {seed}: {out / f'seed{seed}.json'}", flush=True)


def fmt(values: list[float], digits: int = 4) -> str:
    if not values:
        return ""
    if len(values) == 1:  # one seed has no spread to report: no "± 0"
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _runs(folder: Path, need: tuple[str, ...] = ()) -> list[dict]:
    """The seed records of one folder; a damaged record, or one without the base
    model's ``need`` metrics (e.g. recorded before the calibration rows), is named."""
    runs = []
    for path in sorted(folder.glob("seed*.json")):
        try:
            run = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            sys.exit(f"{path} is not a readable run record ({err}); rerun that seed")
        base = _get(run, ("eval", "base"))
        missing = [k for k in need if not isinstance(base, dict) or k not in base]
        if base is None or missing:
            what = "no eval.base row" if base is None else f"no eval.base {', '.join(missing)}"
            sys.exit(f"{path} has {what}: it was recorded by an older pipeline or by hand; rerun that seed")
        runs.append(run)
    if not runs:
        sys.exit(f"no seed*.json in {folder}")
    return runs


def table_rank(name: str) -> tuple[int, int, str]:
    """A row's place in the results table's order (ocd.rows): the position of the longest kind
    it starts with, then its number (tent_1 < tent_10), then its name."""
    order = [kind for kind, _ in row_kinds()]
    hits = [(len(p), i) for i, p in enumerate(order) if name == p or name.startswith(p + "_")]
    tail = name.rsplit("_", 1)[-1]
    return (max(hits)[1] if hits else 99, int(tail) if tail.isdigit() else 0, name)


def table(folder: Path) -> str:
    runs = _runs(folder)
    rows = sorted({name for r in runs for name in r["eval"]} - NOT_ROWS, key=table_rank)
    loss_first = ["ce", "rmse", "mse", "si_sdri", "acc"]  # the first is the paired change's metric
    extras = ("cosine", "scale_error", "ms_per_sample")
    # the base metrics every seed has (a seed recorded before the calibration rows has no ECE)
    metrics = sorted((k for k in runs[0]["eval"]["base"] if k not in extras and all(k in r["eval"]["base"] for r in runs)),
                     key=lambda k: loss_first.index(k) if k in loss_first else 99)
    head = " | ".join(f"test {m}" for m in metrics)
    paired = [metrics[0]] + (["acc"] if "acc" in metrics else [])  # the loss, and accuracy where there is one
    lines = [f"| row | {head} | " + " | ".join(f"Δ{m} vs base (paired)" for m in paired)
             + " | cosine to oracle delta | scale error | ms per test sample |",
             "|---" * (len(metrics) + 4 + len(paired)) + "|"]
    for row in rows:
        have = [r for r in runs if row in r["eval"]]  # a seed may have switched a row off
        cells = [fmt([r["eval"][row][m] for r in have if m in r["eval"][row]]) for m in metrics]
        delta = " | ".join(fmt([r["eval"][row][m] - r["eval"]["base"][m] for r in have if m in r["eval"][row]])
                           for m in paired)
        extra = [fmt([r["eval"][row][k] for r in have if r["eval"][row].get(k) is not None], digits)
                 for k, digits in zip(extras, (4, 4, 2))]
        name = row if len(have) == len(runs) else f"{row} ({len(have)} of {len(runs)} seeds)"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {delta} | " + " | ".join(extra) + " |")
    def diag(*keys, digits=4):
        return fmt([v for r in runs if (v := _get(r, ("diffusion", *keys))) is not None], digits)

    lines.append("")
    held = (f"held-out (train rows) sampled-vs-true cosine: diffusion {diag('diffusion', 'cosine_mean')}, "
            f"regressor {diag('regressor', 'cosine_mean')}, rank-one ceiling {diag('rank1_ceiling_cosine')}"
            if diag('diffusion', 'cosine_mean') else "no held-out rows (diffusion.holdout 0)")
    lines.append(f"{len(runs)} seeds; {held}; training seconds: diffusion "
                 f"{diag('seconds', 'diffusion', digits=0)}, regressor {diag('seconds', 'regressor', digits=0)}; "
                 f"selected layer per seed: {[_get(r, ('layers', 'selected')) for r in runs]}")
    return "\n".join(lines)


def compare(folders: list[Path]) -> str:
    lines = ["| run | held-out cosine: diffusion | held-out cosine: regressor | rank-one ceiling "
             "| diffusion train s | Δloss ocd | Δloss ocd_ensemble | Δloss regressor | cosine to oracle: ocd "
             "| cosine to oracle: regressor | ms/sample ocd | ms/sample regressor |", "|---" * 12 + "|"]
    for folder in folders:
        runs = _runs(folder)
        loss = next(m for m in ("ce", "rmse", "mse") if m in runs[0]["eval"]["base"])
        ens = next(n for n in runs[0]["eval"] if n.startswith("ocd_ensemble"))

        def diag(*keys, digits=3):
            return fmt([v for r in runs if (v := _get(r["diffusion"], keys)) is not None], digits)

        def ev(row, key, digits=4):
            return fmt([v for r in runs if (v := _get(r["eval"], (row, key))) is not None], digits)

        def change(row):
            return fmt([r["eval"][row][loss] - r["eval"]["base"][loss] for r in runs if row in r["eval"]])

        lines.append(f"| {folder.name} ({len(runs)} seeds, Δ{loss}) | {diag('diffusion', 'cosine_mean')} "
                     f"| {diag('regressor', 'cosine_mean')} | {diag('rank1_ceiling_cosine')} "
                     f"| {diag('seconds', 'diffusion', digits=0)} | {change('ocd')} | {change(ens)} "
                     f"| {change('regressor')} | {ev('ocd', 'cosine', 3)} | {ev('regressor', 'cosine', 3)} "
                     f"| {ev('ocd', 'ms_per_sample', 2)} | {ev('regressor', 'ms_per_sample', 2)} |")
    return "\n".join(lines)


# the base-model-fit study's rows (rows of ocd.rows: a test checks)
STUDY_ROWS = ("temperature", "ocd", "ocd_temperature", "regressor", "nn_input", "deep_ensemble")


def _temperature(note: str) -> float | None:
    match = re.search(r"T = ([0-9.]+)", note or "")
    return float(match.group(1)) if match else None


def study(folders: list[Path], png: Path | None) -> str:
    """Per setting (one folder of seeds each): the base model's CE, ECE and fitted
    temperature, and the paired CE change of each row against the base model."""
    lines = ["| setting | base test CE | base ECE | fitted T | " + " | ".join(f"Δce {r}" for r in STUDY_ROWS)
             + " | Δ of OCD: base-right part | base-wrong part |", "|---" * (len(STUDY_ROWS) + 6) + "|"]
    points = []
    for folder in folders:
        runs = _runs(folder, need=("ce", "ece", "loss_base_right", "loss_base_wrong"))

        def name_of(r, row):
            return next((n for n in r["eval"] if n == row or (row == "deep_ensemble" and n.startswith(row))), None)

        def change(row, key="ce"):
            """Over the runs that have the row (a run may switch one off, e.g. evaluate.deep_ensemble false)."""
            return [r["eval"][n][key] - r["eval"]["base"][key] for r in runs if (n := name_of(r, row)) is not None]

        def cell(row, key="ce"):
            values = change(row, key)
            return fmt(values) + (f" ({len(values)} of {len(runs)})" if values and len(values) < len(runs) else "")

        temps = [t for r in runs if (t := _temperature(r.get("notes", {}).get("temperature"))) is not None]
        base_ce = [r["eval"]["base"]["ce"] for r in runs]
        base_ece = [r["eval"]["base"]["ece"] for r in runs]
        lines.append(f"| {folder.name} ({len(runs)} seed{'s' * (len(runs) > 1)}) | {fmt(base_ce)} | {fmt(base_ece)} | "
                     f"{fmt(temps, 3)}{'' if len(temps) == len(runs) else f' ({len(temps)} seeds)'} | "
                     + " | ".join(cell(row) or "not run" for row in STUDY_ROWS)
                     + f" | {cell('ocd', 'loss_base_right')} | {cell('ocd', 'loss_base_wrong')} |")
        points.append((folder.name, statistics.mean(temps) if temps else None,
                       {row: statistics.mean(values) for row in STUDY_ROWS if (values := change(row))}))
    if png is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker

        fig, ax = plt.subplots(figsize=(8.5, 4.5))
        shown = [(n, t, d) for n, t, d in points if t is not None]
        for row, marker in zip(STUDY_ROWS, "osD^vx"):
            have = [(t, d[row]) for _, t, d in shown if row in d]
            ax.scatter([t for t, _ in have], [v for _, v in have], label=row, marker=marker)
        for i, (n, t, d) in enumerate(sorted(shown, key=lambda p: p[1])):
            # neighbours in T alternate above and below their point, so close labels do not overlap
            ax.annotate(n.split("study-")[-1], (t, d.get("ocd", 0.0)), fontsize=7,
                        xytext=(3, 4 if i % 2 == 0 else -10), textcoords="offset points")
        # T and the changes span decades where a base model is far off (T 4.4, ΔCE -0.48 on
        # Fashion-MNIST at 30 epochs): log T, and a y axis linear within +-0.01, log beyond
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=0.01)
        lo, hi = min((t for _, t, _ in shown), default=1), max((t for _, t, _ in shown), default=1)
        ax.set_xticks([t for t in (0.5, 0.7, 0.8, 0.9, 1, 1.2, 1.5, 2, 3, 4, 6, 8) if lo / 1.1 <= t <= hi * 1.1])
        ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.margins(x=0.1, y=0.08)
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(1, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("fitted temperature of the base model (> 1: overconfident, < 1: underconfident)")
        ax.set_ylabel("paired test CE change vs base (mean over seeds)")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
        fig.tight_layout()
        fig.savefig(png, dpi=120)
    return "\n".join(lines)


# `pick`'s rows: those ocd predict can serve but the base model, and the nearest neighbour
PICK_ROWS = (*(name for name in SERVED if name != "base"), "nn_input")


def _beyond_noise(values: list[float]) -> bool:
    """The paired mean is more than two standard errors from 0 (with 3 seeds: a rough screen, said so);
    a change of exactly 0 in every seed (a step size of 0) is none."""
    if len(values) < 2 or not any(values):
        return False
    return abs(statistics.mean(values)) > 2 * statistics.stdev(values) / len(values) ** 0.5


def pick(folders: list[Path], against: str = "temperature") -> str:
    """Which row should a user pick? Per setting (a folder of seeds): each row's paired change of
    the test loss against the base model and against ``against`` (the temperature-scaled base model; * where
    beyond noise: |mean| above two standard errors), the step sizes and retrieval the calibration
    rows chose, the test cosine to the oracle's delta, and the cost per test sample; last, per
    row over all the folders, how often it lost to the base model on test."""
    head = ["| setting | loss | base | " + " | ".join(f"Δ {r}" for r in PICK_ROWS) + " |",
            "|---" * (len(PICK_ROWS) + 3) + "|"]
    others = [r for r in PICK_ROWS if r != against]
    vs_t = ["| setting | " + " | ".join(f"Δ {r} vs {against}" for r in others) + " |",
            "|---" * (len(others) + 1) + "|"]
    diag = ["| setting | λ ocd | λ regressor | λ knn | knn (space, k, weighting) per seed | cosine to oracle: "
            "ocd / regressor / nn_input / knn | ms per test sample: base / ocd / regressor / knn |", "|---" * 7 + "|"]
    # per row: [seed-settings measured, of them worse than base, settings, worse beyond noise, better beyond noise]
    tally = {row: [0, 0, 0, 0, 0] for row in PICK_ROWS}
    for folder in folders:
        runs = _runs(folder)
        loss = next(m for m in ("ce", "mse", "neg_si_sdr") if m in runs[0]["eval"]["base"])
        # a rendering's image MSE is ~1e-3: four decimals would round every change to one digit
        digits = 6 if abs(runs[0]["eval"]["base"][loss]) < 0.01 else 4

        def changes(row, against="base"):
            return [r["eval"][row][loss] - r["eval"][against][loss] for r in runs
                    if row in r["eval"] and against in r["eval"]]

        def paired(row, against="base"):
            values = changes(row, against)
            return (fmt(values, digits) + ("*" if _beyond_noise(values) else "")) if values else "—"

        for row in PICK_ROWS:
            if values := changes(row):
                noisy = not _beyond_noise(values)
                mean = statistics.mean(values)
                for i, add in enumerate((len(values), sum(v > 0 for v in values), 1,
                                         not noisy and mean > 0, not noisy and mean < 0)):
                    tally[row][i] += add

        def ev(row, key, digits):
            return fmt([v for r in runs if (v := _get(r["eval"], (row, key))) is not None], digits) or "—"

        name = f"{folder.name} ({len(runs)} seed{'s' * (len(runs) > 1)})"
        head.append(f"| {name} | {loss} | {ev('base', loss, digits)} | "
                    + " | ".join(paired(row) for row in PICK_ROWS) + " |")
        vs_t.append(f"| {name} | " + " | ".join(paired(row, against) for row in others) + " |")
        lambdas = [fmt([v for r in runs if (v := _get(r["eval"], ("chosen", "lambda", row))) is not None], 2) or "—"
                   for row in ("ocd", "regressor", "knn")]
        knn = "; ".join(f"{c['space']}, {c['k']}, {c['weighting']}" for r in runs
                        if (c := _get(r["eval"], ("chosen", "knn"))) is not None) or "—"
        cosines = " / ".join(ev(row, "cosine", 3) for row in ("ocd", "regressor", "nn_input", "knn"))
        cost = " / ".join(ev(row, "ms_per_sample", 3) for row in ("base", "ocd", "regressor", "knn"))
        diag.append(f"| {name} | " + " | ".join(lambdas) + f" | {knn} | {cosines} | {cost} |")
    losses = ["| row | seeds worse than base on test | settings | worse beyond noise | better beyond noise |",
              "|---" * 5 + "|"] + [f"| {row} | {t[1]} of {t[0]} | {t[2]} | {t[3]} | {t[4]} |"
                                   for row, t in tally.items() if t[0]]
    return "\n".join(head + [""] + vs_t + [""] + diag + [""] + losses)


def _get(record: dict, keys: tuple[str, ...]):
    for k in keys:
        if not isinstance(record, dict) or k not in record:
            return None
        record = record[k]
    return record


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--tag", required=True)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("-S", dest="overrides", action="append", default=[])
    r.add_argument("--draws", action="store_true",
                   help="also set data.seed: a new few-shot draw of the training sentences per seed")
    r.add_argument("--jobs", "-j", type=int, default=0,
                   help="experiments at a time (default: as many as the cores, up to the seeds)")
    rec = sub.add_parser("record", help="record the workspace's last run (e.g. a plain `dvc repro`) as seed N of a tag")
    rec.add_argument("--tag", required=True)
    rec.add_argument("--seed", type=int, required=True)
    rec.add_argument("-S", dest="overrides", action="append", default=[])
    t = sub.add_parser("table")
    t.add_argument("folder", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("folders", type=Path, nargs="+")
    st = sub.add_parser("study")
    st.add_argument("folders", type=Path, nargs="+")
    st.add_argument("--png", type=Path, default=None)
    pk = sub.add_parser("pick", help="which row to pick: paired changes vs base and temperature, choices, costs")
    pk.add_argument("folders", type=Path, nargs="+")
    pk.add_argument("--against", default="temperature",
                    help="the second table pairs every row against this one (default: the temperature)")
    args = ap.parse_args()
    if args.cmd == "run":
        run(args.tag, args.seeds, args.overrides, args.draws, args.jobs)
    elif args.cmd == "record":
        record(Path("docs/runs") / args.tag, args.seed, args.overrides)
    elif args.cmd == "compare":
        print(compare(args.folders))
    elif args.cmd == "study":
        print(study(args.folders, args.png))
    elif args.cmd == "pick":
        rows = {name for folder in args.folders for r in _runs(folder) for name in r["eval"]}
        if args.against not in rows:  # a misspelt row would pair nothing and print only dashes
            ap.error(f"--against {args.against}: no run in these folders has that row "
                     f"(they have: {', '.join(sorted(rows - NOT_ROWS))})")
        print(pick(args.folders, args.against))
    else:
        print(table(args.folder))


if __name__ == "__main__":
    main()
