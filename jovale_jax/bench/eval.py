"""Eval benchmark: the vectorised AVA evaluator against a plain per-frame, per-class loop.

`run_eval_bench()` generates an AVA-val-like input (64 videos, 57,600 keyframes, 15 detected boxes
per keyframe, each scored for the 60 evaluated classes), then

1. times `ava.evaluate` and `reference_evaluate` (the loop below, written from the official rules
   for readability, not speed) end to end on the same CSV files (every box x every class, so
   900 rows per keyframe and the official 50-row cap at work), on the first `baseline_frames`
   keyframes only because the loop is slow, checks that they agree, and reports the ratio;
2. times `ava.evaluate` alone on the full size: in memory on the dense (boxes x classes) scores,
   with the cap and without, and end to end from a CSV holding each keyframe's 20 best rows
   (about 1.15 million rows);
3. times the detections CSV that `launch.py eval` writes at that size (every box x class: about
   51.8 million rows, `evaluation.detections_csv.write_detections_csv`); with the two in-memory
   evaluations it is eval's output cost at AVA val size (`eval_output_s`).

It prints a table and, as its last line, one JSON object.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
import time
from collections.abc import Mapping

import numpy as np

from jovale_jax.evaluation import ava
from jovale_jax.evaluation.detections_csv import write_detections_csv

AVA_60_IDS = ava.AVA_V22_IDS  # the 60 action ids of the AVA evaluation label map


# ---------------------------------------------------------------------------------------------
# The loop baseline.


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


# ---------------------------------------------------------------------------------------------
# Input generation.


def make_ava_like(
    num_frames: int,
    boxes_per_frame: int = 15,
    num_videos: int = 64,
    seed: int = 0,
    class_ids: tuple[int, ...] = AVA_60_IDS,
) -> tuple[ava.AvaBoxes, ava.AvaDenseDetections]:
    """An AVA-val-like ground truth and dense detections.

    Keyframes run over `num_videos` videos from second 902. About 5% of keyframes have no
    people; the others 1 to 7, each with one pose class (ids <= 14) and a few others drawn from a
    long-tailed distribution. Detections hold each person's box jittered (some below IoU 0.5)
    plus random boxes, `boxes_per_frame` in all, scored for every class with higher scores for
    the person's true classes. Boxes are rounded to 3 decimals and scores to 6, as in AVA files,
    so scores do tie.
    """
    rng = np.random.default_rng(seed)
    class_ids = np.asarray(class_ids)
    pose = class_ids[class_ids <= 14]
    other = class_ids[class_ids > 14]
    pose_p = 1.0 / np.arange(1, pose.size + 1) ** 1.2
    other_p = 1.0 / np.arange(1, other.size + 1) ** 1.1
    per_video = -(-num_frames // num_videos)
    videos = np.array([f"vid{v:08d}" for v in range(num_videos)])
    frame_video = videos[np.arange(num_frames) // per_video]
    frame_time = 902 + np.arange(num_frames) % per_video

    people = np.where(
        rng.random(num_frames) < 0.05, 0, 1 + np.minimum(rng.poisson(1.3, num_frames), 6)
    )
    people = np.minimum(people, boxes_per_frame)
    person_frame = np.repeat(np.arange(num_frames), people)
    num_people = person_frame.size
    corner = rng.uniform(0.0, 0.6, (num_people, 2))
    size = rng.uniform(0.15, 0.4, (num_people, 2))
    person_box = np.concatenate([corner, corner + size], axis=1)

    labels_of = [rng.choice(pose, p=pose_p / pose_p.sum(), size=num_people)]
    extra = np.minimum(rng.poisson(1.2, num_people), 4)
    gt_person = [np.arange(num_people)]
    for j in range(extra.max(initial=0)):
        who = np.flatnonzero(extra > j)
        gt_person.append(who)
        labels_of.append(rng.choice(other, p=other_p / other_p.sum(), size=who.size))
    gt_person = np.concatenate(gt_person)
    gt_labels = np.concatenate(labels_of)
    order = np.argsort(gt_person, kind="stable")  # one person's rows together, as in AVA CSVs
    gt_person, gt_labels = gt_person[order], gt_labels[order]
    gt = ava.AvaBoxes(
        frame_video[person_frame[gt_person]],
        frame_time[person_frame[gt_person]],
        person_box[gt_person].round(3),
        gt_labels,
    )

    num_boxes = num_frames * boxes_per_frame
    box_frame = np.repeat(np.arange(num_frames), boxes_per_frame)
    slot = np.tile(np.arange(boxes_per_frame), num_frames)
    corner = rng.uniform(0.0, 0.7, (num_boxes, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(0.1, 0.3, (num_boxes, 2))], axis=1)
    scores = rng.random((num_boxes, class_ids.size)) * 0.5
    first_person = np.r_[0, np.cumsum(people)[:-1]]
    on_person = np.flatnonzero(slot < people[box_frame])
    person = first_person[box_frame[on_person]] + slot[on_person]
    jitter = rng.normal(0.0, 0.04, (on_person.size, 4))
    boxes[on_person] = np.clip(person_box[person] + jitter, 0.0, 1.0)
    column = {c: j for j, c in enumerate(class_ids)}
    box_of_person = np.empty(num_people, dtype=np.int64)
    box_of_person[person] = on_person
    true_columns = np.array([column[c] for c in gt_labels], dtype=np.int64)
    scores[box_of_person[gt_person], true_columns] += rng.random(gt_labels.size) * 0.6
    # Rounded so that CSVs are short and read back exactly.
    detections = ava.AvaDenseDetections(
        frame_video[box_frame], frame_time[box_frame], boxes.round(3), scores.round(6), class_ids
    )
    return gt, detections


def write_labelmap(path: str, class_ids: tuple[int, ...] = AVA_60_IDS) -> None:
    """Writes a pbtxt label map with placeholder names."""
    with open(path, "w") as f:
        f.writelines(f'item {{\n  name: "action {c}"\n  id: {c}\n}}\n' for c in class_ids)


def write_csv(path: str, rows: ava.AvaBoxes) -> None:
    """Writes AVA CSV rows; floats with repr, so that reading them back is exact."""
    scores = rows.scores
    with open(path, "w") as f:
        for i, (video, ts, box, label) in enumerate(
            zip(rows.video_ids, rows.timestamps.tolist(), rows.boxes.tolist(), rows.labels.tolist())
        ):
            tail = "" if scores is None else f",{float(scores[i])!r}"
            f.write(f"{video},{ts:04d},{box[0]!r},{box[1]!r},{box[2]!r},{box[3]!r},{label}{tail}\n")


def dense_to_rows(
    det: ava.AvaDenseDetections, boxes_per_frame: int, per_frame: int | None = None
) -> ava.AvaBoxes:
    """Rows box by box, class by class; with `per_frame`, only each frame's best rows.

    The boxes must be grouped by frame, `boxes_per_frame` per frame (as `make_ava_like` makes).
    """
    num_boxes, num_classes = det.scores.shape
    if per_frame is None:
        flat = np.arange(num_boxes * num_classes)
    else:
        per_frame_scores = det.scores.reshape(-1, boxes_per_frame * num_classes)
        best = np.argpartition(-per_frame_scores, per_frame - 1, axis=1)[:, :per_frame]
        flat = np.sort(best, axis=1) + np.arange(best.shape[0])[:, None] * per_frame_scores.shape[1]
        flat = flat.reshape(-1)
    box, col = np.divmod(flat, num_classes)
    return ava.AvaBoxes(
        np.asarray(det.video_ids)[box],
        det.timestamps[box],
        det.boxes[box],
        det.class_ids[col],
        det.scores[box, col],
    )


def _subset(det: ava.AvaDenseDetections, num_boxes: int) -> ava.AvaDenseDetections:
    return ava.AvaDenseDetections(
        det.video_ids[:num_boxes],
        det.timestamps[:num_boxes],
        det.boxes[:num_boxes],
        det.scores[:num_boxes],
        det.class_ids,
    )


def _gt_subset(gt: ava.AvaBoxes, frames: set[tuple[str, int]]) -> ava.AvaBoxes:
    keep = np.array([(v, t) in frames for v, t in zip(gt.video_ids, gt.timestamps.tolist())])
    return ava.AvaBoxes(gt.video_ids[keep], gt.timestamps[keep], gt.boxes[keep], gt.labels[keep])


def _max_difference(a: Mapping, b: Mapping) -> float:
    """Largest |difference| over mAP and per-class APs (NaN equal to NaN); inf on a NaN mismatch."""
    pairs = [(a["mAP"], b["mAP"])] + [
        (a["per_class"][c], b["per_class"][c]) for c in a["per_class"]
    ]
    worst = 0.0
    for x, y in pairs:
        if math.isnan(x) != math.isnan(y):
            return math.inf
        if not math.isnan(x):
            worst = max(worst, abs(x - y))
    return worst


def _timed(fn, *args) -> tuple:
    """(fn(*args), wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def run_eval_bench(
    num_frames: int = 57_600,
    boxes_per_frame: int = 15,
    baseline_frames: int = 1_000,
    csv_rows_per_frame: int = 20,
    seed: int = 0,
) -> dict:
    """Runs the benchmark (module docstring); prints a table and a JSON last line.

    Wall-clock and CPU seconds are both reported: on a shared machine the CPU time is the
    steadier of the two.

    Returns:
      the JSON object as a dict: sizes; per baseline run the fast and loop seconds and their
      ratio; per full-size run the seconds and mAP; "ratio" (loop / fast, wall clock, CSV end to
      end with the official cap), "ratio_eval_only" (the same on already parsed rows) and the
      largest AP difference between the two implementations ("max_abs_diff", "agree").
    """
    gt, det = make_ava_like(num_frames, boxes_per_frame, seed=seed)
    baseline_frames = min(baseline_frames, num_frames)
    sub_det = _subset(det, baseline_frames * boxes_per_frame)
    sub_gt = _gt_subset(gt, set(zip(sub_det.video_ids.tolist(), sub_det.timestamps.tolist())))
    sub_rows = dense_to_rows(sub_det, boxes_per_frame)
    names = {c: f"action {c}" for c in AVA_60_IDS}
    caps = (ava.DEFAULT_MAX_DETS_PER_FRAME, 0)
    baseline, full, diffs = {}, {}, []

    def compare(name: str, fast_run: tuple, loop_run: tuple) -> None:
        (fast, fast_wall, fast_cpu), (loop, loop_wall, loop_cpu) = fast_run, loop_run
        diffs.append(_max_difference(fast, loop))
        baseline[name] = {
            "fast_s": round(fast_wall, 3),
            "loop_s": round(loop_wall, 3),
            "ratio": round(loop_wall / fast_wall, 2),
            "fast_cpu_s": round(fast_cpu, 3),
            "loop_cpu_s": round(loop_cpu, 3),
            "ratio_cpu": round(loop_cpu / fast_cpu, 2),
        }

    with tempfile.TemporaryDirectory() as tmp:
        labelmap = os.path.join(tmp, "labelmap.pbtxt")
        write_labelmap(labelmap)
        paths = {
            name: os.path.join(tmp, f"{name}.csv") for name in ("gt", "det", "sub_gt", "sub_det")
        }
        write_csv(paths["sub_gt"], sub_gt)
        write_csv(paths["sub_det"], sub_rows)
        sub_paths = (paths["sub_gt"], paths["sub_det"])
        for cap in caps:
            compare(
                f"CSV end to end, cap {cap}",
                _timed(ava.evaluate, *sub_paths, labelmap, None, cap),
                _timed(reference_evaluate, labelmap, *sub_paths, None, cap),
            )
        parsed = [ava.read_csv(path) for path in sub_paths]
        parsed_rows = [read_rows(path) for path in sub_paths]
        for cap in caps:
            compare(
                f"parsed rows, evaluation only, cap {cap}",
                _timed(ava.evaluate, *parsed, names, None, cap),
                _timed(reference_evaluate_rows, names, *parsed_rows, set(), cap),
            )
        # The dense input is the same data: it must give the very same numbers.
        dense = ava.evaluate(sub_gt, sub_det, names)
        diffs.append(_max_difference(dense, ava.evaluate(*parsed, names)))

        csv_rows = dense_to_rows(det, boxes_per_frame, csv_rows_per_frame)
        write_csv(paths["gt"], gt)
        write_csv(paths["det"], csv_rows)
        runs = {
            f"CSV end to end ({len(csv_rows)} rows), cap 50": (paths["gt"], paths["det"], labelmap),
            f"dense in memory ({det.scores.size} scores), cap 50": (gt, det, names),
            "dense in memory, cap 0": (gt, det, names, None, 0),
        }
        for name, args in runs.items():
            result, wall, cpu = _timed(ava.evaluate, *args)
            full[name] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "mAP": result["mAP"]}
        # What `launch.py eval` adds on top of the two evaluations: every box x class as CSV.
        preds = {
            "video_ids": det.video_ids,
            "timestamps": det.timestamps,
            "boxes": det.boxes,
            "scores": det.scores,
        }
        rows, wall, cpu = _timed(
            write_detections_csv, os.path.join(tmp, "all.csv"), preds, det.class_ids
        )
        full[f"detections CSV ({rows} rows)"] = {
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            "mAP": math.nan,
        }
    eval_output_s = sum(
        row["wall_s"] for name, row in full.items() if name.startswith(("dense", "detections CSV"))
    )

    end_to_end = baseline[f"CSV end to end, cap {caps[0]}"]
    summary = {
        "bench": "eval",
        "num_frames": num_frames,
        "boxes_per_frame": boxes_per_frame,
        "num_classes": len(AVA_60_IDS),
        "baseline_frames": baseline_frames,
        "baseline_rows": len(sub_rows),
        "baseline": baseline,
        "full": full,
        "ratio": end_to_end["ratio"],
        "ratio_eval_only": baseline[f"parsed rows, evaluation only, cap {caps[0]}"]["ratio"],
        "eval_output_s": round(eval_output_s, 3),
        "max_abs_diff": max(diffs),
        "agree": max(diffs) <= 1e-6,
    }
    print(
        f"AVA eval bench: {num_frames} keyframes x {boxes_per_frame} boxes x {len(AVA_60_IDS)} "
        f"classes. Loop baseline on the first {baseline_frames} keyframes ({len(sub_rows)} rows):"
    )
    print(f"{'run':<44} {'fast s':>8} {'loop s':>8} {'ratio':>7} {'CPU ratio':>9}")
    for name, row in baseline.items():
        print(
            f"{name:<44} {row['fast_s']:>8.3f} {row['loop_s']:>8.3f} "
            f"{row['ratio']:>6.1f}x {row['ratio_cpu']:>8.1f}x"
        )
    print(f"fast evaluator alone, all {num_frames} keyframes:")
    print(f"{'run':<44} {'wall s':>8} {'CPU s':>8} {'mAP':>7}")
    for name, row in full.items():
        print(f"{name:<44} {row['wall_s']:>8.3f} {row['cpu_s']:>8.3f} {row['mAP']:>7.4f}")
    print(
        f"launch.py eval's share at this size (CSV of every box x class, mAP with and without "
        f"the cap): {eval_output_s:.1f} s"
    )
    print(f"fast vs loop: max |AP difference| {summary['max_abs_diff']:.1e}")
    print(json.dumps(summary))
    return summary
