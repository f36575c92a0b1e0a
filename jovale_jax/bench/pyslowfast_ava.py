"""A PySlowFast-style AVA clip loader: the input peer of ``bench peers``.

Written from what PySlowFast's AVA path does (``slowfast/datasets/ava_dataset.py``, ``ava_helper``,
``cv2_transform`` and its ``DATASET.md``), not from its code:

* frames are extracted beforehand, every video at 30 fps, to ``frames/{video}/{video}_%06d.jpg``
  (PySlowFast's docs run ``ffmpeg -r 30 -q:v 1``; here PyAV decodes and Pillow writes JPEG quality
  95, :func:`extract_frames`), counted apart from loading;
* a keyframe at AVA second ``s`` is frame ``(s - 900) * 30`` (the movies are cut at 900 s); its clip
  is ``range(centre - T * rate / 2, centre + T * rate / 2, rate)`` clamped to the video's frames;
* each JPEG is read and decoded (``cv2.imread`` when OpenCV is installed, else Pillow), scaled so
  its short side is ``short_side`` (bilinear, ``cv2_transform.scale``), flipped with probability
  0.5 (training), divided by 255, normalised by mean / std per channel, stacked to (C, T, H, W)
  float32 and turned from BGR to RGB; the boxes are scaled alike;
* ``pack_pathway_output``: the Slow pathway takes ``linspace(0, T - 1, T / alpha)`` of the frames.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

FPS = 30
CUT_START_S = 900  # AVA's movies are used from minute 15


def _backend() -> str:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return "pillow"
    return "cv2"


def extract_frames(videos_dir: str, frames_dir: str) -> int:
    """Every frame of every ``*.mp4`` in ``videos_dir`` as JPEGs in PySlowFast's layout; returns
    the number of frames written."""
    import av
    from PIL import Image

    count = 0
    for name in sorted(os.listdir(videos_dir)):
        video_id, ext = os.path.splitext(name)
        if ext != ".mp4":
            continue
        out = os.path.join(frames_dir, video_id)
        os.makedirs(out, exist_ok=True)
        with av.open(os.path.join(videos_dir, name)) as container:
            for i, frame in enumerate(container.decode(video=0), 1):
                path = os.path.join(out, f"{video_id}_{i:06d}.jpg")
                Image.fromarray(frame.to_ndarray(format="rgb24")).save(path, quality=95)
                count += 1
    return count


def read_keyframes(annotations_csv: str) -> list[tuple[str, int, np.ndarray]]:
    """(video id, second, boxes (N, 4) x1 y1 x2 y2 normalised) per keyframe of an AVA CSV."""
    boxes: dict[tuple[str, int], list[tuple[float, ...]]] = {}
    with open(annotations_csv) as f:
        for row in csv.reader(f):
            box = tuple(float(v) for v in row[2:6])
            entry = boxes.setdefault((row[0], int(row[1])), [])
            if box not in entry:
                entry.append(box)
    return [(v, s, np.asarray(b, np.float32)) for (v, s), b in boxes.items()]


class AvaFrameLoader:
    """Clips of pre-extracted AVA frames, decoded, resized and normalised as PySlowFast does
    (module docstring); ``next`` gives ``{"slow", "fast": (C, T, H, W) float32, "boxes"}``."""

    def __init__(
        self,
        frames_dir: str,
        keyframes: list[tuple[str, int, np.ndarray]],
        *,
        num_frames: int,
        sample_rate: int,
        short_side: int,
        alpha: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        seed: int = 0,
    ):
        self.frames_dir, self.keyframes = frames_dir, keyframes
        self.num_frames, self.sample_rate, self.short_side = num_frames, sample_rate, short_side
        self.alpha = alpha
        # BGR order, as the images are read; the stacked clip is turned to RGB at the end
        self.mean = np.asarray(mean[::-1], np.float32)[:, None, None]
        self.std = np.asarray(std[::-1], np.float32)[:, None, None]
        self.backend = _backend()
        self.rng = np.random.default_rng(seed)
        self.counts = {v: len(os.listdir(os.path.join(frames_dir, v))) for v, _, _ in keyframes}

    def _paths(self, video: str, second: int) -> list[str]:
        centre = (second - CUT_START_S) * FPS
        half = self.num_frames * self.sample_rate // 2
        last = self.counts[video] - 1
        frames = [
            min(max(i, 0), last) for i in range(centre - half, centre + half, self.sample_rate)
        ]
        return [os.path.join(self.frames_dir, video, f"{video}_{i + 1:06d}.jpg") for i in frames]

    def _read(self, path: str) -> np.ndarray:
        """(H, W, 3) uint8 BGR, at the short side."""
        if self.backend == "cv2":
            import cv2

            image = cv2.imread(path)
            h, w = image.shape[:2]
            size = _scaled(h, w, self.short_side)
            return cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR)
        from PIL import Image

        with Image.open(path) as image:
            size = _scaled(image.height, image.width, self.short_side)
            rgb = np.asarray(image.convert("RGB").resize(size[::-1], Image.BILINEAR))
        return rgb[..., ::-1]

    def load(self, index: int) -> dict[str, Any]:
        video, second, boxes = self.keyframes[index]
        images = [self._read(p) for p in self._paths(video, second)]
        if self.rng.uniform() < 0.5:  # horizontal flip, boxes alike
            images = [img[:, ::-1] for img in images]
            boxes = np.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], 1)
        h, w = images[0].shape[:2]
        clip = [(img.transpose(2, 0, 1) / 255.0).astype(np.float32) for img in images]
        clip = np.stack([(c - self.mean) / self.std for c in clip], axis=1)  # (C, T, H, W)
        fast = np.ascontiguousarray(clip[::-1])  # BGR -> RGB
        slow_idx = np.linspace(0, fast.shape[1] - 1, fast.shape[1] // self.alpha).astype(np.int64)
        return {"slow": fast[:, slow_idx], "fast": fast, "boxes": boxes * [w, h, w, h]}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        i = 0
        while True:
            yield self.load(i % len(self.keyframes))
            i += 1


def _scaled(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H, W) with the short side at ``short_side``, aspect kept (as ``cv2_transform.scale``)."""
    if height <= width:
        return short_side, int(width * short_side / height)
    return int(height * short_side / width), short_side
