"""The fusion stage between the streams and the action heads: its interface, the AMFN and the
alternatives of the paper's Table 5 (Fig. 5).

**The interface.** ``config.model.fusion_strategy`` names an entry of :data:`FUSION_STAGES`, whose
builder makes the model's one ``fusion`` module from ``(config.model, modalities, time steps
{m: T_m}, spatial grids {m: (h, w)})``. Every fusion module

* has ``head_dims``: {head name: width D'}; the model builds one action head per name, and with
  several (one per modality) averages their scores (late score fusion), with one uses its logits;
* is called as ``fusion(queries, context, actor_mask, present, boxes)`` with the action queries
  {m: (B, K, T_m, D)}, the context {m: (B, T_m, N_m, D)}, the (B, K) mask of real proposals, the
  modalities' presence {m: (B,)} and each spatial modality's boxes {m: (B, K, 4)} on its own map;
* returns ``(embeddings, intermediates)``: {head name: (B, K, T, D')} and a dict of what a caller
  may inspect or ignore (the AMFN's MFA ``gates``; :func:`jax.jit` drops what no caller uses).

Padded proposals are masked out of every attention key. A new strategy is a module of this
interface plus its line in :data:`FUSION_STAGES` (and its sizes in ``configs/common.py``).

Paper (Table 5, video + scene, audio excluded "for a fair comparison") and the exact form here:

* ``amfn`` (JoVALE, the default): the AMFN (:mod:`jovale_jax.models.amfn`, sizes
  ``model.amfn``).
* ``roi_feature_fusion`` -- paper: "directly combines RoI actor features from each modality for
  action classification" (Gkioxari and Malik 2015). Here: for each modality m with a spatial map
  (video, scene), r_m = Dense(max over the 7 x 7 bins of RoIAlign(box_m, f_m,t)), averaged over
  its T_m steps (B, K, D), where box_m is the box in m's own coordinates (video: placed on its
  canvas by ``frame_extent``; scene: its whole frames); the head classifies the channel
  concatenation [r_video || r_scene] (B, K, 2D).
* ``roi_relation`` -- paper: "uses cross-attention to capture relationships among RoI features
  from different modalities" (HIT, Faure et al. 2023). Here: the same r_m, then
  ``model.relation.num_layers`` layers in which each r_m (queries) cross-attends to the RoI
  features of the other modalities of all real actors (keys and values), followed by the FFN (an
  MFE-like transformer layer of ``model.relation``'s sizes, its self-attention restricted to those
  keys); the head classifies [r_video || r_scene].
* ``global_relation`` -- paper: "a transformer encoder is utilized to capture holistic
  dependencies across multi-modal embeddings". Here: one sequence of all actor tokens (a_m, K x T_m
  per modality, the AMFN's initial queries) and all context tokens (f_m, T_m x N_m, each plus a
  learned embedding of its time step) of every modality, plus a learned per-modality embedding,
  through ``model.relation.num_layers`` encoder layers; each modality's actor outputs are aligned
  to T_c = T_v as in the MFA and averaged over the modalities present.

The two RoI strategies need at least two of the modalities with a spatial map (video, scene): audio
has no boxes to pool from.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jovale_jax.models.amfn import AMFN
from jovale_jax.models.layers import (
    Dense,
    add_time_embedding,
    check_remat_policy,
    param,
    resample_time,
    scan_layers,
    stack_layers,
    step_tables,
)
from jovale_jax.models.mfe_variants import encoder_block
from jovale_jax.models.roi_align import roi_align
from jovale_jax.sharding import EMBED

SPATIAL_MODALITIES = ("video", "scene")


def check_strategy(cfg, modalities: tuple[str, ...]) -> str:
    """``model.fusion_strategy`` validated against ``model.modalities``."""
    name = cfg.get("fusion_strategy", "amfn")
    if name not in FUSION_STRATEGIES:
        raise ValueError(
            f"config field model.fusion_strategy: expected one of {FUSION_STRATEGIES}, got {name!r}"
        )
    if name.startswith("roi_"):
        spatial = tuple(m for m in modalities if m in SPATIAL_MODALITIES)
        if len(spatial) < 2 or len(spatial) != len(modalities):
            raise ValueError(
                f"config field model.fusion_strategy {name!r} fuses RoI features of "
                f"the modalities with a spatial map: model.modalities must be "
                f"{SPATIAL_MODALITIES}, got {modalities}"
            )
    return name


class RoIFeatures(nnx.Module):
    """Per-modality RoI features r_m (B, K, D) from the context embeddings' patch grids."""

    def __init__(
        self,
        dim: int,
        grids: Mapping[str, tuple[int, int]],
        actor_cfg,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
    ):
        self.grids = dict(grids)
        self.cfg = actor_cfg
        self.proj = nnx.Dict({m: Dense(dim, dim, rngs=rngs, dtype=dtype) for m in grids})

    def __call__(
        self, context: Mapping[str, jax.Array], boxes: Mapping[str, jax.Array]
    ) -> dict[str, jax.Array]:
        """``boxes``: {m: (B, K, 4)}, each normalised to modality m's own map."""
        out = {}
        for m, (h, w) in self.grids.items():
            ctx = context[m]
            grid = ctx[:, :, ctx.shape[2] - h * w :].reshape(ctx.shape[:2] + (h, w, ctx.shape[-1]))
            pool = jax.vmap(
                lambda f, b: roi_align(f, b, self.cfg.roi_size, self.cfg.sampling_ratio)
            )
            rois = pool(grid, boxes[m].astype(grid.dtype))
            out[m] = self.proj[m](rois.max(axis=(3, 4))).mean(2)
        return out


class RoIFeatureFusion(nnx.Module):
    """(a) RoI feature fusion: [r_video || r_scene] -> the head, (B, K, 1, 2D)."""

    def __init__(self, cfg, modalities, steps, grids, *, rngs: nnx.Rngs, dtype=jnp.float32, **_):
        del steps  # no transformer layer (``**_``: remat_policy and attention_impl) here
        self.roi = RoIFeatures(
            cfg.embed_dim, {m: grids[m] for m in modalities}, cfg.actor, rngs=rngs, dtype=dtype
        )
        self.head_dims = {"fused": cfg.embed_dim * len(modalities)}

    def __call__(self, queries, context, actor_mask, present, boxes):
        del queries, actor_mask, present
        r = self.roi(context, boxes)
        return {"fused": jnp.concatenate([r[m] for m in self.roi.grids], axis=-1)[:, :, None]}, {}


def relation_layers(cfg, make, *, rngs: nnx.Rngs, dtype, attention_impl: str) -> nnx.Module:
    """``model.relation.num_layers`` stacked ``make(encoder layer maker)`` (``model.relation``
    sizes), for ``nnx.scan``."""
    sizes = cfg.relation

    def block(r: nnx.Rngs):
        return encoder_block(
            cfg.embed_dim, sizes, rngs=r, dtype=dtype, attention_impl=attention_impl
        )

    return stack_layers(lambda r: make(lambda: block(r)), sizes.num_layers, rngs)


class RoIRelation(nnx.Module):
    """(b) RoI relation modelling: each modality's RoI features cross-attend to the others'."""

    def __init__(
        self,
        cfg,
        modalities,
        steps,
        grids,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        remat_policy: str = "none",
        attention_impl: str = "xla",
    ):
        del steps
        self.roi = RoIFeatures(
            cfg.embed_dim, {m: grids[m] for m in modalities}, cfg.actor, rngs=rngs, dtype=dtype
        )
        self.layers = relation_layers(
            cfg,
            lambda block: nnx.Dict({m: block() for m in modalities}),
            rngs=rngs,
            dtype=dtype,
            attention_impl=attention_impl,
        )
        self.remat_policy = check_remat_policy(remat_policy)
        self.head_dims = {"fused": cfg.embed_dim * len(modalities)}

    def __call__(self, queries, context, actor_mask, present, boxes):
        del queries, present
        mods = tuple(self.roi.grids)
        k = actor_mask.shape[1]

        def body(layer, r, _):
            new = {}
            for m in mods:
                others = [r[o] for o in mods if o != m]
                tokens = jnp.concatenate([r[m], *others], axis=1)
                key_mask = jnp.concatenate(
                    [jnp.zeros_like(actor_mask)] + [actor_mask] * len(others), axis=1
                )
                new[m] = layer[m](tokens, key_mask)[:, :k]
            return new

        r = scan_layers(self.layers, body, self.roi(context, boxes), remat_policy=self.remat_policy)
        return {"fused": jnp.concatenate([r[m] for m in mods], axis=-1)[:, :, None]}, {}


class GlobalRelation(nnx.Module):
    """(c) Global relation modelling: one encoder over every actor and context token."""

    def __init__(
        self,
        cfg,
        modalities,
        steps,
        grids,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        remat_policy: str = "none",
        attention_impl: str = "xla",
    ):
        del grids
        dim = cfg.embed_dim
        self.modalities = tuple(modalities)
        self.t_common = steps["video"]
        # the context tokens' time step (the actor tokens carry the queries' time embedding)
        self.context_time_embed = step_tables(rngs, {m: steps[m] for m in modalities}, dim)
        self.modality_embed = param(
            rngs, nnx.initializers.normal(0.02), (len(modalities), dim), (None, EMBED)
        )
        self.layers = relation_layers(
            cfg, lambda block: block(), rngs=rngs, dtype=dtype, attention_impl=attention_impl
        )
        self.remat_policy = check_remat_policy(remat_policy)
        self.head_dims = {"fused": dim}

    def __call__(self, queries, context, actor_mask, present, boxes):
        del boxes
        b, k = actor_mask.shape
        dtype = queries[self.modalities[0]].dtype
        context = add_time_embedding(context, self.context_time_embed)
        tokens, masks, sizes = [], [], []
        for i, m in enumerate(self.modalities):
            q, c = queries[m], context[m].astype(dtype)
            t, n = q.shape[2], c.shape[2]
            emb = self.modality_embed[...][i].astype(dtype)
            tokens += [q.reshape(b, k * t, -1) + emb, c.reshape(b, t * n, -1) + emb]
            here = present[m][:, None]
            masks += [jnp.repeat(actor_mask, t, axis=1) & here, jnp.broadcast_to(here, (b, t * n))]
            sizes.append((t, n))
        key_mask = jnp.concatenate(masks, axis=1)
        x = scan_layers(
            self.layers,
            lambda layer, h, _: layer(h, key_mask),
            jnp.concatenate(tokens, axis=1),
            remat_policy=self.remat_policy,
        )
        fused, start = 0.0, 0
        weights = {m: present[m].astype(dtype)[:, None, None, None] for m in self.modalities}
        for m, (t, n) in zip(self.modalities, sizes, strict=True):
            a = x[:, start : start + k * t].reshape(b, k, t, -1)
            fused = fused + weights[m] * resample_time(a, self.t_common, axis=2)
            start += k * t + t * n
        return {"fused": fused / jnp.maximum(sum(weights.values()), 1.0)}, {}


def amfn_stage(cfg, modalities, steps, grids, *, rngs: nnx.Rngs, **kwargs) -> AMFN:
    """The AMFN (``model.amfn`` sizes) as a fusion stage: T_c = T_v."""
    del grids
    return AMFN(
        cfg.embed_dim, modalities, steps["video"], cfg.amfn, rngs=rngs, time_steps=steps, **kwargs
    )


# model.fusion_strategy -> builder(config.model, modalities, {m: T_m}, {m: (h, w)}, *, rngs, dtype,
# remat_policy, attention_impl) of a module of the interface above.
FUSION_STAGES = {
    "amfn": amfn_stage,
    "roi_feature_fusion": RoIFeatureFusion,
    "roi_relation": RoIRelation,
    "global_relation": GlobalRelation,
}
FUSION_STRATEGIES = tuple(FUSION_STAGES)


def head_logits(
    heads: Mapping[str, nnx.Module],
    embeddings: Mapping[str, jax.Array],
    present: Mapping[str, jax.Array],
) -> jax.Array:
    """The action heads on a fusion stage's embeddings (B, K, num_classes): one head's logits, or
    with one head per modality their late score fusion, the mean of the heads' scores (sigmoids)
    over the modalities present in each example, returned as its logit (so the loss and
    evaluation apply their sigmoid as to any logits): logit(mean_m s_m) = LSE_m log s_m -
    LSE_m log(1 - s_m), stable at any logit."""
    if len(heads) == 1:
        ((name, head),) = heads.items()
        return head(embeddings[name])
    logits = jnp.stack([heads[m](embeddings[m]) for m in embeddings])  # (M, B, K, C)
    here = jnp.stack([present[m] for m in embeddings])[:, :, None, None]

    def masked_lse(x):  # over the modalities present; a large finite fill keeps gradients finite
        return jax.nn.logsumexp(jnp.where(here, x, -1e30), axis=0)

    fused = masked_lse(jax.nn.log_sigmoid(logits)) - masked_lse(jax.nn.log_sigmoid(-logits))
    return jnp.where(here.any(0), fused, 0.0)
