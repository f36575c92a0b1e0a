"""BLIP's image encoder (transformers) -> :class:`jovale_jax.models.BlipVisionEncoder`.

Sources: ``hf_blip``, a ``BlipForConditionalGeneration`` (the captioner, e.g.
``Salesforce/blip-image-captioning-base``; keys ``vision_model.*``, its ``text_decoder.*`` is
deliberately unused) or a bare ``BlipVisionModel`` state dict; ``hf_blip_itm``, a
``BlipForImageTextRetrieval`` (e.g. ``Salesforce/blip-itm-base-coco``; the same ``vision_model.*``
layout, its ``text_encoder.*``, ``vision_proj``, ``text_proj`` and ``itm_head`` unused). Key map per
layer ``encoder.layers.{i}``: ``layer_norm1`` -> ``norm1``, ``self_attn.qkv`` (fused q, k, v) ->
``attn.{query,key,value}_{kernel,bias}``, ``self_attn.projection`` -> ``attn.out_*``,
``layer_norm2`` -> ``norm2``, ``mlp.fc1/fc2``; plus ``post_layernorm``.

At another resolution than the checkpoint's (384 for the captioner), the patch part of the position
table is resized bicubically (align_corners=False) and the CLS entry kept, as BLIP's
``interpolate_pos_embed`` and transformers' ``interpolate_pos_encoding`` do (JoVALE@288, @192).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

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
    resize_grid,
    resize_note,
)
from jovale_jax.models.blip import BlipVisionEncoder

BLIP_IMAGE_SIZE = 384  # the captioner's pretraining resolution
TABLE_METHODS = ("cubic", "cubic")


def blip_position_rule(key: str, source_side: int, side: int, width: int) -> Rule:
    """(1, 1 + source_side^2, width) -> (1 + side^2, width): CLS kept, patch grid resized."""

    def make(table: np.ndarray) -> dict[str, np.ndarray]:
        patches = table[0, 1:].reshape(source_side, source_side, width)
        patches = resize_grid(patches, (side, side), TABLE_METHODS).reshape(-1, width)
        return {"position_embedding": np.concatenate([table[0, :1], patches])}

    return Rule(key, (1, 1 + source_side**2, width), make)


UNUSED = {
    "hf_blip": (r"text_decoder\.",),
    "hf_blip_itm": (r"text_encoder\.", r"vision_proj\.", r"text_proj\.", r"itm_head\."),
}


def convert_hf_blip(
    state_dict: Mapping[str, np.ndarray],
    cfg,
    hf_config: Mapping[str, Any] | None = None,
    *,
    source: str = "hf_blip",
) -> Converted:
    """A transformers BLIP state dict -> ``BlipVisionEncoder(cfg)`` parameters.

    ``cfg`` is a ``config.model.scene`` section. ``hf_config`` (``config.json`` of a
    ``BlipForConditionalGeneration``, ``BlipForImageTextRetrieval`` or ``BlipVisionModel``), when
    given, provides the source resolution (else 384) and is checked against ``cfg``. ``source``:
    ``hf_blip`` (the captioner) or ``hf_blip_itm`` (the retrieval model).
    """
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
                "hidden_act": "gelu",
            },
            source,
        )
    source_size = BLIP_IMAGE_SIZE if vision is None else vision.get("image_size", BLIP_IMAGE_SIZE)
    w, h = cfg.width, cfg.num_heads
    source_side, side = source_size // cfg.patch, cfg.image_size // cfg.patch
    rules = [
        *conv_rules("embeddings.patch_embedding", (cfg.patch, cfg.patch), 3, w),
        Rule("embeddings.class_embedding", (1, 1, w), lambda c: {"class_embedding": c[0, 0]}),
        blip_position_rule("embeddings.position_embedding", source_side, side, w),
        *layer_norm_rules("post_layernorm", "post_layernorm", w),
    ]
    for i in range(cfg.depth):
        p, dst = f"encoder.layers.{i}", f"encoder/layers/{i}"
        rules += [
            heads_rule(
                f"{p}.self_attn.qkv.{part}",
                f"{dst}/attn",
                ("query", "key", "value"),
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
            out=f"{p}.self_attn.projection",
            fc1=f"{p}.mlp.fc1",
            fc2=f"{p}.mlp.fc2",
        )
    spec = KeySpec(
        source,
        "scene_encoder",
        rules,
        strip=("vision_model.",),
        unused=UNUSED[source],
        notes={
            "position_table": resize_note((source_side,) * 2, (side,) * 2, TABLE_METHODS),
            **eps_note(vision, cfg),
        },
    )
    return convert_state_dict(state_dict, spec, component_shapes(BlipVisionEncoder, cfg))
