"""The Conv-TasNet separator (ocd/models/convtasnet.py): its cuts, its spec, its training."""

import pytest
import torch

from ocd.models import convtasnet
from ocd.models.cut import ModelError, cut_at, layer_io, linear_cut, weight_layers
from ocd.models.registry import ModelSpec
from ocd.params import BaseParams, ModelParams

T = 1000
LAYERS = ["encoder", "bottleneck", "block1_in", "block1_out", "block2_in", "block2_out", "block3_in", "block3_out",
          "block4_in", "block4_out", "mask", "decoder"]


def model(**options):
    torch.manual_seed(0)
    return convtasnet.ConvTasNet((1, T), 2 * T, 2, **{"width": 8, "blocks": 2, "repeats": 2, "window": 16,
                                                       **options})


@pytest.mark.parametrize("name", LAYERS)
def test_every_weight_layer_cuts_the_forward_pass_exactly(name):
    m = model(spectrum_grid=4).eval()
    for p in m.parameters():  # away from the initial values (gains of 1, biases of 0), so that an
        p.data.add_(0.1 * torch.randn_like(p))  # ignored norm or PReLU would show
    x = torch.randn(3, 1, T)
    cut = cut_at(m, name)
    with torch.no_grad():
        inp = cut.enter(x)
        assert torch.equal(cut.leave(cut.apply(inp), inp.ctx), m(x))
    assert weight_layers(m) == LAYERS
    assert cut.output_grid == (2, 4, 4)
    if name in ("encoder", "decoder"):  # the convolutions are cut for scoring (layers.scope all), not overfitted
        with pytest.raises(ModelError, match="needs a Linear layer"):
            linear_cut(m, name)
        return
    with torch.no_grad():
        io = layer_io(linear_cut(m, name), x)
    assert inp.h.shape == (3, m.frames, cut.layer.in_features)  # one input per frame
    assert [p.shape[1] for p in io.cond] == [cut.layer.in_features, cut.layer.out_features, 2 * 16]


def test_the_activation_after_a_layer_is_the_networks_own():
    """The conditioning's a_L: the PReLU after a block's first Linear, the mask's sigmoid."""
    m = model()
    with torch.no_grad():
        m.prelus[2].weight.fill_(0.5)  # block 2's first PReLU
        z = torch.randn(2, 5, 16)
        assert torch.equal(cut_at(m, "block2_in").activation(z), m.prelus[2](z))
        assert torch.equal(cut_at(m, "mask").activation(z), torch.sigmoid(z))
        assert torch.equal(cut_at(m, "block2_out").activation(z), z)


def test_time_scales_pool_every_frame_layer_over_stretches_of_time():
    cut = linear_cut(model(time_scales=(1, 2)), "block4_out")
    with torch.no_grad():
        io = layer_io(cut, torch.randn(2, 1, T))
    assert cut.scales == (1, 2) and io.cond[1].shape == (2, 3 * 8)


def test_the_spec_comes_from_params_and_bad_shapes_are_refused_by_name():
    info = {"speakers": 3, "sample_rate": 8000, "mixture_rms": 0.1}
    spec = ModelSpec.from_params(ModelParams(name="convtasnet", width=8, blocks=2, repeats=1), (1, T), 3 * T, info)
    assert spec.options == {"speakers": 3, "width": 8, "blocks": 2, "repeats": 1, "window": 32, "sample_rate": 8000,
                            "level": 0.1}
    assert spec.build()(torch.zeros(2, 1, T)).shape == (2, 3 * T)
    with pytest.raises(ModelError, match="convtasnet separates speech mixtures: use it with data.name=speech_mix"):
        ModelSpec.from_params(ModelParams(name="convtasnet"), (1, 28, 28), 10, {"pixel_max": 255})
    with pytest.raises(ModelError, match=r"convtasnet separates one-channel signals of shape \(1, T\)"):
        convtasnet.ConvTasNet((28, 28), 10, 2, width=8, blocks=1, repeats=1, window=16)
    with pytest.raises(ModelError, match="model.window must be an even number"):
        model(window=15)
    with pytest.raises(ModelError, match="cannot be cut at 'block9_in': its weight layers are encoder, bottleneck"):
        model().cut("block9_in")
    from ocd.params import ParamsError, parse_params

    with pytest.raises(ParamsError, match="model.repeats"):
        parse_params({"model": {"repeats": 0}})


def test_training_clips_the_gradient_and_learns_to_separate_two_tones():
    """A few epochs on two tones of their own pitch, remixed every minibatch: the SI-SNR loss
    falls below what the mixture itself scores as both outputs (the trivial separator), and no
    step's gradient reaches the optimiser with a norm above the family's clip."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from ocd.tasks import separation

    gen = torch.Generator().manual_seed(0)
    t = torch.arange(T) / 8000

    def tones(lo, hi):
        f, phase = torch.empty(32, 1).uniform_(lo, hi, generator=gen), torch.rand(32, 1, generator=gen) * 6
        return torch.sin(2 * torch.pi * f * t + phase)

    low, high = tones(150, 250), tones(900, 1200)
    y = 0.1 * torch.cat([low, high], 1)
    x = (y[:, :T] + y[:, T:])[:, None]
    task = separation(2, T)
    m = model()
    norms = []

    def spy(opt, args, kwargs):  # the gradient's norm as each step is about to use it
        norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in m.parameters()])).item())

    hook = register_optimizer_step_pre_hook(spy)
    try:
        m.fit(task, x, y, BaseParams(epochs=12, lr=0.01, batch_size=8, dynamic_mixing=True), "cpu", progress=False)
    finally:
        hook.remove()
    with torch.no_grad():
        loss, trivial = task.loss(m(x), y).item(), task.loss(x[:, 0].repeat(1, 2), y).item()
    print(f"loss {loss:.2f} dB, trivial {trivial:.2f}, largest gradient norm {max(norms):.2f}")
    assert max(norms) <= convtasnet.ConvTasNet.grad_clip + 1e-3
    assert loss < trivial - 5, (loss, trivial)  # 5 dB better than leaving the mixture as it is
