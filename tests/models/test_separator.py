"""What the separators share (ocd/models/separator.py): dynamic mixing, and `ocd predict`
joining a whole file's windows (for every separator family)."""

import pytest
import torch

from ocd.models import separator
from ocd.models.registry import ModelSpec

T = 1000


def test_dynamic_mixing_makes_new_mixtures_that_are_sums_of_the_batch_sources():
    sources = torch.randn(6, 2 * T) * 0.1
    gen = torch.Generator().manual_seed(0)
    x, y = separator.dynamic_mix(sources, 2, gen)
    pieces = y.reshape(6, 2, T)
    assert torch.allclose(x[:, 0], pieces.sum(1), atol=1e-6)
    original = sources.reshape(6, 2, T)
    for k in range(2):  # every new source is an old source of the same slot, at a gain within 2.5 dB
        for row in pieces[:, k]:
            ratios = [(row.norm() / old.norm()).item() for old in original[:, k]
                      if torch.allclose(row / row.norm(), old / old.norm(), atol=1e-5)]
            assert ratios and 10 ** (-2.5 / 20) - 1e-4 <= ratios[0] <= 10 ** (2.5 / 20) + 1e-4
    x2, _ = separator.dynamic_mix(sources, 2, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)


def _voice(rate: int, seconds: float, pitch: tuple[float, float], seed: int):
    """A speech-like test signal: a gliding harmonic tone in bursts of a syllable's length."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    f0 = pitch[0] + (pitch[1] - pitch[0]) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.3 * t + seed))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    tone = sum(np.sin(h * phase) / h for h in range(1, 6))
    syllables = np.repeat(rng.uniform(0.2, 1.0, int(seconds * 5) + 1), rate // 5)[:len(t)]
    envelope = np.convolve(syllables, np.hanning(rate // 25) / (rate // 50), mode="same")
    return 0.15 * tone * envelope


@pytest.mark.parametrize("family", ["mulcat", "convtasnet"])
def test_predict_keeps_the_models_quality_over_a_whole_file(tmp_path, family):
    """Issue 43: on a 30 s mixture at 16 kHz, the joined output of `ocd predict` scores within
    0.2 dB of the same outputs scored window by window. A separator trained on SI-SDR owes
    no window a scale, a sign or a speaker order, so the stand-in model here gives each
    window's channels a gain in +-[0.3, 3] and a random order (with 30% of the other voice
    left in); the join must undo both before it cross-fades."""
    import numpy as np

    from ocd.artifacts import write_wav
    from ocd.tasks import best_permutation, si_snr

    rate, model_rate = 16000, 8000
    sources = np.stack([_voice(rate, 30.0, (110, 160), 1), _voice(rate, 30.0, (210, 290), 2)])
    for name, signal in (("mix", sources.sum(0)), ("s0", sources[0]), ("s1", sources[1])):
        write_wav(tmp_path / f"{name}.wav", signal, rate)
    shape = {"mulcat": {"chunk": 10}, "convtasnet": {"repeats": 1}}[family]
    sep = ModelSpec(family, (1, model_rate), 2 * model_rate, {"speakers": 2, "width": 8, "blocks": 1, "window": 16,
                                                              "sample_rate": model_rate, "level": 0.1,
                                                              **shape}).build()
    names, windows = sep.read_inputs(tmp_path / "mix.wav")
    _, n, scale, starts, _ = sep._pending
    truth = np.stack([separator.read_wav(tmp_path / f"s{c}.wav", model_rate) for c in (0, 1)])  # at the model's rate
    padded = np.zeros((2, starts[-1] + model_rate))
    padded[:, :n] = truth * scale
    rng = np.random.default_rng(0)
    outputs = []
    for s in starts:
        clean = padded[:, s:s + model_rate]
        est = clean + 0.3 * clean[::-1]
        gain = rng.uniform(0.3, 3.0, (2, 1)) * rng.choice([-1.0, 1.0], (2, 1))
        outputs.append((gain * est)[rng.permutation(2)])
    outputs = torch.tensor(np.stack(outputs), dtype=torch.float32)

    def si_sdri(est: np.ndarray, ref: np.ndarray, mix: np.ndarray) -> float:
        """Mean SI-SDR improvement over the speakers, in the best speaker order."""
        est, ref, mix = (torch.as_tensor(np.asarray(v, np.float64)) for v in (est, ref, mix))
        pairs = si_snr(est[:, None], ref[None, :])
        perm = best_permutation(pairs[None])[0]
        return float((pairs[perm, torch.arange(2)] - si_snr(mix[None], ref)).mean())

    seconds = [i for i, s in enumerate(starts) if s % model_rate == 0 and s + model_rate <= n]
    assert len(seconds) == 30 and len(names) == len(starts) == 59
    mixture = padded.sum(0)
    windowed = np.mean([si_sdri(outputs[i].numpy(), padded[:, starts[i]:starts[i] + model_rate],
                                mixture[starts[i]:starts[i] + model_rate]) for i in seconds])
    lines = sep.write_predictions(outputs, outputs, row="base")
    assert lines[-1] == ("mix.wav\tnote: this model separates 2 speakers (its training mixtures'); a mixture of "
                         "more or fewer still comes out as 2 channels")
    joined = np.stack([separator.read_wav(tmp_path / "mix_separated" / f"base_{c}.wav", model_rate) for c in (0, 1)])
    assert joined.shape == truth.shape
    mix = truth.sum(0)
    per_second = np.mean([si_sdri(joined[:, s:s + model_rate], truth[:, s:s + model_rate], mix[s:s + model_rate])
                          for s in (starts[i] for i in seconds)])
    whole = si_sdri(joined, truth, mix)
    assert windowed > 8.0  # the stand-in separates: the test has room to lose
    print(f"windowed {windowed:.3f} dB, joined per second {per_second:.3f} dB, joined whole {whole:.3f} dB")
    assert abs(per_second - windowed) <= 0.2, (windowed, per_second, whole)
    assert abs(whole - windowed) <= 0.2, (windowed, per_second, whole)
