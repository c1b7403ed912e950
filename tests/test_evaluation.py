import copy

import torch

from ocd.evaluation import nearest
from ocd.models.sequential import lenet5
from ocd.pipeline import apply_deltas
from ocd.tasks import get_task


def test_apply_deltas_equals_a_loop_over_model_copies():
    torch.manual_seed(0)
    model = lenet5((1, 28, 28), 10).eval()
    x = torch.randn(5, 1, 28, 28)
    deltas = 0.1 * torch.randn(5, 84, 120)
    got = apply_deltas(model, "fc1", deltas, x, batch=2)
    for i in range(5):
        m = copy.deepcopy(model)
        with torch.no_grad():
            m.fc1.weight.add_(deltas[i])
        torch.testing.assert_close(got[i], m(x[i:i + 1])[0], rtol=1e-5, atol=1e-5)


def test_nearest_finds_the_closest_row():
    pool = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    query = torch.tensor([[9.0, 1.0], [0.5, -0.5], [1.0, 8.0]])
    assert nearest(query, pool, batch=2).tolist() == [1, 0, 2]


def test_ensemble_of_identical_members_is_the_member_and_mixes_distributions():
    task = get_task("classification")
    out = torch.randn(4, 3)
    torch.testing.assert_close(task.ensemble(torch.stack([out, out])).softmax(-1), out.softmax(-1))
    a, b = torch.tensor([[10.0, 0.0]]), torch.tensor([[0.0, 10.0]])
    torch.testing.assert_close(task.ensemble(torch.stack([a, b])).softmax(-1), torch.tensor([[0.5, 0.5]]),
                               atol=1e-4, rtol=0)
