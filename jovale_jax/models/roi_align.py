"""RoIAlign (Mask R-CNN; torchvision's ``aligned=True`` convention) as two small matrix products.

For each box and output bin, ``sampling_ratio`` x ``sampling_ratio`` points are sampled bilinearly
and averaged. Bilinear sampling is separable, so each box gets a (bins * ratio, H) matrix of row
weights and a (bins * ratio, W) matrix of column weights, and sampling is two einsums: no gathers,
which keeps it fast on accelerators and differentiable with respect to the features.

Boundary rule (torchvision): a sample point with y < -1 or y > H contributes zero; otherwise y is
clamped to [0, H - 1] before interpolation (same for x).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _axis_weights(start: jax.Array, end: jax.Array, size: int, bins: int, ratio: int) -> jax.Array:
    """Bilinear weights (K, bins * ratio, size) of the sample points between start and end
    (pixels)."""
    bin_size = (end - start) / bins  # (K,)
    offsets = (jnp.arange(bins * ratio) + 0.5) / ratio  # sample centres, in bins
    coords = start[:, None] + offsets[None, :] * bin_size[:, None]  # (K, bins * ratio)
    valid = (coords >= -1.0) & (coords <= size)
    coords = jnp.clip(coords, 0.0, size - 1)
    grid = jnp.arange(size, dtype=coords.dtype)
    weights = jnp.maximum(0.0, 1.0 - jnp.abs(coords[..., None] - grid))
    return weights * valid[..., None]


def roi_align(
    features: jax.Array, boxes: jax.Array, output_size: int = 7, sampling_ratio: int = 2
) -> jax.Array:
    """Pool each box from a feature map.

    Args:
      features: (..., H, W, C) feature map (leading axes, e.g. time, are shared by all boxes).
      boxes: (K, 4) boxes x1, y1, x2, y2 normalised to [0, 1] of the map's extent.
      output_size: bins per side.
      sampling_ratio: sample points per bin side.

    Returns:
      (K, ..., output_size, output_size, C).
    """
    h, w = features.shape[-3], features.shape[-2]
    scale = jnp.asarray([w, h, w, h], boxes.dtype)
    x1, y1, x2, y2 = jnp.moveaxis(boxes * scale - 0.5, -1, 0)  # aligned=True: pixel centres at .5
    wy = _axis_weights(y1, y2, h, output_size, sampling_ratio).astype(features.dtype)
    wx = _axis_weights(x1, x2, w, output_size, sampling_ratio).astype(features.dtype)
    samples = jnp.einsum("kyh,...hwc,kxw->k...yxc", wy, features, wx)
    r = sampling_ratio
    shape = samples.shape[:-3] + (output_size, r, output_size, r, samples.shape[-1])
    return samples.reshape(shape).mean(axis=(-4, -2))
