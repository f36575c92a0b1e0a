"""The spatio-temporal encoders of the paper's Table 6, as alternatives to the MFE inside the AMFN.

Each takes and returns what the MFE does: ``(actors (B, K, T, D), context (B, T, N, D),
actor_mask (B, K)) -> (â (B, K, T, D), f (B, T, N, D), intermediates)`` (these return no
intermediates: ``{}``), and is one layer of the AMFN's stack
(``model.amfn.encoder``; the MFA follows every layer as with the MFE). Padded actors are masked out
of every attention key, so they never influence a real actor. Every transformer layer is the MFE's
(``model.amfn``: heads, FFN width, norm placement, dropout).

* ``joint`` (joint space-time attention, the paper's baseline): one encoder layer over all
  T x (K + N) tokens of the modality.
* ``factorized`` (Arnab et al. 2021, ViViT model 2): the stack is split, as ViViT's factorised
  encoder is, into ``L - L_t`` spatial layers (one encoder layer per time step over [a_t, f_t],
  :class:`SpatialEncoder`) followed by ``L_t = model.amfn.temporal_layers`` temporal layers (one
  encoder layer over each actor's T tokens, :class:`TemporalEncoder`; the context is left as the
  spatial layers made it).
* ``divided`` (Bertasius et al. 2021, TimeSformer's divided space-time attention): inside each
  layer, temporal self-attention over the T tokens of each actor and of each context position
  (with its own LayerNorm and residual), then the spatial encoder layer per time step over
  [a_t, f_t] (attention and FFN).
* ``cross_frame`` (Ni et al. 2022, X-CLIP's cross-frame communication): one randomly initialised
  (learned, N(0, 0.02)) message token per time step rides along as an extra context token; each
  layer mixes the message tokens across time by self-attention (residual), then runs the encoder
  layer per time step over [a_t, f_t, m_t]; the updated m_t is the next layer's message. It takes
  the place of the MFE's actor bottleneck b_t.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jovale_jax.models.layers import Attention, LayerNorm, TransformerBlock

ENCODERS = ("mfe", "joint", "factorized", "divided", "cross_frame")
# Encoders whose context tokens attend across time: the AMFN gives those tokens a time embedding.
TIME_MIXING = ("joint", "divided")


def check_encoder(cfg) -> str:
    """``model.amfn.encoder`` validated (and ``temporal_layers`` for ``factorized``)."""
    name = cfg.get("encoder", "mfe")
    if name not in ENCODERS:
        raise ValueError(
            f"config field model.amfn.encoder: expected one of {ENCODERS}, got {name!r}"
        )
    if name == "factorized" and not 1 <= cfg.temporal_layers < cfg.num_layers:
        raise ValueError(
            f"config field model.amfn.temporal_layers: the factorized encoder needs "
            f"1 <= temporal_layers < num_layers ({cfg.num_layers}), got "
            f"{cfg.temporal_layers}"
        )
    return name


def layer_kinds(cfg) -> tuple[tuple[str, int], ...]:
    """The AMFN's stacks as (layer kind, number of layers), run in this order."""
    name = check_encoder(cfg)
    if name == "factorized":
        return (
            ("spatial", cfg.num_layers - cfg.temporal_layers),
            ("temporal", cfg.temporal_layers),
        )
    return ((name, cfg.num_layers),)


def encoder_block(dim: int, cfg, *, rngs: nnx.Rngs, dtype, **block_kwargs) -> TransformerBlock:
    """The MFE's transformer encoder layer (``model.amfn`` sizes)."""
    return TransformerBlock(
        dim,
        cfg.num_heads,
        cfg.mlp_dim,
        rngs=rngs,
        norm_first=cfg.norm_first,
        layer_norm_eps=1e-5,
        dropout=cfg.dropout,
        dtype=dtype,
        **block_kwargs,
    )


def frame_tokens(
    actors: jax.Array, context: jax.Array, actor_mask: jax.Array, extra: jax.Array | None = None
):
    """Per time step tokens [a_t (K), f_t (N), extra_t (E)] (B, T, K + N + E, D) and their key
    mask (padded actors false); ``extra`` is (B, T, E, D)."""
    b, k, t, _ = actors.shape
    parts = [jnp.swapaxes(actors, 1, 2), context.astype(actors.dtype)]
    if extra is not None:
        parts.append(extra.astype(actors.dtype))
    tokens = jnp.concatenate(parts, axis=2)
    key_mask = jnp.concatenate(
        [
            jnp.broadcast_to(actor_mask[:, None, :], (b, t, k)),
            jnp.ones((b, t, tokens.shape[2] - k), bool),
        ],
        axis=2,
    )
    return tokens, key_mask


def split_frame_tokens(out: jax.Array, k: int, n: int):
    """Inverse of :func:`frame_tokens`: (â (B, K, T, D), f (B, T, N, D))."""
    return jnp.swapaxes(out[:, :, :k], 1, 2), out[:, :, k : k + n]


class SpatialEncoder(nnx.Module):
    """One encoder layer per time step over [a_t, f_t] (no temporal exchange)."""

    def __init__(self, dim: int, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32, **block_kwargs):
        self.encoder = encoder_block(dim, cfg, rngs=rngs, dtype=dtype, **block_kwargs)

    def __call__(self, actors, context, actor_mask):
        tokens, key_mask = frame_tokens(actors, context, actor_mask)
        out = self.encoder(tokens, key_mask)
        return *split_frame_tokens(out, actors.shape[1], context.shape[2]), {}


class TemporalEncoder(nnx.Module):
    """One encoder layer over each actor's T tokens; the context passes through."""

    def __init__(self, dim: int, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32, **block_kwargs):
        self.encoder = encoder_block(dim, cfg, rngs=rngs, dtype=dtype, **block_kwargs)

    def __call__(self, actors, context, actor_mask):
        del actor_mask  # each sequence is one actor's own time steps
        return self.encoder(actors), context, {}


class JointEncoder(nnx.Module):
    """Joint space-time attention: one encoder layer over all T x (K + N) tokens."""

    def __init__(self, dim: int, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32, **block_kwargs):
        self.encoder = encoder_block(dim, cfg, rngs=rngs, dtype=dtype, **block_kwargs)

    def __call__(self, actors, context, actor_mask):
        b, k, t, d = actors.shape
        n = context.shape[2]
        tokens, key_mask = frame_tokens(actors, context, actor_mask)
        out = self.encoder(tokens.reshape(b, t * (k + n), d), key_mask.reshape(b, t * (k + n)))
        return *split_frame_tokens(out.reshape(b, t, k + n, d), k, n), {}


class TemporalAttention(nnx.Module):
    """Self-attention along time with a residual (pre- or post-norm): (..., T, D) -> (..., T, D)."""

    def __init__(self, dim: int, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32, **attn_kwargs):
        self.norm = LayerNorm(dim, rngs=rngs, epsilon=1e-5, dtype=dtype)
        self.attn = Attention(dim, cfg.num_heads, rngs=rngs, dtype=dtype, **attn_kwargs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.norm_first = cfg.norm_first

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.norm_first:
            return x + self.dropout(self.attn(self.norm(x)))
        return self.norm(x + self.dropout(self.attn(x)))


class DividedEncoder(nnx.Module):
    """Divided space-time attention: temporal attention, then the spatial layer per time step."""

    def __init__(self, dim: int, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32, **block_kwargs):
        self.temporal = TemporalAttention(
            dim, cfg, rngs=rngs, dtype=dtype, **attention_kwargs(block_kwargs)
        )
        self.spatial = SpatialEncoder(dim, cfg, rngs=rngs, dtype=dtype, **block_kwargs)

    def __call__(self, actors, context, actor_mask):
        actors = self.temporal(actors)
        context = jnp.swapaxes(
            self.temporal(jnp.swapaxes(context.astype(actors.dtype), 1, 2)), 1, 2
        )
        return self.spatial(actors, context, actor_mask)


class CrossFrameEncoder(nnx.Module):
    """X-CLIP cross-frame communication: the last context token of each step is its message."""

    def __init__(self, dim: int, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32, **block_kwargs):
        self.message_attn = TemporalAttention(
            dim, cfg, rngs=rngs, dtype=dtype, **attention_kwargs(block_kwargs)
        )
        self.encoder = encoder_block(dim, cfg, rngs=rngs, dtype=dtype, **block_kwargs)

    def __call__(self, actors, context, actor_mask):
        """context (B, T, N + 1, D), its last token the message -> (â, f (B, T, N + 1, D), {})."""
        messages = self.message_attn(context[:, :, -1].astype(actors.dtype))
        tokens, key_mask = frame_tokens(
            actors, context[:, :, :-1], actor_mask, messages[:, :, None]
        )
        out = self.encoder(tokens, key_mask)
        k = actors.shape[1]
        return jnp.swapaxes(out[:, :, :k], 1, 2), out[:, :, k:], {}


def attention_kwargs(block_kwargs: dict) -> dict:
    """The attention's share of a block's keyword arguments (its kernel implementation)."""
    return (
        {"implementation": block_kwargs["attention_impl"]}
        if "attention_impl" in block_kwargs
        else {}
    )


LAYER_CLASSES = {
    "joint": JointEncoder,
    "spatial": SpatialEncoder,
    "temporal": TemporalEncoder,
    "divided": DividedEncoder,
    "cross_frame": CrossFrameEncoder,
}
