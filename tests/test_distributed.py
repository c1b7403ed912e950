"""Stages on torch.distributed: 2 gloo processes under torchrun score the
layers as one process does and write the store one process writes, and a
killed 2-process overfit resumes with one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from test_pipeline import ROOT, TINY, make_project

from ocd.distributed import Group, launched


def test_every_item_is_dealt_to_exactly_one_rank():
    items = [("train", c) for c in range(7)] + [("test", c) for c in range(3)]
    shares = [Group(rank, 3).deal(items) for rank in range(3)]
    assert sorted(sum(shares, [])) == sorted(items)
    assert [len(s) for s in shares] == [4, 3, 3]
    assert Group().deal(items) == items and Group().main and not Group(1, 2).main


@pytest.mark.parametrize("n, world", [(10, 3), (1, 2), (0, 2), (7, 7)])
def test_spans_cover_the_rows_in_order_and_rank_0_always_has_one(n, world):
    spans = [Group(rank, world).span(n) for rank in range(world)]
    assert spans[0][0] == 0 and spans[-1][1] == n and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    sizes = [hi - lo for lo, hi in spans]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    # blocks: whole blocks of 256 rows, the last one short; one block of 30 rows goes to rank 0
    assert Group(0, 2).blocks(30, 256) == (0, 30) and Group(1, 2).blocks(30, 256) == (30, 30)
    assert Group(1, 2).blocks(600, 256) == (512, 600)


def test_a_plain_process_is_not_launched(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not launched()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched()


def _arrays(path):
    root = zarr.open_group(path, mode="r")
    return {f"{split}/{name}": node[:] for split in ("train", "test")
            for name, node in root[split].members(max_depth=None) if isinstance(node, zarr.Array)}


def _assert_same_store(a, b):
    one, two = _arrays(a), _arrays(b)
    assert one.keys() == two.keys()
    for name in one:
        np.testing.assert_array_equal(one[name], two[name], err_msg=name)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A trained base model and its layer scores, from one process (OCD_THREADS=1)."""
    # many small chunks (8 rows) each rank gets several of, and enough steps per chunk
    # (~0.1 s) that an overfit run is reliably killed mid-way
    project = make_project(tmp_path_factory.mktemp("project"), {**TINY, "overfit": {"batch_size": 8, "steps": 200}})
    project.run("ocd", "train-base", "--no-progress")
    project.run("ocd", "score-layers", "--no-progress")
    return project


def _params(project, tmp_path, nproc: int):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["compute"] = {"nproc": nproc}
    path = tmp_path / f"params{nproc}.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


@pytest.mark.e2e
def test_two_ranks_score_the_layers_as_one_process(project, tmp_path):
    two = project.run("ocd", "score-layers", "--params", _params(project, tmp_path, 2), "--no-progress",
                      "--out", str(tmp_path / "two"))
    assert "rank 1 of 2: its share of the 64 draws" in two.stdout, two.stdout
    one = json.loads((project / "artifacts/layers/scores.json").read_text())
    assert json.loads((tmp_path / "two/scores.json").read_text()) == one
    assert (tmp_path / "two/scores.csv").read_text() == (project / "artifacts/layers/scores.csv").read_text()


@pytest.mark.e2e
def test_two_ranks_write_the_one_process_store_and_a_killed_run_resumes_with_one(project, tmp_path):
    def run_args(name: str, nproc: int) -> list[str]:
        return ["ocd", "overfit", "--params", _params(project, tmp_path, nproc), "--no-progress",
                "--out", str(tmp_path / f"{name}.zarr"), "--metrics", str(tmp_path / f"{name}.json")]

    project.run(*run_args("one", 1))
    two = project.run(*run_args("two", 2))
    assert "rank 1 of 2" in two.stdout, two.stdout
    _assert_same_store(tmp_path / "one.zarr", tmp_path / "two.zarr")
    assert (tmp_path / "one.json").read_text() == (tmp_path / "two.json").read_text()

    # kill a 2-rank run (torchrun and its workers) once a few chunks are done
    proc = subprocess.Popen(run_args("killed", 2), cwd=project.root, env=project.env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = tmp_path / "killed.zarr/train/done/c"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (done.exists() and len(list(done.iterdir())) >= 2):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # the ranks (a process group of torchrun's own) die with their launcher
    marker = str(tmp_path / "killed.zarr")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _processes_naming(marker):
        time.sleep(0.1)
    assert not _processes_naming(marker), "ranks outlived their launcher"
    root = zarr.open_group(tmp_path / "killed.zarr", mode="r")
    finished = int(root["train/done"][:].sum())
    assert 0 < finished < root["train/done"].shape[0], "the run was not interrupted mid-way"

    resumed = project.run(*run_args("killed", 1))
    assert "resuming" in resumed.stdout
    _assert_same_store(tmp_path / "one.zarr", tmp_path / "killed.zarr")


def _processes_naming(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:  # gone meanwhile
            pass
    return found


def test_a_child_that_asked_dies_with_its_parent(tmp_path):
    child = ("import sys, time; from ocd.distributed import die_with_parent; die_with_parent(); "
             "print('ready', flush=True); time.sleep(60)")
    parent = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', sys.argv[1]], "
              "stdout=sys.stdout); print(c.pid, flush=True); time.sleep(60)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", parent, child], stdout=subprocess.PIPE, text=True, env=env)
    pid = int(proc.stdout.readline())
    assert proc.stdout.readline().strip() == "ready"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and \
            Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
        time.sleep(0.05)
    alive = Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    assert not alive


@pytest.mark.e2e
def test_a_user_error_on_two_ranks_is_one_line(project, tmp_path):
    run = project.run("ocd", "train-diffusion", "--params", _params(project, tmp_path, 2), "--no-progress",
                      "--store", str(tmp_path / "none.zarr"), check=False)
    assert run.returncode == 2
    assert run.stderr.strip() == f"error: {tmp_path / 'none.zarr'} does not exist; run the overfit stage first"


def test_a_one_process_stage_run_by_torchrun_says_so_and_writes_nothing(tmp_path):
    from typer.testing import CliRunner

    from stages.cli import app

    out = tmp_path / "base"
    result = CliRunner().invoke(app, ["train-base", "--out", str(out)], env={"WORLD_SIZE": "2"})
    assert result.exit_code == 2
    assert "`ocd train-base` runs in one process" in result.output
    assert not out.exists()


class _Rank(Group):
    """A rank of a group that is not started: records what it would send."""

    def gather_columns(self, local, indices, total):
        self.sent = (list(indices), local)
        return local


def test_losses_computed_in_shares_of_passes_equal_the_losses_computed_at_once():
    import torch

    from ocd.layers import perturbation_losses
    from ocd.models.sequential import mlp
    from ocd.tasks import classification

    torch.manual_seed(0)
    model = mlp((6,), 3, hidden=[5], dropout=0.0).eval()
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    task = classification()
    # 2 draws a pass (8 samples-draws / 4 samples): 4 passes of 7 draws, dealt to 3 ranks
    whole = perturbation_losses(model, task, "fc1", x, y, draws=7, noise=0.1, seed=3, points_per_pass=8)
    together = torch.full_like(whole, float("nan"))
    for rank in range(3):
        group = _Rank(rank, 3)
        perturbation_losses(model, task, "fc1", x, y, 7, 0.1, 3, points_per_pass=8, group=group)
        indices, columns = group.sent
        together[:, indices] = columns
    torch.testing.assert_close(together, whole, rtol=0, atol=0)
    assert _Rank(0, 3).deal([[0, 1], [2, 3], [4, 5], [6]]) == [[0, 1], [6]]


def _state(path):
    import torch

    return torch.load(path, weights_only=True)["state"]


@pytest.fixture(scope="module")
def trained(project):
    """The project's store and models, from one process."""
    project.run("ocd", "overfit", "--no-progress")
    for stage in TRAINED:
        project.run("ocd", stage, "--no-progress")
    project.run("ocd", "train-ensemble", "--no-progress")
    return project


TRAINED = ("train-diffusion", "train-scale", "train-regressor")  # each trains its model on the store


@pytest.mark.e2e
def test_two_ranks_train_the_one_process_models_within_a_float_tolerance(trained, tmp_path):
    """DDP over each global minibatch: the same rows and noise as one process, the
    gradient averaged over the ranks. Only the order of the float sums differs (each
    rank sums its share, then gloo adds the shares). Tolerance: per tensor, the largest
    difference within 1e-5 of the tensor's largest entry (measured: 2e-6 after 20 steps,
    3e-7 after one), loss curves to 1e-5 relative. Not elementwise: Adam moves an
    entry whose gradient is near zero by ~lr whatever the gradient's size, so a
    rounding-level gradient can move it either way."""
    runs = {stage: trained.run("ocd", stage, "--params", _params(trained, tmp_path, 2), "--no-progress",
                               "--out", str(tmp_path / "models2")) for stage in TRAINED}
    assert "rank 1 of 2: its share of every minibatch" in runs["train-diffusion"].stdout, runs["train-diffusion"].stdout
    one, two = trained / "artifacts/diffusion", tmp_path / "models2"
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    for name in ("diffusion.pt", "scale.pt", "regressor.pt"):
        a, b = _state(one / name), _state(two / name)
        assert a.keys() == b.keys()
        for key in a:
            worst = float((a[key] - b[key]).abs().max())
            assert worst <= 1e-5 * float(a[key].abs().max()), f"{name}: {key} differs by {worst}"
    for curve in ("loss.csv", "scale_loss.csv", "regressor_loss.csv"):
        x = np.loadtxt(one / curve, delimiter=",", skiprows=1)
        y = np.loadtxt(two / curve, delimiter=",", skiprows=1)
        np.testing.assert_allclose(y, x, rtol=1e-5, err_msg=curve)
    for name, model in (("metrics.json", "diffusion"), ("scale_metrics.json", "scale"),
                        ("regressor_metrics.json", "regressor")):
        m1, m2 = json.loads((one / name).read_text()), json.loads((two / name).read_text())
        assert m1["steps"] == m2["steps"] == {model: 20}, name
    m1, m2 = json.loads((one / "metrics.json").read_text()), json.loads((two / "metrics.json").read_text())
    assert m2["diffusion"]["cosine_mean"] == pytest.approx(m1["diffusion"]["cosine_mean"], abs=1e-3)


def _without_timings(metrics: dict) -> dict:
    return {row: {k: v for k, v in values.items() if k != "ms_per_sample"} if isinstance(values, dict) else values
            for row, values in metrics.items()}


@pytest.mark.e2e
def test_two_ranks_evaluate_to_the_one_process_table(trained, tmp_path):
    """The test rows in blocks of one model pass, dealt to 2 ranks (digits: 360 test rows, 2
    blocks; 144 calibration rows, one block: rank 1 has none): every number equal."""
    trained.run("ocd", "evaluate", "--no-progress")
    run = trained.run("ocd", "evaluate", "--params", _params(trained, tmp_path, 2), "--no-progress",
                      "--out", str(tmp_path / "eval2"))
    assert "rank 1 of 2: its blocks of the test rows" in run.stdout, run.stdout
    one, two = trained / "artifacts/eval", tmp_path / "eval2"
    m1, m2 = json.loads((one / "metrics.json").read_text()), json.loads((two / "metrics.json").read_text())
    assert {"ocd", "temperature", "tent_1", "deep_ensemble_2"} <= set(m1)
    assert _without_timings(m2) == _without_timings(m1)
    for name in ("per_sample_loss.csv", "reliability.csv", "delta_norm.csv"):
        assert (two / name).read_text() == (one / name).read_text(), name
