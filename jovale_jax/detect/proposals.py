"""Person proposals of `detect`: an AVA-style boxes CSV, a transformers person detector, or the
whole-frame fallback (the package docstring says how each is read)."""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from jovale_jax import box_ops
from jovale_jax.datasets import common
from jovale_jax.evaluation.detections_csv import format_time

WHOLE_FRAME = np.array([[0.0, 0.0, 1.0, 1.0, 1.0]], np.float32)  # x1, y1, x2, y2, score
_BOX_COLUMNS = [
    ("video_id", str),
    ("timestamp", common.parse_finite),
    *common.BOX_COLUMNS,
    ("score", common.parse_finite),
]

Proposer = Callable[[Sequence[int], Sequence[Image.Image]], list[np.ndarray]]


def read_boxes_csv(
    path: str, video_id: str, times: np.ndarray
) -> tuple[dict[int, np.ndarray], int]:
    """The rows of a boxes CSV for `video_id` by keyframe index ((N, 5): box, score), and the
    number of its rows at no keyframe time. See the module docstring for the format."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"boxes CSV {path}: no such file")
    keyframe_of = {round(t * 1000): i for i, t in enumerate(times)}
    rows, other_ids, unmatched = collections.defaultdict(list), set(), 0
    for vid, timestamp, *values in common.read_csv(path, _BOX_COLUMNS, optional=1):
        if vid != video_id:
            other_ids.add(vid)
            continue
        index = keyframe_of.get(round(timestamp * 1000))
        if index is None:
            unmatched += 1
        else:
            rows[index].append(values[:4] + [values[4] if len(values) > 4 else 1.0])
    if not rows and not unmatched:
        shown = ", ".join(sorted(other_ids)[:5]) + (", ..." if len(other_ids) > 5 else "")
        raise common.BadInputError(
            f"boxes CSV {path} has no row for video {video_id!r} (the video ids it has: "
            f"{shown or 'none'})"
        )
    if not rows:
        keyframes = ", ".join(map(format_time, times[:3])) + (", ..." if len(times) > 3 else "")
        raise common.BadInputError(
            f"boxes CSV {path}: none of the {unmatched} rows of video {video_id!r} is at a "
            f"keyframe time ({keyframes} s from the first frame)"
        )
    return {i: np.asarray(r, np.float32) for i, r in rows.items()}, unmatched


class PersonDetector:
    """A transformers object-detection model kept to its person class.

    `detector(images)` -> per image, (N, 5) rows x1, y1, x2, y2 (normalised), score.
    """

    def __init__(self, name_or_path: str, *, threshold: float):
        try:
            import torch
            from transformers import AutoImageProcessor, AutoModelForObjectDetection
        except ImportError:
            raise ImportError(
                "--detector needs transformers and torch: pip install -e '.[convert]'"
            ) from None
        try:
            self.processor = AutoImageProcessor.from_pretrained(name_or_path)
            self.model = AutoModelForObjectDetection.from_pretrained(name_or_path).eval()
        except (OSError, ValueError) as e:
            raise FileNotFoundError(
                f"cannot load the detector {name_or_path}: {common.one_line(e)}"
            ) from None
        labels = self.model.config.id2label
        persons = [int(i) for i, name in labels.items() if str(name).lower() == "person"]
        if not persons:
            raise common.BadInputError(
                f"detector {name_or_path} has no class named 'person' "
                f"(its classes: {', '.join(map(str, labels.values()))})"
            )
        self.person = persons[0]
        self.threshold = threshold
        self._no_grad = torch.no_grad

    def __call__(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        inputs = self.processor(images=list(images), return_tensors="pt")
        with self._no_grad():
            outputs = self.model(**inputs)
        sizes = [(image.height, image.width) for image in images]
        results = self.processor.post_process_object_detection(
            outputs, threshold=self.threshold, target_sizes=sizes
        )
        rows = []
        for result, (h, w) in zip(results, sizes):
            person = result["labels"].numpy() == self.person
            boxes = result["boxes"].numpy()[person] / np.array([w, h, w, h], np.float32)
            rows.append(np.concatenate([boxes, result["scores"].numpy()[person, None]], axis=1))
        return rows


def make_proposer(boxes: dict[int, np.ndarray] | None, detector: PersonDetector | None) -> Proposer:
    """(keyframe indices, keyframe images) -> their proposal rows, from the chosen source."""
    if boxes is not None:
        empty = np.zeros((0, 5), np.float32)
        return lambda indices, images: [boxes.get(i, empty) for i in indices]
    if detector is not None:
        return lambda indices, images: detector(images)
    return lambda indices, images: [WHOLE_FRAME] * len(indices)


def top_proposals(rows: np.ndarray, k: int) -> np.ndarray:
    """The `k` best rows by score (stable), boxes clipped to the frame: (n <= k, 4)."""
    rows = np.asarray(rows, np.float32).reshape(-1, 5)
    best = rows[np.argsort(-rows[:, 4], kind="stable")[:k]]
    return box_ops.clip_boxes(best[:, :4])[0]
