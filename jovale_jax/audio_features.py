"""Log-mel audio features (SPEC.md section 1) in TensorFlow for the input pipeline, and in numpy.

The features are librosa's: a 16 kHz mono waveform, a centred STFT (constant zero padding of
``n_fft // 2`` on both sides, librosa 0.11's default ``pad_mode``) with a 25 ms periodic Hamming
window (``n_fft = win_length = 400``) and a 10 ms hop (160 samples), the power spectrum projected
on librosa's Slaney mel filter bank, and ``power_to_db(ref=1.0, amin=1e-10, top_db=80)``. A
waveform of ``n`` samples gives ``1 + n // 160`` frames.

Two implementations compute them:

* :func:`log_mel_tf` runs inside ``tf.data`` (no Python, no numba); it computes in float64 and
  takes the mel filter bank matrix from ``librosa.filters.mel`` as a constant, so it agrees with
  librosa to about 1e-9 dB (tests/test_audio_features.py asserts 1e-4 dB).
* :func:`log_mel_librosa` calls librosa itself: the reference, and what ``detect`` uses on raw
  waveforms.

:func:`audio_features_tf` / :func:`audio_features_numpy` then fit the log-mel to the model's
``num_frames`` (centre crop, or zero padding at the end) and apply AST's normalisation
``(x - AST_MEAN) / (2 * AST_STD)``; padded frames are 0 after normalisation, as is a missing
waveform. :func:`spec_augment` is SpecAugment's time and frequency masking, with stateless TF
randomness so that the pipeline stays deterministic.

librosa is imported only inside functions: its first call compiles numba code (about 13 s), so
importing this module stays cheap.
"""

import functools

import numpy as np
import tensorflow as tf

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms at 16 kHz; also the window length
HOP_LENGTH = 160  # 10 ms
AMIN = 1e-10
TOP_DB = 80.0
# AST's AudioSet normalisation statistics (the batch key `audio` of data/SCHEMA.md).
AST_MEAN = -4.2677393
AST_STD = 4.5689974


def num_log_mel_frames(num_samples: int) -> int:
    """Frames of the centred STFT of a waveform of ``num_samples`` samples."""
    return 1 + num_samples // HOP_LENGTH


def waveform_to_float(waveform: np.ndarray) -> np.ndarray:
    """int16 PCM -> float64 in [-1, 1); float input is returned as float64 unchanged."""
    waveform = np.asarray(waveform)
    if waveform.dtype == np.int16:
        return waveform.astype(np.float64) / 32768.0
    return waveform.astype(np.float64)


@functools.cache
def mel_filter_bank(num_mel_bins: int) -> np.ndarray:
    """librosa's mel filter bank, (num_mel_bins, N_FFT // 2 + 1) float32 (Slaney scale and norm)."""
    import librosa  # slow first use: see the module docstring

    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=num_mel_bins)


def log_mel_librosa(waveform: np.ndarray, *, num_mel_bins: int) -> np.ndarray:
    """The reference log-mel (dB) of a mono waveform with librosa: (frames, num_mel_bins) float32.

    ``waveform`` is int16 PCM or float in [-1, 1]; it is computed in float64.
    """
    import librosa

    mel = librosa.feature.melspectrogram(
        y=waveform_to_float(waveform),
        sr=SAMPLE_RATE,
        n_fft=N_FFT,
        win_length=N_FFT,
        hop_length=HOP_LENGTH,
        window="hamming",
        center=True,
        pad_mode="constant",
        power=2.0,
        n_mels=num_mel_bins,
    )
    db = librosa.power_to_db(mel, ref=1.0, amin=AMIN, top_db=TOP_DB)
    return db.T.astype(np.float32)


def log_mel_tf(waveform: tf.Tensor, *, num_mel_bins: int) -> tf.Tensor:
    """The log-mel (dB) of a mono float waveform in TF: (1 + n // 160, num_mel_bins) float32.

    Same values as :func:`log_mel_librosa`: a float64 STFT of the zero-padded signal with a
    periodic Hamming window, librosa's filter bank, then ``power_to_db`` with its global top-dB
    floor.
    """
    signal = tf.cast(waveform, tf.float64)
    signal = tf.pad(signal, [[N_FFT // 2, N_FFT // 2]])
    stft = tf.signal.stft(
        signal,
        frame_length=N_FFT,
        frame_step=HOP_LENGTH,
        fft_length=N_FFT,
        window_fn=tf.signal.hamming_window,  # periodic by default, as scipy's fftbins=True
        pad_end=False,
    )
    power = tf.math.square(tf.math.abs(stft))  # (frames, N_FFT // 2 + 1)
    bank = tf.constant(mel_filter_bank(num_mel_bins).T, dtype=tf.float64)
    db = 10.0 * tf.math.log(tf.maximum(power @ bank, AMIN)) / np.log(10.0)
    db = tf.maximum(db, tf.reduce_max(db) - TOP_DB)
    return tf.cast(db, tf.float32)


def audio_features_numpy(waveform: np.ndarray, *, num_frames: int, num_mel_bins: int) -> np.ndarray:
    """The model's audio input with librosa: (num_frames, num_mel_bins) float32, AST-normalised."""
    features = _ast_normalise(log_mel_librosa(waveform, num_mel_bins=num_mel_bins))
    start = max(0, (features.shape[0] - num_frames) // 2)
    features = features[start : start + num_frames]
    return np.pad(features, [(0, num_frames - features.shape[0]), (0, 0)])


def audio_features_tf(waveform: tf.Tensor, *, num_frames: int, num_mel_bins: int) -> tf.Tensor:
    """TF twin of :func:`audio_features_numpy` on an int16 or float waveform (static output shape)."""
    if waveform.dtype == tf.int16:
        waveform = tf.cast(waveform, tf.float64) / 32768.0
    features = _ast_normalise(log_mel_tf(waveform, num_mel_bins=num_mel_bins))
    start = tf.maximum(0, (tf.shape(features)[0] - num_frames) // 2)
    features = features[start : start + num_frames]
    features = tf.pad(features, [[0, num_frames - tf.shape(features)[0]], [0, 0]])
    return tf.ensure_shape(features, (num_frames, num_mel_bins))


def _ast_normalise(log_mel):
    """AST's normalisation; works on numpy arrays and TF tensors alike."""
    return (log_mel - AST_MEAN) / (2.0 * AST_STD)


def spec_augment(
    features: tf.Tensor, seed: tf.Tensor, *, max_time_mask: int, max_freq_mask: int
) -> tf.Tensor:
    """SpecAugment on (frames, bins) features: one time band and one frequency band set to 0.

    Each band's width is uniform in [0, max_*_mask] (capped at the axis size) and its start
    uniform over the positions where it fits, as torchaudio's masking in AST's recipe. Masked
    values become 0, the value of padded frames and of a missing waveform. ``seed`` is a
    stateless-RNG seed (shape (2,)): the same seed masks the same bands.
    """
    time_seed, freq_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    keep_time = _band_keep_mask(tf.shape(features)[0], max_time_mask, time_seed)
    keep_freq = _band_keep_mask(tf.shape(features)[1], max_freq_mask, freq_seed)
    keep = tf.logical_and(keep_time[:, None], keep_freq[None, :])
    return tf.where(keep, features, tf.zeros_like(features))


def _band_keep_mask(size: tf.Tensor, max_width: int, seed: tf.Tensor) -> tf.Tensor:
    """(size,) bool, false on one random band of width uniform in [0, min(max_width, size)]."""
    uniform = tf.random.stateless_uniform((2,), seed, dtype=tf.float32)
    max_width = tf.minimum(max_width, size)
    width = tf.cast(uniform[0] * tf.cast(max_width + 1, tf.float32), tf.int32)
    width = tf.minimum(width, max_width)  # uniform[0] < 1, but stay safe under rounding
    start = tf.cast(uniform[1] * tf.cast(size - width + 1, tf.float32), tf.int32)
    start = tf.minimum(start, size - width)
    positions = tf.range(size)
    return tf.logical_or(positions < start, positions >= start + width)
