"""VideoMAE checkpoints -> :class:`jovale_jax.models.VideoEncoder`.

Two layouts of the same ViT-B:

- ``videomae_v2``: the ``.pth`` of the VideoMAE v2 repository (``models/modeling_finetune.py``,
  ``vit_base_patch16_224``), e.g. the distilled K710 ViT-B ``vit_b_k710_dl_from_giant.pth``:
  ``patch_embed.proj``, ``blocks.{i}.{norm1, attn.qkv, attn.q_bias, attn.v_bias, attn.proj, norm2,
  mlp.fc1, mlp.fc2}``; the classifier (``fc_norm``, ``head``, or ``norm`` without mean pooling) is
  unused.
- ``hf_videomae``: transformers' ``VideoMAEModel`` / ``VideoMAEForVideoClassification``
  (``videomae.`` prefix), with on-disk ``q_bias``/``v_bias`` or in-memory ``query.bias``/
  ``value.bias``. Our encoder returns the tokens before any final norm, i.e. HF's
  ``last_hidden_state`` with ``use_mean_pooling=True`` (then ``VideoMAEModel.layernorm`` is None);
  a final ``layernorm`` present in the checkpoint is unused.

Neither checkpoint holds the position table: both models use the fixed 1D sine-cosine table over
the flattened (t, h, w) tokens of their pretraining grid (8 x 14 x 14 for 16 frames at 224), which
the weights do not reveal: it comes from transformers' ``config.json`` or is given
(``source_grid``, ``launch.py convert --source_grid T,H,W``); without either the conversion stops.
The converter rebuilds the table on that grid and resizes it to the configured grid as VideoMAE v2's
fine-tuning script does when the input size changes: bicubic per frame in space, linear in time
(align_corners=False), generalised here to non-square canvases such as 224 x 288.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jovale_jax.convert.common import (
    ConversionError,
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
    resize_grid,
    resize_note,
)
from jovale_jax.models.vit import VideoEncoder, sincos_table, video_grid

VIDEOMAE_V2_GRID = (8, 14, 14)  # vit_base_patch16_224 at 16 frames, tubelet 2
GRID_HELP = (
    "give the token grid it was trained on as --source_grid T,H,W (source_grid=...; "
    "8,14,14 for VideoMAE v2's vit_*_patch16_224 at 16 frames)"
)
TABLE_METHODS = ("linear", "cubic", "cubic")


def video_position_table(cfg, source_grid: Sequence[int]) -> tuple[np.ndarray, dict]:
    """VideoMAE's sine-cosine table on ``source_grid``, resized to the grid of ``cfg``:
    ((T' * H' * W'), width) and a note for the manifest."""
    width, grid = cfg.width, video_grid(cfg)
    table = sincos_table(math.prod(source_grid), width).reshape(*source_grid, width)
    resized = resize_grid(table, grid, TABLE_METHODS).reshape(-1, width)
    return resized, resize_note(source_grid, grid, TABLE_METHODS)


def _video_spec(
    source: str,
    cfg,
    layer_rules: Callable[[int, str], list[Rule]],
    source_grid: Sequence[int],
    patch_key: str,
    notes: Mapping[str, Any],
    **keys: Any,
) -> KeySpec:
    """What both layouts share: the patch conv, ``layer_rules(i, dst)`` per block and the
    rebuilt position table; ``keys`` are the layout's ``KeySpec`` key options."""
    table, note = video_position_table(cfg, source_grid)
    rules = conv_rules(patch_key, (cfg.tubelet, cfg.patch, cfg.patch), 3, cfg.width)
    for i in range(cfg.depth):
        rules += layer_rules(i, f"encoder/layers/{i}")
    return KeySpec(
        source,
        "video_encoder",
        rules,
        derived={"pos_embed": table},
        notes={"position_table": note, **notes},
        **keys,
    )


def convert_videomae_v2(
    state_dict: Mapping[str, np.ndarray], cfg, source_grid: Sequence[int] | None = None
) -> Converted:
    """A VideoMAE v2 ``vit_*_patch16_224`` state dict -> ``VideoEncoder(cfg)`` parameters.

    ``cfg`` is a ``config.model.video`` section; ``source_grid`` the token grid the checkpoint
    was trained on (its position table is rebuilt there, then resized to ``cfg``'s grid; a
    ``.pth`` does not record it, so it is required). The head count cannot be read from a
    ``.pth``: it is taken from ``cfg``.
    """
    if source_grid is None:
        raise ConversionError(
            f"videomae_v2: the checkpoint does not record its token grid; {GRID_HELP}"
        )
    w, h = cfg.width, cfg.num_heads

    def layer(i: int, dst: str):
        p = f"blocks.{i}"
        return [
            heads_rule(
                f"{p}.attn.qkv.weight", f"{dst}/attn", ("query", "key", "value"), w, h, bias=False
            ),
            heads_rule(f"{p}.attn.q_bias", f"{dst}/attn", ("query",), w, h, bias=True),
            heads_rule(f"{p}.attn.v_bias", f"{dst}/attn", ("value",), w, h, bias=True),
            *block_rules(
                dst,
                cfg,
                norm1=f"{p}.norm1",
                norm2=f"{p}.norm2",
                out=f"{p}.attn.proj",
                fc1=f"{p}.mlp.fc1",
                fc2=f"{p}.mlp.fc2",
            ),
        ]

    spec = _video_spec(
        "videomae_v2",
        cfg,
        layer,
        source_grid,
        "patch_embed.proj",
        {},
        strip=("module.", "_orig_mod."),
        unused=(r"fc_norm\.", r"head\.", r"norm\."),
    )
    return convert_state_dict(state_dict, spec, component_shapes(VideoEncoder, cfg))


def hf_videomae_grid(
    hf_config: Mapping[str, Any] | None, source_grid: Sequence[int] | None = None
) -> tuple[int, int, int]:
    """The token grid of a transformers VideoMAE checkpoint: from its config, else
    ``source_grid``; both given must agree, neither is an error."""
    if hf_config is None:
        if source_grid is None:
            raise ConversionError(f"hf_videomae: no config.json beside the weights; {GRID_HELP}")
        return tuple(source_grid)
    size = hf_config.get("image_size", 224)
    hh, ww = (size, size) if isinstance(size, int) else size
    p = hf_config.get("patch_size", 16)
    grid = (hf_config.get("num_frames", 16) // hf_config.get("tubelet_size", 2), hh // p, ww // p)
    if source_grid is not None and tuple(source_grid) != grid:
        raise ConversionError(
            f"hf_videomae: --source_grid {tuple(source_grid)} differs from the "
            f"grid {grid} of the checkpoint's config.json"
        )
    return grid


def convert_hf_videomae(
    state_dict: Mapping[str, np.ndarray],
    cfg,
    hf_config: Mapping[str, Any] | None = None,
    source_grid: Sequence[int] | None = None,
) -> Converted:
    """A transformers VideoMAE state dict -> ``VideoEncoder(cfg)`` parameters.

    ``hf_config`` (the checkpoint's ``config.json``), when given, sets the source grid and is
    checked against ``cfg`` (width, depth, heads, MLP, patch, tubelet, activation).
    """
    if hf_config is not None:
        check_hf_config(
            hf_config,
            {
                "hidden_size": cfg.width,
                "num_hidden_layers": cfg.depth,
                "num_attention_heads": cfg.num_heads,
                "intermediate_size": cfg.mlp_dim,
                "patch_size": cfg.patch,
                "tubelet_size": cfg.tubelet,
                "hidden_act": "gelu",
                "qv_bias": True,
            },
            "hf_videomae",
        )
    w, h = cfg.width, cfg.num_heads

    def layer(i: int, dst: str):
        p = f"encoder.layer.{i}"
        a = f"{p}.attention.attention"
        return [
            *(
                heads_rule(f"{a}.{n}.weight", f"{dst}/attn", (n,), w, h, bias=False)
                for n in ("query", "key", "value")
            ),
            *(
                heads_rule(f"{a}.{n}.bias", f"{dst}/attn", (n,), w, h, bias=True)
                for n in ("query", "value")
            ),
            *block_rules(
                dst,
                cfg,
                norm1=f"{p}.layernorm_before",
                norm2=f"{p}.layernorm_after",
                out=f"{p}.attention.output.dense",
                fc1=f"{p}.intermediate.dense",
                fc2=f"{p}.output.dense",
            ),
        ]

    spec = _video_spec(
        "hf_videomae",
        cfg,
        layer,
        hf_videomae_grid(hf_config, source_grid),
        "embeddings.patch_embeddings.projection",
        eps_note(hf_config, cfg),
        strip=("videomae.",),
        renames=((r"\.q_bias$", ".query.bias"), (r"\.v_bias$", ".value.bias")),
        unused=(
            r"layernorm\.",
            r"fc_norm\.",
            r"classifier\.",
            r"decoder\.",
            r"encoder_to_decoder\.",
            r"mask_token$",
        ),
    )
    return convert_state_dict(state_dict, spec, component_shapes(VideoEncoder, cfg))
