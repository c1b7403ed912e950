"""The results table's rows (ocd/rows.py): one class a row, and the lists read from them."""

import re
from pathlib import Path

import pytest
import torch
import yaml
from test_evaluation import _inputs

from ocd import rows
from ocd.evaluation import evaluate, mark_unlearned
from ocd.pipeline import SERVABLE

ROOT = Path(__file__).resolve().parents[1]


class ZeroDelta(rows.EvalRow):
    """A new untrained row, as a user would add one: a delta of zeros is the base model."""

    kind = "zero"
    about = "a delta of zeros"

    def block(self, b):
        d = torch.zeros_like(b.oracle)
        return b.apply(d), d


def test_a_new_row_is_one_class_and_evaluate_reports_it(tmp_path):
    with torch.no_grad():
        table, _, skipped = evaluate(_inputs(tmp_path), 2, 3, 0.0, 0, [1], 1e-3, row_kinds=(*rows.ROWS, ZeroDelta))
    by_name = {r.name: r for r in table}
    assert [r.name for r in table][-1] == "zero" and not skipped
    assert by_name["zero"].metrics == pytest.approx(by_name["base"].metrics)
    assert by_name["zero"].cosine == 0.0 and by_name["zero"].ms_per_sample is None


def test_a_row_that_cannot_run_says_why_and_is_skipped(tmp_path):
    inp = _inputs(tmp_path)
    inp.x_cal = inp.y_cal = None
    with torch.no_grad():
        table, _, skipped = evaluate(inp, 2, 3, 0.0, 0, [], 1e-3)
    names = {r.name for r in table}
    assert set(skipped) == {"temperature", "knn", "tent"} and "calibration rows" in skipped["knn"]
    assert not names & {"temperature", "knn", "ocd_lambda", "knn_temperature"}
    assert {"base", "ocd", "ocd_ensemble_2", "regressor", "oracle"} <= names


def test_the_servable_rows_and_reliability_columns_are_read_from_the_rows():
    # the order is the tie-break of the row `ocd predict` serves: the simpler row first
    assert rows.SERVED == ("base", "temperature", "ocd", "ocd_lambda", "ocd_temperature", "regressor",
                           "regressor_lambda", "knn", "knn_lambda", "knn_temperature")
    assert SERVABLE == (*rows.SERVED, "ocd_ensemble")
    assert rows.RELIABILITY == ("base", "ocd", "temperature", "ocd_temperature", "knn_temperature", "deep_ensemble")
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    columns = next(p["reliability"]["y"]["artifacts/eval/reliability.csv"] for p in plots if "reliability" in p)
    assert tuple(columns) == rows.RELIABILITY


def test_readme_lists_every_row_as_the_rows_describe_themselves():
    readme = (ROOT / "README.md").read_text()
    assert rows.readme_table() in readme
    listed = re.findall(r"^\| `(\w+)` \|", rows.readme_table(), re.M)
    assert listed == [kind for kind, _ in rows.kinds()] and len(set(listed)) == len(listed)


def test_an_unlearned_denoiser_marks_the_rows_it_samples_and_no_other(tmp_path):
    with torch.no_grad():
        table, _, _ = evaluate(_inputs(tmp_path), 2, 3, 0.0, 0, [1], 1e-3)
    held = {"learned": False, "denoise_loss": 0.9, "denoise_loss_zero": 1.0, "denoise_loss_linear": 0.8}
    mark = mark_unlearned(table, held)
    marked = {r.name for r in table if r.note.startswith(mark)}
    assert marked == {"ocd", "ocd_lambda", "ocd_temperature", "ocd_ensemble_2", "ocd_mean_network", "ocd_no_scale"}
    assert mark_unlearned(table, {**held, "learned": True}) is None
