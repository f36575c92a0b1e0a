"""The AVA-format detections CSV, written in bulk: ``video_id, timestamp, x1, y1, x2, y2,
action_id, score``, one row per (box, class), box-major in class order.

Numbers are written as the plain loop ``f"{v:.4f}"`` (box) and ``f"{score:.6f}"`` (score) writes
them, timestamps by :func:`format_time`; the bytes of each row are assembled in numpy: only the
per-box prefixes are formatted in Python, the scores' digits come from exact integer rounding
(see :func:`_score_bytes`). AVA val (about 860k boxes x 60 classes) takes seconds, not minutes
(bench/README.md, ``launch.py bench eval``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

CHUNK_BOXES = 4096  # boxes per assembled block: bounds the temporary memory (~15 MB at 60 classes)


def format_time(seconds: float) -> str:
    """A keyframe time as written in the outputs: ``902`` (AVA's whole seconds), ``2.5``,
    ``0.125`` (milliseconds at most)."""
    return f"{float(seconds):.3f}".rstrip("0").rstrip(".")


def _score_bytes(scores: np.ndarray) -> np.ndarray:
    """(n, C) scores -> (n, C, 9) uint8: ``D.DDDDDD\\n`` exactly as ``f"{s:.6f}\\n"``.

    The digits come from ``rint(s * 1e6)``, which is the exact decimal rounding except within
    1e-9 of a tie (the product's error is below 1e-10); those entries, and scores outside
    [0, 10), are formatted by Python.
    """
    values = scores.astype(np.float64)
    scaled = values * 1e6
    n = np.rint(scaled)
    frac = scaled - np.floor(scaled)
    slow = ~((values >= 0) & (values < 9.9999995)) | (np.abs(frac - 0.5) < 1e-9)
    n = np.where(slow, 0, n).astype(np.int64)
    digits = [n // 10**6] + [(n // 10**k) % 10 for k in range(5, -1, -1)]
    out = np.empty(scores.shape + (9,), np.uint8)
    out[..., 0] = digits[0] + 48
    out[..., 1] = ord(".")
    for i, d in enumerate(digits[1:]):
        out[..., 2 + i] = d + 48
    out[..., 8] = ord("\n")
    for index in zip(*np.nonzero(slow), strict=True):
        text = f"{values[index]:.6f}\n".encode()
        if len(text) != 9:
            return None  # a score that does not fit 9 bytes: the caller formats the block
        out[index] = np.frombuffer(text, np.uint8)
    return out


def detection_rows(
    video_ids: Sequence[str],
    timestamps: Sequence[float],
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: Sequence[int],
    min_score: float = 0.0,
) -> tuple[bytes, int]:
    """The CSV text of these boxes' rows (every class with a score >= ``min_score``) and the
    number of rows."""
    scores = np.asarray(scores).reshape(len(boxes), len(class_ids))
    if not len(boxes):
        return b"", 0
    prefix = np.array(
        [
            f"{v},{format_time(t)},{b[0]:.4f},{b[1]:.4f},{b[2]:.4f},{b[3]:.4f},"
            for v, t, b in zip(video_ids, timestamps, np.asarray(boxes), strict=True)
        ],
        "S",
    )
    classes = np.array([f"{int(c)}," for c in class_ids], "S")
    tail = _score_bytes(scores)
    if tail is None:
        tail = np.array([[f"{s:.6f}\n" for s in row] for row in scores.astype(np.float64)], "S")
        tail = tail.view(np.uint8).reshape(scores.shape + (-1,))
    n, c = scores.shape
    pieces = [
        np.broadcast_to(prefix.view(np.uint8).reshape(n, 1, -1), (n, c, prefix.itemsize)),
        np.broadcast_to(classes.view(np.uint8).reshape(1, c, -1), (n, c, classes.itemsize)),
        tail,
    ]
    block = np.concatenate(pieces, axis=2)  # NUL bytes pad the shorter prefixes and ids
    keep = scores >= min_score
    block[~keep] = 0
    return block[block != 0].tobytes(), int(keep.sum())


def write_detections_csv(
    path: str, preds: Mapping[str, np.ndarray], class_ids: Sequence[int], min_score: float = 0.0
) -> int:
    """Writes ``preds`` ({"video_ids", "timestamps", "boxes", "scores" (N, C)}) to ``path``
    (through a temporary file, renamed at the end); returns the number of rows."""
    total, tmp = 0, path + ".tmp"
    ids, times = np.asarray(preds["video_ids"]), np.asarray(preds["timestamps"])
    boxes, scores = np.asarray(preds["boxes"]), np.asarray(preds["scores"])
    if not (len(ids) == len(times) == len(boxes) == len(scores)):
        raise ValueError(
            f"detections of unequal lengths: {len(ids)} video ids, {len(times)} "
            f"timestamps, {len(boxes)} boxes, {len(scores)} score rows"
        )
    with open(tmp, "wb") as f:
        for start in range(0, len(boxes), CHUNK_BOXES):
            part = slice(start, start + CHUNK_BOXES)
            text, rows = detection_rows(
                ids[part].tolist(), times[part], boxes[part], scores[part], class_ids, min_score
            )
            f.write(text)
            total += rows
    os.replace(tmp, path)
    return total
