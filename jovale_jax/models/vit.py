"""The video encoder: a ViT-B in the VideoMAE v2 layout (SPEC.md section 1, visual stream).

Tubelet patch embedding (Conv3d t x p x p, stride = kernel), a fixed sine-cosine position table over
the flattened (t, h, w) token index as VideoMAE builds it, and pre-norm blocks whose attention has
query and value biases but no key bias. Output: the token grid (B, T', H', W', width), T' =
frames / tubelet, H' = H / patch, W' = W / patch, with no final norm (VideoMAE v2's fine-tuned
ViT-B pools with ``fc_norm`` instead; the projection to D normalises itself).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jovale_jax.models.layers import Encoder, dtype_of, param
from jovale_jax.sharding import CONV_IN, EMBED


def sincos_table(num_positions: int, width: int) -> np.ndarray:
    """VideoMAE's 1D sinusoid table: angle(p, j) = p / 10000^(2 floor(j/2) / width); sin on even
    channels, cos on odd ones. Shape (num_positions, width)."""
    pos = np.arange(num_positions, dtype=np.float64)[:, None]
    j = np.arange(width)[None, :]
    angle = pos / np.power(10000.0, 2 * (j // 2) / width)
    table = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
    return table.astype(np.float32)


class PositionTable(nnx.Variable):
    """A fixed (non-trained) position table: no gradient, no optimizer state."""


def video_grid(cfg) -> tuple[int, int, int]:
    """The token grid (T', H', W') of the video encoder for a ``model.video`` config."""
    h, w = cfg.image_size
    if cfg.num_frames % cfg.tubelet or h % cfg.patch or w % cfg.patch:
        raise ValueError(
            f"model.video: num_frames {cfg.num_frames} must divide by tubelet {cfg.tubelet} and "
            f"image_size {(h, w)} by patch {cfg.patch}"
        )
    return cfg.num_frames // cfg.tubelet, h // cfg.patch, w // cfg.patch


class VideoEncoder(nnx.Module):
    """VideoMAE v2 ViT: (B, T, H, W, 3) normalised RGB -> (B, T', H', W', width) tokens.

    ``cfg.drop_path`` is the stochastic depth of the last block (0 in the first, linear between,
    as VideoMAE v2 fine-tunes); ``remat_policy`` and ``attention_impl`` as in
    :class:`jovale_jax.models.layers.Encoder`.
    """

    def __init__(
        self,
        cfg,
        *,
        rngs: nnx.Rngs,
        dtype: str = "float32",
        remat_policy: str = "none",
        attention_impl: str = "xla",
    ):
        self.cfg = cfg
        self.dtype = dtype_of(dtype)
        t, p = cfg.tubelet, cfg.patch
        self.patch_kernel = param(
            rngs,
            nnx.initializers.lecun_normal(),
            (t, p, p, 3, cfg.width),
            (None, None, None, CONV_IN, EMBED),
        )
        self.patch_bias = param(rngs, nnx.initializers.zeros, (cfg.width,), (EMBED,))
        grid = video_grid(cfg)
        self.pos_embed = PositionTable(
            jnp.asarray(sincos_table(int(np.prod(grid)), cfg.width)), logical_axes=(None, EMBED)
        )
        self.encoder = Encoder(
            cfg,
            rngs=rngs,
            qkv_bias=(True, False, True),
            remat_policy=remat_policy,
            dtype=self.dtype,
            attention_impl=attention_impl,
            drop_path=cfg.get("drop_path", 0.0),
        )

    def __call__(self, video: jax.Array) -> jax.Array:
        t, p = self.cfg.tubelet, self.cfg.patch
        x = jax.lax.conv_general_dilated(
            video.astype(self.dtype),
            self.patch_kernel[...].astype(self.dtype),
            window_strides=(t, p, p),
            padding="VALID",
            dimension_numbers=("NTHWC", "THWIO", "NTHWC"),
        )
        x = x + self.patch_bias[...].astype(self.dtype)
        b, gt, gh, gw, c = x.shape
        x = x.reshape(b, gt * gh * gw, c) + self.pos_embed[...].astype(self.dtype)
        x = self.encoder(x)
        return x.reshape(b, gt, gh, gw, c)
