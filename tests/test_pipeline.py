"""End to end: the real `dvc repro` in a temporary copy of the project, on tiny params."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COPY = ["dvc.yaml", "params.yaml", ".dvcignore", "ocd", "stages"]

TINY = {
    "data": {"name": "digits", "seed": 0},
    "model": {"name": "mlp", "hidden": [32]},
    "base": {"epochs": 3, "lr": 0.01, "batch_size": 64, "seed": 0},
}


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


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, root / name)
    params = _merge(yaml.safe_load((root / "params.yaml").read_text()), TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    project = Project(root)
    project.run("git", "init", "-q")
    project.dvc("init", "-q")
    project.dvc("config", "core.analytics", "false")
    return project


@pytest.mark.e2e
def test_dvc_repro_train_base_then_nothing_to_do(project):
    project.dvc("repro", "train_base")
    metrics = json.loads((project / "artifacts/base/metrics.json").read_text())
    assert set(metrics) == {"train", "test"}
    assert metrics["test"]["acc"] > 0.5  # chance is 0.1 on digits
    meta = json.loads((project / "artifacts/base/model.json").read_text())
    assert meta["spec"]["name"] == "mlp" and len(meta["sha256"]) == 64
    weights = project / "artifacts/base/model.pt"
    stamp = weights.stat().st_mtime_ns

    again = project.dvc("repro", "train_base")
    assert "didn't change" in again.stdout
    assert weights.stat().st_mtime_ns == stamp
    status = project.dvc("status")
    assert "up to date" in status.stdout


@pytest.mark.e2e
def test_bad_params_fail_the_stage_with_a_named_error(project, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  name: cifar\n")
    result = project.run("ocd", "train-base", "--params", str(bad), "--out", str(tmp_path / "o"),
                         check=False)
    assert result.returncode == 2
    assert "unknown dataset 'cifar'" in result.stderr and "mnist5k" in result.stderr
    assert not (tmp_path / "o").exists()
