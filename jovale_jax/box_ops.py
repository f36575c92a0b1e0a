"""Box geometry in numpy: areas, pairwise IoU and generalised IoU, clipping.

Boxes are (x1, y1, x2, y2) arrays of shape (..., 4), normalised or in pixels alike. Degenerate boxes
(x2 <= x1 or y2 <= y1) have zero area; the divisions are guarded so they never produce NaN.
"""

import numpy as np

_EPS = 1e-9


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Area of each box, (...,) for boxes (..., 4); zero for degenerate boxes."""
    boxes = np.asarray(boxes, np.float64)
    w = np.clip(boxes[..., 2] - boxes[..., 0], 0.0, None)
    h = np.clip(boxes[..., 3] - boxes[..., 1], 0.0, None)
    return w * h


def _intersection_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, np.float64)[:, None, :]
    b = np.asarray(b, np.float64)[None, :, :]
    lo = np.maximum(a[..., :2], b[..., :2])
    hi = np.minimum(a[..., 2:], b[..., 2:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=-1)
    union = box_area(a) + box_area(b) - inter
    return inter, union


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (N, 4) with every box in `b` (M, 4): (N, M)."""
    inter, union = _intersection_union(a, b)
    return inter / np.maximum(union, _EPS)


def pairwise_giou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Generalised IoU (Rezatofighi et al. 2019) of `a` (N, 4) with `b` (M, 4): (N, M) in [-1, 1].

    GIoU = IoU - (|C| - |A u B|) / |C|, where C is the smallest box enclosing A and B.
    """
    inter, union = _intersection_union(a, b)
    a = np.asarray(a, np.float64)[:, None, :]
    b = np.asarray(b, np.float64)[None, :, :]
    enclosing = np.concatenate(
        [np.minimum(a[..., :2], b[..., :2]), np.maximum(a[..., 2:], b[..., 2:])], axis=-1
    )
    enclosing_area = box_area(enclosing)
    iou = inter / np.maximum(union, _EPS)
    return iou - (enclosing_area - union) / np.maximum(enclosing_area, _EPS)


def clip_boxes(boxes: np.ndarray) -> tuple[np.ndarray, int]:
    """Clips normalised boxes (N, 4) into [0, 1]; returns (clipped float32 boxes, boxes changed)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    clipped = np.clip(boxes, 0.0, 1.0)
    changed = int(np.any(clipped != boxes, axis=-1).sum())
    return clipped, changed
