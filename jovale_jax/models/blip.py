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
        raise ValueError(f"model.scene.image_size {cfg.image_size} is not divisible by patch {cfg.patch}")
    return (cfg.image_size // cfg.patch) ** 2


class BlipVisionEncoder(nnx.Module):
    """BLIP image encoder: (B, T_s, S, S, 3) -> (B, T_s, 1 + (S/p)^2, width)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs, dtype: str = "float32",
                 remat_policy: str = "none", attention_impl: str = "xla"):
        self.cfg = cfg
        self.dtype = dtype_of(dtype)
        p, w = cfg.patch, cfg.width
        self.patch_kernel = param(rngs, nnx.initializers.lecun_normal(), (p, p, 3, w),
                                  (None, None, CONV_IN, EMBED))
        self.patch_bias = param(rngs, nnx.initializers.zeros, (w,), (EMBED,))
        self.class_embedding = param(rngs, nnx.initializers.normal(0.02), (w,), (EMBED,))
        self.position_embedding = param(rngs, nnx.initializers.normal(0.02),
                                        (1 + blip_num_patches(cfg), w), (None, EMBED))
        self.encoder = Encoder(cfg, rngs=rngs, qkv_bias=(True, True, True),
                               remat_policy=remat_policy, dtype=self.dtype,
                               attention_impl=attention_impl)
        self.post_layernorm = LayerNorm(w, rngs=rngs, epsilon=cfg.layer_norm_eps, dtype=self.dtype)

    def __call__(self, frames: jax.Array) -> jax.Array:
        b, t = frames.shape[:2]
        p = self.cfg.patch
        x = jax.lax.conv_general_dilated(
            frames.reshape((b * t,) + frames.shape[2:]).astype(self.dtype),
            self.patch_kernel[...].astype(self.dtype), window_strides=(p, p), padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = x + self.patch_bias[...].astype(self.dtype)
        x = x.reshape(b * t, -1, x.shape[-1])
        cls = jnp.broadcast_to(self.class_embedding[...].astype(self.dtype), (b * t, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.position_embedding[...].astype(self.dtype)
        x = self.post_layernorm(self.encoder(x))
        return x.reshape(b, t, x.shape[1], x.shape[2])
