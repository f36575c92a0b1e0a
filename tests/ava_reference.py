"""The AVA protocol as a plain loop over frames and classes, written from the official rules for
readability, not speed: the oracle that ``jovale_jax.evaluation.ava.evaluate`` is tested against
(tests/test_eval_ava.py). Only the label map and exclusions readers are shared with ``ava``."""

import csv
import math
import os
from collections.abc import Mapping

import numpy as np

from jovale_jax.evaluation import ava


def _iou(a: list[float], b: list[float]) -> float:
    """IoU of two x1, y1, x2, y2 boxes, with the official operations (no pixel +1)."""
    height = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    width = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    inter = height * width
    area_a = (a[3] - a[1]) * (a[2] - a[0])
    area_b = (b[3] - b[1]) * (b[2] - b[0])
    union = area_a + area_b - inter
    if union == 0:
        return math.nan if inter == 0 else math.copysign(math.inf, inter)
    return inter / union


def _voc_ap(ranked_tp: list[bool], num_gt: int) -> float:
    """VOCdevkit AP from true-positive flags in rank order (the official metrics.py rule)."""
    if num_gt == 0:
        return math.nan
    if not ranked_tp:
        return 0.0
    precision, recall, hits = [], [], 0
    for rank, tp in enumerate(ranked_tp, 1):
        hits += tp
        precision.append(hits / rank)
        recall.append(hits / num_gt)
    recall = [0.0] + recall + [1.0]
    precision = [0.0] + precision + [0.0]
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    return sum(
        (recall[i] - recall[i - 1]) * precision[i]
        for i in range(1, len(recall))
        if recall[i] != recall[i - 1]
    )


Row = tuple[str, int, list[float], int, float]


def read_rows(path: str | os.PathLike) -> list[Row]:
    """AVA CSV rows as (video, second, [x1, y1, x2, y2], action, score) with the csv module."""
    with open(path, newline="") as f:
        return [
            (
                row[0],
                int(float(row[1])),
                [float(v) for v in row[2:6]],
                int(float(row[6])),
                float(row[7]) if len(row) == 8 else 1.0,
            )
            for row in csv.reader(f)
        ]


def reference_evaluate(
    labelmap: str | os.PathLike,
    groundtruth: str | os.PathLike,
    detections: str | os.PathLike,
    exclusions: str | os.PathLike | None = None,
    max_dets_per_frame: int = ava.DEFAULT_MAX_DETS_PER_FRAME,
) -> dict:
    """`reference_evaluate_rows` from the files (only the label map and exclusions readers are
    shared with `ava`)."""
    return reference_evaluate_rows(
        ava.read_labelmap(labelmap),
        read_rows(groundtruth),
        read_rows(detections),
        ava.read_exclusions(exclusions) if exclusions else set(),
        max_dets_per_frame,
    )


def reference_evaluate_rows(
    names: Mapping[int, str],
    truth_rows: list[Row],
    detection_rows: list[Row],
    excluded: set[tuple[str, int]],
    max_dets_per_frame: int = ava.DEFAULT_MAX_DETS_PER_FRAME,
) -> dict:
    """The AVA protocol as a plain loop over frames and classes.

    Same rules and tie order as `ava.evaluate` (see its docstring). Returns {"mAP": float,
    "per_class": {id: AP}}.
    """
    truth: dict[tuple[str, int], list[tuple[list[float], int]]] = {}
    for video, second, box, label, _ in truth_rows:
        if label in names:
            truth.setdefault((video, second), []).append((box, label))
    known_videos = {video for video, *_ in truth_rows}

    frames: dict[tuple[str, int], list[tuple[float, int, list[float], int]]] = {}
    for index, (video, second, box, label, score) in enumerate(detection_rows):
        if label in names and video in known_videos:
            frames.setdefault((video, second), []).append((score, index, box, label))

    num_gt = dict.fromkeys(names, 0)
    for key, rows in truth.items():
        if key not in excluded:
            for _, label in rows:
                num_gt[label] += 1

    # Per class, (score, true positive) in sequence order: frames as they first appear in the
    # detections, each frame's rows by descending score (earlier row on ties), capped.
    scored: dict[int, list[tuple[float, bool]]] = {c: [] for c in names}
    for key, rows in frames.items():
        if key in excluded:
            continue
        rows = sorted(rows, key=lambda r: (-r[0], r[1]))
        if max_dets_per_frame:
            rows = rows[:max_dets_per_frame]
        for c in {label for _, _, _, label in rows}:
            gt_boxes = [box for box, label in truth.get(key, []) if label == c]
            claimed = [False] * len(gt_boxes)
            for score, _, box, label in rows:
                if label != c or not (box[0] < box[2] and box[1] < box[3]):
                    continue
                tp = False
                if gt_boxes:
                    ious = [_iou(box, gt) for gt in gt_boxes]
                    best = int(np.argmax(ious))  # the first maximum; a NaN wins, as in numpy
                    if ious[best] >= 0.5 and not claimed[best]:
                        claimed[best] = tp = True
                scored[c].append((score, tp))

    per_class = {}
    for c in sorted(names):
        entries = scored[c]
        # Descending score; ties: the later entry first (a reversed stable ascending sort).
        ranked = sorted(range(len(entries)), key=lambda i: (entries[i][0], i), reverse=True)
        per_class[c] = _voc_ap([entries[i][1] for i in ranked], num_gt[c])
    aps = [ap for ap in per_class.values() if not math.isnan(ap)]
    return {"mAP": sum(aps) / len(aps) if aps else math.nan, "per_class": per_class}
