"""README's commands work as written: on a fresh copy of the project, with no
virtualenv activated and the venv's bin folder absent from PATH."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_pipeline import TINY, _merge, make_project

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


# The TinyNeRF commands on tiny views: the preset's recipe with small sizes appended.
NERF_SMALL = (" -S data.image_size=8 -S data.max_train=8 -S data.max_test=2 -S model.depth_samples=4"
              " -S base.epochs=1 -S layers.draws=8 -S layers.samples=2")


# The few-shot text commands on a few sentences: the preset's recipe with small sizes appended.
TEXT_SMALL = (" -S data.shots=2 -S data.max_test=6 -S data.max_tokens=16 -S base.pair_iterations=1"
              " -S base.epochs=1 -S layers.draws=8 -S layers.samples=4 -S overfit.batch_size=4")


# The speech-separation command on a few short mixtures and a narrow separator.
SPEECH_SMALL = (" -S data.mixtures=30 -S data.seconds=0.5 -S model.width=8 -S model.chunk=10 -S base.epochs=1"
                " -S layers.draws=8 -S layers.samples=2 -S overfit.batch_size=8")


def readme_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S)


def readme_commands() -> list[str]:
    """Every shell command README shows (comments stripped), in order."""
    lines = (re.sub(r"\s+#.*$", "", line).strip() for block in readme_blocks("sh") for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_readme_has_exactly_two_set_up_and_go_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert [c for c in commands if c.startswith("make")] == ["make repro", "make test"]
    assert "make test" in (ROOT / ".ci/run").read_text()
    # every other command names its program by its path in the project's venv
    assert all(c.startswith(".venv/bin/") for c in commands if not c.startswith("make")), commands


@pytest.mark.e2e
def test_every_readme_command_runs_as_written_without_the_venv_on_path(tmp_path):
    if sys.prefix == sys.base_prefix:
        pytest.skip("the tests run outside a virtualenv; README's commands assume the project's .venv")
    # tiny params and small caps keep each `dvc exp run` short (the paper preset's 128 x 128
    # U-Net samples 5 deltas per test row: 100 test rows took 6 min, 30 take a third of that)
    project = make_project(tmp_path, _merge(TINY, {"data": {"max_train": 200, "max_test": 30}}))
    (project / ".venv").symlink_to(sys.prefix)
    venv_bin = str(Path(sys.prefix) / "bin")
    env = {k: v for k, v in project.env.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                  if p and Path(p).resolve() != Path(venv_bin).resolve()
                                  and Path(p).resolve() != Path(sys.executable).resolve().parent)
    assert subprocess.run(["sh", "-c", "command -v ocd"], env=env, capture_output=True).returncode != 0

    def run(command: str):
        return subprocess.run(["bash", "-c", command], cwd=project.root, env=env, capture_output=True, text=True)

    git = "git -c user.name=t -c user.email=t@example.com"
    assert run(f"git add -A && {git} commit -qm init").returncode == 0

    ran = 0
    for command in readme_commands():
        if command.startswith("make"):
            continue  # `make test` is this suite; `make repro` is the full job (the pipeline test runs it small)
        if "preset tinynerf" in command:
            command += NERF_SMALL  # later -S values win: 64x64 views take minutes a stage
        if "preset setfit" in command:
            command += TEXT_SMALL  # 2,000 test sentences take minutes a stage
        if "preset speech" in command:
            command += SPEECH_SMALL  # 800 mixtures of 1 s take minutes a stage
        if command.endswith("dvc push"):
            # README: "after a run" (the experiments above ran in DVC's copies): the pipeline's outputs
            assert run(".venv/bin/dvc repro").returncode == 0
            assert run(f"git add -A && {git} commit -qm run").returncode == 0
        if command.endswith("dvc pull"):
            # README: "in a fresh clone", beside the checkout: it shares the remote the push filled
            clone = project.root.parent / f"{project.root.name}-clone"
            assert run(f"git clone -q . {clone}").returncode == 0
            result = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True)
            assert result.returncode == 0 and (clone / "artifacts/deltas.zarr").is_dir(), result.stderr[-2000:]
            ran += 1
            continue
        result = run(command)
        output = result.stdout + result.stderr
        if "dvc exp run" in command:
            # README's experiments run with --temp: whatever happened, the workspace is as committed (issue 44)
            assert run("git status --porcelain").stdout == "", (command, run("git status --porcelain").stdout)
        missing = re.search(r"data\.path=(\S+)", command)
        if missing and not Path(missing.group(1)).exists():
            # the data set is not installed here: the stage must say so in one line
            assert result.returncode != 0 and "is not a folder" in output, (command, output[-2000:])
            continue
        assert result.returncode == 0, (command, output[-3000:])
        ran += 1
    assert ran >= 3
    for snippet in readme_blocks("python"):
        result = run(f".venv/bin/python - <<'EOF'\n{snippet}EOF")
        assert result.returncode == 0, result.stderr[-2000:]


def test_the_layout_section_names_every_library_module():
    """Each ``ocd/`` line of README's layout (with its continuation lines) lists the
    modules of that folder, after the colon, and no other."""
    layout = re.search(r"^## Layout\n+```\n(.*?)```", README.read_text(), re.S | re.M).group(1)
    entries = re.findall(r"^(ocd/(?:\w+/)?)\s[^:]*: (.*?)(?=^\S)", layout, re.S | re.M)
    folders = {ROOT / "ocd"} | {p.parent for p in (ROOT / "ocd").glob("*/__init__.py")}
    assert {ROOT / folder for folder, _ in entries} == folders, entries
    for folder, block in entries:
        listed = {name.strip() for name in block.replace("\n", " ").split(",")}
        modules = {p.stem for p in (ROOT / folder).glob("*.py") if p.stem != "__init__"}
        assert listed == modules, (f"README's {folder} lacks {sorted(modules - listed)}, "
                                   f"names {sorted(listed - modules)}")


def test_every_list_of_names_is_the_registry():
    """params.yaml's comments and README's tables name exactly the registered datasets and models."""
    from ocd.data.registry import DATASETS
    from ocd.models.registry import MODELS

    params = (ROOT / "params.yaml").read_text()
    for key, registry in (("name: mnist5k", DATASETS), ("name: lenet5", MODELS)):
        comment = next(line for line in params.splitlines() if line.strip().startswith(key)).split("#", 1)[1]
        assert {n.strip() for n in comment.split("|")} == set(registry), key
    readme = README.read_text()
    for header, registry in (("| `data.name` | what | split |", DATASETS), ("| `model.name` | layers |", MODELS)):
        table = readme.split(header, 1)[1].split("\n\n", 1)[0].splitlines()[2:]  # the rows
        names = {n for row in table for n in re.findall(r"`(\w+)`", row.split("|")[1])}
        assert names == set(registry), f"README {header}: {sorted(names ^ set(registry))}"
