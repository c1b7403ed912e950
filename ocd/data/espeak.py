"""Speech from the eSpeak NG synthesiser, shipped as a shared library with its
voice data by the PyPI wheel ``espeakng-loader`` (the audio extra), called
through ``ctypes``.

eSpeak NG keeps state from one utterance to the next (and draws from ``rand``
for some voices), so the same text said twice in one process can differ. A
batch of utterances is therefore synthesised in a fresh process, in a fixed
order, with the random seed reset before each utterance: the same batch
gives the same samples, bit for bit, every time (tests/data/test_speech.py).

Run as ``python -m ocd.data.espeak OUT.npz`` with a JSON list of
``[text, voice, rate, pitch]`` on stdin; :func:`synthesise` does that for
the caller. This module imports no torch, so the process starts fast.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

EXTRA = "the speech synthesiser is an optional extra: pip install -e '.[audio]' (or `make test`, which installs it)"
SYNTHESIS_RATE = 22050  # eSpeak NG's output rate
LANGUAGE = "en"  # every voice speaks English: the sentences are English


class SpeechStackMissing(ImportError):
    """The audio extra is not installed; the message names it."""


def _loader():
    try:
        import espeakng_loader
    except ImportError:
        raise SpeechStackMissing(f"eSpeak NG (package espeakng-loader) is not installed; {EXTRA}") from None
    return espeakng_loader


def voice_variants() -> list[str]:
    """The names of the voice variants eSpeak NG ships (``voices/!v``), sorted."""
    folder = Path(_loader().get_data_path()) / "voices" / "!v"
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def synthesise(jobs: list[tuple[str, str, int, int]]) -> list[np.ndarray]:
    """Speech for each ``(text, variant, rate, pitch)`` (rate in words a minute,
    pitch 0..100), as float32 samples in [-1, 1] at 22,050 Hz, in a fresh process."""
    _loader()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.npz"
        done = subprocess.run([sys.executable, "-m", "ocd.data.espeak", str(out)], input=json.dumps(jobs),
                              text=True, capture_output=True, cwd=Path(__file__).resolve().parents[2])
        if done.returncode != 0:
            raise RuntimeError(f"eSpeak NG failed: {done.stderr.strip()[-500:]}")
        with np.load(out) as arrays:
            return [arrays[f"u{i}"] for i in range(len(jobs))]


class _Engine:
    """eSpeak NG in synchronous mode: ``say`` returns the samples of one utterance."""

    def __init__(self):
        loader = _loader()
        lib = ctypes.CDLL(loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        synchronous = 2  # AUDIO_OUTPUT_SYNCHRONOUS
        rate = lib.espeak_Initialize(synchronous, 0, loader.get_data_path().encode(), 0)
        if rate != SYNTHESIS_RATE:
            raise RuntimeError(f"eSpeak NG did not start (it returned {rate})")
        self.lib, self.chunks = lib, []
        callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self._callback = callback(self._collect)  # kept alive as long as the engine
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n, events) -> int:
        if n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def say(self, text: str, variant: str, rate: int, pitch: int) -> np.ndarray:
        self.chunks = []
        self.lib.espeak_ng_SetRandSeed(0)
        if self.lib.espeak_SetVoiceByName(f"{LANGUAGE}+{variant}".encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice variant {variant!r}")
        self.lib.espeak_SetParameter(1, int(rate), 0)  # espeakRATE
        self.lib.espeak_SetParameter(3, int(pitch), 0)  # espeakPITCH
        data = text.encode("utf-8") + b"\0"
        self.lib.espeak_Synth(data, len(data), 0, 0, 0, 0, None, None)  # position 0, espeakCHARS_AUTO
        self.lib.espeak_Synchronize()
        samples = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
        return samples.astype(np.float32) / 32768.0


def _main(out: str) -> None:
    jobs = json.loads(sys.stdin.read())
    engine = _Engine()
    np.savez(out, **{f"u{i}": engine.say(*job) for i, job in enumerate(jobs)})


if __name__ == "__main__":
    _main(sys.argv[1])
