"""Frame mAP: PASCAL VOC average precision per class at IoU 0.5, averaged over classes.

This is the vectorised core shared by the AVA protocol (`jovale_jax.evaluation.ava`) and the
frame mAP of UCF101-24 and JHMDB51-21. It depends on numpy only.

Rules (those of the official AVA evaluator, whose `ObjectDetectionEvaluation` is the TF Object
Detection API's PASCAL evaluator; see `ava.py` for the AVA-only rules on top):

* Detections whose box is not strictly positive in size (x1 < x2 and y1 < y2 fail, NaN included)
  are dropped before matching. Ground-truth boxes are not checked.
* IoU uses continuous areas, `(x2 - x1) * (y2 - y1)` with no "+1" pixel, with the same float64
  operations as the official `np_box_ops.iou`, so `IoU >= 0.5` decisions are bit-identical.
* Matching is per frame and per class. Detections are visited in descending score order. Each
  detection looks only at the ground-truth box of its class with the highest IoU (the first one,
  in input order, on IoU ties; a NaN IoU wins like `np.argmax`). It is a true positive if that IoU
  is >= the threshold and that box is still unclaimed, which claims it; otherwise it is a false
  positive, even when another unclaimed box would overlap enough (no fallback to the second best).
  Detections on frames without ground truth of their class are false positives.
* Per class, all detections are ranked by descending score; precision = TP / rank and recall =
  TP / (number of ground-truth rows of the class; two identical rows count twice). AP is the
  VOCdevkit area: pad recall with 0 and 1 and precision with 0 and 0, replace each precision by the
  maximum precision at any later rank (the envelope), and sum (recall step) x (envelope precision)
  where the recall changes. A class with ground truth and no detections has AP 0.
* A class without ground truth has AP NaN; the mean is `np.nanmean` over classes, i.e. over the
  classes with ground truth.

Tied scores. The official result then depends on numpy's (unstable, platform-dependent) default
sort. This module fixes the order: within a frame, ties are visited in input order; for the
ranking, detections are put in "sequence order" (by frame id, then input order inside a frame)
and ranked by `argsort(score, kind="stable")[::-1]`, i.e. ties rank the later sequence position
first: the official expression, with a stable sort. (`ava.py` numbers frames by first appearance
in the detections, the official order of frames.)

Dense input (`DenseDetections`: every box scored for every class) is evaluated class by class
without expanding boxes x classes into rows, so memory stays at the size of the input.

UCF101-24 / JHMDB51-21 frame mAP (`frame_map`): each ground-truth tube box is one row
(`tube_groundtruth` reads them from the annotation pickle), detections on any frame of the test
videos count (false positives where the frame has no ground truth of their class), detections
are not capped, nothing is excluded, and the mean is over the classes with ground truth. Note:
the ACT/MOC codebases compute their "frame mAP" differently (pixel "+1" areas, matching against
still-unclaimed boxes only, trapezoidal AP without the envelope); this module follows the VOC
rules above, as the AVA protocol does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class FrameBoxes:
    """Labelled boxes, one row per (box, label) pair: ground truth or detections.

    Attributes:
      frames: (N,) int frame ids (any integers; a frame is one image).
      boxes: (N, 4) float boxes as x1, y1, x2, y2 (any consistent unit).
      labels: (N,) int class ids.
      scores: (N,) float detection scores; None for ground truth.
    """

    frames: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class DenseDetections:
    """Detected boxes, each scored for every class.

    Attributes:
      frames: (B,) int frame ids.
      boxes: (B, 4) float boxes as x1, y1, x2, y2.
      scores: (B, C) float scores; column j belongs to class `class_ids[j]`.
      class_ids: (C,) int class ids of the score columns.
    """

    frames: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray


def pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of a[i] with b[i] for (N, 4) x1, y1, x2, y2 boxes, with the official float64 ops."""
    heights = np.maximum(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0.0)
    widths = np.maximum(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0.0)
    inter = heights * widths
    area_a = (a[:, 3] - a[:, 1]) * (a[:, 2] - a[:, 0])
    area_b = (b[:, 3] - b[:, 1]) * (b[:, 2] - b[:, 0])
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (area_a + area_b - inter)


def valid_boxes(boxes: np.ndarray) -> np.ndarray:
    """Mask of boxes with x1 < x2 and y1 < y2 (the official rule for detections)."""
    return (boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3])


def match_class(
    det_frames: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    gt_frames: np.ndarray,
    gt_boxes: np.ndarray,
    iou_threshold: float = 0.5,
) -> np.ndarray:
    """True-positive flags of one class's detections (see the module docstring for the rule).

    Detections must be in sequence order: `det_frames` non-decreasing, ties inside a frame
    visited in array order. Ground truth is in input order. Returns a bool array aligned with
    the detections.
    """
    tp = np.zeros(det_frames.shape[0], dtype=bool)
    gt_order = np.argsort(gt_frames, kind="stable")
    frames, gt_start, gt_count = np.unique(
        gt_frames[gt_order], return_index=True, return_counts=True
    )
    gt_boxes = gt_boxes[gt_order]
    # The detections of each frame with ground truth: a contiguous range, since sorted.
    lo = np.searchsorted(det_frames, frames, side="left")
    sizes = np.searchsorted(det_frames, frames, side="right") - lo
    total = int(sizes.sum())
    if total == 0:
        return tp
    offsets = np.cumsum(sizes) - sizes
    dets = np.repeat(lo - offsets, sizes) + np.arange(total)  # ascending
    start = np.repeat(gt_start, sizes)
    count = np.repeat(gt_count, sizes)
    best_iou = np.full(total, -np.inf)
    best_gt = np.full(total, -1, dtype=np.int64)
    active = np.arange(total)
    j = 0
    while active.size:  # j-th ground-truth box of each detection's frame, first max wins
        gt = start[active] + j
        iou = pair_iou(det_boxes[dets[active]], gt_boxes[gt])
        current = best_iou[active]
        better = (iou > current) | (np.isnan(iou) & ~np.isnan(current))
        best_iou[active[better]] = iou[better]
        best_gt[active[better]] = gt[better]
        j += 1
        active = active[count[active] > j]
    with np.errstate(invalid="ignore"):
        candidates = np.flatnonzero(best_iou >= iou_threshold)
    # Per claimed box, the first claimant in visiting order (score desc, then sequence) wins.
    order = candidates[np.lexsort((-det_scores[dets[candidates]], best_gt[candidates]))]
    claimed = best_gt[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = claimed[1:] != claimed[:-1]
    tp[dets[order[first]]] = True
    return tp


def _ranks_of_hits(scores: np.ndarray, hits: np.ndarray) -> np.ndarray:
    """1-based ranks of the detections `hits` (ascending positions) in the official ranking.

    The ranking is `argsort(scores, kind="stable")[::-1]`: descending score, and among equal
    scores the later position first. Sorting all n scores per class is the slow part of a naive
    evaluator; this counts instead, in O(n): scores are dropped into buckets of a uniform grid
    (a monotone map), and only the few scores sharing a bucket with a hit's score are compared
    exactly.
    """
    n = scores.shape[0]
    levels = np.unique(scores[hits])  # the distinct hit scores, ascending
    relevant = np.flatnonzero(scores >= levels[0])  # the rest rank after every hit
    values = scores[relevant]
    num_buckets = max(1 << 16, 16 * levels.size)
    span = values.max() - levels[0]
    scale = (num_buckets - 1) / span if span > 0 else 0.0

    def bucket_of(x: np.ndarray) -> np.ndarray:
        return np.minimum(((x - levels[0]) * scale).astype(np.int64), num_buckets - 1)

    bucket = bucket_of(values)
    level_bucket = bucket_of(levels)
    # above[i]: scores in buckets after level i's bucket, all of them higher than level i.
    above = values.size - np.cumsum(np.bincount(bucket, minlength=num_buckets))[level_bucket]
    shared = np.zeros(num_buckets, dtype=bool)
    shared[level_bucket] = True
    near = np.flatnonzero(shared[bucket])
    near_values, near_positions = values[near], relevant[near]
    # Higher scores inside level i's bucket: the near scores above level i, minus the near
    # scores of later buckets, which `above` counted already.
    near_above_level = near.size - np.searchsorted(np.sort(near_values), levels, side="right")
    near_later_bucket = near.size - np.searchsorted(
        np.sort(bucket[near]), level_bucket, side="right"
    )
    above += near_above_level - near_later_bucket
    # Equal scores at a later position rank first.
    slot = np.searchsorted(levels, near_values)
    equal = slot < levels.size
    equal[equal] = levels[slot[equal]] == near_values[equal]
    keys = np.sort(slot[equal] * n + near_positions[equal])  # (level, position), ascending
    hit_level = np.searchsorted(levels, scores[hits])
    later_ties = (
        np.searchsorted(keys, (hit_level + 1) * n) - np.searchsorted(keys, hit_level * n + hits) - 1
    )
    return above[hit_level] + later_ties + 1


def voc_average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    """VOC AP of one class from its detections (sequence order) and true-positive flags.

    Returns NaN when `num_gt` is 0 and 0.0 without true positives. Only the ranks of the true
    positives are needed: the envelope at a true positive is the maximum precision over the true
    positives at or after it, so the sum below has exactly the official terms, in its order.
    """
    if num_gt == 0:
        return float("nan")
    hits = np.flatnonzero(tp)
    if hits.size == 0:
        return 0.0
    ranks = np.sort(_ranks_of_hits(scores, hits))
    count = np.arange(1, ranks.size + 1)
    precision = count / ranks
    recall = count / num_gt
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    terms = np.diff(recall, prepend=0.0) * envelope
    if recall[-1] != 1.0:
        terms = np.append(terms, 0.0)  # the padded (recall 1, precision 0) point
    return float(np.sum(terms))


def _as_arrays(boxes: FrameBoxes | DenseDetections) -> FrameBoxes | DenseDetections:
    """The same boxes with numpy fields (int64 frames and labels, float64 boxes)."""
    frames = np.asarray(boxes.frames, dtype=np.int64)
    coords = np.asarray(boxes.boxes, dtype=np.float64).reshape(-1, 4)
    if isinstance(boxes, DenseDetections):
        return DenseDetections(
            frames, coords, np.asarray(boxes.scores), np.asarray(boxes.class_ids)
        )
    scores = None if boxes.scores is None else np.asarray(boxes.scores, dtype=np.float64)
    return FrameBoxes(frames, coords, np.asarray(boxes.labels, dtype=np.int64), scores)


def _class_slices(labels: np.ndarray, class_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stable grouping of rows by label: (row order, [start, end) per class in `class_ids`)."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    bounds = np.stack(
        [
            np.searchsorted(sorted_labels, class_ids, side="left"),
            np.searchsorted(sorted_labels, class_ids, side="right"),
        ],
        axis=1,
    )
    return order, bounds


def _per_class_detections(
    detections: FrameBoxes | DenseDetections, class_ids: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yields (frames, boxes, scores) per class in `class_ids`, valid boxes, sequence order."""
    keep = valid_boxes(detections.boxes)
    seq = np.argsort(detections.frames, kind="stable")  # sequence order
    seq = seq[keep[seq]]
    frames = detections.frames[seq]
    boxes = detections.boxes[seq]
    if isinstance(detections, DenseDetections):
        column = {int(c): j for j, c in enumerate(detections.class_ids)}
        empty = np.empty(0, dtype=np.float64)
        for c in class_ids:
            j = column.get(int(c))
            if j is None:
                yield frames[:0], boxes[:0], empty
            else:
                yield frames, boxes, detections.scores[seq, j].astype(np.float64)
        return
    scores = detections.scores[seq]
    order, bounds = _class_slices(detections.labels[seq], class_ids)
    for lo, hi in bounds:
        rows = order[lo:hi]
        yield frames[rows], boxes[rows], scores[rows]


def evaluate_frames(
    groundtruth: FrameBoxes,
    detections: FrameBoxes | DenseDetections,
    class_ids: Sequence[int],
    iou_threshold: float = 0.5,
) -> dict:
    """Per-class VOC AP and mean over classes with ground truth.

    Ground-truth and detection rows whose label is not in `class_ids` are ignored. Frames are
    whatever the caller says: every frame of either input counts (detections on frames without
    ground truth are false positives).

    Returns:
      {"mAP": float (NaN when no class has ground truth), "per_class": {id: AP or NaN},
       "num_groundtruth": {id: int}, "num_detections": {id: int}} with ids in `class_ids` order.
    """
    class_ids = np.asarray(class_ids, dtype=np.int64)
    groundtruth, detections = _as_arrays(groundtruth), _as_arrays(detections)
    gt_order, gt_bounds = _class_slices(groundtruth.labels, class_ids)
    per_class, num_gt, num_det = {}, {}, {}
    per_det = _per_class_detections(detections, class_ids)
    for c, (lo, hi), (d_frames, d_boxes, d_scores) in zip(class_ids, gt_bounds, per_det):
        rows = gt_order[lo:hi]
        tp = match_class(
            d_frames,
            d_boxes,
            d_scores,
            groundtruth.frames[rows],
            groundtruth.boxes[rows],
            iou_threshold,
        )
        per_class[int(c)] = voc_average_precision(d_scores, tp, int(hi - lo))
        num_gt[int(c)] = int(hi - lo)
        num_det[int(c)] = int(d_scores.shape[0])
    return {
        "mAP": nan_mean(per_class.values()),
        "per_class": per_class,
        "num_groundtruth": num_gt,
        "num_detections": num_det,
    }


def nan_mean(values) -> float:
    """Mean ignoring NaN; NaN (without a warning) when every value is NaN or there are none."""
    values = np.fromiter(values, dtype=np.float64)
    if np.isnan(values).all():
        return float("nan")
    return float(np.nanmean(values))


def frame_map(
    groundtruth: FrameBoxes,
    detections: FrameBoxes | DenseDetections,
    class_ids: Sequence[int] | None = None,
    iou_threshold: float = 0.5,
) -> dict:
    """Frame mAP for UCF101-24 / JHMDB51-21 style data (no cap, no exclusions).

    Args:
      groundtruth: one row per annotated box on every annotated frame of the test videos.
      detections: detection rows, or every detected box scored for every class.
      class_ids: the classes to evaluate; by default every label of the ground truth. Classes
        without ground truth get AP NaN and do not enter the mean.
      iou_threshold: matching threshold (0.5 for the standard frame mAP).

    Returns:
      the `evaluate_frames` dict.
    """
    if class_ids is None:
        class_ids = np.unique(np.asarray(groundtruth.labels))
    return evaluate_frames(groundtruth, detections, class_ids, iou_threshold)


FRAME_STRIDE = 1 << 20
"""Frame ids of video-frame data: `video_index * FRAME_STRIDE + frame_number`."""


def tube_groundtruth(
    gttubes: Mapping[str, Mapping[int, Sequence[np.ndarray]]], videos: Sequence[str]
) -> FrameBoxes:
    """Ground-truth rows of UCF101-24 / JHMDB51-21 from the annotation pickle's `gttubes`.

    Args:
      gttubes: {video: {label index: [array (N, 5) of frame, x1, y1, x2, y2 in pixels]}}.
      videos: the split's videos; a frame's id is `video position * FRAME_STRIDE + frame`.

    Returns:
      one row per tube box, labels being the pickle's label indices.
    """
    frames, coords, labels = [np.empty(0, np.int64)], [np.empty((0, 4))], [np.empty(0, np.int64)]
    for position, video in enumerate(videos):
        for label, tubes in gttubes.get(video, {}).items():
            for tube in tubes:
                tube = np.asarray(tube, dtype=np.float64).reshape(-1, 5)
                frames.append(position * FRAME_STRIDE + tube[:, 0].astype(np.int64))
                coords.append(tube[:, 1:])
                labels.append(np.full(tube.shape[0], label, dtype=np.int64))
    return FrameBoxes(np.concatenate(frames), np.concatenate(coords), np.concatenate(labels))
