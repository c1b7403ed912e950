"""TinyNeRF as a model family: the layer contract with a set of inputs per sample (P > 1)."""

import copy

import numpy as np
import pytest
import torch

from ocd.data.scenes import load_scene
from ocd.layers import perturbation_losses, score_layers
from ocd.models import base
from ocd.models.cut import (
    ModelError,
    cut_at,
    forward_with_layer_weights,
    layer_io,
    linear_cut,
    pool_points,
    weight_layers,
)
from ocd.models.nerf import TinyNeRF, camera_rays, composite
from ocd.models.registry import ModelSpec
from ocd.overfit import overfit_batch, overfit_naive
from ocd.params import BaseParams, DataParams, ModelParams
from ocd.tasks import get_task

SIZE, DEPTHS = 8, 6


@pytest.fixture(scope="module")
def scene():
    return load_scene("nerf_food", DataParams(name="nerf_food", image_size=SIZE, max_train=6, max_test=2))


def _model(scene, encoder="thumbnail"):
    torch.manual_seed(0)
    spec = ModelSpec.from_params(ModelParams(name="tinynerf", depth_samples=DEPTHS, frequencies=3, encoder=encoder),
                                 scene.in_shape, scene.n_outputs, scene.info)
    m = spec.build().eval()
    with torch.no_grad():  # some density everywhere: at random init a view can see none, and learn nothing
        m.layer3.bias[3] = 1.0
    return m


def test_the_model_renders_views_and_its_layers_are_the_three_linear_ones(scene):
    m = _model(scene)
    assert weight_layers(m) == ["layer1", "layer2", "layer3"]
    assert m.layer1.weight.shape == (128, 3 + 6 * 3) and m.layer3.weight.shape == (4, 128)
    out = m(scene.x_train[:3])
    assert out.shape == (3, SIZE * SIZE * 3) and 0 <= out.min() and out.max() <= 1


def test_the_cut_at_every_layer_composes_back_to_the_model(scene):
    m = _model(scene)
    x = scene.x_train[:3]
    for name in weight_layers(m):
        cut = cut_at(m, name)
        inp = cut.enter(x)
        assert inp.points == SIZE * SIZE * DEPTHS and inp.ctx.shape == (3, DEPTHS)
        with torch.no_grad():
            torch.testing.assert_close(cut.forward(inp), m(x))


def test_per_sample_weights_equal_model_copies(scene):
    m = _model(scene)
    x = scene.x_train[:3]
    w = m.layer2.weight.detach()
    weights = w + 0.2 * torch.randn(3, *w.shape)
    with torch.no_grad():
        got = forward_with_layer_weights(m, "layer2", weights, x)
    for b in range(3):
        other = copy.deepcopy(m)
        with torch.no_grad():
            other.layer2.weight.copy_(weights[b])
            torch.testing.assert_close(got[b], other(x[b:b + 1])[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", ["layer1", "layer2"])
@pytest.mark.parametrize("optimizer, lr", [("adam", 5e-3), ("sgd", 1.0)])
def test_the_vectorised_overfit_of_a_point_set_equals_the_naive_loop(scene, layer, optimizer, lr):
    """P > 1: the per-sample gradient sums the outer products of all the view's points."""
    m = _model(scene)
    task = scene.make_task()
    x, y = scene.x_train[:4], scene.y_train[:4]
    cut = linear_cut(m, layer)
    fast = overfit_batch(cut, task, layer_io(cut, x).inp, y, 10, optimizer, lr)
    slow = overfit_naive(m, layer, task, x, y, 10, optimizer, lr)
    torch.testing.assert_close(fast.delta, slow.delta, rtol=0, atol=2e-5)
    torch.testing.assert_close(fast.loss_after, slow.loss_after, rtol=1e-4, atol=1e-7)
    assert (fast.loss_after < fast.loss_before).all()


def test_the_conditioning_is_the_transmittance_weighted_mean_over_the_view(scene):
    m = _model(scene)
    x = scene.x_train[:2]
    cut = linear_cut(m, "layer1")
    io = layer_io(cut, x)
    with torch.no_grad():
        _, weights = m.render(m._run(torch.relu(io.z), 1, 3), io.inp.ctx)
    w = weights.flatten(1)
    w = w / w.sum(1, keepdim=True)
    expected = (w[..., None] * torch.relu(io.z)).sum(1)
    torch.testing.assert_close(io.cond[1], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(io.cond[0], pool_points(cut, io.inp.h, io.z, io.inp.ctx))
    assert io.cond[2].shape == (2, 8 * 8 * 3)  # the thumbnail: 8 x 8 pixels
    assert _model(scene, "random").encode_image(io.output).shape == (2, 256)
    # the thumbnail is a picture (channels first) that diffusion.output_encoder conv can read; the random
    # projection is none
    assert cut.output_grid == (3, 8, 8) and linear_cut(_model(scene, "random"), "layer1").output_grid == ()
    red = io.output.view(2, m.height, m.width, 3)[..., 0]
    torch.testing.assert_close(io.cond[2].view(2, 3, 8, 8)[:, 0], torch.nn.functional.adaptive_avg_pool2d(red, 8))


def test_layer_scores_run_on_a_point_set(scene):
    m = _model(scene)
    task = scene.make_task()
    x, y = scene.x_train[:3], scene.y_train[:3]
    losses = perturbation_losses(m, task, "layer2", x, y, draws=5, noise=0.1, seed=0, points_per_pass=1)
    again = perturbation_losses(m, task, "layer2", x, y, draws=5, noise=0.1, seed=0, points_per_pass=10**9)
    assert losses.shape == (3, 5) and torch.isfinite(losses).all()
    torch.testing.assert_close(losses, again)  # one draw a pass or all at once: the same draws
    scores = score_layers(m, task, x, y, draws=20, noise=0.1, seed=0, scope="selectable")
    assert [s.name for s in scores] == ["layer1", "layer2", "layer3"]


def test_fit_trains_on_rays_and_lowers_the_loss(scene):
    m = _model(scene)
    task = scene.make_task()
    params = BaseParams(epochs=3, lr=5e-3, batch_size=64, seed=0, schedule="constant")
    with torch.no_grad():
        before = task.metrics(m(scene.x_train), scene.y_train)["mse"]
    history = base.train(m, task, scene.x_train, scene.y_train, params, progress=False)
    assert len(history) == 3 and history[-1] < history[0]
    with torch.no_grad():
        assert task.metrics(m(scene.x_train), scene.y_train)["mse"] < before


def test_tinynerf_needs_a_rendered_scene():
    with pytest.raises(ModelError, match="not a rendered scene"):
        ModelSpec.from_params(ModelParams(name="tinynerf"), (1, 28, 28), 10, {"source": "mnist"})


def test_rays_and_compositing():
    pose = torch.eye(4)[None]
    pose[0, 2, 3] = 3.0  # at z = 3 looking down -z
    o, d = camera_rays(pose, 2, 2, focal=1.0)
    assert torch.allclose(o, torch.tensor([0.0, 0.0, 3.0]).expand(1, 4, 3))
    assert torch.allclose(d[0, 0], torch.tensor([-0.5, 0.5, -1.0]))  # the top-left pixel's centre
    depths = torch.linspace(2, 6, 4)
    sigma = torch.tensor([0.0, 1e6, 0.0, 0.0])  # an opaque wall at the second depth
    rgb = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]])
    colour, weights = composite(rgb, sigma, depths)
    torch.testing.assert_close(colour, torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))


def test_the_rendering_task_reports_mse_and_psnr():
    task = get_task("rendering", height=1, width=1)
    out, y = torch.zeros(2, 3), torch.full((2, 3), 0.1)
    m = task.metrics(out, y)
    assert m["mse"] == pytest.approx(0.01) and m["psnr"] == pytest.approx(20.0)
    assert m["mse_sd"] == pytest.approx(0.0, abs=1e-9)
    assert task.as_images(out).shape == (2, 1, 1, 3)
    assert np.isclose(float(task.ensemble(torch.stack([out, out + 1])).mean()), 0.5)


def test_an_unknown_encoder_is_refused():
    with pytest.raises(ModelError, match="unknown image encoder 'vgg'"):
        TinyNeRF(4, 4, 4.0, 2.0, 6.0, encoder="vgg")
