r"""AVA v2.2 frame mAP, equal to the official ActivityNet evaluator (numpy and stdlib only).

    python -m jovale_jax.evaluation.ava --labelmap ava_action_list_v2.2.pbtxt \
        --groundtruth ava_val_v2.2.csv --exclusions ava_val_excluded_timestamps_v2.2.csv \
        --detections detections.csv [--max_dets_per_frame 50]

prints a per-class AP table, the AVA group mAPs and, as its last line, one JSON object
`{"mAP": float, "per_class": {"<class id>": float or null}}`. `evaluate()` is the same from Python,
from files or from arrays (`AvaBoxes`, or `AvaDenseDetections` for every box scored for every
class, which is never expanded to rows).

The rules, as read in the official code (activitynet/ActivityNet `Evaluation/get_ava_performance.py`
with `-e`, and its `Evaluation/ava/` copy of the TF Object Detection API PASCAL evaluator):

1. Label map: `item { name: "..." id: N }` blocks (v2.2 lists use `label { ... label_id: N }`).
   The classes evaluated are its ids; ids must be >= 1. The official reader only looks at lines
   starting with exactly two spaces then `name:`, `id:` or `label_id:`; this reader tokenises the
   file, accepts any layout and names the line it cannot parse.
2. CSV rows: `video_id, timestamp, x1, y1, x2, y2, action_id[, score]`, boxes normalised x/y; the
   official code stores them as y1, x1, y2, x2 (IoU is symmetric, so the order is only a detail).
   A missing score is 1.0; the 8th column of ground truth (person id) is read and ignored.
   A frame is the key `"%s,%04d" % (video_id, int(timestamp))`, i.e. (video id, integer second).
3. Class filter: rows, ground truth and detections alike, whose action id is not in the label
   map are dropped first, before anything else.
4. Per-frame cap: the official reader keeps, per frame, the 50 highest-scoring detection rows
   (after the class filter, counting every class and every box, invalid boxes included): a
   min-heap of capacity 50 that replaces its smallest entry when a row scores strictly higher.
   Ground truth is not capped. `max_dets_per_frame=0` disables the cap, as PySlowFast's copy of
   the evaluator does (PySlowFast also matches each frame's detections in input order rather
   than by score; that difference is not reproduced here).
5. Exclusions: frames listed in the excluded-timestamps CSV (`video_id,timestamp` rows) are
   dropped from ground truth and detections.
6. Ground truth is never "difficult" nor "group-of", so the PASCAL rules reduce to plain VOC:
   invalid detection boxes dropped, IoU 0.5 against the best-overlapping ground-truth box of the
   class only, one match per ground-truth box, highest score first, VOCdevkit AP with the
   precision envelope (details in `frame_map.py`, which holds that shared code).
7. Frames with detections and no ground truth: all their detections are false positives. Classes
   with no ground truth after filtering: AP NaN, left out of the mean (the official mean is
   `np.nanmean` over ids 1..max id, the ids missing from the label map being NaN too).
   A class with ground truth and no detections has AP 0, so empty detections give mAP 0.

Deliberate differences, for bad input only: detection rows of videos that the ground-truth CSV
does not contain at all are ignored and counted (the official code would count them as false
positives); the official code crashes on rows that do not parse, where this one raises a
`ValueError` naming `file:line` and the value; NaN scores are rejected; numbers are read as
floats, so a timestamp or action id written "902.0" is accepted (the official `int()` crashes).

Ties. The official reader passes every frame's rows, ground truth included, through a heap and
then a stable sort by descending score (the ground truth's "score" being 1.0, or the person id of
8-column files), so rows of equal score come in the heap's array order. Here they come in input
order instead: with the cap, tied scores at the 50th place keep the earlier rows; tied
detections of a frame are visited in input order; a detection with exactly the same IoU with two
ground-truth boxes takes the first in input order. The ranking of tied scores across frames is
described in `frame_map.py`. With distinct scores and no exact IoU ties the result equals the
official one; the per-class APs follow the same float operations and the mean is the same
`np.nanmean`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from jovale_jax.evaluation.frame_map import (
    DenseDetections,
    FrameBoxes,
    evaluate_frames,
    valid_boxes,
)

DEFAULT_MAX_DETS_PER_FRAME = 50
"""The official evaluator's per-frame capacity for detection rows."""

ACTION_GROUPS = {
    "pose": ("person pose / movement", 1, 14),
    "object": ("object manipulation", 15, 63),
    "interaction": ("person interaction", 64, 80),
}
"""AVA's three action groups: key -> (display name, first id, last id)."""

AVA_V22_IDS = (
    1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17, 20, 22, 24, 26, 27, 28, 29, 30, 34, 36, 37,
    38, 41, 43, 45, 46, 47, 48, 49, 51, 52, 54, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68,
    69, 70, 72, 73, 74, 76, 77, 78, 79, 80,
)  # fmt: skip
"""The 60 action ids of the AVA v2.1/v2.2 evaluation label map."""

PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True)
class AvaBoxes:
    """AVA CSV rows in memory: ground truth or detections, one row per (box, action).

    Attributes:
      video_ids: (N,) video ids (str).
      timestamps: (N,) int seconds.
      boxes: (N, 4) float x1, y1, x2, y2, normalised.
      labels: (N,) int action ids.
      scores: (N,) float scores; None means 1.0 (ground truth).
    """

    video_ids: Sequence[str] | np.ndarray
    timestamps: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.video_ids)


@dataclasses.dataclass(frozen=True)
class AvaDenseDetections:
    """Detected boxes, each scored for every class, as a model produces them.

    Evaluated as if written box by box, class by class, to a CSV (that is the input order for
    ties), without ever expanding to rows. Columns whose class is not in the label map are
    ignored.

    Attributes:
      video_ids: (B,) video ids (str).
      timestamps: (B,) int seconds.
      boxes: (B, 4) float x1, y1, x2, y2, normalised.
      scores: (B, C) float scores.
      class_ids: (C,) int action id of each score column.
    """

    video_ids: Sequence[str] | np.ndarray
    timestamps: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.video_ids)


# ---------------------------------------------------------------------------------------------
# Reading files.

_LABELMAP_TOKEN = re.compile(
    r'\s*(?:(?P<open>\w+)\s*\{|(?P<close>\})|(?P<key>\w+)\s*:\s*(?P<value>"[^"]*"|[^\s{}"#]+)'
    r"|#.*)"
)


def read_labelmap(path: PathLike) -> dict[int, str]:
    """Reads a pbtxt label map (`item`/`label` blocks with `name` and `id`/`label_id`).

    Returns:
      {class id: name} in id order (the order of the model's outputs).

    Raises:
      ValueError: naming `file:line` for anything that does not parse, a block without an id, a
        repeated or non-positive id, or a file without items.
    """
    labelmap: dict[int, str] = {}
    block: dict | None = None
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            where = f"{path}:{lineno}"
            pos, end = 0, len(line.rstrip())
            while pos < end:
                m = _LABELMAP_TOKEN.match(line, pos)
                if m is None or m.end() == pos:
                    raise ValueError(f"{where}: cannot parse label map line {line.strip()!r}")
                pos = m.end()
                if m["open"]:
                    if block is not None:
                        raise ValueError(f"{where}: nested block {m['open']!r} in label map")
                    block = {"line": where}
                elif m["close"]:
                    if block is None:
                        raise ValueError(f"{where}: '}}' without an open block in label map")
                    if "id" not in block:
                        raise ValueError(f"{where}: label map item without an id")
                    class_id = block["id"]
                    if class_id in labelmap:
                        raise ValueError(f"{where}: label map id {class_id} repeated")
                    labelmap[class_id] = block.get("name", block.get("display_name", ""))
                    block = None
                elif m["key"]:
                    if block is None:
                        raise ValueError(f"{where}: {m['key']!r} outside an item in label map")
                    key, value = m["key"], m["value"]
                    if key in ("id", "label_id"):
                        if not re.fullmatch(r"[+-]?\d+", value) or int(value) < 1:
                            raise ValueError(
                                f"{where}: label map id must be an integer >= 1, got {value!r}"
                            )
                        block["id"] = int(value)
                    elif key in ("name", "display_name"):
                        block[key] = value.strip('"')
    if block is not None:
        raise ValueError(f"{block['line']}: label map block is not closed")
    if not labelmap:
        raise ValueError(f"{path}: label map has no items")
    return dict(sorted(labelmap.items()))


_FIELDS = ("timestamp", "x1", "y1", "x2", "y2", "action id", "score")


def read_csv(path: PathLike) -> AvaBoxes:
    """Reads an AVA CSV (ground truth or detections) in bulk.

    Numbers are parsed as floats (so "0902" is second 902); timestamp and action id must be
    integral, scores must not be NaN. Rows have 7 or 8 columns; with 7 the score is 1.0.

    Raises:
      ValueError: naming `file:line` and the offending value for the first bad row.
    """
    with open(path, newline="") as f:
        text = f.read().replace("\r\n", "\n")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if not lines:
        empty = np.empty(0)
        return AvaBoxes([], empty.astype(np.int64), np.empty((0, 4)), empty.astype(np.int64), empty)
    ncols = lines[0].count(",") + 1
    try:
        if ncols not in (7, 8):
            raise ValueError
        numbers = np.loadtxt(
            lines,
            delimiter=",",
            usecols=range(1, ncols),
            dtype=np.float64,
            ndmin=2,
            comments=None,
        )
    except ValueError:  # find and name the bad row, or read mixed 7/8-column files
        return _read_csv_rows(path, lines)
    if numbers.shape[0] != len(lines):  # loadtxt skipped blank lines: name them
        return _read_csv_rows(path, lines)
    video_ids = [line.partition(",")[0] for line in lines]
    return _checked_rows(video_ids, numbers) or _read_csv_rows(path, lines)


def _checked_rows(video_ids: list[str], numbers: np.ndarray) -> AvaBoxes | None:
    """AvaBoxes from parsed numbers, or None when a value breaks a rule (caller re-reads)."""
    timestamps, actions = numbers[:, 0], numbers[:, 5]
    scores = numbers[:, 6] if numbers.shape[1] == 7 else np.ones(len(numbers))
    bad = (
        (timestamps != np.round(timestamps))
        | (np.abs(timestamps) >= 2**31)
        | (actions != np.round(actions))
        | (np.abs(actions) >= 2**31)
        | np.isnan(scores)
    )
    if bad.any():
        return None
    return AvaBoxes(
        video_ids,
        timestamps.astype(np.int64),
        np.ascontiguousarray(numbers[:, 1:5]),
        actions.astype(np.int64),
        scores,
    )


def _read_csv_rows(path: PathLike, lines: list[str]) -> AvaBoxes:
    """Row-by-row reader: handles 7/8-column mixes and raises precise errors."""
    video_ids, numbers = [], []
    for lineno, row in enumerate(csv.reader(lines), 1):
        where = f"{path}:{lineno}"
        if len(row) not in (7, 8):
            raise ValueError(
                f"{where}: expected 7 or 8 columns, got {len(row)}: {lines[lineno - 1]!r}"
            )
        values = []
        for name, text in zip(_FIELDS, row[1:]):
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{where}: {name} is not a number: {text!r}") from None
            if name in ("timestamp", "action id"):
                if not (math.isfinite(value) and value == int(value)):
                    raise ValueError(f"{where}: {name} is not an integer: {text!r}")
                if abs(value) >= 2**31:
                    raise ValueError(f"{where}: {name} is out of range: {text!r}")
            if name == "score" and np.isnan(value):
                raise ValueError(f"{where}: score is NaN: {text!r}")
            values.append(value)
        if len(values) == 6:
            values.append(1.0)
        video_ids.append(row[0])
        numbers.append(values)
    rows = _checked_rows(video_ids, np.array(numbers, dtype=np.float64).reshape(-1, 7))
    assert rows is not None  # every rule was checked above
    return rows


def read_exclusions(path: PathLike) -> set[tuple[str, int]]:
    """Reads the excluded-timestamps CSV (`video_id,timestamp` rows) into {(video, second)}."""
    excluded = set()
    with open(path, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if len(row) != 2:
                raise ValueError(f"{path}:{lineno}: expected 2 columns (video_id,timestamp): {row}")
            try:
                excluded.add((row[0], int(row[1])))
            except ValueError:
                raise ValueError(
                    f"{path}:{lineno}: timestamp is not an integer: {row[1]!r}"
                ) from None
    return excluded


# ---------------------------------------------------------------------------------------------
# Evaluation.


def evaluate(
    groundtruth: PathLike | AvaBoxes,
    detections: PathLike | AvaBoxes | AvaDenseDetections,
    labelmap: PathLike | Mapping[int, str],
    exclusions: PathLike | Iterable[tuple[str, int]] | None = None,
    max_dets_per_frame: int = DEFAULT_MAX_DETS_PER_FRAME,
    groups: Mapping[str, Iterable[int]] | None = None,
) -> dict:
    """AVA frame mAP at IoU 0.5 with the official protocol (module docstring).

    Args:
      groundtruth: the ground-truth CSV, or its rows.
      detections: the detections CSV, or its rows, or every box scored for every class.
      labelmap: the pbtxt label map, or {class id: name}.
      exclusions: the excluded-timestamps CSV, or (video id, second) pairs.
      max_dets_per_frame: detection rows kept per frame (highest scores); 0 keeps all.
      groups: the class groups to average ({group: class ids}); default AVA's action groups.

    Returns:
      {"mAP": float (NaN without any ground truth), "per_class": {id: AP, NaN without ground
       truth}, "groups": {group: mAP}, "num_groundtruth": {id: rows}, "num_detections": {id:
       rows evaluated}, "ignored": {reason: detection rows}, "max_dets_per_frame": int}; the
      reasons, in the order they apply: unknown_class, unknown_video, excluded, over_cap,
      invalid_box.
    """
    if max_dets_per_frame < 0:
        raise ValueError(f"max_dets_per_frame must be >= 0, got {max_dets_per_frame}")
    names = dict(labelmap) if isinstance(labelmap, Mapping) else read_labelmap(labelmap)
    class_ids = np.array(sorted(names), dtype=np.int64)
    if class_ids.size == 0 or class_ids[0] < 1:
        raise ValueError(f"the label map needs class ids >= 1, got {class_ids.tolist()}")
    if not isinstance(groundtruth, AvaBoxes):
        groundtruth = read_csv(groundtruth)
    if not isinstance(detections, (AvaBoxes, AvaDenseDetections)):
        detections = read_csv(detections)
    if exclusions is None:
        exclusions = ()
    elif isinstance(exclusions, (str, os.PathLike)):
        exclusions = read_exclusions(exclusions)
    if len(detections) == 0:
        warnings.warn("the detections are empty: every AP is 0", stacklevel=2)

    videos = {v: i for i, v in enumerate(dict.fromkeys(_as_list(groundtruth.video_ids)))}
    excluded = list(exclusions)
    excluded_keys = _frame_keys(
        _video_codes([v for v, _ in excluded], videos), np.array([t for _, t in excluded])
    )
    gt_labels = np.asarray(groundtruth.labels, dtype=np.int64)
    gt_keys = _frame_keys(_video_codes(groundtruth.video_ids, videos), groundtruth.timestamps)
    gt_rows = np.flatnonzero(np.isin(gt_labels, class_ids) & ~np.isin(gt_keys, excluded_keys))

    gather = _dense_detections if isinstance(detections, AvaDenseDetections) else _row_detections
    det, gt_frames, ignored = gather(
        detections,
        _Filter(videos, class_ids, gt_keys[gt_rows], excluded_keys, max_dets_per_frame),
    )
    if ignored["unknown_video"]:
        warnings.warn(
            f"ignored {ignored['unknown_video']} detection rows of videos absent from the "
            "ground truth",
            stacklevel=2,
        )
    gt = FrameBoxes(
        gt_frames, np.asarray(groundtruth.boxes, dtype=np.float64)[gt_rows], gt_labels[gt_rows]
    )
    result = evaluate_frames(gt, det, class_ids)
    # The official mean: nanmean over ids 1..max id, ids outside the label map being NaN.
    aps = np.full(class_ids[-1], np.nan)
    aps[class_ids - 1] = list(result["per_class"].values())
    if np.isnan(aps).all():
        warnings.warn("no ground truth left after filtering: mAP is NaN", stacklevel=2)
    result["mAP"] = float("nan") if np.isnan(aps).all() else float(np.nanmean(aps))
    result["groups"] = group_maps(result["per_class"], groups)
    result["ignored"] = ignored
    result["max_dets_per_frame"] = max_dets_per_frame
    return result


def _as_list(values: Sequence[str] | np.ndarray) -> list[str]:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def _video_codes(video_ids: Sequence[str] | np.ndarray, videos: dict[str, int]) -> np.ndarray:
    """Index of each video id in `videos`, -1 for an unknown video."""
    ids = _as_list(video_ids)
    return np.fromiter(map(videos.get, ids, itertools.repeat(-1)), dtype=np.int64, count=len(ids))


def _frame_keys(video_codes: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """One int64 per (video, second): the official "video_id,%04d" key, as a number."""
    timestamps = np.asarray(timestamps, dtype=np.int64)
    if timestamps.size and np.abs(timestamps).max() >= 2**31:
        raise ValueError("timestamps must be below 2**31 in magnitude")
    return video_codes * 2**32 + (timestamps + 2**31)


def _frame_numbers(det_keys: np.ndarray, gt_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frame ids numbering frames in the official order: first appearance in the detections."""
    keys = np.concatenate([det_keys, gt_keys])
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    rank = np.empty_like(first)
    rank[np.argsort(first)] = np.arange(first.size)
    frames = rank[inverse]
    return frames[: det_keys.size], frames[det_keys.size :]


IGNORED_REASONS = ("unknown_class", "unknown_video", "excluded", "over_cap", "invalid_box")
"""Why detection rows are left out of the evaluation, in the order the filters apply."""


@dataclasses.dataclass(frozen=True)
class _Filter:
    """What the detections are filtered against: the ground truth's videos {id: code}, the
    evaluated class ids, the ground truth's frame keys, the excluded frames' keys, and the
    per-frame cap ``k`` (0: none)."""

    videos: dict[str, int]
    class_ids: np.ndarray
    gt_keys: np.ndarray
    excluded_keys: np.ndarray
    k: int


def _row_detections(det: AvaBoxes, where: _Filter) -> tuple[FrameBoxes, np.ndarray, dict[str, int]]:
    """Detection rows filtered and capped, the ground-truth frame ids in the same numbering, and
    the number of rows dropped per reason (:data:`IGNORED_REASONS`)."""
    videos, class_ids, k = where.videos, where.class_ids, where.k
    gt_keys, excluded_keys = where.gt_keys, where.excluded_keys
    ignored = dict.fromkeys(IGNORED_REASONS, 0)
    labels = np.asarray(det.labels, dtype=np.int64)
    known_class = np.isin(labels, class_ids)
    video_codes = _video_codes(det.video_ids, videos)
    ignored["unknown_class"] += int(np.count_nonzero(~known_class))
    ignored["unknown_video"] += int(np.count_nonzero(known_class & (video_codes < 0)))
    rows = np.flatnonzero(known_class & (video_codes >= 0))
    keys = _frame_keys(video_codes[rows], np.asarray(det.timestamps)[rows])
    frames, gt_frames = _frame_numbers(keys, gt_keys)
    scores = np.ones(len(det)) if det.scores is None else np.asarray(det.scores, np.float64)
    if np.isnan(scores[rows]).any():
        raise ValueError("detection scores must not be NaN")
    excluded = np.isin(keys, excluded_keys)
    ignored["excluded"] += int(np.count_nonzero(excluded))
    keep = np.flatnonzero(~excluded)
    if k:
        capped, _ = _top_k_per_frame(frames[keep], rows[keep], scores[:, None], np.zeros(1, int), k)
        ignored["over_cap"] += keep.size - capped.size
        keep = keep[np.searchsorted(rows[keep], capped)]
    rows = rows[keep]
    boxes = np.asarray(det.boxes, dtype=np.float64)[rows]
    ignored["invalid_box"] += int(np.count_nonzero(~valid_boxes(boxes)))
    return FrameBoxes(frames[keep], boxes, labels[rows], scores[rows]), gt_frames, ignored


def _dense_detections(
    det: AvaDenseDetections, where: _Filter
) -> tuple[FrameBoxes | DenseDetections, np.ndarray, dict[str, int]]:
    """Dense detections filtered (and capped, to rows), the ground-truth frame ids, and the
    number of (box, class) rows dropped per reason."""
    videos, class_ids, k = where.videos, where.class_ids, where.k
    gt_keys, excluded_keys = where.gt_keys, where.excluded_keys
    ignored = dict.fromkeys(IGNORED_REASONS, 0)
    column_ids = np.asarray(det.class_ids, dtype=np.int64)
    if np.unique(column_ids).size != column_ids.size:
        raise ValueError("dense detections: class_ids must be distinct")
    columns = np.flatnonzero(np.isin(column_ids, class_ids))
    num_boxes = len(det)
    scores = np.asarray(det.scores)
    if scores.shape != (num_boxes, column_ids.size):
        raise ValueError(
            f"dense detections: scores of shape {scores.shape}, expected "
            f"{(num_boxes, column_ids.size)}"
        )
    if scores.size and np.isnan(scores.min()):  # min propagates NaN, without a (B, C) mask
        raise ValueError("detection scores must not be NaN")
    video_codes = _video_codes(det.video_ids, videos)
    ignored["unknown_class"] += num_boxes * (column_ids.size - columns.size)
    ignored["unknown_video"] += int(np.count_nonzero(video_codes < 0)) * columns.size
    known = np.flatnonzero(video_codes >= 0)
    keys = _frame_keys(video_codes[known], np.asarray(det.timestamps)[known])
    frames, gt_frames = _frame_numbers(keys, gt_keys)
    excluded = np.isin(keys, excluded_keys)
    ignored["excluded"] += int(np.count_nonzero(excluded)) * columns.size
    boxes = np.asarray(det.boxes, dtype=np.float64)
    if k:
        box, col = _top_k_per_frame(frames[~excluded], known[~excluded], scores, columns, k)
        ignored["over_cap"] += int(np.count_nonzero(~excluded)) * columns.size - box.size
        row_frames = np.empty(num_boxes, dtype=np.int64)
        row_frames[known] = frames
        ignored["invalid_box"] += int(np.count_nonzero(~valid_boxes(boxes[box])))
        rows = FrameBoxes(
            row_frames[box], boxes[box], column_ids[col], scores[box, col].astype(np.float64)
        )
        return rows, gt_frames, ignored
    kept = known[~excluded]
    ignored["invalid_box"] += int(np.count_nonzero(~valid_boxes(boxes[kept]))) * columns.size
    # Dropped boxes are given NaN coordinates, which the core skips as invalid: no score copy.
    marked = np.full_like(boxes, np.nan)
    marked[kept] = boxes[kept]
    all_frames = np.full(num_boxes, -1, dtype=np.int64)
    all_frames[known] = frames
    return DenseDetections(all_frames, marked, scores, column_ids), gt_frames, ignored


def _top_k_per_frame(
    frames: np.ndarray, items: np.ndarray, scores: np.ndarray, columns: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each frame's k best (item, column) pairs, as if the items were rows item by item.

    Rows are items with one column; dense boxes are items with one column per class.

    Args:
      frames, items: frame id and index (a row of `scores`) of the candidates, items ascending.
      scores: (n, C) scores; only `columns` take part.
      k: pairs kept per frame (highest scores; on ties the earlier item, then column).

    Returns:
      (item, column) of the kept pairs, in item then column order.
    """
    order = np.argsort(frames, kind="stable")
    sorted_frames = frames[order]
    starts = np.flatnonzero(np.diff(sorted_frames, prepend=-1))
    counts = np.diff(starts, append=frames.size)
    kept_item, kept_col = [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.int64)]
    width = columns.size
    all_columns = np.array_equal(columns, np.arange(scores.shape[1]))
    for m in np.unique(counts):  # frames with m items form a regular (frames, m * width) array
        group = starts[counts == m]
        step = max(1, 2**22 // (m * width))
        for lo in range(0, group.size, step):
            item = items[order[group[lo : lo + step, None] + np.arange(m)]]  # (F, m)
            pair_scores = scores[item] if all_columns else scores[item][:, :, columns]
            pair_scores = pair_scores.reshape(item.shape[0], m * width)
            if m * width <= k:
                keep = np.ones(pair_scores.shape, dtype=bool)
            else:
                kth = np.partition(pair_scores, m * width - k, axis=1)[:, m * width - k, None]
                keep = pair_scores >= kth
                over = np.flatnonzero(keep.sum(axis=1) > k)  # ties at the k-th place
                if over.size:
                    tied = pair_scores[over] == kth[over]
                    room = k - (pair_scores[over] > kth[over]).sum(axis=1, keepdims=True)
                    keep[over] &= ~tied | (np.cumsum(tied, axis=1) <= room)
            f, flat = np.nonzero(keep)
            kept_item.append(item[f, flat // width])
            kept_col.append(columns[flat % width])
    item, col = np.concatenate(kept_item), np.concatenate(kept_col)
    order = np.lexsort((col, item))
    return item[order], col[order]


def group_maps(
    per_class: Mapping[int, float], groups: Mapping[str, Iterable[int]] | None = None
) -> dict[str, float]:
    """mAP of each class group over its classes with an AP (not NaN); NaN for a group without
    any. ``groups``: {group: class ids}, default AVA's action groups (`ACTION_GROUPS`)."""
    if groups is None:
        groups = {key: range(first, last + 1) for key, (_, first, last) in ACTION_GROUPS.items()}
    result = {}
    for key, ids in groups.items():
        aps = [per_class[c] for c in ids if c in per_class and not np.isnan(per_class[c])]
        result[key] = float(np.mean(aps)) if aps else float("nan")
    return result


# ---------------------------------------------------------------------------------------------
# Report and command line.


def _json_number(value: float) -> float | None:
    return None if np.isnan(value) else value


def result_json(result: Mapping) -> str:
    """The one-line JSON summary: {"mAP": float, "per_class": {"<id>": AP}}, NaN as null."""
    return json.dumps(
        {
            "mAP": _json_number(result["mAP"]),
            "per_class": {str(c): _json_number(ap) for c, ap in result["per_class"].items()},
        }
    )


def format_report(result: Mapping, names: Mapping[int, str]) -> str:
    """Per-class AP table, group mAPs, ignored detection rows, then the JSON line."""

    def ap_text(ap: float) -> str:
        return "   n/a" if np.isnan(ap) else f"{ap:6.4f}"

    cap = result["max_dets_per_frame"]
    lines = [
        f"AVA frame AP @ IoU 0.5, {'at most ' + str(cap) if cap else 'all'} detections per frame",
        f"{'id':>3}  {'action':<44} {'#gt':>6} {'#det':>8}  {'AP':>6}",
    ]
    for c, ap in result["per_class"].items():
        lines.append(
            f"{c:>3}  {names.get(c, '')[:44]:<44} {result['num_groundtruth'][c]:>6} "
            f"{result['num_detections'][c]:>8}  {ap_text(ap)}"
        )
    for key, value in result["groups"].items():
        name = ACTION_GROUPS[key][0] if key in ACTION_GROUPS else key
        lines.append(f"group mAP  {name:<33} {ap_text(value)}")
    lines.append(
        "ignored detection rows: "
        + ", ".join(f"{reason.replace('_', ' ')} {n}" for reason, n in result["ignored"].items())
    )
    lines.append(f"mAP {ap_text(result['mAP'])}")
    lines.append(result_json(result))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: prints the report; its last line is the JSON summary."""
    parser = argparse.ArgumentParser(
        prog="python -m jovale_jax.evaluation.ava", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--labelmap", required=True, help="label map pbtxt")
    parser.add_argument("--groundtruth", required=True, help="ground-truth CSV")
    parser.add_argument("--detections", required=True, help="detections CSV")
    parser.add_argument("--exclusions", help="excluded-timestamps CSV")
    parser.add_argument(
        "--max_dets_per_frame",
        type=int,
        default=DEFAULT_MAX_DETS_PER_FRAME,
        help=f"detection rows kept per frame, 0 for all (default {DEFAULT_MAX_DETS_PER_FRAME})",
    )
    parser.add_argument(
        "--groups",
        choices=("auto", "ava", "none"),
        default="auto",
        help="group mAPs: AVA's pose / object / interaction groups (ava), none, or AVA's when "
        "every id of the label map is one of AVA v2.2's 60 (auto, the default)",
    )
    args = parser.parse_args(argv)
    try:
        names = read_labelmap(args.labelmap)
        ava_map = args.groups == "ava" or (args.groups == "auto" and set(names) <= set(AVA_V22_IDS))
        result = evaluate(
            args.groundtruth,
            args.detections,
            names,
            args.exclusions,
            args.max_dets_per_frame,
            None if ava_map else {},
        )
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(result, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
