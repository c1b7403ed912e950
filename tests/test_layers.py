import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from ocd.layers import ScoreError, kde_entropy, perturbation_losses, score_layers, select
from ocd.models.cut import ModelError
from ocd.models.sequential import lenet5
from ocd.tasks import get_task

TASK = get_task("classification")


@pytest.mark.parametrize("sigma", [0.01, 1.0, 30.0])
def test_kde_entropy_matches_the_gaussian_closed_form(sigma):
    rng = np.random.default_rng(0)
    values = rng.normal(3.0, sigma, 10_000)
    closed = 0.5 * math.log(2 * math.pi * math.e * sigma**2)
    # Scott's bandwidth widens the variance by 1 + n^(-2/5): +0.012 nats at n = 10,000.
    assert kde_entropy(values) == pytest.approx(closed + 0.5 * math.log1p(10_000 ** -0.4), abs=0.02)


def test_kde_entropy_shifts_by_log_of_a_rescaling_and_handles_degenerate_input():
    rng = np.random.default_rng(1)
    values = rng.exponential(1.0, 5_000)  # skewed, like losses
    # H(c X + b) = H(X) + log c holds exactly for a KDE with Scott's bandwidth
    assert kde_entropy(7.0 * values + 2.0) == pytest.approx(kde_entropy(values) + math.log(7.0), abs=1e-3)
    assert kde_entropy(np.full(100, 0.25)) == float("-inf")
    with pytest.raises(ValueError, match="NaN"):
        kde_entropy(np.array([0.1, np.nan, 0.3]))


def _toy():
    """Two linear layers; `loud` feeds the output through large weights, `quiet` barely matters."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict([
        ("quiet", nn.Linear(4, 4)), ("relu", nn.ReLU()), ("loud", nn.Linear(4, 3)),
    ]))
    with torch.no_grad():
        model.quiet.weight.mul_(0.01)  # its noise is relative: small weights, small noise
        model.loud.weight.mul_(10.0)
    return model.eval()


def test_perturbation_losses_shape_and_seed():
    model = _toy()
    x, y = torch.randn(7, 4), torch.randint(0, 3, (7,))
    a = perturbation_losses(model, TASK, "loud", x, y, draws=50, noise=0.1, seed=3, points_per_pass=64)
    b = perturbation_losses(model, TASK, "loud", x, y, draws=50, noise=0.1, seed=3)
    assert a.shape == (7, 50) and a.dtype == torch.float64
    # the chunking does not change the draws
    torch.testing.assert_close(a, b)
    # zero noise: every draw gives the base loss
    c = perturbation_losses(model, TASK, "loud", x, y, draws=5, noise=0.0, seed=3)
    base = TASK.per_sample_loss(model(x).double(), y)
    torch.testing.assert_close(c, base[:, None].expand(7, 5))


def test_the_obviously_most_sensitive_layer_wins():
    model = _toy()
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    scores = score_layers(model, TASK, x, y, draws=400, noise=0.5, seed=0)
    by_name = {s.name: s.score for s in scores}
    assert by_name["loud"] > by_name["quiet"] + 1.0
    assert select(scores).selected == "loud" and select(scores).runner_up == "quiet"


def test_lenet5_convolutions_are_scored_but_not_selectable():
    torch.manual_seed(0)
    model = lenet5((1, 28, 28), 10).eval()
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    scores = score_layers(model, TASK, x, y, draws=20, noise=0.1, seed=0)
    assert [s.name for s in scores] == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    assert [s.selectable for s in scores] == [False, False, False, True, True]
    sel = select(scores)
    assert set(sel.ranking) == {"fc1", "fc2"} and sel.selected in sel.ranking
    with pytest.raises(ModelError, match="conv2.*not a Linear layer.*valid names: "):
        select(scores, force="conv2")
    with pytest.raises(ModelError, match="'fc9' is not a weight layer"):
        select(scores, force="fc9")
    forced = select(scores, force="fc2")
    assert forced.selected == "fc2" and forced.runner_up == "fc1" and forced.forced


def test_non_finite_losses_name_the_layer():
    model = _toy()
    with torch.no_grad():
        model.loud.bias.fill_(float("nan"))
    x, y = torch.randn(4, 4), torch.randint(0, 3, (4,))
    with pytest.raises(ScoreError, match="layer quiet: .*NaN"):
        score_layers(model, TASK, x, y, draws=10, noise=0.1, seed=0)


def _saturated(scale: float):
    """The toy model with its logits multiplied by ``scale``: margins of order ``scale``."""
    model = _toy()
    with torch.no_grad():
        model.loud.weight.mul_(scale)
        model.loud.bias.mul_(scale)
    return model


def test_confident_samples_keep_a_finite_score():
    """Margins of ~40..700: plain float64 cross-entropy rounds every perturbed loss to 0 (entropy -inf);
    the precise form keeps them apart."""
    model = _saturated(30.0)
    torch.manual_seed(1)
    x = torch.randn(16, 4)
    y = model(x).argmax(1)  # every sample confidently right
    plain = torch.nn.functional.cross_entropy(model(x).double(), y, reduction="none")
    assert (plain == 0).sum() >= 4  # the failure the precise loss avoids
    scores = score_layers(model, TASK, x, y, draws=200, noise=0.1, seed=0)
    assert all(math.isfinite(s.score) and s.degenerate == 0 and s.samples_used == 16 for s in scores)
    torch.testing.assert_close(TASK.precise_loss(model(x), y)[plain > 0], plain[plain > 0], rtol=1e-6, atol=0)


def test_degenerate_samples_are_left_out_and_counted_and_all_degenerate_stops():
    model = _saturated(2000.0)  # margins of ~1e4: e^-margin underflows, the loss is exactly 0
    torch.manual_seed(2)
    x = torch.randn(12, 4)
    y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 3  # four samples confidently wrong: their losses still vary
    scores = score_layers(model, TASK, x, y, draws=100, noise=0.1, seed=0)
    by_name = {s.name: s for s in scores}
    assert by_name["loud"].degenerate >= 8 and by_name["loud"].samples_used <= 4
    with_wrong = score_layers(model, TASK, x[:4], y[:4], draws=100, noise=0.1, seed=0)
    # the score averages exactly the non-degenerate samples
    assert by_name["loud"].score == pytest.approx({s.name: s.score for s in with_wrong}["loud"])
    select(scores)  # a choice can be made

    all_right = model(x).argmax(1)
    saturated = score_layers(model, TASK, x, all_right, draws=100, noise=0.1, seed=0)
    with pytest.raises(ScoreError, match="no layer can be selected.*degenerate samples per layer: quiet 12, loud 12"):
        select(saturated)
    assert select(saturated, force="loud").selected == "loud"  # the user can still choose


def test_a_tie_stops_instead_of_choosing():
    from ocd.layers import LayerScore

    tied = [LayerScore("a", -1.5, 0.1, True, 0.3), LayerScore("b", -1.5, 0.1, True, 0.3)]
    with pytest.raises(ScoreError, match="a and b tie"):
        select(tied)


def test_the_seed_changes_the_draws():
    """A regression test: draws were seeded with (seed << 32) + index, of which torch keeps 32 bits."""
    model = _toy()
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    a = perturbation_losses(model, TASK, "loud", x, y, draws=20, noise=0.1, seed=0)
    b = perturbation_losses(model, TASK, "loud", x, y, draws=20, noise=0.1, seed=1)
    assert not torch.equal(a, b)
    # the draws of one seed are distinct from each other
    assert len({round(float(v), 12) for v in a[0]}) == 20
