"""What the model does to the input pipeline's raw frames and boxes, inside the jitted step.

Frames leave the host as uint8 (data/SCHEMA.md); :func:`normalize_frames` casts and normalises them
on the device with the statistics the imported encoders were trained with (VideoMAE: ImageNet's,
BLIP: CLIP's). Float frames pass through unchanged, so host-normalised batches still work.

Boxes in the batch are normalised to the frame; the frame fills only ``frame_extent`` of the
video canvas (aspect-preserving resize, then padding), so :func:`frame_to_canvas` maps them onto
the canvas that the video encoder's feature map covers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

VIDEOMAE_MEAN = (0.485, 0.456, 0.406)
VIDEOMAE_STD = (0.229, 0.224, 0.225)
BLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
BLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def video_statistics(video_cfg) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the video encoder's weights were trained with: ``model.video.pixel_mean``
    / ``pixel_std`` where the preset sets them (SlowFast checkpoints), VideoMAE's otherwise."""
    return (
        tuple(video_cfg.get("pixel_mean", VIDEOMAE_MEAN)),
        tuple(video_cfg.get("pixel_std", VIDEOMAE_STD)),
    )


def normalize_frames(
    frames: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]
) -> jax.Array:
    """uint8 RGB (..., 3) -> float32 (x / 255 - mean) / std; floating input is returned as is."""
    if jnp.issubdtype(frames.dtype, jnp.floating):
        return frames
    scale = 1.0 / (255.0 * jnp.asarray(std, jnp.float32))
    return frames.astype(jnp.float32) * scale - jnp.asarray(mean, jnp.float32) / jnp.asarray(
        std, jnp.float32
    )


def frame_to_canvas(boxes: jax.Array, frame_extent: jax.Array) -> jax.Array:
    """(B, K, 4) boxes normalised to the frame -> normalised to the canvas, given each example's
    (B, 4) ``frame_extent`` x1, y1, x2, y2: where the frame lies on the canvas (normalised)."""
    lo = frame_extent[:, None, :2].astype(boxes.dtype)
    size = frame_extent[:, None, 2:].astype(boxes.dtype) - lo
    return jnp.concatenate([lo + boxes[..., :2] * size, lo + boxes[..., 2:] * size], axis=-1)


QUERY_SOURCES = ("backbone", "detector")


def query_source(cfg) -> str:
    """``cfg.query_source`` of a ``config.model``, checked against ``actor.detector_feature_dim``:
    "detector" needs the features' width F > 0, "backbone" takes none (F = 0)."""
    source, dim = cfg.get("query_source", "backbone"), int(cfg.actor.detector_feature_dim)
    if source not in QUERY_SOURCES:
        raise ValueError(
            f"config field model.query_source: expected one of {QUERY_SOURCES}, got {source!r}"
        )
    if (source == "detector") != (dim > 0):
        need = "> 0 (the detector's feature width)" if source == "detector" else "0"
        raise ValueError(
            f"config field model.actor.detector_feature_dim is {dim} but must be {need} with "
            f"model.query_source {source!r}"
        )
    return source
