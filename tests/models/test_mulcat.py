"""The MulCat separator (ocd/models/mulcat.py): its cuts, the conditioning's encoding, dynamic mixing."""

import pytest
import torch

from ocd.models import mulcat
from ocd.models.cut import ModelError, cut_at, layer_io, linear_cut, weight_layers
from ocd.models.registry import ModelSpec
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


def test_dynamic_mixing_makes_new_mixtures_that_are_sums_of_the_batch_sources():
    sources = torch.randn(6, 2 * T) * 0.1
    gen = torch.Generator().manual_seed(0)
    x, y = mulcat.dynamic_mix(sources, 2, gen)
    pieces = y.reshape(6, 2, T)
    assert torch.allclose(x[:, 0], pieces.sum(1), atol=1e-6)
    original = sources.reshape(6, 2, T)
    for k in range(2):  # every new source is an old source of the same slot, at a gain within 2.5 dB
        for row in pieces[:, k]:
            ratios = [(row.norm() / old.norm()).item() for old in original[:, k]
                      if torch.allclose(row / row.norm(), old / old.norm(), atol=1e-5)]
            assert ratios and 10 ** (-2.5 / 20) - 1e-4 <= ratios[0] <= 10 ** (2.5 / 20) + 1e-4
    x2, _ = mulcat.dynamic_mix(sources, 2, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)
