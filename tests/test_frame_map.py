"""VOC frame mAP core (UCF101-24 / JHMDB51-21, and the AVA protocol's matching and AP)."""

import math

import numpy as np
import pytest

from jovale_jax.evaluation import frame_map as fm

A = (10.0, 10.0, 50.0, 50.0)
B = (60.0, 60.0, 90.0, 90.0)


def boxes(*entries) -> fm.FrameBoxes:
    """FrameBoxes from (frame, box, label[, score]) tuples."""
    columns = list(zip(*entries))
    return fm.FrameBoxes(
        np.array(columns[0]),
        np.array(columns[1], dtype=float),
        np.array(columns[2]),
        np.array(columns[3], dtype=float) if len(columns) == 4 else None,
    )


def test_frame_map_hand_computed():
    gt = boxes((0, A, 0), (1, B, 0), (1, A, 2))
    det = boxes(
        (0, A, 0, 0.9),  # TP
        (2, A, 0, 0.8),  # FP: frame 2 has no ground truth
        (1, B, 0, 0.7),  # TP
        (1, B, 2, 0.95),  # FP: class 2's box is A
        (1, A, 2, 0.6),  # TP
    )
    result = fm.frame_map(gt, det)
    assert list(result["per_class"]) == [0, 2]  # the ground truth's classes
    assert result["per_class"][0] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert result["per_class"][2] == pytest.approx(0.5)
    assert result["mAP"] == pytest.approx((5 / 6 + 0.5) / 2)
    with_empty_class = fm.frame_map(gt, det, class_ids=[0, 1, 2])
    assert math.isnan(with_empty_class["per_class"][1])
    assert with_empty_class["mAP"] == result["mAP"]


def test_no_fallback_to_the_second_best_ground_truth():
    g1, g2 = (0.0, 0.0, 40.0, 40.0), (8.0, 0.0, 48.0, 40.0)
    gt = boxes((0, g1, 0), (0, g2, 0))
    det = boxes((0, g1, 0, 0.9), (0, (2.0, 0.0, 42.0, 40.0), 0, 0.8))
    tp = fm.match_class(det.frames, det.boxes, det.scores, gt.frames, gt.boxes)
    np.testing.assert_array_equal(tp, [True, False])


def test_voc_average_precision_edges():
    scores = np.array([0.9, 0.8, 0.7])
    assert math.isnan(fm.voc_average_precision(scores, np.array([True, False, True]), 0))
    assert fm.voc_average_precision(scores, np.zeros(3, bool), 2) == 0.0
    assert fm.voc_average_precision(np.empty(0), np.empty(0, bool), 2) == 0.0
    # Recall reaches 1: precision 1 at 1/2, envelope 2/3 at 1.
    assert fm.voc_average_precision(scores, np.array([True, False, True]), 2) == pytest.approx(
        0.5 + 0.5 * 2 / 3
    )
    # The envelope lifts an earlier, lower precision: FP, TP, TP -> 1/2, then 2/3 twice.
    ap = fm.voc_average_precision(scores, np.array([False, True, True]), 3)
    assert ap == pytest.approx(2 / 3 * 2 / 3)


def test_dense_equals_rows():
    rng = np.random.default_rng(0)
    num_frames, per_frame, num_classes = 30, 5, 4
    frames = np.repeat(np.arange(num_frames), per_frame)
    corner = rng.uniform(0, 60, (frames.size, 2))
    det_boxes = np.concatenate([corner, corner + rng.uniform(10, 40, (frames.size, 2))], 1)
    scores = rng.random((frames.size, num_classes)).round(2)  # many ties
    gt_rows = rng.choice(frames.size, 50, replace=False)
    gt = fm.FrameBoxes(
        frames[gt_rows], det_boxes[gt_rows] + rng.normal(0, 3, (50, 4)), rng.integers(0, 4, 50)
    )
    dense = fm.DenseDetections(frames, det_boxes, scores, np.array([0, 1, 2, 3]))
    box, col = np.divmod(np.arange(scores.size), num_classes)
    rows = fm.FrameBoxes(frames[box], det_boxes[box], col, scores[box, col])
    np.testing.assert_equal(fm.frame_map(gt, dense), fm.frame_map(gt, rows))
    assert 0 < fm.frame_map(gt, dense)["mAP"] < 1


def test_hit_ranks_follow_the_reversed_stable_argsort():
    rng = np.random.default_rng(0)
    for trial in range(500):
        n = int(rng.integers(1, 60))
        grid = [2, 5, 50, 1e6][trial % 4]
        scores = np.round(rng.random(n) * grid) / grid
        hits = np.flatnonzero(rng.random(n) < 0.4)
        if hits.size == 0:
            continue
        rank = np.empty(n, dtype=np.int64)
        rank[np.argsort(scores, kind="stable")[::-1]] = np.arange(1, n + 1)
        np.testing.assert_array_equal(fm._ranks_of_hits(scores, hits), rank[hits])


def test_tube_groundtruth():
    tubes = {
        "b": {3: [np.array([[1, 0, 0, 10, 10], [2, 1, 1, 11, 11]])]},
        "a": {0: [np.array([[5, 2, 2, 8, 8]])], 1: [np.array([[5, 0, 0, 4, 4]])]},
    }
    gt = fm.tube_groundtruth(tubes, ["a", "b", "c"])
    np.testing.assert_array_equal(gt.frames, [5, 5, fm.FRAME_STRIDE + 1, fm.FRAME_STRIDE + 2])
    np.testing.assert_array_equal(gt.labels, [0, 1, 3, 3])
    np.testing.assert_array_equal(gt.boxes[2], [0, 0, 10, 10])
    det = fm.FrameBoxes(gt.frames, gt.boxes, gt.labels, np.linspace(0.9, 0.6, 4))
    assert fm.frame_map(gt, det)["mAP"] == 1.0
