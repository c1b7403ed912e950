import math

import pytest
import torch

from ocd.calibration import choose_temperature, expected_calibration_error, fit_temperature, reliability
from ocd.tasks import get_task

TASK = get_task("classification")


def _sampled(n=20000, temperature=1.0, seed=0):
    """Labels drawn from softmax(logits / temperature): logits / temperature are calibrated."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.multinomial((logits / temperature).softmax(-1), 1, generator=g)[:, 0]
    return logits, y


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_the_fitted_temperature_recovers_the_one_that_made_the_labels(true_t):
    logits, y = _sampled(temperature=true_t)
    t = fit_temperature(TASK.per_sample_loss, logits, y, TASK.with_temperature)
    assert t == pytest.approx(true_t, rel=0.05)


def test_ece_is_near_zero_when_calibrated_and_large_when_overconfident():
    logits, y = _sampled(temperature=1.0)
    assert expected_calibration_error(logits, y) < 0.01
    assert expected_calibration_error(4 * logits, y) > 0.1  # sharpened: overconfident
    # a hand-made case: confidence 0.9 everywhere, right half the time: ECE = 0.4
    two = torch.tensor([[math.log(9.0), 0.0]]).repeat(10, 1)
    assert expected_calibration_error(two, torch.tensor([0, 1] * 5)) == pytest.approx(0.4)


def test_reliability_bins_count_every_row_once():
    logits, y = _sampled(n=1000)
    bins = reliability(logits, y)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 1000
    for b in bins:
        if b["count"]:
            assert (b["bin_centre"] - 1 / 30) <= b["confidence"] <= (b["bin_centre"] + 1 / 30) + 1e-12
        else:
            assert b["accuracy"] is None


def test_calibration_rows_that_cannot_identify_a_temperature_keep_t_1():
    # every calibration row right (a small easy set): the loss falls without end as T -> 0
    logits, y = _sampled(n=91, temperature=0.05, seed=1)
    right = logits.argmax(-1) == y
    logits, y = logits[right], y[right]
    assert fit_temperature(TASK.per_sample_loss, logits, y, TASK.with_temperature) < 0.05  # the absurd fit
    t, note = choose_temperature(TASK.per_sample_loss, logits, y, TASK.with_temperature)
    assert t == 1.0 and "not fitted, all" in note and "calibration rows are right" in note
    # rows the temperature can be fitted on: the fit, and the note says so
    logits, y = _sampled(temperature=2.5)
    t, note = choose_temperature(TASK.per_sample_loss, logits, y, TASK.with_temperature)
    assert t == pytest.approx(2.5, rel=0.05) and note == f"T = {t:.3f} fitted on 20000 calibration rows"
