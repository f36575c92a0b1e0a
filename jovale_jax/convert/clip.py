"""CLIP's vision tower (transformers) -> :class:`jovale_jax.models.clip.ClipVisionEncoder`.

Source ``hf_clip``: a ``CLIPModel`` (e.g. ``openai/clip-vit-base-patch16``; keys
``vision_model.*``, its ``text_model.*``, ``visual_projection``, ``text_projection`` and
``logit_scale`` unused) or a ``CLIPVisionModel``. Key map: ``embeddings.patch_embedding`` (no
bias) -> ``patch_kernel``, ``embeddings.class_embedding``, ``embeddings.position_embedding``
(an ``nn.Embedding`` table, resized bicubically with the CLS entry kept when the resolution
differs from the checkpoint's 224), ``pre_layrnorm``; per layer ``encoder.layers.{i}``:
``self_attn.{q,k,v}_proj`` -> ``attn.{query,key,value}_*``, ``self_attn.out_proj`` ->
``attn.out_*``, ``layer_norm1/2`` -> ``norm1/2``, ``mlp.fc1/fc2``; ``post_layernorm``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jovale_jax.convert.blip import TABLE_METHODS, blip_position_rule
from jovale_jax.convert.common import (
    Converted,
    KeySpec,
    Rule,
    block_rules,
    check_hf_config,
    component_shapes,
    conv_rules,
    convert_state_dict,
    eps_note,
    heads_rule,
    layer_norm_rules,
    resize_note,
)
from jovale_jax.models.clip import ClipVisionEncoder

CLIP_IMAGE_SIZE = 224  # openai/clip-vit-base-patch16's pretraining resolution
UNUSED = (
    r"text_model\.",
    r"visual_projection\.",
    r"text_projection\.",
    r"logit_scale$",
    r"embeddings\.position_ids$",
)


def convert_hf_clip(
    state_dict: Mapping[str, np.ndarray], cfg, hf_config: Mapping[str, Any] | None = None
) -> Converted:
    """A transformers CLIP state dict -> ``ClipVisionEncoder(cfg)`` parameters (``cfg``: a
    ``config.model.scene`` section; ``hf_config``, when given, sets the source resolution and is
    checked against ``cfg``)."""
    vision = None if hf_config is None else hf_config.get("vision_config", hf_config)
    if vision is not None:
        check_hf_config(
            vision,
            {
                "hidden_size": cfg.width,
                "num_hidden_layers": cfg.depth,
                "num_attention_heads": cfg.num_heads,
                "intermediate_size": cfg.mlp_dim,
                "patch_size": cfg.patch,
                "hidden_act": "quick_gelu",
            },
            "hf_clip",
        )
    source_size = CLIP_IMAGE_SIZE if vision is None else vision.get("image_size", CLIP_IMAGE_SIZE)
    w, h = cfg.width, cfg.num_heads
    source_side, side = source_size // cfg.patch, cfg.image_size // cfg.patch
    table = blip_position_rule("", source_side, side, w).make  # expects (1, 1 + n, w)
    rules = [
        conv_rules("embeddings.patch_embedding", (cfg.patch, cfg.patch), 3, w)[0],
        Rule("embeddings.class_embedding", (w,), lambda c: {"class_embedding": c}),
        Rule(
            "embeddings.position_embedding.weight",
            (1 + source_side**2, w),
            lambda t: table(t[None]),
        ),
        *layer_norm_rules("pre_layrnorm", "pre_layrnorm", w),
        *layer_norm_rules("post_layernorm", "post_layernorm", w),
    ]
    for i in range(cfg.depth):
        p, dst = f"encoder.layers.{i}", f"encoder/layers/{i}"
        for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            rules += [
                heads_rule(
                    f"{p}.self_attn.{theirs}.{part}",
                    f"{dst}/attn",
                    (ours,),
                    w,
                    h,
                    bias=part == "bias",
                )
                for part in ("weight", "bias")
            ]
        rules += block_rules(
            dst,
            cfg,
            norm1=f"{p}.layer_norm1",
            norm2=f"{p}.layer_norm2",
            out=f"{p}.self_attn.out_proj",
            fc1=f"{p}.mlp.fc1",
            fc2=f"{p}.mlp.fc2",
        )
    spec = KeySpec(
        "hf_clip",
        "scene_encoder",
        rules,
        strip=("vision_model.",),
        unused=UNUSED,
        notes={
            "position_table": resize_note((source_side,) * 2, (side,) * 2, TABLE_METHODS),
            **eps_note(vision, cfg),
        },
    )
    return convert_state_dict(state_dict, spec, component_shapes(ClipVisionEncoder, cfg))
