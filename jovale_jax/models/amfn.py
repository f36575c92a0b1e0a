"""The Actor-centric Multi-modal Fusion Network (AMFN): L layers of MFE per modality, then MFA.

Notation of the paper (eqs. 2-8). For a modality ``m`` with T_m time steps, N_m context tokens and
K actors:

* **MFE** (Multi-modal Feature Encoding, eqs. 2-3). The *temporal bottleneck* b_m = SA(mean over
  real
  actors of a_m) has shape T_m x D: one token per time step summarising all actors, mixed over time
  by self-attention. Then, independently at every time step t, one transformer encoder layer
  (pre-norm by default; ``norm_first=False`` gives the post-norm original) runs over the tokens
  [a_m,t (K), f_m,t (N_m), b_m,t (1)] and returns the updated action
  embeddings â_m,t and context f_m,t. Padded actors are masked out of the attention keys and out of
  the mean, so they never influence real actors.
* **MFA** (Multi-modal Feature Aggregation, eqs. 4-8). Each â_m is aligned to T_c = T_v time steps
  (:func:`resample_matrix`), the aligned embeddings are concatenated over channels (M x D), averaged
  over time, and a bottleneck MLP (M D -> 48 -> M D, ReLU) with a sigmoid gives per-actor,
  per-channel weights w_m. a_fuse = mean over present modalities of w_m * â_m, and the next layer's
  queries are a_m = dealign_m(a_fuse) + w_m * â_m, the residual kept at the modality's own sampling.
  ``fusion='uniform'`` fixes every w_m to the constant :data:`UNIFORM_WEIGHT` = 0.5 = sigmoid(0),
  the gate's output at a zero logit (its outputs average 0.5 at initialisation; tested), so that
  the row measures the gating and not a scale: with w_m = 1 each layer would add the whole residual
  to the whole fused embedding, doubling the queries' scale per layer (2^L). ``'late'`` keeps the
  modalities apart until the heads, whose scores are averaged (late score fusion; the rows of the
  paper's Table 7).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jovale_jax.models.layers import (
    Attention,
    Dense,
    check_remat_policy,
    param,
    scan_layers,
    stack_layers,
)
from jovale_jax.models.mfe_variants import (
    LAYER_CLASSES,
    TIME_MIXING,
    check_encoder,
    encoder_block,
    frame_tokens,
    layer_kinds,
    split_frame_tokens,
)
from jovale_jax.sharding import EMBED, MLP

FUSIONS = ("gated", "uniform", "late")
UNIFORM_WEIGHT = 0.5  # sigmoid(0): the adaptive gate's scale (Table 7's fair "uniform" row)


def resample_matrix(t_in: int, t_out: int) -> np.ndarray:
    """The (t_out, t_in) matrix of temporal alignment (Cooper 2019, as the paper applies it).

    Adaptive average pooling when ``t_in >= t_out`` (output i averages inputs
    floor(i t_in / t_out) .. ceil((i + 1) t_in / t_out) - 1, as PyTorch's AdaptiveAvgPool1d), and
    repetition when ``t_in < t_out`` (output i copies input floor(i t_in / t_out)). De-alignment is
    the same rule applied from T_c back to T_m.
    """
    m = np.zeros((t_out, t_in), np.float32)
    for i in range(t_out):
        if t_in >= t_out:
            lo, hi = (i * t_in) // t_out, -((-(i + 1) * t_in) // t_out)
            m[i, lo:hi] = 1.0 / (hi - lo)
        else:
            m[i, (i * t_in) // t_out] = 1.0
    return m


def resample_time(x: jax.Array, t_out: int, axis: int) -> jax.Array:
    """Resample ``x`` along ``axis`` to ``t_out`` steps with :func:`resample_matrix`."""
    t_in = x.shape[axis]
    if t_in == t_out:
        return x
    mat = jnp.asarray(resample_matrix(t_in, t_out), x.dtype)
    return jnp.moveaxis(jnp.tensordot(mat, jnp.moveaxis(x, axis, 0), axes=1), 0, axis)


def step_tables(rngs: nnx.Rngs, steps: Mapping[str, int], dim: int) -> nnx.Dict:
    """One learned (T_m, D) table per modality, N(0, 0.02): a vector per time step."""
    init = nnx.initializers.normal(0.02)
    return nnx.Dict({m: param(rngs, init, (t, dim), (None, EMBED)) for m, t in steps.items()})


def add_time_embedding(
    context: Mapping[str, jax.Array], tables: Mapping[str, nnx.Param]
) -> dict[str, jax.Array]:
    """Context tokens {m: (B, T_m, N_m, D)} plus their time step's vector of ``tables[m]`` (the
    temporal position an encoder that attends across time needs; TimeSformer's time embedding)."""
    return {
        m: ctx + tables[m][...].astype(ctx.dtype)[None, :, None] if m in tables else ctx
        for m, ctx in context.items()
    }


def masked_mean(x: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
    """Mean of ``x`` over ``axis`` counting only entries where ``mask`` (broadcastable) is true."""
    mask = mask.astype(x.dtype)
    return (x * mask).sum(axis) / jnp.maximum(mask.sum(axis), 1.0)


class MFE(nnx.Module):
    """Multi-modal Feature Encoding for one modality (eqs. 2-3)."""

    def __init__(
        self, dim: int, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32, attention_impl: str = "xla"
    ):
        self.bottleneck_attn = Attention(
            dim, cfg.num_heads, rngs=rngs, dtype=dtype, implementation=attention_impl
        )
        self.encoder = encoder_block(
            dim, cfg, rngs=rngs, dtype=dtype, attention_impl=attention_impl
        )

    def __call__(self, actors: jax.Array, context: jax.Array, actor_mask: jax.Array):
        """actors (B, K, T, D), context (B, T, N, D), actor_mask (B, K)
        -> (â (B, K, T, D), f (B, T, N, D))."""
        tokens, key_mask = self.tokens(actors, context, actor_mask)
        return split_frame_tokens(self.encoder(tokens, key_mask), actors.shape[1], context.shape[2])

    def tokens(self, actors: jax.Array, context: jax.Array, actor_mask: jax.Array):
        """The encoder layer's per-time-step tokens [a_t, f_t, b_t] (B, T, K + N + 1, D) and key
        mask."""
        bottleneck = self.bottleneck_attn(masked_mean(actors, actor_mask[:, :, None, None], axis=1))
        return frame_tokens(actors, context, actor_mask, bottleneck[:, :, None])

    def attention(self, actors: jax.Array, context: jax.Array, actor_mask: jax.Array):
        """As ``__call__``, and each actor's attention over the context tokens (B, T, K, N): the
        softmax weights of actor k's query on token n, averaged over the heads (a row sums to 1
        minus the weight the actor gives the actors and the bottleneck token)."""
        tokens, key_mask = self.tokens(actors, context, actor_mask)
        k, n = actors.shape[1], context.shape[2]
        weights = self.encoder.attention_weights(tokens, key_mask)[..., :k, k : k + n].mean(2)
        return (*split_frame_tokens(self.encoder(tokens, key_mask), k, n), weights)


class MFA(nnx.Module):
    """Multi-modal Feature Aggregation (eqs. 4-8) over the modalities in ``modalities``."""

    def __init__(
        self,
        dim: int,
        modalities: tuple[str, ...],
        t_common: int,
        cfg,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
    ):
        if cfg.fusion not in FUSIONS:
            raise ValueError(
                f"config field model.amfn.fusion: expected one of {FUSIONS}, got {cfg.fusion!r}"
            )
        self.modalities = tuple(modalities)
        self.t_common = t_common
        self.fusion = cfg.fusion
        if cfg.fusion == "gated":
            width = dim * len(modalities)
            self.fc1 = Dense(width, cfg.bottleneck_dim, rngs=rngs, axes=(EMBED, MLP), dtype=dtype)
            self.fc2 = Dense(cfg.bottleneck_dim, width, rngs=rngs, axes=(MLP, EMBED), dtype=dtype)

    def weights(self, aligned: Mapping[str, jax.Array], present: Mapping[str, jax.Array]):
        """Per-actor, per-channel weights w_m (B, K, D) of eqs. 5-6 (:data:`UNIFORM_WEIGHT` unless
        gated)."""
        if self.fusion != "gated":
            return {m: jnp.full_like(aligned[m][:, :, 0], UNIFORM_WEIGHT) for m in self.modalities}
        pooled = jnp.concatenate(
            [aligned[m].mean(2) * present[m][:, None, None] for m in self.modalities], axis=-1
        )
        w = jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(pooled))))
        return dict(zip(self.modalities, jnp.split(w, len(self.modalities), axis=-1), strict=True))

    def __call__(self, a_hat: Mapping[str, jax.Array], present: Mapping[str, jax.Array]):
        """a_hat[m] (B, K, T_m, D); present[m] (B,)
        -> (next queries {m: (B, K, T_m, D)}, a_fuse (B, K, T_c, D))."""
        nxt, a_fuse, _ = self.fuse(a_hat, present)
        return nxt, a_fuse

    def fuse(self, a_hat: Mapping[str, jax.Array], present: Mapping[str, jax.Array]):
        """As ``__call__``, and the gates: per actor, the channel mean of each w_m (B, K, M)."""
        dtype = a_hat[self.modalities[0]].dtype
        present = {m: present[m].astype(dtype) for m in self.modalities}
        aligned = {m: resample_time(a_hat[m], self.t_common, axis=2) for m in self.modalities}
        w = self.weights(aligned, present)
        gates = jnp.stack([w[m].mean(-1) for m in self.modalities], -1).astype(jnp.float32)
        total = sum(present[m] for m in self.modalities)[:, None, None, None]
        a_fuse = sum(
            present[m][:, None, None, None] * w[m][:, :, None] * aligned[m] for m in self.modalities
        ) / jnp.maximum(total, 1.0)
        if self.fusion == "late":
            return dict(a_hat), a_fuse, gates
        nxt = {
            m: resample_time(a_fuse, a_hat[m].shape[2], axis=2) + w[m][:, :, None] * a_hat[m]
            for m in self.modalities
        }
        return nxt, a_fuse, gates


class AMFNLayer(nnx.Module):
    """One AMFN layer: an MFE per modality (or the Table 6 encoder ``kind``), then the MFA."""

    def __init__(
        self,
        dim: int,
        modalities: tuple[str, ...],
        t_common: int,
        cfg,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        attention_impl: str = "xla",
        kind: str = "mfe",
    ):
        make = MFE if kind == "mfe" else LAYER_CLASSES[kind]
        self.mfe = nnx.Dict(
            {
                m: make(dim, cfg, rngs=rngs, dtype=dtype, attention_impl=attention_impl)
                for m in modalities
            }
        )
        self.mfa = MFA(dim, modalities, t_common, cfg, rngs=rngs, dtype=dtype)

    def __call__(self, queries, context, actor_mask, present):
        a_hat, new_context = {}, {}
        for m in self.mfa.modalities:
            a_hat[m], new_context[m] = self.mfe[m](queries[m], context[m], actor_mask)
        queries, a_fuse, gates = self.mfa.fuse(a_hat, present)
        return queries, new_context, a_fuse, gates

    def attention(self, queries, context, actor_mask, present):
        """``(__call__'s outputs, {m: MFE.attention's maps (B, T_m, K, N_m)})`` (MFE layers)."""
        a_hat, new_context, maps = {}, {}, {}
        for m in self.mfa.modalities:
            a_hat[m], new_context[m], maps[m] = self.mfe[m].attention(
                queries[m], context[m], actor_mask
            )
        queries, a_fuse, gates = self.mfa.fuse(a_hat, present)
        return (queries, new_context, a_fuse, gates), maps


class AMFN(nnx.Module):
    """L AMFN layers under ``nnx.scan`` (parameters stacked on a leading layer axis; each layer
    rematerialised as ``remat_policy`` says). Returns the last layer's a_fuse (B, K, T_c, D) and
    action embeddings {m: â_m}.

    ``cfg.encoder`` picks each layer's spatio-temporal encoder (Table 6,
    :mod:`jovale_jax.models.mfe_variants`): ``factorized`` splits the stack into the spatial
    ``layers`` and the ``temporal_layers`` after them (each its own scan); ``cross_frame`` appends
    its learned message token per time step (``messages[m]``, (T_m, D), N(0, 0.02)) to every
    modality's context for the whole stack; ``joint`` and ``divided``, whose context tokens
    attend across time, first add a learned time embedding to them (``context_time_embed[m]``,
    (T_m, D), N(0, 0.02), as TimeSformer does before divided attention): the actor queries carry
    theirs already, and without one a context token's time step would be invisible.
    """

    def __init__(
        self,
        dim: int,
        modalities: tuple[str, ...],
        t_common: int,
        cfg,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        remat_policy: str = "none",
        attention_impl: str = "xla",
        time_steps: Mapping[str, int] | None = None,
    ):
        self.t_common = t_common
        self.sow_gates = False  # True: sow the last layer's gates (`JoVALE.logits_and_gates`)
        self.remat_policy = check_remat_policy(remat_policy)
        self.encoder = check_encoder(cfg)

        def stack(kind: str, depth: int) -> nnx.Module:
            return stack_layers(
                lambda r: AMFNLayer(
                    dim,
                    modalities,
                    t_common,
                    cfg,
                    rngs=r,
                    dtype=dtype,
                    attention_impl=attention_impl,
                    kind=kind,
                ),
                depth,
                rngs,
            )

        (kind, depth), *rest = layer_kinds(cfg)
        self.layers = stack(kind, depth)
        self.temporal_layers = stack(*rest[0]) if rest else None
        needs_steps = self.encoder == "cross_frame" or self.encoder in TIME_MIXING
        if needs_steps and time_steps is None:
            raise ValueError(f"AMFN: the {self.encoder} encoder needs time_steps {{modality: T_m}}")
        steps = {m: time_steps[m] for m in modalities} if needs_steps else {}
        self.messages = step_tables(rngs, steps, dim) if self.encoder == "cross_frame" else None
        self.context_time_embed = (
            step_tables(rngs, steps, dim) if self.encoder in TIME_MIXING else None
        )

    def __call__(
        self,
        queries: Mapping[str, jax.Array],
        context: Mapping[str, jax.Array],
        actor_mask: jax.Array,
        present: Mapping[str, jax.Array],
    ):
        some = next(iter(queries.values()))
        b, k, _, d = some.shape
        a_fuse = jnp.zeros((b, k, self.t_common, d), some.dtype)  # replaced by every layer
        context = dict(context)
        if self.context_time_embed is not None:
            context = add_time_embedding(context, self.context_time_embed)
        if self.messages is not None:
            for m, ctx in context.items():
                msg = self.messages[m][...].astype(ctx.dtype)[None, :, None]
                context[m] = jnp.concatenate(
                    [ctx, jnp.broadcast_to(msg, ctx.shape[:2] + (1, d))], axis=2
                )

        def body(layer, carry, _):
            return layer(carry[0], carry[1], actor_mask, present)

        gates = jnp.zeros((b, k, len(queries)), jnp.float32)  # replaced by every layer's MFA
        carry = (dict(queries), context, a_fuse, gates)
        for layers in (self.layers, self.temporal_layers):
            if layers is not None:
                carry = scan_layers(layers, body, carry, remat_policy=self.remat_policy)
        queries, _, a_fuse, gates = carry
        if self.sow_gates:  # the last layer's MFA gates (B, K, M), under nnx.capture
            self.sow(nnx.Intermediate, "gates", gates)
        return a_fuse, queries

    def attention(
        self,
        queries: Mapping[str, jax.Array],
        context: Mapping[str, jax.Array],
        actor_mask: jax.Array,
        present: Mapping[str, jax.Array],
    ):
        """As ``__call__`` (a_fuse, {m: â_m}), and every layer's actor-to-context attention
        {m: (L, B, T_m, K, N_m)} (:meth:`MFE.attention`), the paper's Figure 6. MFE layers only
        (``model.amfn.encoder='mfe'``); runs the layers as ``__call__`` does (tested equal)."""
        if self.encoder != "mfe":
            raise ValueError(
                f"config field model.amfn.encoder: attention maps need 'mfe', got {self.encoder!r}"
            )
        some = next(iter(queries.values()))
        b, k, _, d = some.shape
        a_fuse = jnp.zeros((b, k, self.t_common, d), some.dtype)
        gates = jnp.zeros((b, k, len(queries)), jnp.float32)

        def step(layer, carry, _):
            return layer.attention(carry[0], carry[1], actor_mask, present)

        scan = nnx.scan(step, in_axes=(0, nnx.Carry, 0), out_axes=(nnx.Carry, 0))
        (queries, _, a_fuse, _), maps = scan(
            self.layers, (dict(queries), dict(context), a_fuse, gates), ()
        )
        return a_fuse, queries, maps
