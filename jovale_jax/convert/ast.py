"""AST's patch embedding (transformers ``ASTModel``) -> :class:`jovale_jax.models.AudioPatchEmbed`.

Only the embedding is imported (the AMFN is the audio encoder, SPEC.md section 1): the conv
``embeddings.patch_embeddings.projection`` and the patch part of ``embeddings.position_embeddings``.
The CLS and distillation tokens, the transformer layers, the final layernorm and the classifier are
deliberately unused (keys with or without the ``audio_spectrogram_transformer.`` prefix of
``ASTForAudioClassification``, e.g. ``MIT/ast-finetuned-audioset-10-10-0.4593``).

Layouts: AST transposes the (B, frames, mel) spectrogram and convolves over (frequency, time), so
its kernel is (width, 1, 16 freq, 16 time) and its table (1, 2 + f * t, width) is frequency-major
after two special tokens; ours are (16 time, 16 freq, 1, width) and (T_a, N_a, width).

Resizing the table to our grid (20 x 12 for 2.13 s; AST AudioSet is 101 x 12 for 10.24 s) follows
AST's own recipe for other input lengths (``ast_models.py``): per axis, keep the centre entries when
the grid shrinks, bilinear interpolation (align_corners=False) when it grows. Cropping keeps AST's
100 ms spacing between time positions, which interpolation would stretch five-fold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jovale_jax.convert.common import (
    Converted,
    KeySpec,
    Rule,
    check_hf_config,
    component_shapes,
    conv_rules,
    convert_state_dict,
    resize_grid,
    resize_note,
)
from jovale_jax.models.audio import AudioPatchEmbed, audio_grid

AST_AUDIOSET_GRID = (101, 12)  # (time, frequency) patches of 1024 frames x 128 mel, stride 10
TABLE_METHODS = ("crop", "crop")


def ast_grid(hf_config: Mapping[str, Any] | None) -> tuple[int, int]:
    """(time, frequency) patch grid of a transformers AST config (AudioSet's without one)."""
    if hf_config is None:
        return AST_AUDIOSET_GRID
    p = hf_config.get("patch_size", 16)
    t = (hf_config.get("max_length", 1024) - p) // hf_config.get("time_stride", 10) + 1
    f = (hf_config.get("num_mel_bins", 128) - p) // hf_config.get("frequency_stride", 10) + 1
    return t, f


def ast_position_rule(
    key: str, source_grid: tuple[int, int], grid: tuple[int, int], width: int
) -> Rule:
    """(1, 2 + f * t, width), frequency-major -> (T_a, N_a, width), time-major."""
    t, f = source_grid

    def make(table: np.ndarray) -> dict[str, np.ndarray]:
        patches = table[0, 2:].reshape(f, t, width).transpose(1, 0, 2)
        return {"position_embedding": resize_grid(patches, grid, TABLE_METHODS)}

    return Rule(key, (1, 2 + t * f, width), make)


def convert_hf_ast(
    state_dict: Mapping[str, np.ndarray], cfg, hf_config: Mapping[str, Any] | None = None
) -> Converted:
    """A transformers AST state dict -> ``AudioPatchEmbed(cfg)`` parameters.

    ``cfg`` is a ``config.model.audio`` section. ``hf_config`` (``config.json``), when given,
    provides the source grid (else AudioSet's 101 x 12) and is checked against ``cfg``.
    """
    if hf_config is not None:
        check_hf_config(
            hf_config,
            {
                "hidden_size": cfg.width,
                "patch_size": cfg.patch,
                "time_stride": cfg.time_stride,
                "frequency_stride": cfg.freq_stride,
            },
            "hf_ast",
        )
    source_grid, grid = ast_grid(hf_config), audio_grid(cfg)
    rules = [
        *conv_rules(
            "embeddings.patch_embeddings.projection",
            (cfg.patch, cfg.patch),
            1,
            cfg.width,
            swap_spatial=True,
        ),
        ast_position_rule("embeddings.position_embeddings", source_grid, grid, cfg.width),
    ]
    spec = KeySpec(
        "hf_ast",
        "audio_embed",
        rules,
        strip=("audio_spectrogram_transformer.",),
        unused=(
            r"embeddings\.cls_token$",
            r"embeddings\.distillation_token$",
            r"encoder\.",
            r"layers\.",
            r"layernorm\.",
            r"classifier\.",
        ),
        notes={"position_table": resize_note(source_grid, grid, TABLE_METHODS)},
    )
    return convert_state_dict(state_dict, spec, component_shapes(AudioPatchEmbed, cfg))
