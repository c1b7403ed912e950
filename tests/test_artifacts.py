"""ocd.artifacts: atomic writes survive a kill; checkpoints never unpickle code."""

import json
import os
import pickle
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ocd import artifacts
from ocd.artifacts import CheckpointError, load_checkpoint, save_checkpoint, write_json
from ocd.hypernet import diffusion, regressor, scale
from ocd.models import base
from ocd.models.registry import ModelSpec

ROOT = Path(__file__).resolve().parents[1]


def test_a_kill_mid_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"old": 1})
    # a writer killed (SIGKILL: no cleanup runs) while the new content is half on disk
    code = ("import sys, time; from ocd.artifacts import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    fh = open(tmp, 'w'); fh.write('{\"new\": '); fh.flush()\n"
            "    print('writing', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads(target.read_text()) == {"old": 1}
    write_json(target, {"new": 2})
    assert json.loads(target.read_text()) == {"new": 2}


def test_an_error_mid_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with artifacts.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.pt"]


def test_stages_write_every_file_through_the_atomic_writers():
    """No stage or library module writes an artifact directly (the IDX writer is a test helper)."""
    direct = re.compile(r"\.write_text\(|\.write_bytes\(|torch\.save\(|open\([^)]*['\"]w")
    offenders = []
    for path in [*ROOT.glob("stages/*.py"), *ROOT.glob("ocd/*.py")]:
        if path.name == "artifacts.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if direct.search(line) and "write_idx" not in line and "opener(path, \"wb\")" not in line:
                offenders.append(f"{path.name}:{i}: {line.strip()}")
    assert offenders == []


class Exploit:
    """Unpickling this runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "diffusion.pt"
    torch.save({"state": {}, artifacts.CONFIG: "{}", "payload": Exploit(marker)}, evil)
    for load in (load_checkpoint, diffusion.load, scale.load, regressor.load):
        with pytest.raises(CheckpointError, match="would run code.*refusing"):
            load(evil)
    assert not marker.exists()


def test_a_legacy_raw_pickle_is_refused_without_torch_warnings(tmp_path, recwarn):
    """Issue 41: a raw pickle (not torch's zip format) was refused after two lines of UserWarning."""
    marker = tmp_path / "pwned"
    legacy = tmp_path / "legacy.pt"
    with open(legacy, "wb") as fh:
        pickle.dump({"state": {}, artifacts.CONFIG: "{}", "payload": Exploit(marker)}, fh, protocol=4)
    with pytest.raises(CheckpointError, match="would run code.*refusing"):
        load_checkpoint(legacy)
    assert not marker.exists() and [str(w.message) for w in recwarn] == []


def test_a_crafted_base_model_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    spec = ModelSpec("mlp", (4,), 2, {"hidden": [3], "dropout": 0.0})
    base.save(tmp_path / "b", spec.build(), spec)
    torch.save({"fc1.weight": Exploit(marker)}, tmp_path / "b" / base.WEIGHTS)
    with pytest.raises(CheckpointError, match="would run code"):
        base.load(tmp_path / "b")
    assert not marker.exists()


def test_checkpoints_round_trip_and_foreign_or_truncated_files_are_named(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.arange(3.0)}, {"hidden": [4], "meta": {"shape": [2, 3]}})
    state, config = load_checkpoint(path)
    assert torch.equal(state["w"], torch.arange(3.0)) and config == {"hidden": [4], "meta": {"shape": [2, 3]}}
    torch.save({"w": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")


def test_checkpoints_of_equal_weights_are_equal_bytes(tmp_path):
    # torch.save to a path names the archive's records after the (temporary, per-pid) file name
    state = {"w": torch.arange(12.0).reshape(3, 4)}
    artifacts.save_checkpoint(tmp_path / "a.pt", state, {"b": 1, "a": [2]})
    artifacts.save_checkpoint(tmp_path / "sub" / "b.pt", {"w": state["w"].clone()}, {"a": [2], "b": 1})
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "sub" / "b.pt").read_bytes()
    artifacts.save_tensors(tmp_path / "c.pt", state)
    artifacts.save_tensors(tmp_path / "d.pt", state)
    assert (tmp_path / "c.pt").read_bytes() == (tmp_path / "d.pt").read_bytes()


def test_temporaries_of_killed_writers_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".model.pt.{dead.pid}.tmp"
    stale.write_bytes(b"")
    live = tmp_path / f".model.pt.{os.getppid()}.tmp"  # a live writer's: kept
    live.write_bytes(b"")
    artifacts.write_bytes(tmp_path / "model.pt", b"new")
    assert not stale.exists() and live.exists() and (tmp_path / "model.pt").read_bytes() == b"new"
