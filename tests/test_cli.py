"""The `ocd` command's handling of errors: one line, the right exit code, no traceback."""

import errno
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ocd.fitting import holdout_note
from stages.cli import _stage, app
from synthetic import synthetic_store

ROOT = Path(__file__).resolve().parents[1]


def _run_raising(exc: BaseException):
    def boom():
        raise exc

    one = typer.Typer()
    one.command()(_stage(boom))
    return CliRunner().invoke(one, [])


def test_a_full_disk_is_one_line_that_says_so():
    def disk_full():
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "artifacts/deltas.zarr/train/delta/c/3/0/0")
        except OSError as exc:  # as Zarr and torch raise it: wrapped in another error
            raise RuntimeError("write failed") from exc

    one = typer.Typer()
    one.command()(_stage(disk_full))
    result = CliRunner().invoke(one, [])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the disk is full writing artifacts/deltas.zarr")


def test_an_out_on_a_read_only_file_system_is_one_line_that_names_it():
    def read_only():
        try:
            raise OSError(errno.EROFS, "Read-only file system", "/mnt/ro/base")
        except OSError as exc:
            raise RuntimeError("save failed") from exc

    one = typer.Typer()
    one.command()(_stage(read_only))
    result = CliRunner().invoke(one, [])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: cannot write /mnt/ro/base (Read-only file system): choose an --out "
                                     "you can write, or make it writable; every file already written is whole")


def test_a_diverged_training_is_a_user_error():
    result = _run_raising(FloatingPointError("train diffusion: the training loss is nan at step 2 of 20"))
    assert result.exit_code == 2 and result.output.strip() == \
        "error: train diffusion: the training loss is nan at step 2 of 20"


def test_other_errors_keep_their_traceback():
    result = _run_raising(KeyError("a bug of ours"))
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)


def test_a_store_whose_root_metadata_is_empty_is_one_line(tmp_path):
    synthetic_store(tmp_path / "s.zarr")
    (tmp_path / "s.zarr" / "zarr.json").write_text("")
    result = CliRunner().invoke(app, ["train-diffusion", "--store", str(tmp_path / "s.zarr"),
                                      "--out", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 's.zarr'} is not a readable weight-delta store (JSONDecodeError: Expecting value: "
        "line 1 column 1 (char 0)); `dvc repro overfit` (or `ocd overfit`) writes it anew"]


def test_the_stage_says_what_diffusion_holdout_held_out():
    # 364 train rows in chunks of 256: the one held-out chunk is 108 rows, 30%
    note = holdout_note(0.1, 364, 256, 1)
    assert note.startswith("held out for the diagnostics: the last 1 store chunk(s), 108 of 364 train rows (30%)")
    assert "diffusion.holdout asks 10%" in note and "overfit.batch_size" in note
    assert "asks" not in holdout_note(0.1, 4000, 3584, 2)  # 416 rows, 10%: as asked
    assert "no diagnostics" in holdout_note(0.0, 16, 16, 0)


def test_ocd_help_lists_every_command_without_importing_torch():
    """Issue 42: `ocd --help` imported torch, scikit-learn, Zarr and every family first (20-25 s on a
    loaded machine); a command's module is imported only when that command runs or shows its help."""
    import subprocess
    import sys

    probe = ("import sys\nfrom typer.testing import CliRunner\nfrom stages.cli import app\n"
             "r = CliRunner().invoke(app, ['--help'])\n"
             "print(r.exit_code, sorted(m for m in ('torch', 'sklearn', 'zarr', 'numpy') if m in sys.modules))\n"
             "print(r.output)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    first, help_text = done.stdout.split("\n", 1)
    assert first == "0 []"
    from stages.cli import COMMANDS

    listed = [line.split()[0] for line in help_text.split("Commands:", 1)[1].splitlines()
              if line.startswith("  ") and not line.startswith("   ")]
    assert listed == list(COMMANDS)


def test_every_listed_command_builds_and_shows_its_own_help():
    from stages.cli import COMMANDS

    for name in COMMANDS:
        result = CliRunner().invoke(app, [name, "--help"])
        assert result.exit_code == 0 and f" {name} [OPTIONS]" in " ".join(result.output.split()), name
    assert CliRunner().invoke(app, ["nosuch"]).exit_code == 2


@pytest.mark.parametrize("text, message", [("data:\n  name: cifar\n", "unknown dataset 'cifar'"),
                                           ("model:\n  name: resnet\n", "unknown model 'resnet'"),
                                           ("base:\n  lr: fast\n", "base.lr: expected a number, got 'fast'")])
def test_a_params_mistake_is_refused_before_torch_is_imported(tmp_path, text, message):
    """Issue 42: a one-line refusal of params.yaml took 3.6 s here (26 s on a loaded machine), importing
    torch, scikit-learn and every family first; the command now checks its params before its stage loads."""
    import subprocess
    import sys

    bad = tmp_path / "params.yaml"
    bad.write_text(text)
    probe = ("import sys\nfrom stages.cli import app\n"
             f"sys.argv = ['ocd', 'train-base', '--params', {str(bad)!r}]\n"
             "try:\n    app()\nexcept SystemExit as e:\n    print(e.code, 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "2 False"
    assert done.stderr.strip().count("\n") == 0 and message in done.stderr


def test_score_layers_checks_layers_force_before_scoring(tmp_path, monkeypatch):
    from ocd import layers
    from ocd.models import base
    from ocd.models.registry import ModelSpec

    spec = ModelSpec("mlp", (1, 8, 8), 10, {"hidden": [8], "dropout": 0.0})
    base.save(tmp_path / "base", spec.build(), spec)
    (tmp_path / "p.yaml").write_text("data: {name: digits}\nlayers: {force: fc9}\n")

    def must_not_run(*args, **kwargs):
        raise AssertionError("scored before checking layers.force")

    monkeypatch.setattr(layers, "score_layers", must_not_run)
    result = CliRunner().invoke(app, ["score-layers", "--params", str(tmp_path / "p.yaml"), "--base",
                                      str(tmp_path / "base"), "--out", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "layers.force='fc9' is not a weight layer" in result.output and "valid names: fc1, fc2" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command, with_base", [(["score-layers"], False), (["overfit"], True),
                                                (["train-diffusion"], False), (["evaluate"], True),
                                                (["predict", "x.npy"], True)])
def test_a_missing_input_is_refused_before_torch_is_imported_as_the_stage_says_it(tmp_path, monkeypatch, command,
                                                                                  with_base):
    """Issue 42: a missing input was refused only once torch, scikit-learn and Zarr had loaded (1.8-3.2 s
    here); `ocd` now checks what each command needs (stages/options.py) first, in the stage's own words."""
    import subprocess
    import sys

    from ocd.models import base
    from ocd.models.registry import ModelSpec
    from stages import cli

    (tmp_path / "params.yaml").write_text("data: {name: digits}\nmodel: {name: mlp}\n")
    if with_base:  # the first input there: the one after it is missing
        spec = ModelSpec("mlp", (1, 8, 8), 10, {"hidden": [8], "dropout": 0.0})
        base.save(tmp_path / "artifacts" / "base", spec.build(), spec)
    probe = ("import sys\nfrom stages.cli import app\n"
             f"sys.argv = ['ocd', *{command!r}]\n"
             "try:\n    app()\nexcept SystemExit as e:\n    print(e.code, 'torch' in sys.modules)\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.stdout.strip() == "2 False", done.stderr
    refused = done.stderr.strip()
    assert refused.count("\n") == 0 and refused.startswith("error: ") and "stage first" in refused
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "preflight", lambda name, args: None)  # the stage itself, on the same inputs
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2 and result.output.strip() == refused
