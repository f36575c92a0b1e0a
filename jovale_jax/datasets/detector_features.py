"""Actor Proposal Features: a transformers object detector's per-box features (the paper's action
queries, ``model.query_source = "detector"``).

The paper takes the K actors' RoI features from its person detector's penultimate layer (a Faster
R-CNN). Here the detector is ``config.detect.detector``, any transformers object-detection model
with a convolutional backbone (``model.backbone``: DETR, Conditional / Deformable DETR, RT-DETR,
...). Its image processor prepares the keyframe as the detector's own forward does, the backbone
runs once per image, and its deepest feature map is RoIAligned at the given boxes (7 x 7 bins,
aligned, 2 samples per bin side) and averaged over the bins: one F-vector per box, F the map's
channels (``model.actor.detector_feature_dim``). ``build-data`` stores them per proposal
(data/SCHEMA.md's ``proposal_features``) and ``detect`` computes them the same way, on the same
keyframe image (the clip's keyframe as stored: short side ``data.short_side`` at most).

    features = DetectorFeatures.load("facebook/detr-resnet-50", feature_dim=2048)
    rows = features([image], [boxes])           # [(n, 2048) float32]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from jovale_jax.datasets.common import BadInputError, one_line

ROI_SIZE, SAMPLING_RATIO = 7, 2
FIELD = "config.detect.detector"


class DetectorFeatures:
    """Per-box features from the backbone of a transformers object detector (module docstring)."""

    def __init__(self, name: str, processor, model):
        encoder = getattr(getattr(model, "model", None), "backbone", None)
        if not hasattr(encoder, "intermediate_channel_sizes"):
            raise BadInputError(
                f"{FIELD} {name}: {type(model).__name__} has no convolutional backbone "
                "(model.backbone) to pool actor features from; use a DETR or RT-DETR family model"
            )
        self.name, self.processor, self.model = name, processor, model
        self.backbone = encoder.model
        self.width = int(encoder.intermediate_channel_sizes[-1])

    @classmethod
    def load(cls, name: str, *, feature_dim: int | None = None) -> DetectorFeatures:
        """The detector at ``name`` (hub id or folder); a one-line error when it cannot be loaded,
        is not an object-detection model, or its features are not ``feature_dim`` wide."""
        processor, model = load_detector(name)
        features = cls(name, processor, model)
        if feature_dim is not None and feature_dim != features.width:
            raise BadInputError(
                f"config field model.actor.detector_feature_dim is {feature_dim} but {FIELD} "
                f"{name} gives {features.width}-channel features"
            )
        return features

    def __call__(
        self, images: Sequence[Image.Image], boxes: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        """Per image, the (n, F) features of its (n, 4) boxes (x1, y1, x2, y2 normalised to it)."""
        import torch

        from jovale_jax.models.roi_align import roi_align

        inputs = self.processor(images=list(images), return_tensors="pt")
        with torch.no_grad():
            maps = self.backbone(inputs["pixel_values"])
        maps = maps.feature_maps if hasattr(maps, "feature_maps") else maps
        deepest = maps[-1].permute(0, 2, 3, 1).numpy()  # (B, h, w, F)
        extents = image_extents(inputs, len(images))
        out = []
        for fmap, extent, b in zip(deepest, extents, boxes):
            b = np.asarray(b, np.float32).reshape(-1, 4) * np.tile(extent, 2)
            pooled = roi_align(fmap, b, ROI_SIZE, SAMPLING_RATIO) if len(b) else None
            out.append(
                np.asarray(pooled.mean(axis=(1, 2)), np.float32)
                if pooled is not None
                else np.zeros((0, self.width), np.float32)
            )
        return out


def image_extents(inputs, count: int) -> np.ndarray:
    """(count, 2): the width and height fraction of the processed canvas that each image fills
    (processors that pad a batch say where in ``pixel_mask``; the rest fill it)."""
    if "pixel_mask" not in inputs:
        return np.ones((count, 2), np.float32)
    mask = inputs["pixel_mask"].numpy().astype(bool)
    return np.stack([mask.any(axis=1).mean(axis=1), mask.any(axis=2).mean(axis=1)], axis=1).astype(
        np.float32
    )


def load_detector(name: str):
    """(image processor, eval-mode model) of a transformers object detector, with one-line errors
    naming ``config.detect.detector``."""
    try:
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES
    except ImportError:
        raise ImportError(
            f"{FIELD} needs transformers and torch: pip install -e '.[convert]'"
        ) from None
    try:
        model_type = transformers.AutoConfig.from_pretrained(name).model_type
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"cannot load {FIELD} {name}: {one_line(e)}") from None
    if model_type not in MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES:
        raise BadInputError(
            f"{FIELD} {name} is a {model_type!r} model, not an object-detection model (one of "
            f"{', '.join(MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES)})"
        )
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(name)
        model = transformers.AutoModelForObjectDetection.from_pretrained(name).eval()
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"cannot load {FIELD} {name}: {one_line(e)}") from None
    return processor, model
