"""Eval benchmark: the vectorised AVA evaluator and the detections CSV at AVA val size.

`run_eval_bench()` generates an AVA-val-like input (64 videos, 57,600 keyframes, 15 detected boxes
per keyframe, each scored for the 60 evaluated classes), then

1. times `ava.evaluate` on the full size: in memory on the dense (boxes x classes) scores, with
   the official 50-row cap and without, and end to end from a CSV holding each keyframe's 20 best
   rows (about 1.15 million rows);
2. times the detections CSV that `launch.py eval` writes at that size (every box x class: about
   51.8 million rows, `evaluation.detections_csv.write_detections_csv`); with the two in-memory
   evaluations it is eval's output cost at AVA val size (`eval_output_s`).

The plain-loop reference evaluator that `ava.evaluate` agrees with is a test oracle:
tests/ava_reference.py (tests/test_eval_ava.py compares the two). It prints a table and, as its
last line, one JSON object.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time

import numpy as np

from jovale_jax.evaluation import ava
from jovale_jax.evaluation.detections_csv import write_detections_csv

AVA_60_IDS = ava.AVA_V22_IDS  # the 60 action ids of the AVA evaluation label map


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


def _timed(fn, *args) -> tuple:
    """(fn(*args), wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def run_eval_bench(
    num_frames: int = 57_600,
    boxes_per_frame: int = 15,
    csv_rows_per_frame: int = 20,
    seed: int = 0,
) -> dict:
    """Runs the benchmark (module docstring); prints a table and a JSON last line.

    Wall-clock and CPU seconds are both reported: on a shared machine the CPU time is the
    steadier of the two.

    Returns:
      the JSON object as a dict: sizes; per run the seconds and mAP; ``eval_output_s``, what
      ``launch.py eval`` adds at this size (the detections CSV and both in-memory mAPs).
    """
    gt, det = make_ava_like(num_frames, boxes_per_frame, seed=seed)
    names = {c: f"action {c}" for c in AVA_60_IDS}
    full = {}
    with tempfile.TemporaryDirectory() as tmp:
        labelmap = os.path.join(tmp, "labelmap.pbtxt")
        write_labelmap(labelmap)
        paths = {name: os.path.join(tmp, f"{name}.csv") for name in ("gt", "det")}
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
    summary = {
        "bench": "eval",
        "num_frames": num_frames,
        "boxes_per_frame": boxes_per_frame,
        "num_classes": len(AVA_60_IDS),
        "full": full,
        "eval_output_s": round(eval_output_s, 3),
    }
    print(
        f"AVA eval bench: {num_frames} keyframes x {boxes_per_frame} boxes x {len(AVA_60_IDS)} "
        "classes:"
    )
    print(f"{'run':<44} {'wall s':>8} {'CPU s':>8} {'mAP':>7}")
    for name, row in full.items():
        print(f"{name:<44} {row['wall_s']:>8.3f} {row['cpu_s']:>8.3f} {row['mAP']:>7.4f}")
    print(
        f"launch.py eval's share at this size (CSV of every box x class, mAP with and without "
        f"the cap): {eval_output_s:.1f} s"
    )
    print(json.dumps(summary))
    return summary
