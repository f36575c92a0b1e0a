"""The multi-modal fusion strategies of the paper's Table 5 (Fig. 5), as alternatives to the AMFN.

``model.fusion_strategy`` picks what runs between the streams and the classification head. Each
strategy maps the streams' outputs to the head's input (B, K, T, D'), with K actor proposals; padded
proposals are masked out of every attention key.

Paper (Table 5, video + scene, audio excluded "for a fair comparison") and the exact form here:

* ``amfn`` (JoVALE, the default): the AMFN (``jovale_jax.models.amfn``).
* ``roi_feature_fusion`` -- paper: "directly combines RoI actor features from each modality for
  action classification" (Gkioxari and Malik 2015). Here: for each modality m with a spatial map
  (video, scene), r_m = Dense(max over the 7 x 7 bins of RoIAlign(box_m, f_m,t)), averaged over
  its T_m steps (B, K, D), where box_m is the box in m's own coordinates (video: placed on its
  canvas by ``frame_extent``; scene: its whole frames); the head classifies the channel
  concatenation [r_video || r_scene] (B, K, 2D).
* ``roi_relation`` -- paper: "uses cross-attention to capture relationships among RoI features
  from different modalities" (HIT, Faure et al. 2023). Here: the same r_m, then
  ``model.amfn.num_layers`` layers in which each r_m (queries) cross-attends to the RoI features
  of the other modalities of all real actors (keys and values), followed by the FFN (the MFE's
  transformer layer, its self-attention restricted to those keys); the head classifies
  [r_video || r_scene].
* ``global_relation`` -- paper: "a transformer encoder is utilized to capture holistic
  dependencies across multi-modal embeddings". Here: one sequence of all actor tokens (a_m, K x T_m
  per modality, the AMFN's initial queries) and all context tokens (f_m, T_m x N_m, each plus a
  learned embedding of its time step) of every modality, plus a learned per-modality embedding,
  through ``model.amfn.num_layers`` MFE-sized encoder layers; each modality's actor outputs are
  aligned to T_c = T_v as in the MFA and averaged over the modalities present.

The two RoI strategies need at least two of the modalities with a spatial map (video, scene): audio
has no boxes to pool from.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jovale_jax.models.amfn import add_time_embedding, resample_time, step_tables
from jovale_jax.models.layers import Dense, check_remat_policy, param, scan_layers, stack_layers
from jovale_jax.models.mfe_variants import encoder_block
from jovale_jax.models.roi_align import roi_align
from jovale_jax.sharding import EMBED

FUSION_STRATEGIES = ("amfn", "roi_feature_fusion", "roi_relation", "global_relation")
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

    def __init__(self, dim: int, grids, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32, **unused):
        del unused  # no transformer layer here
        self.roi = RoIFeatures(dim, grids, cfg.actor, rngs=rngs, dtype=dtype)
        self.out_dim = dim * len(grids)

    def __call__(self, queries, context, actor_mask, present, boxes):
        del queries, actor_mask, present
        r = self.roi(context, boxes)
        return jnp.concatenate([r[m] for m in self.roi.grids], axis=-1)[:, :, None]


class RoIRelation(nnx.Module):
    """(b) RoI relation modelling: each modality's RoI features cross-attend to the others'."""

    def __init__(
        self,
        dim: int,
        grids,
        cfg,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        remat_policy: str = "none",
        attention_impl: str = "xla",
    ):
        self.roi = RoIFeatures(dim, grids, cfg.actor, rngs=rngs, dtype=dtype)
        self.layers = stack_layers(
            lambda r: nnx.Dict(
                {
                    m: encoder_block(
                        dim, cfg.amfn, rngs=r, dtype=dtype, attention_impl=attention_impl
                    )
                    for m in grids
                }
            ),
            cfg.amfn.num_layers,
            rngs,
        )
        self.remat_policy = check_remat_policy(remat_policy)
        self.out_dim = dim * len(grids)

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
        return jnp.concatenate([r[m] for m in mods], axis=-1)[:, :, None]


class GlobalRelation(nnx.Module):
    """(c) Global relation modelling: one encoder over every actor and context token."""

    def __init__(
        self,
        dim: int,
        modalities: tuple[str, ...],
        t_common: int,
        cfg,
        *,
        rngs: nnx.Rngs,
        time_steps: Mapping[str, int],
        dtype=jnp.float32,
        remat_policy: str = "none",
        attention_impl: str = "xla",
    ):
        self.modalities = tuple(modalities)
        self.t_common = t_common
        # the context tokens' time step (the actor tokens carry the queries' time embedding)
        self.context_time_embed = step_tables(rngs, {m: time_steps[m] for m in modalities}, dim)
        self.modality_embed = param(
            rngs, nnx.initializers.normal(0.02), (len(modalities), dim), (None, EMBED)
        )
        self.layers = stack_layers(
            lambda r: encoder_block(
                dim, cfg.amfn, rngs=r, dtype=dtype, attention_impl=attention_impl
            ),
            cfg.amfn.num_layers,
            rngs,
        )
        self.remat_policy = check_remat_policy(remat_policy)
        self.out_dim = dim

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
        return fused / jnp.maximum(sum(weights.values()), 1.0)
