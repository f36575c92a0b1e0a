"""Writes tests/data/kaldi_fbank_golden.npz: torchaudio's Kaldi fbank, called as AST calls it, on
real recordings and synthetic signals (the reference of tests/test_audio_features.py).

torchaudio is not a dependency of this project: its newest wheel (2.11.0) does not load next to
torch 2.13, but its ``compliance/kaldi.py`` is plain Python on torch. This script loads that one
file on its own (``import torchaudio`` in it gets an empty stand-in module; only its ``mfcc`` would
use it). It was run once, from the repository root, on 2026-12-01:

    pip download torchaudio==2.11.0 --no-deps -d /tmp/ta
    unzip -o /tmp/ta/torchaudio-2.11.0-cp311-cp311-manylinux_2_28_x86_64.whl \\
        'torchaudio/compliance/*' -d /tmp/ta/x
    .venv/bin/python tests/make_kaldi_golden.py --kaldi /tmp/ta/x/torchaudio/compliance/kaldi.py \\
        --clip /root/.pyenv/versions/2.7.18/lib/python2.7/email/test/data/audiotest.au \\
        --pluck /root/.pyenv/versions/3.11.7/lib/python3.11/test/audiodata/pluck-pcm16.wav

The two recordings are test data that CPython ships (an 8 kHz mu-law sound clip of 3.5 s and an
11 kHz plucked string of 0.3 s); they are resampled to 16 kHz mono with librosa and stored as int16
in the npz, so the test needs neither file. For every signal the npz holds ``<name>/waveform``
(int16), ``<name>/window_type``, ``<name>/num_mel_bins`` and the fbank of AST's loader
(``torchaudio.load``'s float32 scaling int16 / 32768, minus the waveform's mean, then
``kaldi.fbank(w, htk_compat=True, sample_frequency=16000, use_energy=False,
window_type=..., num_mel_bins=..., dither=0.0, frame_shift=10)``) in float32 as AST runs it
(``<name>/fbank32``) and in float64 (``<name>/fbank64``, the same code on a float64 waveform,
stored rounded to float32).
"""

import argparse
import importlib.util
import sys
import types

import librosa
import numpy as np
import torch

SAMPLE_RATE = 16000
WINDOW = 34133  # samples of a 2.13 s window (64 frames at 30 fps)


def load_kaldi(path: str):
    sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))
    spec = importlib.util.spec_from_file_location("kaldi", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recording(path: str) -> np.ndarray:
    """A recording as 16 kHz mono int16."""
    y, _ = librosa.load(path, sr=SAMPLE_RATE, mono=True)
    return np.round(np.clip(y, -1, 32767 / 32768) * 32768).astype(np.int16)


def synthetic(num_samples: int, peak: float, seed: int) -> np.ndarray:
    """A chirp, a 440 Hz tone burst and noise, scaled to ``peak`` (fraction of full scale)."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / SAMPLE_RATE
    signal = np.sin(2 * np.pi * (100 + 2000 * t) * t) + 0.3 * rng.standard_normal(num_samples)
    signal += np.where((t > 0.3) & (t < 0.6), np.sin(2 * np.pi * 440 * t), 0.0)
    signal = signal / np.abs(signal).max() * peak
    return np.round(signal * 32767).astype(np.int16)


def signals(clip_path: str, pluck: str) -> dict[str, tuple[np.ndarray, str, int]]:
    """name -> (int16 waveform, window_type, num_mel_bins)."""
    clip = recording(clip_path)
    loud = clip[-WINDOW:]  # the clip's last 2.13 s hold its loudest part
    return {
        "clip_hanning": (loud, "hanning", 128),  # the model's window, AST's settings
        "clip_hamming": (loud[-16000:], "hamming", 128),
        "clip_povey": (loud[-16000:], "povey", 128),
        "clip_64": (clip[:16000], "hanning", 64),
        "pluck_hanning": (recording(pluck), "hanning", 128),  # 0.3 s
        "loud_16000": (synthetic(16000, 1.0, 0), "hanning", 128),
        "moderate_34133": (synthetic(WINDOW, 0.1, 1), "hanning", 128),
        "quiet_16000": (synthetic(16000, 0.003, 2), "hanning", 128),
        "moderate_16000_64": (synthetic(16000, 0.1, 3), "hanning", 64),
        "moderate_1234": (synthetic(1234, 0.1, 4), "hanning", 128),
        "moderate_400": (synthetic(400, 0.1, 5), "hanning", 128),
        "silence_4000": (np.zeros(4000, np.int16), "hanning", 128),
    }


def ast_fbank(kaldi, waveform: np.ndarray, window_type: str, num_mel_bins: int, dtype):
    w = torch.from_numpy(waveform.astype(np.float64) / 32768.0).to(dtype)[None]
    w = w - w.mean()
    out = kaldi.fbank(
        w,
        htk_compat=True,
        sample_frequency=SAMPLE_RATE,
        use_energy=False,
        window_type=window_type,
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_shift=10,
    )
    return out.numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kaldi", required=True, help="torchaudio/compliance/kaldi.py")
    parser.add_argument("--clip", required=True, help="audiotest.au")
    parser.add_argument("--pluck", required=True, help="pluck-pcm16.wav")
    parser.add_argument("--out", default="tests/data/kaldi_fbank_golden.npz")
    args = parser.parse_args()
    kaldi = load_kaldi(args.kaldi)
    arrays = {}
    for name, (waveform, window_type, bins) in signals(args.clip, args.pluck).items():
        arrays[f"{name}/waveform"] = waveform
        arrays[f"{name}/window_type"] = np.array(window_type)
        arrays[f"{name}/num_mel_bins"] = np.array(bins)
        arrays[f"{name}/fbank32"] = ast_fbank(kaldi, waveform, window_type, bins, torch.float32)
        fbank64 = ast_fbank(kaldi, waveform, window_type, bins, torch.float64)
        arrays[f"{name}/fbank64"] = fbank64.astype(np.float32)  # rounding: < 1e-6
        print(name, waveform.shape, arrays[f"{name}/fbank32"].shape)
    np.savez_compressed(args.out, **arrays)


if __name__ == "__main__":
    main()
