"""jovale_jax/assignment.py and box_ops.py: GIoU by hand, the Hungarian assignment against brute
force and against scipy on an independently computed cost, and the edge cases."""

import itertools
import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from configs import ava_sf_r50, ava_sf_r101, ava_vitb16, jhmdb21, synthetic, ucf24
from jovale_jax import assignment, box_ops


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 0.7, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(0.05, 0.3, (n, 2))], axis=1)


def test_iou_and_giou_by_hand():
    a = np.array([[0.0, 0.0, 2.0, 2.0]])
    b = np.array([[1.0, 1.0, 3.0, 3.0], [3.0, 0.0, 4.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
    # Overlap: intersection 1, union 7, enclosing box 3 x 3 = 9.
    # Disjoint: intersection 0, union 4 + 2 = 6, enclosing box 4 x 2 = 8.
    np.testing.assert_allclose(box_ops.pairwise_iou(a, b), [[1 / 7, 0.0, 1.0]])
    np.testing.assert_allclose(box_ops.pairwise_giou(a, b), [[1 / 7 - 2 / 9, 0.0 - 2 / 8, 1.0]])


def test_degenerate_boxes_give_no_nan():
    point = np.array([[0.5, 0.5, 0.5, 0.5]])
    assert np.isfinite(box_ops.pairwise_giou(point, point)).all()
    assert box_ops.box_area(np.array([[0.3, 0.3, 0.1, 0.5]]))[0] == 0


def test_clip_boxes_counts_changed_boxes():
    clipped, changed = box_ops.clip_boxes(
        [[-0.1, 0.2, 0.5, 0.6], [0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 1.2, 1.0]]
    )
    assert changed == 2
    np.testing.assert_allclose(clipped[[0, 2]], [[0, 0.2, 0.5, 0.6], [0.5, 0.5, 1, 1]])


def test_focal_matching_cost_formula():
    p = 0.8
    expected = 0.25 * (1 - p) ** 2 * -math.log(p) - 0.75 * p**2 * -math.log(1 - p)
    np.testing.assert_allclose(assignment.focal_matching_cost(np.array([p])), [expected])
    costs = assignment.focal_matching_cost(np.linspace(0.05, 0.95, 10))
    assert np.all(np.diff(costs) < 0)  # a surer person is a cheaper match


def _independent_cost(proposals, scores, gt_boxes, w_cls, w_l1, w_giou):
    """The matching cost written out element by element, sharing no code with the module."""
    cost = np.zeros((len(proposals), len(gt_boxes)))
    for j, (p, h) in enumerate(zip(proposals, scores)):
        focal = 0.25 * (1 - h) ** 2 * -math.log(h) - 0.75 * h**2 * -math.log(1 - h)
        for i, g in enumerate(gt_boxes):
            iw = max(0.0, min(p[2], g[2]) - max(p[0], g[0]))
            ih = max(0.0, min(p[3], g[3]) - max(p[1], g[1]))
            inter = iw * ih
            union = (p[2] - p[0]) * (p[3] - p[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
            hull = (max(p[2], g[2]) - min(p[0], g[0])) * (max(p[3], g[3]) - min(p[1], g[1]))
            giou = inter / union - (hull - union) / hull
            l1 = sum(abs(p[k] - g[k]) for k in range(4))
            cost[j, i] = w_cls * focal + w_l1 * l1 - w_giou * giou
    return cost


@pytest.mark.parametrize("seed", range(20))
def test_assignment_matches_brute_force_and_scipy(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 6))
    g = int(rng.integers(1, k + 1))
    proposals, gt_boxes = _random_boxes(rng, k), _random_boxes(rng, g)
    scores = rng.uniform(0.05, 0.95, k)
    labels = np.eye(g, dtype=np.int8)  # one class per actor: the targets reveal the matching
    weights = {
        "cost_class": float(rng.uniform(0.5, 2)),
        "cost_l1": float(rng.uniform(1, 5)),
        "cost_giou": float(rng.uniform(1, 3)),
    }
    targets = assignment.assign_targets(proposals, scores, gt_boxes, labels, **weights)

    assert targets.shape == (k, g) and targets.dtype == np.int8
    assert (targets.sum(0) == 1).all()  # K >= G: every actor matched, to one proposal
    assert (targets.sum(1) <= 1).all()
    cost = _independent_cost(
        proposals, scores, gt_boxes, weights["cost_class"], weights["cost_l1"], weights["cost_giou"]
    )
    np.testing.assert_allclose(
        assignment.matching_cost(proposals, scores, gt_boxes, **weights), cost, rtol=1e-9
    )
    chosen = [int(np.argmax(targets[:, i])) for i in range(g)]
    brute = min(
        itertools.permutations(range(k), g),
        key=lambda rows: sum(cost[r, i] for i, r in enumerate(rows)),
    )
    assert chosen == list(brute)
    rows, cols = linear_sum_assignment(cost)
    expected = np.zeros_like(targets)
    expected[rows] = labels[cols]
    np.testing.assert_array_equal(targets, expected)


def test_more_actors_than_proposals_matches_k_of_them():
    rng = np.random.default_rng(0)
    labels = np.eye(5, dtype=np.int8)
    targets = assignment.assign_targets(
        _random_boxes(rng, 3), rng.uniform(0.2, 0.9, 3), _random_boxes(rng, 5), labels
    )
    assert targets.shape == (3, 5)
    assert (targets.sum(1) == 1).all() and targets.sum() == 3


def test_multi_hot_targets_and_unmatched_proposals():
    gt_boxes = np.array([[0.1, 0.1, 0.3, 0.5], [0.6, 0.2, 0.8, 0.7]])
    labels = np.array([[1, 0, 1], [0, 1, 0]], np.int8)
    proposals = np.array([[0.61, 0.21, 0.79, 0.69], [0.4, 0.4, 0.5, 0.5], [0.1, 0.12, 0.31, 0.5]])
    targets = assignment.assign_targets(proposals, np.array([0.9, 0.8, 0.7]), gt_boxes, labels)
    np.testing.assert_array_equal(targets, [[0, 1, 0], [0, 0, 0], [1, 0, 1]])


def test_empty_inputs():
    proposals, scores = np.array([[0.1, 0.1, 0.4, 0.6]]), np.array([0.9])
    no_gt = assignment.assign_targets(
        proposals, scores, np.zeros((0, 4)), np.zeros((0, 6), np.int8)
    )
    assert no_gt.shape == (1, 6) and not no_gt.any()
    no_proposals = assignment.assign_targets(
        np.zeros((0, 4)), np.zeros(0), proposals, np.ones((1, 6), np.int8)
    )
    assert no_proposals.shape == (0, 6)


def test_iou_threshold_drops_poor_matches():
    gt_boxes, labels = np.array([[0.1, 0.1, 0.3, 0.5]]), np.ones((1, 2), np.int8)
    far = np.array([[0.6, 0.6, 0.9, 0.9]])
    assert assignment.assign_targets(far, np.array([0.9]), gt_boxes, labels).sum() == 2
    assert (
        assignment.assign_targets(far, np.array([0.9]), gt_boxes, labels, iou_threshold=0.5).sum()
        == 0
    )


def test_actor_matched_at_iou_02_is_positive_at_threshold_0_only():
    """A missed actor (its only proposal overlaps it at IoU 0.2) is a positive label on that wrong
    box at threshold 0 (the paper's DETR matching), and not at 0.5; a good match stays."""
    gt_boxes = np.array([[0.0, 0.0, 0.5, 0.5], [0.6, 0.2, 0.9, 0.8]])
    labels = np.array([[1, 0, 0], [0, 1, 1]], np.int8)
    proposals = np.array([[0.0, 0.0, 0.5, 0.1], [0.61, 0.22, 0.9, 0.79]])
    iou = box_ops.pairwise_iou(proposals, gt_boxes)
    assert iou[0, 0] == pytest.approx(0.2) and iou[1, 1] > 0.9
    scores = np.array([0.9, 0.9])
    at_0 = assignment.assign_targets(proposals, scores, gt_boxes, labels, iou_threshold=0.0)
    at_05 = assignment.assign_targets(proposals, scores, gt_boxes, labels, iou_threshold=0.5)
    np.testing.assert_array_equal(at_0, labels)
    np.testing.assert_array_equal(at_05, [[0, 0, 0], [0, 1, 1]])


def test_assignment_kwargs_read_the_config():
    config = synthetic.get_config("test")
    config.data.match_cost_l1 = 3.0
    config.data.match_iou_threshold = 0.25
    assert assignment.assignment_kwargs(config) == {
        "cost_class": 1.0,
        "cost_l1": 3.0,
        "cost_giou": 2.0,
        "iou_threshold": 0.25,
    }


@pytest.mark.parametrize("preset", [ava_vitb16, ava_sf_r50, ava_sf_r101, ucf24, jhmdb21])
def test_paper_presets_use_pure_hungarian_matching(preset):
    """The paper presets assign as supplementary eqs. 2-4: a missed actor (IoU 0.2 with its only
    proposal) still becomes that proposal's positive label."""
    gt_boxes = np.array([[0.0, 0.0, 0.5, 0.5]])
    labels = np.array([[1, 0, 1]], np.int8)
    proposals = np.array([[0.0, 0.0, 0.5, 0.1], [0.7, 0.7, 0.9, 0.9]])
    kwargs = assignment.assignment_kwargs(preset.get_config())
    got = assignment.assign_targets(proposals, np.array([0.9, 0.1]), gt_boxes, labels, **kwargs)
    np.testing.assert_array_equal(got, [[1, 0, 1], [0, 0, 0]])
