"""The full JoVALE model: the streams, actor proposal features, the fusion stage and the heads.

``JoVALE(config.model, rngs=...)(batch)`` maps the batch dict of ``data/SCHEMA.md`` (described and
checked by ``models/batch.py``) to per-proposal action logits (B, K, num_classes). uint8 frames
are normalised here, on the device, and boxes (normalised to the frame) are placed on the video
canvas by the optional ``frame_extent`` (``models/inputs.py``). Which streams exist is
``config.model.modalities`` (any non-empty subset of video, audio, scene; Table 4 of the paper).

The fusion stage is always the model's ``fusion`` module: the AMFN, or the Table 5 alternative
that ``config.model.fusion_strategy`` names (:mod:`jovale_jax.models.fusion` describes their
common interface). The model has one action head per embedding the stage returns: one ``fused``
head, or with the AMFN's late fusion one per modality, whose scores are averaged.

Actor proposal features (the initial action queries of every modality) come from
``model.query_source``. "detector" (the paper): the person detector's per-box features (the batch's
``proposal_features``, stored by build-data), projected to D. "backbone": RoIAlign of each box on
the video encoder's feature map at every time step, max-pooled over the 7 x 7 bins and projected to
D; without the video stream the scene encoder's patch grid (one map per scene frame), and with
audio alone an embedding of the box coordinates.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jovale_jax.models.audio import AudioPatchEmbed, audio_grid
from jovale_jax.models.batch import check_batch, modalities_of
from jovale_jax.models.blip import blip_num_patches
from jovale_jax.models.clip import scene_encoder
from jovale_jax.models.fusion import FUSION_STAGES, check_strategy, head_logits
from jovale_jax.models.heads import ActionHead
from jovale_jax.models.inputs import (
    BLIP_MEAN,
    BLIP_STD,
    frame_to_canvas,
    normalize_frames,
    query_source,
    video_statistics,
)
from jovale_jax.models.layers import (
    Dense,
    LayerNorm,
    attention_implementation,
    dtype_of,
    param,
    resample_time,
)
from jovale_jax.models.roi_align import roi_align
from jovale_jax.models.slowfast import SlowFast, is_slowfast, slowfast_grid, slowfast_widths
from jovale_jax.models.vit import VideoEncoder, video_grid
from jovale_jax.sharding import EMBED


def video_map_grid(video_cfg) -> tuple[int, int, int]:
    """(T_v, h, w) of the video encoder's feature map: the ViT's token grid, or SlowFast's res5
    grid (the input / 16, whatever ``model.video.patch`` says)."""
    return (slowfast_grid if is_slowfast(video_cfg) else video_grid)(video_cfg)


def time_steps(cfg) -> dict[str, int]:
    """T_m of every modality's embeddings for a ``config.model``."""
    return {
        "video": video_map_grid(cfg.video)[0],
        "audio": audio_grid(cfg.audio)[0],
        "scene": cfg.scene.num_frames,
    }


def context_grid(cfg) -> dict[str, tuple[int, int]]:
    """(T_m, N_m) of every modality's context embeddings f_m for a ``config.model``."""
    _, h, w = video_map_grid(cfg.video)
    return {
        "video": (time_steps(cfg)["video"], h * w),
        "audio": audio_grid(cfg.audio),
        "scene": (cfg.scene.num_frames, 1 + blip_num_patches(cfg.scene)),
    }


def build_fusion(
    cfg, modalities: tuple[str, ...], *, rngs: nnx.Rngs, dtype=jnp.float32, **layer_kwargs
) -> nnx.Module:
    """The fusion stage of ``cfg.fusion_strategy`` (:data:`FUSION_STAGES`: the AMFN or a Table 5
    alternative), built for this config's time steps and spatial grids. ``layer_kwargs``:
    ``remat_policy`` and ``attention_impl`` of the transformer layers."""
    grids = {
        "video": video_map_grid(cfg.video)[1:],
        "scene": (cfg.scene.image_size // cfg.scene.patch,) * 2,
    }
    make = FUSION_STAGES[check_strategy(cfg, modalities)]
    return make(cfg, modalities, time_steps(cfg), grids, rngs=rngs, dtype=dtype, **layer_kwargs)


def modality_boxes(batch: Mapping[str, jax.Array], modalities) -> dict[str, jax.Array]:
    """Each spatial modality's RoI boxes (B, K, 4), normalised to the map it pools from: the
    video's on the video canvas (the batch's frame-normalised boxes placed by its optional
    ``frame_extent``, which a flip moves too), the scene's in its own whole frames."""
    boxes = {}
    if "video" in modalities:
        boxes["video"] = batch["boxes"]
        if "frame_extent" in batch:  # the frame within the canvas
            boxes["video"] = frame_to_canvas(batch["boxes"], batch["frame_extent"])
    if "scene" in modalities:
        boxes["scene"] = batch["boxes"]
    return boxes


def actor_boxes(boxes: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]) -> jax.Array:
    """The boxes of the map the actor features pool from (video, else scene; audio alone embeds
    the frame boxes)."""
    return boxes.get("video", boxes.get("scene", batch["boxes"]))


class ActorFeatures(nnx.Module):
    """Actor proposal features (B, K, T_src, D): the detector's per-box features (B, K, F) with
    ``detector`` (T_src = 1), else RoIAlign on a feature map (B, T_src, h, w, C) at the boxes, or
    without a map an embedding of the boxes (T_src = 1)."""

    def __init__(
        self, source_width: int, dim: int, cfg, *, detector: bool, rngs: nnx.Rngs, dtype=jnp.float32
    ):
        self.cfg = cfg
        self.detector = detector
        if detector:
            self.detector_proj = Dense(
                cfg.detector_feature_dim, dim, rngs=rngs, axes=(None, EMBED), dtype=dtype
            )
        elif source_width:
            self.proj = Dense(source_width, dim, rngs=rngs, dtype=dtype)
        else:
            self.box_embed = Dense(4, dim, rngs=rngs, axes=(None, EMBED), dtype=dtype)

    def __call__(
        self,
        feature_map: jax.Array | None,
        boxes: jax.Array,
        detector_features: jax.Array | None = None,
    ) -> jax.Array:
        if self.detector:
            return self.detector_proj(detector_features)[:, :, None]
        if feature_map is not None:
            pool = jax.vmap(
                lambda f, b: roi_align(f, b, self.cfg.roi_size, self.cfg.sampling_ratio)
            )
            return self.proj(pool(feature_map, boxes.astype(feature_map.dtype)).max(axis=(3, 4)))
        return self.box_embed(boxes)[:, :, None]


class JoVALE(nnx.Module):
    """JoVALE: batch dict -> (B, K, num_classes) action logits."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.modalities = modalities_of(cfg)
        dtype = dtype_of(cfg.dtype)
        dim = cfg.embed_dim
        steps = time_steps(cfg)
        self.dtype = dtype
        layers = {
            "remat_policy": cfg.remat_policy,
            "attention_impl": attention_implementation(cfg.attention_impl, dtype),
        }
        source_width = 0
        if "video" in self.modalities:
            # SlowFast: the Slow map and the time-pooled Fast map, concatenated (2048 + 256).
            if is_slowfast(cfg.video):
                width = sum(slowfast_widths(cfg.video))
                self.video_encoder = SlowFast(
                    cfg.video, rngs=rngs, dtype=dtype.name, remat_policy=cfg.remat_policy
                )
            else:
                width = cfg.video.width
                self.video_encoder = VideoEncoder(cfg.video, rngs=rngs, dtype=dtype.name, **layers)
            self.video_norm = LayerNorm(width, rngs=rngs, dtype=dtype)
            self.video_proj = Dense(width, dim, rngs=rngs, dtype=dtype)
            source_width = width
        if "scene" in self.modalities:
            blip_num_patches(cfg.scene)
            self.scene_encoder = scene_encoder(cfg.scene, rngs=rngs, dtype=dtype.name, **layers)
            self.scene_proj = Dense(cfg.scene.width, dim, rngs=rngs, dtype=dtype)
            source_width = source_width or cfg.scene.width
        if "audio" in self.modalities:
            self.audio_embed = AudioPatchEmbed(cfg.audio, rngs=rngs, dtype=dtype.name)
            self.audio_proj = Dense(cfg.audio.width, dim, rngs=rngs, dtype=dtype)
        self.actor_features = ActorFeatures(
            source_width,
            dim,
            cfg.actor,
            detector=query_source(cfg) == "detector",
            rngs=rngs,
            dtype=dtype,
        )
        self.query_time_embed = nnx.Dict(
            {
                m: param(rngs, nnx.initializers.normal(0.02), (steps[m], dim), (None, EMBED))
                for m in self.modalities
            }
        )
        self.fusion = build_fusion(cfg, self.modalities, rngs=rngs, dtype=dtype, **layers)
        # One head per embedding of the fusion stage; several are averaged (late score fusion).
        self.heads = nnx.Dict(
            {
                name: ActionHead(
                    width, cfg.num_classes, rngs=rngs, dropout=cfg.head_dropout, dtype=dtype
                )
                for name, width in self.fusion.head_dims.items()
            }
        )

    def encode(self, batch: Mapping[str, jax.Array]):
        """The streams: context embeddings {m: (B, T_m, N_m, D)}, modality presence {m: (B,)} and
        the feature map the actor features are pooled from (or None)."""
        context, present, feature_map = {}, {}, None
        b = batch["boxes"].shape[0]
        if "video" in self.modalities:
            fv = self.video_encoder(
                normalize_frames(batch["video"], *video_statistics(self.cfg.video))
            )
            feature_map = fv
            ctx = self.video_proj(self.video_norm(fv))
            context["video"] = ctx.reshape(b, ctx.shape[1], -1, ctx.shape[-1])
            present["video"] = jnp.ones((b,), bool)
        if "scene" in self.modalities:
            fs = self.scene_encoder(normalize_frames(batch["scene"], BLIP_MEAN, BLIP_STD))
            if self.cfg.scene.frozen:
                fs = jax.lax.stop_gradient(fs)
            context["scene"] = self.scene_proj(fs)
            present["scene"] = jnp.ones((b,), bool)
            if feature_map is None:
                side = self.cfg.scene.image_size // self.cfg.scene.patch
                feature_map = fs[:, :, 1:].reshape(b, fs.shape[1], side, side, fs.shape[-1])
        if "audio" in self.modalities:
            context["audio"] = self.audio_proj(self.audio_embed(batch["audio"]))
            present["audio"] = jnp.asarray(batch.get("audio_mask", jnp.ones((b,), bool)), bool)
        return context, present, feature_map

    def __call__(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        return self.forward(batch)[0]

    def forward(self, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, dict]:
        """The logits (B, K, num_classes) and the fusion stage's intermediates (the AMFN's
        ``gates``, ...: :mod:`jovale_jax.models.fusion`)."""
        queries, context, box_mask, present, boxes = self.fusion_inputs(batch)
        embeddings, intermediates = self.fusion(queries, context, box_mask, present, boxes)
        return head_logits(self.heads, embeddings, present), intermediates

    def fusion_inputs(self, batch: Mapping[str, jax.Array]):
        """The fusion stage's inputs: action queries {m: (B, K, T_m, D)}, context
        {m: (B, T_m, N_m, D)}, the (B, K) box mask, modality presence {m: (B,)} and each
        modality's boxes in its own map's coordinates (:func:`modality_boxes`)."""
        check_batch(self.cfg, batch)
        context, present, feature_map = self.encode(batch)
        box_mask = jnp.asarray(batch["box_mask"], bool)
        boxes = modality_boxes(batch, self.modalities)
        actors = self.actor_features(
            feature_map, actor_boxes(boxes, batch), batch.get("proposal_features")
        )
        queries = {
            m: resample_time(actors, self.query_time_embed[m].shape[0], axis=2)
            + self.query_time_embed[m][...].astype(actors.dtype)
            for m in self.modalities
        }
        return queries, context, box_mask, present, boxes

    def logits_and_gates(self, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """The logits and the last AMFN layer's MFA gates (B, K, M): per actor, the mean over
        channels of w_m for each modality of ``self.modalities`` (0.5 unless fusion is gated)."""
        logits, intermediates = self.forward(batch)
        if "gates" not in intermediates:
            raise ValueError(
                "config field model.fusion_strategy: gates need 'amfn', got "
                f"{self.cfg.fusion_strategy!r}"
            )
        return logits, intermediates["gates"]

    def attention_maps(self, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, dict]:
        """The logits and every AMFN layer's MFE attention from the actor queries to each
        modality's context tokens, {m: (L, B, T_m, K, N_m)} (:meth:`AMFN.attention_maps`), from
        one forward pass."""
        if check_strategy(self.cfg, self.modalities) != "amfn":
            raise ValueError(
                "config field model.fusion_strategy: attention maps need 'amfn', got "
                f"{self.cfg.fusion_strategy!r}"
            )
        logits, intermediates = self.forward(batch)
        return logits, self.fusion.attention_maps(intermediates, batch["boxes"].shape[1])
