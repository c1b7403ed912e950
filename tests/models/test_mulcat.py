"""The MulCat separator (ocd/models/mulcat.py): its cuts, the conditioning's encoding, dynamic mixing."""

import pytest
import torch

from ocd.models import mulcat
from ocd.models.cut import ModelError, cut_at, layer_io, linear_cut, weight_layers
from ocd.models.registry import ModelSpec
from ocd.models.separator import pooled_spectrogram
from ocd.params import ModelParams

T = 1000


def model(**options):
    torch.manual_seed(0)
    return mulcat.MulCatSeparator((1, T), 2 * T, 2, **{"width": 8, "blocks": 2, "window": 16, "chunk": 10, **options})


LINEAR = ["bottleneck", "proj1_intra", "proj1_inter", "proj2_intra", "proj2_inter", "mask"]


@pytest.mark.parametrize("name", LINEAR + ["encoder", "decoder"])
def test_every_weight_layer_cuts_the_forward_pass_exactly(name):
    m = model().eval()
    x = torch.randn(3, 1, T)
    cut = cut_at(m, name)
    with torch.no_grad():
        inp = cut.enter(x)
        assert torch.equal(cut.leave(cut.apply(inp), inp.ctx), m(x))
    assert weight_layers(m) == ["encoder", "bottleneck", "proj1_intra", "proj1_inter", "proj2_intra", "proj2_inter",
                                "mask", "decoder"]
    if name not in LINEAR:  # the convolutions are cut for scoring (layers.scope all), not overfitted
        with pytest.raises(ModelError, match="needs a Linear layer"):
            linear_cut(m, name)
        return
    with torch.no_grad():
        io = layer_io(linear_cut(m, name), x)
    positions = m.n_chunks * m.chunk if name.startswith("proj") else m.frames
    assert inp.h.shape == (3, positions, cut.layer.in_features)
    assert [p.shape[1] for p in io.cond] == [cut.layer.in_features, cut.layer.out_features, 2 * 64]


def test_shapes_and_the_dataset_are_checked():
    with pytest.raises(ModelError, match=r"shape \(1, T\)"):
        mulcat.MulCatSeparator((28, 28), 10, 2, width=8, blocks=1, window=16, chunk=10)
    with pytest.raises(ModelError, match="use it with data.name=speech_mix"):
        ModelSpec.from_params(ModelParams(name="mulcat"), (1, 28, 28), 10, {"pixel_max": 255})
    spec = ModelSpec.from_params(ModelParams(name="mulcat", width=8, chunk=10), (1, T), 3 * T, {"speakers": 3})
    assert spec.build()(torch.zeros(2, 1, T)).shape == (2, 3 * T)
    assert cut_at(spec.build(), "proj1_inter").name == "proj1_inter"


def test_time_scales_pool_the_activation_over_stretches_of_time_and_the_whole_comes_first():
    """Issue 43, item 3: the conditioning reads the activation at several time scales."""
    x = torch.randn(3, 1, T)
    plain, scaled = model(), model(time_scales=(1, 2, 4))
    with torch.no_grad():
        cut = linear_cut(scaled, "proj1_inter")
        io, ref = layer_io(cut, x), layer_io(linear_cut(plain, "proj1_inter"), x)
        a = cut.activation(cut.apply(cut.enter(x)))  # [B, P, out]
    out = cut.layer.out_features
    assert io.cond[1].shape == (3, 7 * out)
    torch.testing.assert_close(io.cond[1][:, :out], ref.cond[1])  # scale 1: the mean over all points, as before
    torch.testing.assert_close(io.cond[0], ref.cond[0])  # the layer input stays one mean (rank1, u)
    halves = a.tensor_split(2, dim=1)
    torch.testing.assert_close(io.cond[1][:, out:3 * out], torch.cat([h.mean(1) for h in halves], 1))
    assert not torch.allclose(io.cond[1][:, out:2 * out], io.cond[1][:, 2 * out:3 * out])  # the stretches differ
    # at its default the option stays out of the spec: models saved before it rebuild as they were
    info = {"speakers": 2}
    assert "time_scales" not in ModelSpec.from_params(ModelParams(name="mulcat"), (1, T), 2 * T, info).options
    spec = ModelSpec.from_params(ModelParams(name="mulcat", time_scales=[1, 4]), (1, T), 2 * T, info)
    assert linear_cut(spec.build(), "proj1_inter").scales == (1, 4)


@pytest.mark.parametrize("scales", [[], [0, 1], [2, 2]])
def test_time_scales_that_cannot_pool_are_refused_by_name(scales):
    from ocd.params import ParamsError, parse_params

    with pytest.raises(ParamsError, match="model.time_scales must list distinct positive counts"):
        parse_params({"model": {"time_scales": scales}})


@pytest.mark.parametrize("name", LINEAR + ["encoder", "decoder"])
def test_every_cut_says_the_output_part_is_a_picture_per_speaker(name):
    """Issue 43, item 3: model.spectrum_grid sets the pooled spectrogram's bands and time bins,
    and the cut names the picture (speakers x grid x grid) that diffusion.output_encoder conv reads."""
    m = model(spectrum_grid=4).eval()
    cut = cut_at(m, name)
    assert cut.output_grid == (2, 4, 4)
    y = torch.randn(3, 2 * T)
    encoded = cut.encode_output(y)
    assert encoded.shape == (3, 2 * 16)
    # channel-major: speaker 1's picture is the pooled spectrogram of its own signal
    alone = pooled_spectrogram(y[:, T:], 1, 4)
    torch.testing.assert_close(encoded.reshape(3, 2, 4, 4)[:, 1], alone.reshape(3, 4, 4))


def test_the_spectrum_grid_stays_out_of_the_spec_at_its_default_and_is_refused_out_of_range():
    from ocd.params import ParamsError, parse_params

    info = {"speakers": 2}
    assert "spectrum_grid" not in ModelSpec.from_params(ModelParams(name="mulcat"), (1, T), 2 * T, info).options
    spec = ModelSpec.from_params(ModelParams(name="mulcat", spectrum_grid=16), (1, T), 2 * T, info)
    assert linear_cut(spec.build(), "proj1_inter").output_grid == (2, 16, 16)
    with pytest.raises(ModelError, match=r"model.spectrum_grid must lie in \[1, 129\]"):
        model(spectrum_grid=200)
    with pytest.raises(ParamsError, match="model.spectrum_grid"):
        parse_params({"model": {"spectrum_grid": 0}})
