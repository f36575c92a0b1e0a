"""The training loss: sigmoid focal loss on action logits, averaged over real proposals.

Targets come from the Hungarian assignment done when the data is built (SPEC.md section 2), so the
loss does not depend on any matching inside the step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sigmoid_focal_loss(
    logits: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> jax.Array:
    """Focal loss (Lin et al. 2017) summed over classes and averaged over proposals where ``mask``.

    logits, targets: (B, K, C); mask: (B, K). Returns a scalar (0 when no proposal is real).
    """
    logits = logits.astype(jnp.float32)
    targets = targets.astype(jnp.float32)
    p = jax.nn.sigmoid(logits)
    ce = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    mask = mask.astype(jnp.float32)
    return (loss.sum(-1) * mask).sum() / jnp.maximum(mask.sum(), 1.0)
