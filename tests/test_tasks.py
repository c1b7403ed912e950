import pytest
import torch

from ocd.tasks import get_task


def test_classification_metrics_and_ensemble():
    task = get_task("classification")
    out = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    m = task.metrics(out, torch.tensor([0, 0]))
    assert m["acc"] == 0.5 and m["ce"] > 0
    assert task.describe(out[0]).startswith("class 0")


def test_regression_rmse_in_original_units_and_mean_ensemble():
    task = get_task("regression", target_mean=10.0, target_scale=2.0)
    out, y = torch.tensor([[1.0], [0.0]]), torch.tensor([0.0, 0.0])
    assert task.metrics(out, y) == {"mse": 0.5, "rmse": pytest.approx(2.0 * 0.5**0.5)}
    torch.testing.assert_close(task.ensemble(torch.stack([out, -out])), torch.zeros(2, 1))
    assert task.unsupervised_loss is None
    assert task.describe(out[0]) == "12.0000"


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(ValueError, match="classification, regression"):
        get_task("ranking")
