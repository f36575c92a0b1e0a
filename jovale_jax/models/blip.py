"""The scene stream's image encoder: BLIP's ViT-B/16 (transformers ``BlipVisionModel`` layout).

Conv patch embedding with bias, a learned class token, a learned position table (CLS + patches),
pre-norm blocks with q, k and v biases, and the post-LayerNorm. Run on each of the T_s scene frames;
output (B, T_s, 1 + N, width). At other resolutions than the pretrained 384 the converter
interpolates the position table (see ``jovale_jax.convert``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jovale_jax.models.layers import Encoder, LayerNorm, dtype_of, param
from jovale_jax.sharding import CONV_IN, EMBED


def blip_num_patches(cfg) -> int:
    """Patches per frame of a ``model.scene`` config."""
    if cfg.image_size % cfg.patch:
        raise ValueError(
            f"model.scene.image_size {cfg.image_size} is not divisible by patch {cfg.patch}"
        )
    return (cfg.image_size // cfg.patch) ** 2


class BlipVisionEncoder(nnx.Module):
    """BLIP image encoder: (B, T_s, S, S, 3) -> (B, T_s, 1 + (S/p)^2, width)."""

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
        p, w = cfg.patch, cfg.width
        self.patch_kernel = param(
            rngs, nnx.initializers.lecun_normal(), (p, p, 3, w), (None, None, CONV_IN, EMBED)
        )
        self.patch_bias = param(rngs, nnx.initializers.zeros, (w,), (EMBED,))
        self.class_embedding = param(rngs, nnx.initializers.normal(0.02), (w,), (EMBED,))
        self.position_embedding = param(
            rngs, nnx.initializers.normal(0.02), (1 + blip_num_patches(cfg), w), (None, EMBED)
        )
        self.encoder = Encoder(
            cfg,
            rngs=rngs,
            qkv_bias=(True, True, True),
            remat_policy=remat_policy,
            dtype=self.dtype,
            attention_impl=attention_impl,
        )
        self.post_layernorm = LayerNorm(w, rngs=rngs, epsilon=cfg.layer_norm_eps, dtype=self.dtype)

    def __call__(self, frames: jax.Array) -> jax.Array:
        x = embed_frames(
            frames,
            self.cfg.patch,
            self.patch_kernel,
            self.patch_bias,
            self.class_embedding,
            self.position_embedding,
            self.dtype,
        )
        x = self.post_layernorm(self.encoder(x))
        return x.reshape(frames.shape[:2] + x.shape[1:])


def embed_frames(
    frames: jax.Array,
    patch: int,
    kernel: nnx.Param,
    bias: nnx.Param | None,
    class_embedding: nnx.Param,
    position_embedding: nnx.Param,
    dtype,
) -> jax.Array:
    """(B, T, S, S, 3) frames -> (B T, 1 + N, width): patch convolution (with ``bias`` unless
    None), the class token in front, plus the position table."""
    b, t = frames.shape[:2]
    x = jax.lax.conv_general_dilated(
        frames.reshape((b * t,) + frames.shape[2:]).astype(dtype),
        kernel[...].astype(dtype),
        window_strides=(patch, patch),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    if bias is not None:
        x = x + bias[...].astype(dtype)
    x = x.reshape(b * t, -1, x.shape[-1])
    cls = jnp.broadcast_to(class_embedding[...].astype(dtype), (b * t, 1, x.shape[-1]))
    return jnp.concatenate([cls, x], axis=1) + position_embedding[...].astype(dtype)
