"""The audio stream's embedding: AST's patch embedding on the log-mel spectrogram.

A 16 x 16 convolution with strides (10, 10) over (time, frequency) (``time_stride``,
``freq_stride``: AST's ``tstride`` and ``fstride``), to AST's width 768 so AST weights can be
imported, plus a learned position table on the (time, frequency) patch grid. There is no audio
transformer: the AMFN encodes the audio (SPEC.md section 1). Output (B, T_a, N_a, width) with
T_a = (frames - 16) // time_stride + 1 and N_a = (mel bins - 16) // freq_stride + 1 (20 x 12 for
214 x 128).
"""

from __future__ import annotations

import jax
from flax import nnx

from jovale_jax.models.layers import dtype_of, param
from jovale_jax.sharding import CONV_IN, EMBED


def audio_grid(cfg) -> tuple[int, int]:
    """The patch grid (T_a, N_a) of a ``model.audio`` config."""
    t = (cfg.num_frames - cfg.patch) // cfg.time_stride + 1
    f = (cfg.num_mel_bins - cfg.patch) // cfg.freq_stride + 1
    if t < 1 or f < 1:
        raise ValueError(
            f"model.audio: a {cfg.num_frames} x {cfg.num_mel_bins} spectrogram is smaller "
            f"than one {cfg.patch} x {cfg.patch} patch"
        )
    return t, f


class AudioPatchEmbed(nnx.Module):
    """(B, frames, mel bins) log-mel -> (B, T_a, N_a, width) patch embeddings."""

    def __init__(self, cfg, *, rngs: nnx.Rngs, dtype: str = "float32"):
        self.cfg = cfg
        self.dtype = dtype_of(dtype)
        p = cfg.patch
        self.patch_kernel = param(
            rngs,
            nnx.initializers.lecun_normal(),
            (p, p, 1, cfg.width),
            (None, None, CONV_IN, EMBED),
        )
        self.patch_bias = param(rngs, nnx.initializers.zeros, (cfg.width,), (EMBED,))
        self.position_embedding = param(
            rngs, nnx.initializers.normal(0.02), audio_grid(cfg) + (cfg.width,), (None, None, EMBED)
        )

    def __call__(self, spectrogram: jax.Array) -> jax.Array:
        x = jax.lax.conv_general_dilated(
            spectrogram[..., None].astype(self.dtype),
            self.patch_kernel[...].astype(self.dtype),
            window_strides=(self.cfg.time_stride, self.cfg.freq_stride),
            padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return (
            x
            + self.patch_bias[...].astype(self.dtype)
            + self.position_embedding[...].astype(self.dtype)
        )
