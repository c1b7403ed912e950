import os
import pytest
import yaml

from ocd import presets
from ocd.params import ParamsError


@pytest.mark.parametrize("name", ["paper", "project"])
@pytest.mark.parametrize("cuda", [False, True])
def test_every_preset_parses_with_the_repo_params(name, cuda, params_yaml):
    chosen, notes = presets.resolve(presets.load(name), cuda=cuda)
    params = presets.apply(params_yaml, chosen)  # the dry parse
    for section, values in chosen.items():
        for key, value in values.items():
            assert getattr(getattr(params, section), key) == value, f"{section}.{key}"
    # the flags read back (as dvc's -S reads them, YAML) to the same values
    flags = presets.flags(chosen)
    assert flags[::2] == ["-S"] * (len(flags) // 2)
    back = {}
    for flag in flags[1::2]:
        dotted, text = flag.split("=", 1)
        section, key = dotted.split(".")
        back.setdefault(section, {})[key] = yaml.safe_load(text)
    assert back == chosen


def test_the_paper_preset_is_the_paper_and_says_when_a_cpu_stands_in(params_yaml):
    paper = presets.load("paper")
    assert paper["layers"]["force"] == "fc1" and paper["diffusion"]["target"] == "matrix"
    assert paper["diffusion"]["prediction"] == "eps" and paper["scale"]["loss"] == "paper"
    # what the paper states (issue 40): Adam at 1e-4, Alg. 1's schedule and norm, gradient descent overfits
    assert paper["diffusion"]["lr"] == 1e-4 and paper["diffusion"]["schedule"] == "paper"
    assert paper["overfit"]["optimizer"] == "sgd" and paper["overfit"]["rho"] == "fro"
    assert paper["diffusion"]["ema_warmup"] is True  # the EMA that samples forgets its random start
    # the project preset sets the same keys, to params.yaml's values, read from the defaults (no third copy)
    assert not (presets.PRESETS_DIR / "project.yaml").exists() and "project" in presets.names()
    project = presets.load("project")
    assert {s: set(v) for s, v in project.items()} == {s: set(v) for s, v in paper.items()}
    committed = presets.apply(params_yaml, {})
    for section, values in project.items():
        for key, value in values.items():
            assert getattr(getattr(committed, section), key) == value, f"{section}.{key}"
    on_cpu, notes = presets.resolve(paper, cuda=False)
    assert on_cpu["diffusion"]["preset"] == "cpu" and paper["diffusion"]["preset"] == "paper"
    assert len(notes) == 1 and "needs a GPU" in notes[0] and "diffusion.preset=cpu stands in" in notes[0]
    on_gpu, notes = presets.resolve(paper, cuda=True)
    assert on_gpu["diffusion"]["preset"] == "paper" and notes == []


def test_unknown_presets_and_bad_keys_are_named(params_yaml):
    with pytest.raises(ParamsError, match="unknown preset 'nope'; valid presets: paper, project"):
        presets.load("nope")
    with pytest.raises(ParamsError, match="diffusion: unknown key.*predicton"):
        presets.apply(params_yaml, {"diffusion": {"predicton": "eps"}})


def test_a_preset_is_a_name_never_a_path(tmp_path):
    outside = tmp_path / "x.yaml"
    outside.write_text("diffusion: {steps: 1}\n")
    relative = os.path.relpath(outside.with_suffix(""), presets.PRESETS_DIR)
    with pytest.raises(ParamsError, match="unknown preset"):
        presets.load(relative)


def test_a_preset_extends_another_and_the_speech_paper_sizes_build_with_the_forced_layer(params_yaml):
    import torch

    from ocd.models.cut import linear_cut
    from ocd.models.registry import ModelSpec

    speech, big = presets.load("speech"), presets.load("speech-paper")
    assert big["data"]["name"] == "speech_mix" and big["data"]["speakers"] == 5  # speech's key, its own value
    assert big["diffusion"] == {**speech["diffusion"], "preset": "paper"}
    params = presets.apply(params_yaml, presets.resolve(big, cuda=False)[0])
    length = round(params.data.seconds * 8000)
    spec = ModelSpec.from_params(params.model, (1, length), params.data.speakers * length,
                                 {"speakers": params.data.speakers})
    model = spec.build()
    layer = linear_cut(model, params.layers.force).layer  # the last MulCat block's projection
    assert (layer.in_features, layer.out_features) == (3 * 128, 128)
    with torch.no_grad():
        assert model(torch.zeros(1, 1, length)).shape == (1, 5 * length)


def test_a_preset_that_extends_itself_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(presets, "PRESETS_DIR", tmp_path)
    (tmp_path / "loop.yaml").write_text("extends: loop\nbase: {epochs: 1}\n")
    with pytest.raises(ParamsError, match="'extends' names another preset"):
        presets.load("loop")
