import pytest
import torch

from ocd.models.cut import LayerInput, ModelError, linear_cut
from ocd.models.registry import ModelSpec
from ocd.models.sequential import lenet5
from ocd.overfit import Overfit, overfit_batch, overfit_naive
from ocd.store import rank_one_share
from ocd.tasks import get_task

TASK = get_task("classification")


def _lenet():
    torch.manual_seed(0)
    return lenet5((1, 28, 28), 10).eval()


def _mlp():
    torch.manual_seed(0)
    return ModelSpec("mlp", (1, 8, 8), 10, {"hidden": [32, 16], "dropout": 0.5}).build().eval()


@pytest.mark.parametrize("make, layer, shape", [(_lenet, "fc1", (1, 28, 28)), (_lenet, "fc2", (1, 28, 28)),
                                                (_mlp, "fc2", (1, 8, 8))])
@pytest.mark.parametrize("optimizer, lr", [("adam", 5e-4), ("sgd", 0.05)])
def test_vectorised_overfit_equals_the_naive_loop(make, layer, shape, optimizer, lr):
    model = make()
    x, y = torch.randn(16, *shape), torch.randint(0, 10, (16,))
    cut = linear_cut(model, layer)
    with torch.no_grad():
        h = cut.enter(x)
    fast = overfit_batch(cut, TASK, h, y, steps=3, optimizer=optimizer, lr=lr)
    slow = overfit_naive(model, layer, TASK, x, y, steps=3, optimizer=optimizer, lr=lr)
    assert fast.delta.shape == (16, *getattr(model, layer).weight.shape)
    torch.testing.assert_close(fast.delta, slow.delta, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast.loss_before, slow.loss_before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.loss_after, slow.loss_after, rtol=1e-5, atol=1e-5)
    assert fast.delta.abs().max() > 1e-4  # something moved
    assert (fast.loss_after < fast.loss_before).float().mean() > 0.9


def test_sgd_deltas_are_exactly_rank_one_and_adam_nearly():
    model = _lenet()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    cut = linear_cut(model, "fc1")
    with torch.no_grad():
        h = cut.enter(x)
    sgd = overfit_batch(cut, TASK, h, y, steps=3, optimizer="sgd", lr=0.05)
    adam = overfit_batch(cut, TASK, h, y, steps=3, optimizer="adam", lr=5e-4)
    assert rank_one_share(sgd.delta.numpy()).min() > 1 - 1e-5
    assert rank_one_share(adam.delta.numpy()).mean() > 0.8


def test_the_base_weights_are_untouched():
    model = _lenet()
    before = model.fc1.weight.clone()
    cut = linear_cut(model, "fc1")
    overfit_batch(cut, TASK, LayerInput(torch.randn(4, 1, 120)), torch.randint(0, 10, (4,)), 3, "adam", 1e-2)
    assert torch.equal(model.fc1.weight, before)


def test_a_convolution_is_refused_by_name():
    with pytest.raises(ModelError, match="'conv2' is a Conv2d; the overfit stage needs a Linear"):
        linear_cut(_lenet(), "conv2")


def test_a_first_chunk_of_zero_deltas_stops_the_stage_and_names_the_cause():
    from ocd.delta import StoreError
    from ocd.overfit import check_moved

    zero = Overfit(torch.zeros(4, 3, 2), torch.full((4,), 0.7), torch.full((4,), 0.7))
    with pytest.raises(StoreError, match=r"all 4 deltas of train chunk 0 on layer fc1 are zero; the loss does not "
                                         r"depend on fc1's weight.*mean 0.7"):
        check_moved(zero, "fc1", "train", 0)
    confident = Overfit(torch.zeros(4, 3, 2), torch.zeros(4), torch.zeros(4))
    with pytest.raises(StoreError, match="already 0 in float32"):
        check_moved(confident, "fc1", "train", 0)
    moved = Overfit(torch.zeros(4, 3, 2), torch.zeros(4), torch.zeros(4))
    moved.delta[2, 1, 0] = 1e-9
    check_moved(moved, "fc1", "train", 0)


def test_the_stores_code_digest_covers_the_family_it_overfits_not_the_registry():
    """Issue 42: code_digest hashed ocd/models/registry.py, so registering a new family changed the
    fingerprint of every existing store, and the next `dvc repro` rebuilt stores nothing had changed."""
    import hashlib
    from pathlib import Path

    from ocd.overfit import code_digest

    root = Path(__file__).resolve().parents[1] / "ocd"
    spec = ModelSpec("lenet5", (1, 28, 28), 10)
    expected = hashlib.sha256()
    for name in ("overfit.py", "store.py", "models/cut.py", "models/sequential.py"):
        expected.update((root / name).read_bytes())
    assert spec.family_module() == "ocd.models.sequential"
    assert code_digest(spec.build(), spec) == expected.hexdigest()
