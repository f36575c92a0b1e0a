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
# video_id, timestamp, x1, y1, x2, y2 [, score] or AVA's *_predicted_boxes.csv rows
# video_id, timestamp, x1, y1, x2, y2, action_id (ignored, often empty), score.
_BOX_COLUMNS = [
    ("video_id", str),
    ("timestamp", common.parse_finite),
    *common.BOX_COLUMNS,
    ("score or action_id", str),
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
    for vid, timestamp, *values in common.read_csv(path, _BOX_COLUMNS, optional=2):
        if len(values) == 5:  # 7 columns: the last is the score
            try:
                values[4] = common.parse_finite(values[4])
            except ValueError:
                raise common.BadInputError(
                    f"boxes CSV {path}: cannot parse score {values[4]!r} (video {vid!r})"
                ) from None
        elif len(values) == 6:  # 8 columns (AVA's predicted boxes): drop the action id
            del values[4]
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


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``, default huggingface.co) takes a connection
    within ``timeout_s``; False at once under ``HF_HUB_OFFLINE``."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
        return True
    except (OSError, ValueError):
        return False


def _load_detector(name_or_path: str):
    """(image processor, eval-mode model) of a transformers detector: a local folder, or any name
    when the hub is unreachable, with ``local_files_only``; a one-line error naming it."""
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    local = os.path.exists(name_or_path) or name_or_path.startswith((".", os.sep, "~"))
    if local and not os.path.isdir(name_or_path):
        raise FileNotFoundError(f"detector folder {name_or_path}: no such folder")
    offline = local or not hub_reachable()
    why = "" if local else " (the Hugging Face hub is unreachable: only a cached copy loads)"
    try:
        return (
            AutoImageProcessor.from_pretrained(name_or_path, local_files_only=offline),
            AutoModelForObjectDetection.from_pretrained(
                name_or_path, local_files_only=offline
            ).eval(),
        )
    except (OSError, ValueError) as e:
        raise FileNotFoundError(
            f"cannot load the detector {name_or_path}{why}: {common.one_line(e)}"
        ) from None


class PersonDetector:
    """A transformers object-detection model kept to its person class.

    `detector(images)` -> per image, (N, 5) rows x1, y1, x2, y2 (normalised), score. A local
    folder, or any name when the hub is unreachable, is loaded with ``local_files_only`` (no hub
    requests, no retries). ``misses`` records, for each image without a person row, the best
    person score the model gave (None: no query's top class was 'person').
    """

    def __init__(self, name_or_path: str, *, threshold: float, loaded: tuple | None = None):
        """``loaded``: the (image processor, model) pair already loaded from ``name_or_path`` (the
        detector whose features are the model's queries): used as it is, not loaded again."""
        try:
            import torch
            import transformers  # noqa: F401
        except ImportError:
            raise ImportError(
                "--detector needs transformers and torch: pip install -e '.[convert]'"
            ) from None
        self.processor, self.model = loaded or _load_detector(name_or_path)
        labels = self.model.config.id2label
        persons = [int(i) for i, name in labels.items() if str(name).lower() == "person"]
        if not persons:
            raise common.BadInputError(
                f"detector {name_or_path} has no class named 'person' "
                f"(its classes: {', '.join(map(str, labels.values()))})"
            )
        self.person = persons[0]
        self.threshold = threshold
        self.misses: list[float | None] = []
        self._no_grad = torch.no_grad

    def __call__(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        inputs = self.processor(images=list(images), return_tensors="pt")
        with self._no_grad():
            outputs = self.model(**inputs)
        sizes = [(image.height, image.width) for image in images]
        results = self.processor.post_process_object_detection(
            outputs, threshold=0.0, target_sizes=sizes
        )
        rows = []
        for result, (h, w) in zip(results, sizes):
            person = result["labels"].numpy() == self.person
            scores = result["scores"].numpy()
            if not (person & (scores >= self.threshold)).any():
                self.misses.append(float(scores[person].max()) if person.any() else None)
            person &= scores >= self.threshold
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


def miss_note(misses: Sequence[float | None], threshold: float) -> str | None:
    """Why keyframes got no detector proposal (a console and manifest note), or None."""
    if not misses:
        return None
    scored = [m for m in misses if m is not None]
    why = []
    if scored:
        why.append(
            f"{len(scored)} had person scores only under config.detect.detector_threshold "
            f"{threshold} (best {max(scored):.3f})"
        )
    if len(scored) < len(misses):
        why.append(f"{len(misses) - len(scored)} had no query whose top class is 'person'")
    return f"{len(misses)} keyframe(s) without a person detection: {'; '.join(why)}"
