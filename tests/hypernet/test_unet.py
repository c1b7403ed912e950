import pytest
import torch

from ocd.hypernet.unet import PRESETS, UNet, crop, pad, padded_shape


@pytest.mark.parametrize("shape", [(10, 84), (7, 5), (84, 120), (3, 3)])
@pytest.mark.parametrize("square", [True, False])
def test_pad_and_crop_round_trip_odd_shapes(shape, square):
    padded = padded_shape(shape, factor=4, square=square)
    assert padded[0] % 4 == 0 and padded[1] % 4 == 0
    assert padded[0] >= shape[0] and padded[1] >= shape[1]
    if square:
        assert padded[0] == padded[1]
    m = torch.randn(2, *shape)
    p = pad(m, padded)
    assert p.shape == (2, 1, *padded)
    assert p.abs().sum() == pytest.approx(m.abs().sum().item())  # zeros around it
    torch.testing.assert_close(crop(p, shape), m)


def test_square_side_and_pad_errors():
    assert padded_shape((84, 120), 32, square=True, pad_to=128) == (128, 128)
    with pytest.raises(ValueError, match="smaller than the weight matrix"):
        padded_shape((84, 120), 4, square=True, pad_to=64)
    with pytest.raises(ValueError, match="needs diffusion.square"):
        padded_shape((84, 120), 4, square=False, pad_to=128)


@pytest.mark.parametrize("preset, shape", [("tiny", (1, 1, 12, 8)), ("cpu", (2, 1, 12, 84))])
def test_unet_keeps_the_shape(preset, shape):
    net = UNet(PRESETS[preset])
    out = net(torch.randn(shape), torch.randn(shape[0], PRESETS[preset].emb_dim))
    assert out.shape == shape


def test_the_paper_preset_builds_with_five_downsamplings():
    config = PRESETS["paper"]
    assert config.channels == 128 and len(config.mults) - 1 == 5 and config.factor == 32
    net = UNet(config)
    with torch.no_grad():
        out = net(torch.randn(1, 1, 128, 128), torch.randn(1, config.emb_dim))
    assert out.shape == (1, 1, 128, 128)
    attn = sum(type(m).__name__ == "AttnBlock" for m in net.mid)
    assert attn == 2


def test_a_side_that_does_not_halve_evenly_is_an_error():
    with pytest.raises(ValueError, match="multiples of 2"):
        UNet(PRESETS["tiny"])(torch.randn(1, 1, 7, 8), torch.randn(1, PRESETS["tiny"].emb_dim))
