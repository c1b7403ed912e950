import copy

import pytest
import torch

from ocd.models.cut import ModelError, cut_at, forward_with_layer_weights, weight_layers
from ocd.models.registry import ModelSpec
from ocd.models.sequential import lenet5
from ocd.params import ModelParams


def test_lenet5_layers_and_shapes():
    m = lenet5((1, 28, 28), 10)
    assert weight_layers(m) == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    assert m.fc1.weight.shape == (84, 120) and m.fc2.weight.shape == (10, 84)
    assert m.conv1.padding == (2, 2) and m.conv3.weight.shape == (120, 16, 5, 5)
    assert m(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_lenet5_refuses_other_input_shapes():
    with pytest.raises(ModelError, match=r"\(1, 28, 28\).*\(1, 8, 8\)"):
        ModelSpec.from_params(ModelParams(name="lenet5"), (1, 8, 8), 10).build()


def test_mlp_spec_roundtrip_rebuilds_the_same_architecture():
    spec = ModelSpec.from_params(ModelParams(name="mlp", hidden=[32, 16], dropout=0.1), (1, 8, 8), 3)
    again = ModelSpec.from_dict(spec.to_dict())
    assert again == spec
    m = again.build()
    assert weight_layers(m) == ["fc1", "fc2", "fc3"]
    assert m.fc1.weight.shape == (32, 64) and m.fc3.weight.shape == (3, 16)


def test_unknown_model_and_layer_name_list_the_choices():
    with pytest.raises(ModelError, match="valid choices: convtasnet, lenet5, mlp, mulcat"):
        ModelSpec.from_params(ModelParams(name="resnet"), (1, 28, 28), 10)
    with pytest.raises(ModelError, match="valid names: conv1, conv2, conv3, fc1, fc2"):
        cut_at(lenet5((1, 28, 28), 10), "relu4")


def test_cut_composes_back_to_the_model():
    torch.manual_seed(0)
    m = lenet5((1, 28, 28), 10).eval()
    x = torch.randn(4, 1, 28, 28)
    for name in weight_layers(m):
        cut = cut_at(m, name)
        torch.testing.assert_close(cut.forward(cut.enter(x)), m(x))


@pytest.mark.parametrize("layer", ["conv1", "conv2", "fc1", "fc2"])
def test_per_sample_weights_equal_a_loop_over_model_copies(layer):
    torch.manual_seed(0)
    m = lenet5((1, 28, 28), 10).eval()
    x = torch.randn(5, 1, 28, 28)
    w = getattr(m, layer).weight.detach()
    weights = w + 0.3 * torch.randn(5, *w.shape)
    got = forward_with_layer_weights(m, layer, weights, x)
    for b in range(5):
        copy_b = copy.deepcopy(m)
        with torch.no_grad():
            getattr(copy_b, layer).weight.copy_(weights[b])
        torch.testing.assert_close(got[b], copy_b(x[b:b + 1])[0], rtol=1e-5, atol=1e-5)
    # the model itself is untouched
    assert torch.equal(getattr(m, layer).weight, w)


def test_per_sample_weights_are_differentiable_per_sample():
    torch.manual_seed(0)
    m = ModelSpec("mlp", (4,), 3, {"hidden": [5], "dropout": 0.0}).build().eval()
    x = torch.randn(2, 4)
    weights = m.fc1.weight.detach().repeat(2, 1, 1).requires_grad_()
    forward_with_layer_weights(m, "fc1", weights, x)[0].sum().backward()
    assert weights.grad[0].abs().sum() > 0 and weights.grad[1].abs().sum() == 0


def test_per_sample_weights_shape_mismatch_is_an_error():
    m = lenet5((1, 28, 28), 10)
    with pytest.raises(ModelError, match="per-sample weights have shape"):
        forward_with_layer_weights(m, "fc1", torch.zeros(2, 84, 121), torch.zeros(2, 1, 28, 28))


def test_the_registry_imports_only_the_family_it_builds():
    """Issue 42: registering families costs nothing until one is built, and then only that one."""
    import subprocess
    import sys

    from ocd.models.registry import MODELS

    code = ("import sys; from ocd.models.registry import ModelSpec; from ocd.params import ModelParams; "
            "before = sorted(m for m in sys.modules if m.startswith('ocd.models.')); "
            "ModelSpec.from_params(ModelParams(name='lenet5'), (1, 28, 28), 10).build(); "
            "after = sorted(m for m in sys.modules if m.startswith('ocd.models.')); "
            "print(' '.join(before)); print(' '.join(after)); print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert "ocd.models.sequential" not in out[0].split() and "torch" not in out[0]
    assert "ocd.models.sequential" in out[1].split()
    assert not {"ocd.models.mulcat", "ocd.models.nerf", "ocd.models.sentence"} & set(out[1].split())
    assert out[2] == "False"
    for name, arch in MODELS.items():  # every entry names a builder that exists
        assert callable(arch.builder()), name
