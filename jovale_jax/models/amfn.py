"""The Actor-centric Multi-modal Fusion Network (AMFN): L layers of MFE per modality, then MFA.

Notation of the paper (eqs. 2-8). For a modality ``m`` with T_m time steps, N_m context tokens and
K actors:

* **MFE** (Multi-modal Feature Encoding, eqs. 2-3). The *temporal bottleneck* b_m = SA(mean over
  real actors of a_m) has shape T_m x D: one token per time step summarising all actors, mixed
  over time by self-attention. Then, independently at every time step t, one transformer encoder
  layer (pre-norm by default; ``norm_first=False`` gives the post-norm original) runs over the
  tokens [a_m,t (K), f_m,t (N_m), b_m,t (1)] and returns the updated action embeddings â_m,t and
  context f_m,t. Padded actors are masked out of the attention keys and out of the mean, so they
  never influence real actors.
* **MFA** (Multi-modal Feature Aggregation, eqs. 4-8). Each â_m is aligned to T_c = T_v time steps
  (:func:`~jovale_jax.models.layers.resample_matrix`), the aligned embeddings are concatenated
  over channels (M x D), averaged over time, and a bottleneck MLP (M D -> 48 -> M D, ReLU) with a
  sigmoid gives per-actor, per-channel weights w_m. a_fuse = mean over present modalities of
  w_m * â_m, and the next layer's queries are a_m = dealign_m(a_fuse) + w_m * â_m, the residual
  kept at the modality's own sampling.

``fusion='uniform'`` fixes every w_m to the constant :data:`UNIFORM_WEIGHT` = 0.5 = sigmoid(0), the
gate's output at a zero logit (its outputs average 0.5 at initialisation; tested), so that the row
measures the gating and not a scale: with w_m = 1 each layer would add the whole residual to the
whole fused embedding, doubling the queries' scale per layer (2^L). ``'late'`` keeps the modalities
apart until the heads, whose scores are averaged (late score fusion; the rows of the paper's
Table 7).

The :class:`AMFN` is a fusion stage of the interface of :mod:`jovale_jax.models.fusion`: it returns
per-head embeddings (``fused``: the last a_fuse; with late fusion one per modality: the last â_m)
and its intermediates (the last MFA's gates; with MFE layers, what :meth:`AMFN.attention_maps`
needs for the paper's Figure 6).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jovale_jax.models.layers import (
    Attention,
    Dense,
    add_time_embedding,
    check_remat_policy,
    masked_mean,
    resample_time,
    scan_layers,
    stack_layers,
    step_tables,
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
        """actors (B, K, T, D), context (B, T, N, D), actor_mask (B, K) -> (â (B, K, T, D),
        f (B, T, N, D), intermediates): the encoder layer's tokens and key mask (:meth:`tokens`),
        from which :meth:`context_attention` recomputes its attention."""
        tokens, key_mask = self.tokens(actors, context, actor_mask)
        out = self.encoder(tokens, key_mask)
        a_hat, f = split_frame_tokens(out, actors.shape[1], context.shape[2])
        return a_hat, f, {"tokens": tokens, "key_mask": key_mask}

    def tokens(self, actors: jax.Array, context: jax.Array, actor_mask: jax.Array):
        """The encoder layer's per-time-step tokens [a_t, f_t, b_t] (B, T, K + N + 1, D) and
        their key mask."""
        bottleneck = self.bottleneck_attn(masked_mean(actors, actor_mask[:, :, None, None], axis=1))
        return frame_tokens(actors, context, actor_mask, bottleneck[:, :, None])

    def context_attention(self, tokens: jax.Array, key_mask: jax.Array, num_actors: int):
        """Each actor's attention over the context tokens (B, T, K, N) in the encoder layer that
        ran on ``tokens`` (:meth:`tokens`): the softmax weights of actor k's query on token n,
        averaged over the heads (a row sums to 1 minus the weight the actor gives the actors and
        the bottleneck token)."""
        k = num_actors
        return self.encoder.attention_weights(tokens, key_mask)[..., :k, k:-1].mean(2)


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
        """Per-actor, per-channel weights w_m (B, K, D) of eqs. 5-6: the gate's output, or
        :data:`UNIFORM_WEIGHT` everywhere unless the fusion is gated."""
        if self.fusion != "gated":
            return {m: jnp.full_like(aligned[m][:, :, 0], UNIFORM_WEIGHT) for m in self.modalities}
        pooled = jnp.concatenate(
            [aligned[m].mean(2) * present[m][:, None, None] for m in self.modalities], axis=-1
        )
        w = jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(pooled))))
        return dict(zip(self.modalities, jnp.split(w, len(self.modalities), axis=-1), strict=True))

    def __call__(self, a_hat: Mapping[str, jax.Array], present: Mapping[str, jax.Array]):
        """a_hat[m] (B, K, T_m, D) and present[m] (B,) -> (next queries {m: (B, K, T_m, D)},
        a_fuse (B, K, T_c, D), gates (B, K, M): per actor, the channel mean of each w_m)."""
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
        """-> (next queries {m: (B, K, T_m, D)}, context {m: (B, T_m, N_m, D)}, a_fuse
        (B, K, T_c, D), intermediates): ``gates``, the MFA's per-actor channel means of w_m
        (B, K, M), and ``encoder``, each modality's encoder intermediates (the MFE's tokens)."""
        a_hat, new_context, encoder = {}, {}, {}
        for m in self.mfa.modalities:
            a_hat[m], new_context[m], encoder[m] = self.mfe[m](queries[m], context[m], actor_mask)
        queries, a_fuse, gates = self.mfa(a_hat, present)
        return queries, new_context, a_fuse, {"gates": gates, "encoder": encoder}


class AMFN(nnx.Module):
    """L AMFN layers under ``nnx.scan`` (parameters stacked on a leading layer axis; each layer
    rematerialised as ``remat_policy`` says), a fusion stage of :mod:`jovale_jax.models.fusion`.

    ``cfg.encoder`` picks each layer's spatio-temporal encoder (Table 6,
    :mod:`jovale_jax.models.mfe_variants`): ``factorized`` splits the stack into the spatial
    ``layers`` and the ``temporal_layers`` after them (each its own scan); ``cross_frame`` appends
    its learned message token per time step (``messages[m]``, (T_m, D), N(0, 0.02)) to every
    modality's context for the whole stack; ``joint`` and ``divided``, whose context tokens attend
    across time, first add a learned time embedding to them (``context_time_embed[m]``, (T_m, D),
    N(0, 0.02), as TimeSformer does before divided attention): the actor queries carry theirs
    already, and without one a context token's time step would be invisible.
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
        self.remat_policy = check_remat_policy(remat_policy)
        self.encoder = check_encoder(cfg)
        # the heads' inputs: the last a_fuse, or with late fusion each modality's last â_m
        late = cfg.fusion == "late"
        self.head_dims = {m: dim for m in modalities} if late else {"fused": dim}

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
        boxes: Mapping[str, jax.Array] | None = None,
    ) -> tuple[dict[str, jax.Array], dict[str, Any]]:
        """The fusion-stage interface (:mod:`jovale_jax.models.fusion`; ``boxes`` unused) ->
        ``(embeddings, intermediates)``: {head name: (B, K, T_c or T_m, D)} and ``gates``, the
        last MFA's gates (B, K, M), plus with MFE layers ``layers``, every layer's intermediates
        stacked on a leading layer axis (:meth:`attention_maps`)."""
        del boxes  # the actor queries carry the boxes' features
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
            queries, context, a_fuse, intermediates = layer(*carry[:2], actor_mask, present)
            return (queries, context, a_fuse), intermediates

        carry, stacks = (dict(queries), context, a_fuse), []
        for layers in (self.layers, self.temporal_layers):
            if layers is not None:
                carry, ys = scan_layers(
                    layers, body, carry, remat_policy=self.remat_policy, outputs=True
                )
                stacks.append(ys)
        queries, _, a_fuse = carry
        intermediates = {"gates": stacks[-1]["gates"][-1]}
        if self.encoder == "mfe":
            intermediates["layers"] = stacks[0]["encoder"]
        embeddings = {"fused": a_fuse} if "fused" in self.head_dims else dict(queries)
        return embeddings, intermediates

    def attention_maps(self, intermediates: Mapping[str, Any], num_actors: int) -> dict:
        """Every layer's actor-to-context attention {m: (L, B, T_m, K, N_m)} in the pass that
        returned ``intermediates`` (:meth:`MFE.context_attention`), the paper's Figure 6. MFE
        layers only (``model.amfn.encoder='mfe'``)."""
        if "layers" not in intermediates:
            raise ValueError(
                f"config field model.amfn.encoder: attention maps need 'mfe', got {self.encoder!r}"
            )

        def maps(mfe, x):
            return mfe.context_attention(x["tokens"], x["key_mask"], num_actors)

        per_layer = nnx.vmap(maps, in_axes=(0, 0))
        return {m: per_layer(self.layers.mfe[m], x) for m, x in intermediates["layers"].items()}
