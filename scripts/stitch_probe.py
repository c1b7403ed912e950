"""How much of a separator's quality `ocd predict` keeps over a whole file (issue 43, item 2).

Two test voices (eSpeak NG voices no train mixture uses) each say sentences
that are not in the corpus, one after another; their sum, at 16 kHz, is the
file a user gives `ocd predict`. The base separator's outputs on the file's
windows (1 s, hop 0.5 s, as `ocd predict` cuts it) are scored three ways:

- window by window: the SI-SDR improvement of each non-overlapping window's
  outputs, in that window's best speaker order (what evaluate's rows measure);
- joined as before issue 43 (channels ordered by the overlap, cross-faded) and
  as now (each window's channels first given the gains under which they add up
  to the window's mixture): per second, each second in its best order, and over
  the whole file in one order.

    .venv/bin/python scripts/stitch_probe.py --base artifacts/base --out docs/runs/speech-stitch [--seconds 3 30]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.signal import resample_poly

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ocd.artifacts import write_wav  # noqa: E402
from ocd.data import espeak, speech  # noqa: E402
from ocd.models import base  # noqa: E402
from ocd.models.separator import read_wav  # noqa: E402
from ocd.tasks import best_permutation, si_snr  # noqa: E402

RATE = 16000
# Sentences of our own: no mixture the model trained or was tested on says them.
SENTENCES = [
    "The ferry left the harbour an hour late because of the fog.",
    "Please put the green folder on the second shelf by the window.",
    "My brother planted three apple trees behind the old barn last spring.",
    "We should check the tyres before we drive over the mountain pass.",
    "The library closes early on Fridays during the summer months.",
    "She painted the kitchen a pale yellow and hung new curtains.",
    "Nobody expected the small team to win the regional final.",
    "The recipe calls for two eggs, a cup of flour and some butter.",
    "A strong wind blew the leaves across the empty playground.",
    "He forgot his umbrella on the train and walked home in the rain.",
    "The museum opened a new wing for modern sculpture this year.",
    "Turn left at the bakery and the station is on your right.",
]


def voice(variant: str, rate: int, pitch: int, texts: list[str], seconds: float) -> np.ndarray:
    """One voice saying ``texts`` in turn, with short pauses, again from the first if need be,
    for ``seconds`` at 16 kHz."""
    waves = espeak.synthesise([(t, variant, rate, pitch) for t in texts])
    pause = np.zeros(int(0.3 * RATE))
    said = np.concatenate([np.concatenate([resample_poly(w.astype(np.float64), 320, 441), pause]) for w in waves])
    out = np.tile(said, int(np.ceil(seconds * RATE / len(said))))[:int(seconds * RATE)]
    return out / np.sqrt(np.mean(out ** 2)) * speech.LEVEL


def si_sdri(est: np.ndarray, ref: np.ndarray, mix: np.ndarray) -> float:
    est, ref, mix = (torch.as_tensor(np.asarray(v, np.float64)) for v in (est, ref, mix))
    pairs = si_snr(est[:, None], ref[None, :])
    perm = best_permutation(pairs[None])[0]
    return float((pairs[perm, torch.arange(len(ref))] - si_snr(mix[None], ref)).mean())


def probe(model, folder: Path, seconds: float, texts: tuple[list[str], list[str]]) -> dict:
    voices = speech.speakers()["test"][:2]
    sources = np.stack([voice(*v, t, seconds) for v, t in zip(voices, texts)])
    peak = np.abs(sources.sum(0)).max()
    sources *= min(1.0, 0.9 / peak)
    folder.mkdir(parents=True, exist_ok=True)
    for name, signal in (("mix", sources.sum(0)), ("s0", sources[0]), ("s1", sources[1])):
        write_wav(folder / f"{name}.wav", signal, RATE)
    _, windows = model.read_inputs(folder / "mix.wav")
    _, n, scale, starts, mixture = model._pending
    with torch.no_grad():
        out = torch.cat([model(windows[i:i + 16]) for i in range(0, len(windows), 16)])
    out = out.reshape(len(windows), model.speakers, model.samples).numpy().astype(np.float64)
    sr, w = model.sample_rate, model.samples
    truth = np.stack([read_wav(folder / f"s{c}.wav", sr) for c in (0, 1)])
    padded = np.zeros((2, starts[-1] + w))
    padded[:, :n] = truth * scale
    whole_windows = [i for i, s in enumerate(starts) if s % w == 0 and s + w <= n]
    windowed = [si_sdri(out[i], padded[:, starts[i]:starts[i] + w], padded[:, starts[i]:starts[i] + w].sum(0))
                for i in whole_windows]
    record = {"seconds": seconds, "voices": [v[0] for v in voices], "windows": len(starts),
              "windowed": float(np.mean(windowed))}
    mix = truth.sum(0)
    for how, given in (("joined_before", None), ("joined_now", mixture)):
        joined = model._join(out, starts, given)[:, :n] / scale
        record[how] = {
            "per_second": float(np.mean([si_sdri(joined[:, s:s + w], truth[:, s:s + w], mix[s:s + w])
                                         for s in (starts[i] for i in whole_windows)])),
            "whole": si_sdri(joined, truth, mix)}
    return record


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", type=Path, default=Path("artifacts/base"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seconds", type=float, nargs="+", default=[3.0, 30.0])
    args = ap.parse_args()
    model = base.load(args.base).model.cpu().eval()
    records = []
    for k, seconds in enumerate(args.seconds):
        half = len(SENTENCES) // 2
        texts = (SENTENCES[:half], SENTENCES[half:]) if k % 2 == 0 else (SENTENCES[half:], SENTENCES[:half])
        records.append(probe(model, args.out / f"{seconds:g}s", seconds, texts))
        print(json.dumps(records[-1]), flush=True)
    (args.out / "records.json").write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
