"""The overfit stage on torch.distributed: 2 gloo processes under torchrun
write the store one process writes, and a killed 2-process run resumes with one."""

import os
import signal
import subprocess
import time

import numpy as np
import pytest
import yaml
import zarr

from ocd.distributed import Group, launched
from test_pipeline import TINY, make_project


def test_every_item_is_dealt_to_exactly_one_rank():
    items = [("train", c) for c in range(7)] + [("test", c) for c in range(3)]
    shares = [Group(rank, 3).deal(items) for rank in range(3)]
    assert sorted(sum(shares, [])) == sorted(items)
    assert [len(s) for s in shares] == [4, 3, 3]
    assert Group().deal(items) == items and Group().main and not Group(1, 2).main


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


@pytest.mark.e2e
def test_two_ranks_write_the_one_process_store_and_a_killed_run_resumes_with_one(tmp_path):
    # many small chunks (8 rows) each rank gets several of, and enough steps per chunk
    # (~0.1 s) that a run is reliably killed mid-way
    (tmp_path / "p").mkdir()
    project = make_project(tmp_path / "p", {**TINY, "overfit": {"batch_size": 8, "steps": 200}})
    project.run("ocd", "train-base", "--no-progress")
    project.run("ocd", "score-layers", "--no-progress")
    params = yaml.safe_load((project / "params.yaml").read_text())

    def run_args(name: str, nproc: int) -> list[str]:
        params["compute"] = {"nproc": nproc}
        path = tmp_path / f"params{nproc}.yaml"
        path.write_text(yaml.safe_dump(params))
        return ["ocd", "overfit", "--params", str(path), "--no-progress",
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
    root = zarr.open_group(tmp_path / "killed.zarr", mode="r")
    finished = int(root["train/done"][:].sum())
    assert 0 < finished < root["train/done"].shape[0], "the run was not interrupted mid-way"

    resumed = project.run(*run_args("killed", 1))
    assert "resuming" in resumed.stdout
    _assert_same_store(tmp_path / "one.zarr", tmp_path / "killed.zarr")


def test_a_one_process_stage_run_by_torchrun_says_so_and_writes_nothing(tmp_path):
    from typer.testing import CliRunner

    from stages.cli import app

    out = tmp_path / "base"
    result = CliRunner().invoke(app, ["train-base", "--out", str(out)], env={"WORLD_SIZE": "2"})
    assert result.exit_code == 2
    assert "`ocd train-base` runs in one process" in result.output
    assert not out.exists()
