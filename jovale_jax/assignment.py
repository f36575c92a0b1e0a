"""Label assignment: Hungarian matching of detector proposals to ground-truth actors.

Supplementary eqs. 1-4 (SPEC.md section 2). The proposals' boxes b_j and human scores h_j come from
a frozen person detector, so the assignment does not depend on model parameters and is computed once
per example, when the dataset is built (`jovale_jax.datasets`). The matching cost of proposal j and
ground-truth actor i is, as in DETR / Deformable DETR,

    C[j, i] = w_cls * focal(h_j) + w_l1 * ||b_j - b_i||_1 - w_giou * GIoU(b_j, b_i)

with the sigmoid-focal matching cost of the "person" class,
focal(h) = alpha (1 - h)^gamma (-log h) - (1 - alpha) h^gamma (-log(1 - h)), alpha 0.25, gamma 2,
and the L1 distance over the (x1, y1, x2, y2) coordinates of normalised boxes. The optimal
assignment (scipy's `linear_sum_assignment`) matches every ground-truth actor to one proposal when
K >= G; a matched proposal's target is its actor's multi-hot action vector, every other proposal's
target is all zero. With `iou_threshold` > 0 (`data.match_iou_threshold`: 0, the supplementary's
pure Hungarian matching, in the paper presets; 0.5 in the synthetic one, README "Decisions") a
pair whose IoU is below it is dropped, so an actor the detector missed is not a positive label on
a wrong box.
"""

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from jovale_jax import box_ops

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


def focal_matching_cost(
    scores: np.ndarray, alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA
) -> np.ndarray:
    """DETR-style focal cost of calling each proposal a person, given its person score: (K,)."""
    p = np.clip(np.asarray(scores, np.float64), 1e-8, 1.0 - 1e-8)
    positive = alpha * (1.0 - p) ** gamma * -np.log(p)
    negative = (1.0 - alpha) * p**gamma * -np.log(1.0 - p)
    return positive - negative


def matching_cost(
    proposals: np.ndarray,
    scores: np.ndarray,
    gt_boxes: np.ndarray,
    *,
    cost_class: float = 1.0,
    cost_l1: float = 5.0,
    cost_giou: float = 2.0,
) -> np.ndarray:
    """The (K, G) cost of matching each proposal to each ground-truth box."""
    proposals = np.asarray(proposals, np.float64).reshape(-1, 4)
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    l1 = np.abs(proposals[:, None, :] - gt_boxes[None, :, :]).sum(-1)
    giou = box_ops.pairwise_giou(proposals, gt_boxes)
    return cost_class * focal_matching_cost(scores)[:, None] + cost_l1 * l1 - cost_giou * giou


def assign_targets(
    proposals: np.ndarray,
    scores: np.ndarray,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    *,
    cost_class: float = 1.0,
    cost_l1: float = 5.0,
    cost_giou: float = 2.0,
    iou_threshold: float = 0.0,
) -> np.ndarray:
    """Per-proposal multi-hot targets (K, C), dtype of `gt_labels`, from the Hungarian assignment.

    Args:
      proposals: (K, 4) detector boxes, normalised (x1, y1, x2, y2).
      scores: (K,) detector person scores in [0, 1].
      gt_boxes: (G, 4) ground-truth actor boxes.
      gt_labels: (G, C) multi-hot actions of each actor.
      cost_class, cost_l1, cost_giou: weights of the three cost terms.
      iou_threshold: matched pairs whose IoU is below it are dropped (0 keeps every pair).
    """
    gt_labels = np.asarray(gt_labels)
    num_proposals = np.asarray(proposals).reshape(-1, 4).shape[0]
    targets = np.zeros((num_proposals, gt_labels.shape[-1]), gt_labels.dtype)
    if num_proposals == 0 or len(gt_labels) == 0:
        return targets
    cost = matching_cost(
        proposals, scores, gt_boxes, cost_class=cost_class, cost_l1=cost_l1, cost_giou=cost_giou
    )
    rows, cols = linear_sum_assignment(cost)
    if iou_threshold > 0:
        keep = box_ops.pairwise_iou(proposals, gt_boxes)[rows, cols] >= iou_threshold
        rows, cols = rows[keep], cols[keep]
    targets[rows] = gt_labels[cols]
    return targets


def assignment_kwargs(config: Any) -> dict[str, float]:
    """The keyword arguments of `assign_targets` given by a config's `data.match_*` fields."""
    d = config.data
    return {
        "cost_class": float(d.match_cost_class),
        "cost_l1": float(d.match_cost_l1),
        "cost_giou": float(d.match_cost_giou),
        "iou_threshold": float(d.match_iou_threshold),
    }
