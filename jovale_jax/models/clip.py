"""CLIP ViT-B/16's vision tower (transformers ``CLIPVisionModel`` layout) as a scene encoder.

Supplementary Table 4's ``clip`` row (``model.scene.encoder = 'clip'``). Differences from BLIP's
image encoder (:mod:`jovale_jax.models.blip`): the patch convolution has no bias, a LayerNorm
(``pre_layrnorm``) follows the embeddings, and the MLPs use ``quick_gelu``. transformers applies
``post_layernorm`` to the pooled class token only; here it is applied to every token, so that the
scene stream gets normalised tokens from either encoder (output (B, T_s, 1 + N, width), as BLIP's).
"""

from __future__ import annotations

import jax
from flax import nnx

from jovale_jax.models.blip import BlipVisionEncoder, blip_num_patches, embed_frames
from jovale_jax.models.layers import Encoder, LayerNorm, dtype_of, param
from jovale_jax.sharding import CONV_IN, EMBED

SCENE_ENCODERS = ("blip_captioner", "blip", "clip")


def check_scene_encoder(cfg) -> str:
    """``model.scene.encoder`` validated."""
    name = cfg.get("encoder", "blip_captioner")
    if name not in SCENE_ENCODERS:
        raise ValueError(
            f"config field model.scene.encoder: expected one of {SCENE_ENCODERS}, got {name!r}"
        )
    return name


class ClipVisionEncoder(nnx.Module):
    """CLIP image encoder: (B, T_s, S, S, 3) -> (B, T_s, 1 + (S/p)^2, width)."""

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
        self.class_embedding = param(rngs, nnx.initializers.normal(0.02), (w,), (EMBED,))
        self.position_embedding = param(
            rngs, nnx.initializers.normal(0.02), (1 + blip_num_patches(cfg), w), (None, EMBED)
        )
        self.pre_layrnorm = LayerNorm(w, rngs=rngs, epsilon=cfg.layer_norm_eps, dtype=self.dtype)
        self.encoder = Encoder(
            cfg,
            rngs=rngs,
            qkv_bias=(True, True, True),
            remat_policy=remat_policy,
            dtype=self.dtype,
            attention_impl=attention_impl,
            activation="quick_gelu",
        )
        self.post_layernorm = LayerNorm(w, rngs=rngs, epsilon=cfg.layer_norm_eps, dtype=self.dtype)

    def __call__(self, frames: jax.Array) -> jax.Array:
        x = embed_frames(
            frames,
            self.cfg.patch,
            self.patch_kernel,
            None,
            self.class_embedding,
            self.position_embedding,
            self.dtype,
        )
        x = self.post_layernorm(self.encoder(self.pre_layrnorm(x)))
        return x.reshape(frames.shape[:2] + x.shape[1:])


def scene_encoder(cfg, **kwargs) -> nnx.Module:
    """The image encoder ``model.scene.encoder`` names: BLIP's (the captioner's or the ITM
    model's, one architecture) or CLIP's."""
    make = ClipVisionEncoder if check_scene_encoder(cfg) == "clip" else BlipVisionEncoder
    return make(cfg, **kwargs)
