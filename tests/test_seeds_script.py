"""scripts/seeds.py, the tables of docs/RESULTS.md: one seed reports no spread."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _seeds():
    spec = importlib.util.spec_from_file_location("seeds_script", ROOT / "scripts" / "seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(base_ce: float, shift: float) -> dict:
    row = lambda ce: {"ce": ce, "ece": 0.01, "loss_base_right": ce / 4, "loss_base_wrong": ce / 2}  # noqa: E731
    rows = ("base", "temperature", "ocd", "ocd_temperature", "regressor", "nn_input", "deep_ensemble_5")
    return {"eval": {name: row(base_ce + (0.0 if name == "base" else shift)) for name in rows},
            "notes": {"temperature": "base / T, T = 1.250 fitted on 400 calibration rows"}}


def test_the_study_gives_mean_and_sd_over_seeds_and_no_sd_for_one_seed(tmp_path):
    seeds = _seeds()
    three, one = tmp_path / "study-a", tmp_path / "fmnist-study-b"
    for folder, runs in ((three, [(0.10, 0.01), (0.12, 0.02), (0.14, 0.03)]), (one, [(0.30, -0.05)])):
        folder.mkdir()
        for i, (ce, shift) in enumerate(runs):
            (folder / f"seed{i}.json").write_text(json.dumps(_record(ce, shift)))
    lines = seeds.study([three, one], png=None).splitlines()
    assert lines[2].startswith("| study-a (3 seeds) | 0.1200 ± 0.0200 |")
    assert "| 0.0200 ± 0.0100 |" in lines[2]  # the paired change: mean 0.02, SD 0.01
    assert lines[3].startswith("| fmnist-study-b (1 seed) | 0.3000 | 0.0100 | 1.250 | -0.0500 |")
    assert "±" not in lines[3]


def test_a_row_a_run_switched_off_is_named_not_a_crash(tmp_path):
    # e.g. a rerun with evaluate.deep_ensemble false: its deep-ensemble cell says
    # "not run" (or counts the seeds it has), and the plot leaves that point out
    seeds = _seeds()
    none, some = tmp_path / "study-none", tmp_path / "study-some"
    for folder in (none, some):
        folder.mkdir()
        for i in range(2):
            record = _record(0.2, 0.01 * (i + 1))
            if folder is none or i == 1:
                del record["eval"]["deep_ensemble_5"]
            (folder / f"seed{i}.json").write_text(json.dumps(record))
    png = tmp_path / "study.png"
    lines = seeds.study([none, some], png=png).splitlines()
    cells = [line.split(" | ") for line in lines[2:]]
    column = 4 + list(seeds.STUDY_ROWS).index("deep_ensemble")
    assert cells[0][column] == "not run"
    assert cells[1][column] == "0.0100 (1 of 2)"
    assert cells[0][column - 1] == "0.0150 ± 0.0071"  # the other rows keep both seeds
    assert png.stat().st_size > 0


def test_a_damaged_or_older_record_is_named_not_a_traceback(tmp_path, capsys):
    import pytest

    seeds = _seeds()
    folder = tmp_path / "study-a"
    folder.mkdir()
    (folder / "seed0.json").write_text(json.dumps(_record(0.1, 0.01)))
    (folder / "seed1.json").write_text('{"eval":')  # cut off mid-write
    with pytest.raises(SystemExit, match=r"seed1\.json is not a readable run record"):
        seeds.study([folder], png=None)
    older = _record(0.1, 0.01)
    del older["eval"]["base"]["ece"]  # recorded before the calibration rows
    (folder / "seed1.json").write_text(json.dumps(older))
    with pytest.raises(SystemExit, match=r"seed1\.json has no eval\.base ece"):
        seeds.study([folder], png=None)
    table = seeds.table(folder).splitlines()  # the plain table shows what both seeds have
    assert table[0].startswith("| row | test ce | test loss_base_right |") and "ece" not in table[0]
    assert table[2].startswith("| base | 0.1000 ± 0.0000 |")


def test_a_record_joins_the_three_model_stages_metrics_as_one_stage_wrote_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = {
        "artifacts/eval/metrics.json": {"base": {"ce": 0.1}},
        "artifacts/layers/scores.json": {"selected": "fc2", "runner_up": "fc1", "layers": {}},
        "artifacts/overfit/metrics.json": {"train": {}},
        "artifacts/diffusion/metrics.json": {"diffusion": {"cosine_mean": 0.9}, "steps": {"diffusion": 10},
                                             "seconds": {"diffusion": 1.0}, "rows": {"fit": 5, "held_out": 1}},
        "artifacts/diffusion/scale_metrics.json": {"scale": {"median_rel_error": 0.02}, "steps": {"scale": 20},
                                                   "seconds": {"scale": 2.0}},
        "artifacts/diffusion/regressor_metrics.json": {"regressor": {"cosine_mean": 0.95}, "steps": {"regressor": 30},
                                                       "seconds": {"regressor": 3.0}},
    }
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(json.dumps(content))
    (tmp_path / "artifacts/eval/results.csv").write_text("row,note\nbase,\n")
    _seeds().record(tmp_path / "runs", 0, [])
    got = json.loads((tmp_path / "runs/seed0.json").read_text())["diffusion"]
    assert got["steps"] == {"diffusion": 10, "scale": 20, "regressor": 30}
    assert got["seconds"] == {"diffusion": 1.0, "scale": 2.0, "regressor": 3.0}
    assert got["scale"] == {"median_rel_error": 0.02} and got["regressor"] == {"cosine_mean": 0.95}


def test_pick_pairs_every_row_against_the_base_and_the_temperature_and_marks_what_is_beyond_noise(tmp_path):
    seeds = _seeds()
    folder = tmp_path / "pick-a"
    folder.mkdir()
    for i, (base, knn) in enumerate([(0.10, 0.08), (0.20, 0.19), (0.30, 0.27)]):  # knn: -0.02 ± 0.01
        rows = {"base": base, "temperature": base + 0.001 * (i - 1), "ocd": base + 0.01 * (i - 1), "knn": knn}
        record = {"eval": {name: {"ce": ce, "cosine": 0.5, "ms_per_sample": 0.1} for name, ce in rows.items()}}
        record["eval"]["chosen"] = {"lambda": {"ocd": 0.5, "knn": 1.0}, "knn": {"space": "input", "k": 4,
                                                                              "weighting": "inverse"}}
        (folder / f"seed{i}.json").write_text(json.dumps(record))
    vs_base, vs_t, diag, losses = seeds.pick([folder]).split("\n\n")
    cells = vs_base.splitlines()[2].split(" | ")
    assert cells[1:3] == ["ce", "0.2000 ± 0.1000"]
    assert cells[3 + seeds.PICK_ROWS.index("ocd")] == "0.0000 ± 0.0100"  # no star: noise
    assert cells[3 + seeds.PICK_ROWS.index("knn")] == "-0.0200 ± 0.0100*"  # 0.02 > 2 x 0.01 / sqrt(3)
    assert cells[3 + seeds.PICK_ROWS.index("regressor")] == "—"  # a row the runs lack
    assert "| -0.0200 ± 0.0105* |" in vs_t.splitlines()[2]  # knn against the temperature, seed by seed
    assert "| 0.50 ± 0.00 | — | 1.00 ± 0.00 | input, 4, inverse; input, 4, inverse; input, 4, inverse |" in diag
    # how often a row lost to the base model: ocd in one seed of three (+0.01), within noise
    assert "| ocd | 1 of 3 | 1 | 0 | 0 |" in losses and "| knn | 0 of 3 | 1 | 0 | 1 |" in losses
    assert "regressor" not in losses  # no run has it


def test_pick_against_a_row_no_run_has_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    folder = tmp_path / "pick-a"
    folder.mkdir()
    (folder / "seed0.json").write_text(json.dumps(_record(0.1, 0.01)))
    cmd = [sys.executable, str(ROOT / "scripts" / "seeds.py"), "pick", str(folder), "--against"]
    bad = subprocess.run([*cmd, "nn_imput"], capture_output=True, text=True)
    assert bad.returncode == 2 and not bad.stdout
    assert "--against nn_imput: no run in these folders has that row" in bad.stderr and "nn_input" in bad.stderr
    good = subprocess.run([*cmd, "nn_input"], capture_output=True, text=True, check=True)
    assert "Δ ocd vs nn_input" in good.stdout


@pytest.mark.e2e
def test_seeds_run_on_dvc_queue_in_parallel_and_leave_the_workspace_as_it_was(tmp_path):
    """Issue 44: the seeds run as DVC's queued experiments, two at a time, the records come from the
    experiments' refs, and params.yaml, dvc.lock and git status are as before; run as README runs it,
    by the venv's python with no dvc on PATH."""
    import os
    import subprocess
    import sys

    from test_pipeline import TINY, _merge, make_project

    (tmp_path / "p").mkdir()
    project = make_project(tmp_path / "p", _merge(TINY, {"evaluate": {"deep_ensemble": False}}))
    shutil.copytree(ROOT / "scripts", project / "scripts")
    git = ("git", "-c", "user.name=t", "-c", "user.email=t@example.com")
    project.run("git", "add", "-A")
    project.run(*git, "commit", "-qm", "tiny")
    params = (project / "params.yaml").read_text()
    env = dict(project.env, PATH=os.pathsep.join(p for p in project.env["PATH"].split(os.pathsep)
                                                 if p != str(Path(sys.executable).parent)))
    done = subprocess.run([sys.executable, "scripts/seeds.py", "run", "--tag", "tiny", "--seeds", "0", "1",
                           "--jobs", "2", "-S", "base.epochs=2"], cwd=project.root, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "2 of 2 seeds" in done.stdout and "with 2 at a time" in done.stdout
    records = [json.loads((project / f"docs/runs/tiny/seed{seed}.json").read_text()) for seed in (0, 1)]
    assert records[0]["eval"]["base"]["ce"] != records[1]["eval"]["base"]["ce"]  # two seeds, two base models
    assert records[0]["overrides"] == ["base.epochs=2"] and "temperature" in records[0]["notes"]
    assert (project / "params.yaml").read_text() == params
    assert project.run("git", "status", "--porcelain").stdout.strip() == "?? docs/"
    assert not (project / "dvc.lock").exists()  # nothing ran in the workspace
    shown = json.loads(project.dvc("exp", "show", "--json").stdout)
    assert "tiny-seed0" in json.dumps(shown) and "tiny-seed1" in json.dumps(shown)
    base = next(line for line in _seeds().table(project / "docs/runs/tiny").splitlines() if line.startswith("| base"))
    assert " ± " in base  # two seeds: a mean and an SD


def test_the_scripts_rows_are_rows_of_the_results_table():
    from ocd import rows

    seeds, kinds = _seeds(), [kind for kind, _ in rows.kinds()]
    assert set(seeds.STUDY_ROWS) <= set(kinds) and set(seeds.PICK_ROWS) <= set(kinds)
    # the table's order is the results table's: a stepped row beside its row's family, the oracle after tent
    ranked = sorted(["oracle", "tent_10", "knn_lambda", "base", "tent_2", "ocd_ensemble_5"], key=seeds.table_rank)
    assert ranked == ["base", "ocd_ensemble_5", "knn_lambda", "tent_2", "tent_10", "oracle"]


def test_a_seed_still_running_after_dvcs_worker_left_is_waited_for(tmp_path, monkeypatch, capsys):
    """DVC's worker shuts down once the queue is empty, while the last seed still runs: `dvc queue
    status` then shows no worker and the seed Running. That is no stall (it was taken for one, and
    the run ended with its last seed unrecorded); no worker and nothing of ours running is."""
    seeds = _seeds()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(seeds, "_dvc", lambda *args, **kw: "")
    monkeypatch.setattr(seeds.time, "sleep", lambda s: None)
    monkeypatch.setattr(seeds, "_experiment_refs", lambda: {})
    states = [{"workers": "none", "t-seed0": "Running"}] * 5 + [{"workers": "none", "t-seed0": "Success"}]
    monkeypatch.setattr(seeds, "_queue_status", lambda: states.pop(0) if len(states) > 1 else states[0])
    seeds.run("t", [0], [], jobs=1, poll=30)
    assert "t-seed0: Success" in capsys.readouterr().out
    states[:] = [{"workers": "none", "t-seed0": "Queued"}] * 5
    with pytest.raises(SystemExit, match="no worker running and t-seed0 still waiting"):
        seeds.run("t", [0], [], jobs=1, poll=30)
