"""The batch, described once: :func:`batch_spec` maps every key of a batch (data/SCHEMA.md) to its
per-example shape, dtype, the config field that sizes it, who reads it and the stored example
features it is decoded from.

Everything that needs the batch's layout derives it from here: the model's :func:`check_batch`
and :func:`model_inputs`, the input pipeline's list of features to read, abstract batches for
counting MACs and compiling (:func:`abstract_batch`), and random batches for benchmarks and tests
(:func:`random_batch`). Adding a model input is one entry in :func:`batch_spec` (plus the code
that makes it in ``input_pipeline.py`` and the code that reads it in the model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jovale_jax.models.inputs import query_source

MODALITIES = ("video", "audio", "scene")  # canonical order of the MFA's concatenation

# Who reads an entry: the model (required, or when present), the loss and the evaluator, or
# nobody but the evaluation's bookkeeping.
INPUT, OPTIONAL, TARGET, META = "input", "optional input", "target", "meta"
STEP = (INPUT, OPTIONAL, TARGET)  # what the train step reads
FRAMES = ("video", "scene")  # uint8 from the pipeline; normalised floats are accepted as well


@dataclasses.dataclass(frozen=True)
class Entry:
    """One batch key: ``shape`` per example (the batch axis B is not included), the numpy
    ``dtype`` the pipeline yields, the config ``field`` that sizes it, its ``use`` (INPUT,
    OPTIONAL, TARGET or META) and the stored example features it ``reads``."""

    shape: tuple[int, ...]
    dtype: Any
    field: str
    use: str
    reads: tuple[str, ...] = ()


def modalities_of(cfg) -> tuple[str, ...]:
    """The configured modalities (``config.model.modalities``) in canonical order, validated."""
    mods = tuple(cfg.modalities)
    unknown = [m for m in mods if m not in MODALITIES]
    if not mods or unknown or len(set(mods)) != len(mods):
        raise ValueError(
            f"config field model.modalities: expected a non-empty subset of {MODALITIES}, "
            f"got {mods}"
        )
    return tuple(m for m in MODALITIES if m in mods)


def batch_spec(cfg, training: bool = True) -> dict[str, Entry]:
    """Every key of a batch for a ``config.model``, in the input pipeline's order: a training
    batch, or with ``training`` false an evaluation batch (which adds ``video_id`` and
    ``timestamp``)."""
    k, mods = cfg.num_proposals, modalities_of(cfg)
    spec = {}
    if "video" in mods:
        h, w = cfg.video.image_size
        spec["video"] = Entry(
            (cfg.video.num_frames, h, w, 3),
            np.uint8,
            "model.video.num_frames/image_size",
            INPUT,
            ("frames",),
        )
        spec["frame_extent"] = Entry(
            (4,), np.float32, "model.modalities (video)", OPTIONAL, ("frames",)
        )
    if "scene" in mods:
        s = cfg.scene.image_size
        spec["scene"] = Entry(
            (cfg.scene.num_frames, s, s, 3),
            np.uint8,
            "model.scene.num_frames/image_size",
            INPUT,
            ("scene_frames",),
        )
    if "audio" in mods:
        audio = ("waveform", "has_audio")
        spec["audio"] = Entry(
            (cfg.audio.num_frames, cfg.audio.num_mel_bins),
            np.float32,
            "model.audio.num_frames/num_mel_bins",
            INPUT,
            audio,
        )
        spec["audio_mask"] = Entry((), np.bool_, "model.modalities (audio)", OPTIONAL, audio)
    spec["boxes"] = Entry((k, 4), np.float32, "model.num_proposals", INPUT, ("proposals",))
    spec["box_mask"] = Entry((k,), np.bool_, "model.num_proposals", INPUT, ("proposals",))
    spec["proposal_scores"] = Entry(
        (k,), np.float32, "model.num_proposals", META, ("proposal_scores",)
    )
    if query_source(cfg) == "detector":
        spec["proposal_features"] = Entry(
            (k, cfg.actor.detector_feature_dim),
            np.float32,
            "model.num_proposals/actor.detector_feature_dim",
            INPUT,
            ("proposal_features",),
        )
    spec["targets"] = Entry(
        (k, cfg.num_classes), np.float32, "model.num_proposals/num_classes", TARGET, ("targets",)
    )
    spec["example_mask"] = Entry((), np.bool_, "batch_size", TARGET)
    if not training:
        spec["video_id"] = Entry((), np.object_, "eval batches", META, ("video_id",))
        spec["timestamp"] = Entry((), np.int64, "eval batches", META, ("timestamp",))
    return spec


def stored_features(cfg) -> tuple[str, ...]:
    """The stored example features (data/SCHEMA.md) an evaluation batch is decoded from."""
    spec = batch_spec(cfg, training=False)
    return tuple(dict.fromkeys(f for entry in spec.values() for f in entry.reads))


def model_spec(cfg) -> dict[str, Entry]:
    """The entries the model reads (:data:`INPUT` and :data:`OPTIONAL`)."""
    return {k: e for k, e in batch_spec(cfg).items() if e.use in (INPUT, OPTIONAL)}


def model_inputs(cfg, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a batch that the model reads."""
    keys = model_spec(cfg)
    return {k: v for k, v in batch.items() if k in keys}


def abstract_batch(
    cfg, batch_size: int = 1, *, uses: tuple[str, ...] = (INPUT,)
) -> dict[str, jax.ShapeDtypeStruct]:
    """ShapeDtypeStructs of a training batch's entries of the given ``uses`` (default: the inputs
    the model requires)."""
    return {
        k: jax.ShapeDtypeStruct((batch_size, *e.shape), e.dtype)
        for k, e in batch_spec(cfg).items()
        if e.use in uses
    }


def random_batch(
    cfg,
    batch_size: int,
    seed: int = 0,
    *,
    uses: tuple[str, ...] = STEP,
    float_frames: bool = False,
) -> dict[str, np.ndarray]:
    """A random training batch of the given ``uses``: uint8 frames (standard-normal floats, taken
    as normalised, with ``float_frames``), standard-normal floats, true masks, valid boxes (x1 < x2,
    y1 < y2 inside the frame), about 10% of the targets positive."""
    rng = np.random.default_rng(seed)
    batch = {}
    for key, e in batch_spec(cfg).items():
        shape = (batch_size, *e.shape)
        if e.use not in uses:
            continue
        if e.dtype == np.bool_:
            batch[key] = np.ones(shape, bool)
        elif key in FRAMES and float_frames:
            batch[key] = rng.standard_normal(shape, np.float32)
        elif key in FRAMES:
            batch[key] = rng.integers(0, 256, shape, np.uint8)
        elif key == "boxes":
            corner = rng.uniform(0.0, 0.6, shape[:-1] + (2,))
            size = rng.uniform(0.1, 0.4, corner.shape)
            batch[key] = np.concatenate([corner, corner + size], -1).astype(np.float32)
        elif key == "frame_extent":
            batch[key] = np.tile(np.asarray([0, 0, 1, 1], np.float32), (batch_size, 1))
        elif key == "targets":
            batch[key] = (rng.uniform(size=shape) < 0.1).astype(np.float32)
        else:
            batch[key] = rng.standard_normal(shape, np.float32).astype(e.dtype)
    return batch


def _dtype_fits(key: str, entry: Entry, dtype) -> bool:
    """Bool entries need bool; frames uint8 or floating; other floating entries floating."""
    if entry.dtype == np.bool_:
        return jnp.issubdtype(dtype, jnp.bool_)
    return jnp.issubdtype(dtype, jnp.floating) or (key in FRAMES and dtype == jnp.uint8)


def _kind(key: str, entry: Entry) -> str:
    if entry.dtype == np.bool_:
        return "bool"
    return "uint8 or floating" if key in FRAMES else "floating"


def check_batch(cfg, batch: Mapping[str, Any]) -> None:
    """Fail with a message naming the key, the config field, the expected and the given shape
    or dtype; for the model's inputs (:func:`model_spec`): required ones must be there, present
    optional ones must fit too."""
    mods = modalities_of(cfg)
    for m in MODALITIES:
        if m not in mods and m in batch:
            raise ValueError(
                f"batch has {m!r} but config field model.modalities is {mods}; "
                f"drop the key or add the modality"
            )
    batch_size = None
    for key, entry in model_spec(cfg).items():
        if key not in batch:
            if entry.use == OPTIONAL:
                continue
            raise ValueError(
                f"batch lacks {key!r}, required by config field {entry.field} (modalities {mods})"
            )
        got = tuple(batch[key].shape)
        if len(got) != len(entry.shape) + 1 or got[1:] != entry.shape:
            want = ", ".join(map(str, ("B", *entry.shape)))
            raise ValueError(
                f"batch[{key!r}]: expected shape ({want}) from config field {entry.field}, "
                f"got {got}"
            )
        if batch_size not in (None, got[0]):
            raise ValueError(f"batch[{key!r}]: batch size {got[0]} differs from {batch_size}")
        batch_size = got[0]
        if not _dtype_fits(key, entry, batch[key].dtype):
            raise ValueError(
                f"batch[{key!r}]: expected a {_kind(key, entry)} array, got dtype "
                f"{batch[key].dtype}"
            )
