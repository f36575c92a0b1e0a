"""Drawing action detections on images with PIL: person boxes with their top labels.

    names = [label_map[i] for i in sorted(label_map)]
    image = draw_detections(frame, boxes, top_labels(scores, names), title="clip.mp4 @ 3 s")

`boxes` are normalised (x1, y1, x2, y2) in [0, 1], as in the detections CSV and the model's input,
so the same call draws on a frame of any size. Used by `detect` (keyframe PNGs and the annotated
video) and by the demo report.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinct, saturated colours; box i takes PALETTE[i % len(PALETTE)].
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (255, 225, 25),
    (0, 128, 128),
)

LabelScore = tuple[str, float | None]  # a class name and its score (None: ground truth)
LabelScores = Sequence[LabelScore]


def top_labels(scores: np.ndarray, names: Sequence[str], k: int = 3) -> list[list[LabelScore]]:
    """For (N, C) scores, each row's `k` best classes as (name, score), best first."""
    scores = np.asarray(scores, np.float64).reshape(-1, len(names))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[(names[c], float(row[c])) for c in top] for row, top in zip(scores, order)]


def _text_color(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light colours, white on dark ones."""
    luminance = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def _line_boxes(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    lines: Sequence[str],
    font: ImageFont.ImageFont,
) -> list[tuple[float, float, float, float]]:
    """The filled rectangle behind each line of a label block whose top-left corner is `xy`."""
    x, y = xy
    rects = []
    for line in lines:
        *_, right, bottom = draw.textbbox((x + 2, y), line, font=font)
        rects.append((x, y, right + 2, bottom + 1))
        y = bottom + 1
    return rects


def _label_block(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    lines: Sequence[str],
    font: ImageFont.ImageFont,
    fill: tuple[int, int, int],
) -> None:
    """Lines of text on a filled rectangle whose top-left corner is `xy`."""
    for line, rect in zip(lines, _line_boxes(draw, xy, lines, font)):
        draw.rectangle(rect, fill=fill)
        draw.text((rect[0] + 2, rect[1]), line, font=font, fill=_text_color(fill))


def _overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(
    anchors: np.ndarray,
    sizes: np.ndarray,
    image_size: tuple[int, int],
    taken: Sequence[Sequence[float]] = (),
) -> list[tuple[float, float] | None]:
    """Top-left corners for label blocks that do not overlap each other (nor `taken` rectangles).

    Block i (width, height `sizes[i]`) goes at its anchor (a box's top-left corner, in pixels)
    when that spot is free; otherwise at the free spot nearest the anchor among those touching a
    block already placed (below, above, right or left of it, or at the image's edges), inside the
    image. None when no such spot is free: a crowded frame leaves that label out.
    """
    width, height = image_size
    placed = [tuple(map(float, r)) for r in taken]
    corners: list[tuple[float, float] | None] = []
    for (ax, ay), (w, h) in zip(np.asarray(anchors, float), np.asarray(sizes, float)):
        xs = {ax, 0.0, width - w} | {r[2] for r in placed} | {r[0] - w for r in placed}
        ys = {ay, 0.0, height - h} | {r[3] for r in placed} | {r[1] - h for r in placed}
        spots = sorted(
            {
                (min(max(x, 0.0), max(width - w, 0.0)), min(max(y, 0.0), max(height - h, 0.0)))
                for x in xs
                for y in ys
            },
            key=lambda p: ((p[0] - ax) ** 2 + (p[1] - ay) ** 2, p),
        )
        free = next(
            (p for p in spots if not any(_overlaps((*p, p[0] + w, p[1] + h), r) for r in placed)),
            None,
        )
        if free is not None:
            placed.append((free[0], free[1], free[0] + w, free[1] + h))
        corners.append(free)
    return corners


def draw_detections(
    image: Image.Image | np.ndarray,
    boxes: np.ndarray,
    labels_scores: Sequence[LabelScores],
    *,
    title: str | None = None,
    min_short_side: int = 256,
) -> Image.Image:
    """A copy of `image` with every box outlined and its labels listed at its top-left corner
    (or, when that spot is taken by another box's labels, the nearest free place; a label with
    no free place left is not drawn).

    Args:
      image: a PIL image or an (H, W, 3) uint8 array.
      boxes: (N, 4) normalised x1, y1, x2, y2.
      labels_scores: per box, the (name, score) pairs to list (e.g. `top_labels(scores, names)`;
        a score of None lists the name alone, as for ground truth).
      title: a line written at the image's top-left corner (e.g. the video and the time).
      min_short_side: smaller images are first enlarged (bicubic) to this short side, so that the
        text stays readable on low-resolution frames.
    """
    image = Image.fromarray(np.asarray(image, np.uint8)) if isinstance(image, np.ndarray) else image
    image = image.convert("RGB")  # a copy
    scale = min_short_side / min(image.size)
    if scale > 1:
        image = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC
        )
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) != len(labels_scores):
        raise ValueError(f"{len(boxes)} boxes but {len(labels_scores)} label lists")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(10, min(image.size) // 24))
    width = max(1, min(image.size) // 160)
    size = np.array([image.width, image.height] * 2)
    pixels = np.clip(boxes * size, 0, size - 1)
    for i, (x1, y1, x2, y2) in enumerate(pixels):  # outlines first: labels stay on top
        draw.rectangle(
            (x1, y1, max(x1, x2), max(y1, y2)), outline=PALETTE[i % len(PALETTE)], width=width
        )
    blocks = [
        [name if score is None else f"{name} {score:.2f}" for name, score in labels]
        for labels in labels_scores
    ]
    taken = _line_boxes(draw, (0, 0), [title], font) if title else []
    sizes = []
    for lines in blocks:
        rects = _line_boxes(draw, (0, 0), lines, font) or [(0, 0, 0, 0)]
        sizes.append((max(r[2] for r in rects), rects[-1][3]))
    corners = place_labels(pixels[:, :2], np.asarray(sizes).reshape(-1, 2), image.size, taken)
    for i, (lines, xy) in enumerate(zip(blocks, corners)):
        if xy is not None:  # no free place left: the box is drawn without its labels
            _label_block(draw, xy, lines, font, PALETTE[i % len(PALETTE)])
    if title:
        _label_block(draw, (0, 0), [title], font, (0, 0, 0))
    return image


def token_heatmap(
    grid: np.ndarray, size: tuple[int, int], frame_extent: Sequence[float] = (0, 0, 1, 1)
) -> np.ndarray:
    """A map over a token grid read at every pixel of a frame: (height, width), each pixel the
    value of the token it falls in.

    Args:
      grid: (h, w) one value per token of an image's patch grid, row-major as the tokens.
      size: the frame's (width, height) in pixels.
      frame_extent: where the frame lies on the image the grid covers, (x1, y1, x2, y2)
        normalised (the batch's ``frame_extent``: a frame fitted into a larger video canvas);
        (0, 0, 1, 1) for an image the frame fills (the scene stream's S x S resize).
    """
    grid = np.asarray(grid)
    h, w = grid.shape
    width, height = size
    x1, y1, x2, y2 = (float(v) for v in frame_extent)
    u = x1 + (np.arange(width) + 0.5) / width * (x2 - x1)
    v = y1 + (np.arange(height) + 0.5) / height * (y2 - y1)
    cols = np.clip(np.floor(u * w).astype(int), 0, w - 1)
    rows = np.clip(np.floor(v * h).astype(int), 0, h - 1)
    return grid[rows[:, None], cols[None, :]]
