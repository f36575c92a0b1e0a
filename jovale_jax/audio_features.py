"""AST's audio features (SPEC.md section 1) in TensorFlow for the input pipeline, and in numpy.

JoVALE "followed AST" (Gong et al. 2021) and imports AST's patch embedding, so the features are
AST's: Kaldi-compatible log mel filter bank energies, as AST's data loader computes them with
``torchaudio.compliance.kaldi.fbank(waveform, htk_compat=True, sample_frequency=16000,
use_energy=False, window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)``:

* a 16 kHz mono waveform as float in [-1, 1) (int16 PCM / 32768, as ``torchaudio.load`` gives);
* Kaldi's framing with ``snip_edges``: 25 ms frames (400 samples) every 10 ms (160 samples), no
  padding or centring, so ``n`` samples give ``1 + (n - 400) // 160`` frames (none below 400);
* per frame: DC removal (the frame's mean), pre-emphasis ``x[i] - 0.97 x[i-1]`` (``x[-1] = x[0]``),
  a symmetric window (``window_type``, below), zero padding to a 512-point FFT, power spectrum;
* ``num_mel_bins`` triangular filters evenly spaced on the HTK mel scale ``1127 ln(1 + f / 700)``
  between 20 Hz and 8 kHz, triangular in the mel domain, unnormalised; the natural log of the
  energies, floored at float32's epsilon (1.19e-7, so digital silence is -15.94).

``window_type``: AST's code (and so the AST weights we import) uses ``'hanning'`` (torch's
symmetric Hann window); the JoVALE paper's text says "a 25 ms Hamming window". The default is
AST's; ``'hamming'`` and Kaldi's default ``'povey'`` (Hann to the power 0.85) are available
(``model.audio.window_type``). AST subtracts the waveform's mean before ``fbank``; with the
per-frame DC removal that is a no-op, and it is not repeated here.

Model input (:func:`audio_features_tf` / :func:`audio_features_numpy`): the fbank fitted to
``num_frames`` (a centred crop of a longer one; padding at the end of a shorter one, as AST pads
to its target length) and normalised with AST's AudioSet statistics, ``(x - AST_MEAN) / (2 *
AST_STD)``. A 2.13 s window (34133 samples) gives 211 Kaldi frames; the model takes 214 (SPEC.md),
so 3 frames are padding. They lie outside the audio patch grid anyway: 16-frame patches every 10
frames cover frames 0-205 (20 patches) of both 211 and 214 frames.

Neutral value: padded frames, a missing waveform and SpecAugment's masks are ``AST_MEAN`` in the
log-energy domain, i.e. exactly 0 after normalisation: the mean of AST's training features. (AST's
own code pads and masks with a log energy of 0, i.e. +0.47 after normalisation, which is louder
than its average input.) :func:`spec_augment` masks the normalised features with 0, which is
masking the fbank with ``AST_MEAN`` before normalising (the normalisation is affine, per value).

Parity with torchaudio's ``kaldi.fbank`` (and with transformers' ``ASTFeatureExtractor``) is tested
in tests/test_audio_features.py. Both implementations here compute in float64.
"""

import functools

import numpy as np
import tensorflow as tf

SAMPLE_RATE = 16000
FRAME_LENGTH = 400  # 25 ms
FRAME_SHIFT = 160  # 10 ms
FFT_LENGTH = 512  # the frame zero-padded to the next power of two
PREEMPHASIS = 0.97
LOW_FREQ = 20.0  # Hz; the high edge is Nyquist
LOG_FLOOR = float(np.finfo(np.float32).eps)  # Kaldi's floor on the mel energies
WINDOW_TYPES = ("hanning", "hamming", "povey")
# AST's AudioSet normalisation statistics (the batch key `audio` of data/SCHEMA.md).
AST_MEAN = -4.2677393
AST_STD = 4.5689974


def num_fbank_frames(num_samples: int) -> int:
    """Kaldi frames (snip_edges) of a waveform of ``num_samples`` samples."""
    return 0 if num_samples < FRAME_LENGTH else 1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT


@functools.cache
def window(window_type: str) -> np.ndarray:
    """Kaldi's (symmetric) analysis window of ``window_type``: (FRAME_LENGTH,) float64."""
    if window_type not in WINDOW_TYPES:
        raise ValueError(f"model.audio.window_type={window_type!r}: expected one of {WINDOW_TYPES}")
    phase = 2 * np.pi * np.arange(FRAME_LENGTH) / (FRAME_LENGTH - 1)
    if window_type == "hamming":
        return 0.54 - 0.46 * np.cos(phase)
    hann = 0.5 - 0.5 * np.cos(phase)
    return hann**0.85 if window_type == "povey" else hann


def _mel(freq):
    return 1127.0 * np.log(1.0 + np.asarray(freq, np.float64) / 700.0)


@functools.cache
def mel_banks(num_mel_bins: int) -> np.ndarray:
    """Kaldi's triangular mel filters as a (FFT_LENGTH // 2 + 1, num_mel_bins) float64 matrix.

    Filter ``b`` rises from mel ``low + b * delta`` to its peak at ``low + (b + 1) * delta`` and
    falls to ``low + (b + 2) * delta``, ``delta`` being the 20 Hz - 8 kHz mel range over
    ``num_mel_bins + 1``; the Nyquist bin gets no weight (as in Kaldi).
    """
    if num_mel_bins <= 3:
        raise ValueError(f"model.audio.num_mel_bins={num_mel_bins}: Kaldi needs more than 3")
    low, high = _mel(LOW_FREQ), _mel(SAMPLE_RATE / 2)
    delta = (high - low) / (num_mel_bins + 1)
    left = low + delta * np.arange(num_mel_bins)
    mel = _mel(SAMPLE_RATE / FFT_LENGTH * np.arange(FFT_LENGTH // 2))[:, None]
    rising = (mel - left) / delta
    falling = (left + 2 * delta - mel) / delta
    banks = np.maximum(0.0, np.minimum(rising, falling))
    return np.concatenate([banks, np.zeros((1, num_mel_bins))])


def fbank_numpy(waveform: np.ndarray, *, num_mel_bins: int, window_type: str) -> np.ndarray:
    """Kaldi log mel energies of a mono waveform (int16, or float in [-1, 1]) with numpy:
    (:func:`num_fbank_frames`, num_mel_bins) float32."""
    waveform = np.asarray(waveform).reshape(-1)
    x = waveform.astype(np.float64) / (32768.0 if waveform.dtype == np.int16 else 1.0)
    count = num_fbank_frames(x.size)
    if count == 0:
        return np.zeros((0, num_mel_bins), np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(x, FRAME_LENGTH)[::FRAME_SHIFT][:count]
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames = frames - PREEMPHASIS * np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    power = np.abs(np.fft.rfft(frames * window(window_type), n=FFT_LENGTH)) ** 2
    return np.log(np.maximum(power @ mel_banks(num_mel_bins), LOG_FLOOR)).astype(np.float32)


def fbank_tf(waveform: tf.Tensor, *, num_mel_bins: int, window_type: str) -> tf.Tensor:
    """TF twin of :func:`fbank_numpy` (graph-safe; the frame count may be 0)."""
    x = tf.cast(tf.reshape(waveform, [-1]), tf.float64)
    x = x / 32768.0 if waveform.dtype == tf.int16 else x
    frames = tf.signal.frame(x, FRAME_LENGTH, FRAME_SHIFT, pad_end=False)  # (count, 400)
    frames = frames - tf.reduce_mean(frames, axis=1, keepdims=True)
    frames = frames - PREEMPHASIS * tf.concat([frames[:, :1], frames[:, :-1]], axis=1)
    frames = tf.pad(frames * window(window_type), [[0, 0], [0, FFT_LENGTH - FRAME_LENGTH]])
    spectrum = tf.signal.rfft(frames, fft_length=[FFT_LENGTH])
    power = tf.math.square(tf.math.abs(spectrum))
    mel = power @ tf.constant(mel_banks(num_mel_bins))
    return tf.cast(tf.math.log(tf.maximum(mel, LOG_FLOOR)), tf.float32)


def normalise(fbank):
    """AST's normalisation ``(x - AST_MEAN) / (2 * AST_STD)``; numpy arrays and TF tensors."""
    return (fbank - AST_MEAN) / (2.0 * AST_STD)


def audio_features_numpy(
    waveform: np.ndarray, *, num_frames: int, num_mel_bins: int, window_type: str = "hanning"
) -> np.ndarray:
    """The model's audio input with numpy: (num_frames, num_mel_bins) float32 (module docstring)."""
    fbank = fbank_numpy(waveform, num_mel_bins=num_mel_bins, window_type=window_type)
    start = max(0, (fbank.shape[0] - num_frames) // 2)
    fbank = fbank[start : start + num_frames]
    fbank = np.pad(fbank, [(0, num_frames - fbank.shape[0]), (0, 0)], constant_values=AST_MEAN)
    return normalise(fbank).astype(np.float32)


def audio_features_tf(
    waveform: tf.Tensor, *, num_frames: int, num_mel_bins: int, window_type: str = "hanning"
) -> tf.Tensor:
    """TF twin of :func:`audio_features_numpy` (static output shape)."""
    fbank = fbank_tf(waveform, num_mel_bins=num_mel_bins, window_type=window_type)
    start = tf.maximum(0, (tf.shape(fbank)[0] - num_frames) // 2)
    fbank = fbank[start : start + num_frames]
    fbank = tf.pad(fbank, [[0, num_frames - tf.shape(fbank)[0]], [0, 0]], constant_values=AST_MEAN)
    return tf.ensure_shape(normalise(fbank), (num_frames, num_mel_bins))


def spec_augment(
    features: tf.Tensor, seed: tf.Tensor, *, max_time_mask: int, max_freq_mask: int
) -> tf.Tensor:
    """SpecAugment on normalised (frames, bins) features: one time band and one frequency band set
    to 0, the neutral value (``AST_MEAN`` before normalisation, see the module docstring).

    Each band's width is uniform in [0, max_*_mask] (capped at the axis size) and its start
    uniform over the positions where it fits, as torchaudio's masking in AST's recipe. ``seed`` is
    a stateless-RNG seed (shape (2,)): the same seed masks the same bands.
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
