"""The action classification head: mean over time, LayerNorm, dropout, linear (SPEC.md
section 1)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jovale_jax.models.layers import Dense, LayerNorm
from jovale_jax.sharding import CLASSES, EMBED

# Focal-loss prior (RetinaNet): every class starts at probability 0.01, so early training is not
# swamped by the loss of the many negatives.
PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)


class ActionHead(nnx.Module):
    """(B, K, T, D) action embeddings -> (B, K, num_classes) float32 logits.

    The LayerNorm computes in ``dtype``; the classifier always in float32: added in bfloat16, the
    prior bias (-4.6) would round the logits to bfloat16's steps of 2**-5 in [4, 8), as wide as
    the logits' whole spread at initialisation.
    """

    def __init__(
        self, dim: int, num_classes: int, *, rngs: nnx.Rngs, dropout: float = 0.0, dtype=jnp.float32
    ):
        self.norm = LayerNorm(dim, rngs=rngs, epsilon=1e-5, dtype=dtype)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.classifier = Dense(
            dim,
            num_classes,
            rngs=rngs,
            axes=(EMBED, CLASSES),
            kernel_init=nnx.initializers.normal(0.01),
            bias_init=nnx.initializers.constant(PRIOR_BIAS),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.classifier(self.dropout(self.norm(x.mean(axis=2))))
