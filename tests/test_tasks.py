import pytest
import torch

from ocd.tasks import get_task, si_snr


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


def test_separation_is_permutation_invariant_and_measures_the_improvement():
    torch.manual_seed(0)
    t = 2000
    sources = torch.randn(5, 3, t)
    y = sources.reshape(5, -1)
    task = get_task("separation", speakers=3, length=t)
    swapped = sources[:, [2, 0, 1]].reshape(5, -1)
    assert torch.allclose(task.per_sample_loss(swapped, y), task.per_sample_loss(y, y))
    assert task.metrics(y, y)["si_sdr"] > 60
    mixture = sources.sum(1, keepdim=True).expand(-1, 3, -1).reshape(5, -1)
    assert abs(task.metrics(mixture, y)["si_sdri"]) < 1e-9  # the mixture itself improves nothing
    noisy = y + 0.3 * torch.randn_like(y)
    m = task.metrics(noisy, y)
    assert m["si_sdri"] > 5 and m["si_sdr"] == pytest.approx(-m["neg_si_sdr"])
    # an ensemble matches its members to the first before averaging: a swapped copy is the same member
    assert torch.allclose(task.ensemble(torch.stack([noisy, noisy.reshape(5, 3, t)[:, [1, 2, 0]].reshape(5, -1)])),
                          noisy, atol=1e-6)


def test_a_separation_ensemble_aligns_its_members_sign_and_scale_before_the_mean():
    # SI-SDR cannot see a channel's sign or scale, so members trained from different seeds may
    # learn any of them; averaged raw, a member of opposite sign cancels the first
    torch.manual_seed(2)
    t = 2000
    sources = torch.randn(4, 2, t)
    y = sources.reshape(4, -1)
    task = get_task("separation", speakers=2, length=t)
    one = sources + 0.3 * torch.randn_like(sources)
    two = sources + 0.3 * torch.randn_like(sources)
    flipped = two[:, [1, 0]] * torch.tensor([-3.0, 0.5])[None, :, None]  # swapped, one channel negated, rescaled
    members = torch.stack([one.reshape(4, -1), flipped.reshape(4, -1)])
    mean = task.ensemble(members)
    alone = task.metrics(one.reshape(4, -1), y)["si_sdr"]
    assert task.metrics(mean, y)["si_sdr"] > alone + 2  # two independent errors halve the noise: +3 dB
    # each channel is the mean of the members' aligned channels, up to a scale SI-SDR ignores
    assert (si_snr(mean.reshape(4, 2, t), (one + two) / 2) > 30).all()
    # a silent member channel does not divide by zero
    silent = one.clone()
    silent[:, 1] = 0
    assert torch.isfinite(task.ensemble(torch.stack([one.reshape(4, -1), silent.reshape(4, -1)]))).all()


def test_the_hungarian_match_agrees_with_the_exhaustive_one():
    from ocd.tasks import best_permutation

    torch.manual_seed(1)
    pairs = torch.randn(20, 5, 5)
    perm = best_permutation(pairs)
    totals = pairs.gather(1, perm[:, None, :]).squeeze(1).sum(1)
    import itertools

    best = torch.stack([torch.stack([pairs[b, list(p), range(5)].sum() for p in itertools.permutations(range(5))]).max()
                        for b in range(20)])
    assert torch.allclose(totals, best)
