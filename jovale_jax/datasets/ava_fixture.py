"""A tiny AVA-geometry fixture: a few generated videos in the official AVA v2.2 raw layout.

`generate_raw` writes what `launch.py build-data --dataset ava` reads (data/ava/README.md): videos
at an AVA-like resolution (16:9, 640 x 360 by default: real AVA movies are mostly 16:9 or 4:3 at
360p to 1080p) with H.264 video at 30 fps and AAC audio, the label map, the annotation CSV, an
(empty) excluded-timestamps CSV and a dense-proposals pickle. Frames are a textured scene panning
sideways with a few moving figures, so their JPEGs cost about what a film's do to decode. The
videos are taken as AVA's 15-minute cuts (keyframes 902, 903, ...), so every keyframe's 64-frame
window lies inside its video.

`launch.py bench input --config.bench.fixture=True` generates and builds it, so the input bench
runs without AVA; it is regenerated at each build (deterministic for a seed), never stored in the
repository.
"""

import csv
import os
import pickle
from collections.abc import Iterator

import numpy as np

from jovale_jax.datasets import ava, common, synthetic

FPS = 30


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(height, width, 3) float32 detail at every scale: blocks of noise of 64, 16 and 4 pixels
    (amplitudes set so that the stored JPEGs are about as large as AVA's: ~0.6 MB a keyframe)."""
    image = np.full((height, width, 3), 128.0, np.float32)
    for cell, amplitude in ((64, 50), (16, 25), (4, 8)):
        coarse = rng.uniform(-amplitude, amplitude, (height // cell + 2, width // cell + 2, 3))
        image += np.kron(coarse, np.ones((cell, cell, 1)))[:height, :width]
    return image


def _frames(
    rng: np.random.Generator, size: tuple[int, int], num_frames: int, figures: np.ndarray
) -> Iterator[np.ndarray]:
    """The video: the texture panning one pixel per frame, figures (rows x, y, w, h, vx in
    normalised units) drawn as coloured rectangles moving sideways, light grain."""
    height, width = size
    background = _texture(rng, height, width + num_frames)
    colours = rng.uniform(0, 255, (len(figures), 3))
    grain = rng.normal(0, 2, (7, height, width, 3)).astype(np.float32)  # cycled: cheap to make
    for n in range(num_frames):
        image = background[:, n : n + width].copy()
        for (x, y, w, h, vx), colour in zip(figures, colours):
            x0 = int((x + vx * n / FPS) * width)
            image[int(y * height) : int((y + h) * height), x0 : x0 + int(w * width)] = colour
        image += grain[n % len(grain)]
        yield np.clip(image, 0, 255).astype(np.uint8)


def generate_raw(
    out_dir: str,
    *,
    num_videos: int = 4,
    seconds: int = 12,
    size: tuple[int, int] = (360, 640),
    num_classes: int = 60,
    label_map: str = "",
    seed: int = 0,
) -> int:
    """Writes the raw AVA layout of the fixture (train split) into `out_dir`; returns the number
    of keyframes: `num_videos` x (`seconds` - 3), at the seconds 2 .. `seconds` - 2 of each video.

    `size` is (height, width); `num_classes` the label map's length (the config's
    `model.num_classes`), written as `label_map` (default AVA's file name). Each keyframe has two
    actors with one or two actions, and proposals: the actors' boxes jittered plus a low-scoring
    false positive.
    """
    videos_dir = os.path.join(out_dir, "videos")
    os.makedirs(videos_dir, exist_ok=True)
    common.write_label_map(
        os.path.join(out_dir, label_map or ava.LABEL_MAP),
        {i: f"fixture action {i}" for i in range(1, num_classes + 1)},
    )
    rng = np.random.default_rng(seed)
    rows, proposals = [], {}
    for v in range(num_videos):
        video_id = f"fixture{v:02d}"
        figures = np.column_stack(
            [
                rng.uniform(0.1, 0.6, 2),
                rng.uniform(0.2, 0.4, 2),
                rng.uniform(0.05, 0.1, 2),
                rng.uniform(0.3, 0.5, 2),
                rng.uniform(-0.02, 0.02, 2),
            ]
        )
        audio = (rng.normal(0, 0.05, seconds * synthetic.SAMPLE_RATE) * 32767).astype(np.int16)
        synthetic.write_mp4(
            os.path.join(videos_dir, f"{video_id}.mp4"),
            _frames(rng, size, seconds * FPS, figures),
            audio,
            FPS,
        )
        for second in range(2, seconds - 1):
            timestamp = int(ava.TRIMMED_START_S) + second
            x, y, w, h, vx = figures.T
            boxes = np.column_stack([x + vx * second, y, x + vx * second + w, y + h])
            boxes = np.clip(boxes, 0, 1)
            for person, box in enumerate(boxes):
                actions = rng.choice(num_classes, int(rng.integers(1, 3)), replace=False) + 1
                rows += [
                    (video_id, f"{timestamp:04d}", *np.round(box, 4), a, person)
                    for a in sorted(actions)
                ]
            jitter = boxes + rng.normal(0, 0.01, boxes.shape)
            scores = rng.uniform(0.8, 0.99, (len(boxes), 1))
            false_positive = [[0.7, 0.1, 0.8, 0.5, 0.2]]
            proposals[f"{video_id},{timestamp:04d}"] = np.concatenate(
                [np.concatenate([jitter, scores], axis=1), false_positive]
            ).astype(np.float32)
    with open(os.path.join(out_dir, "ava_train_v2.2.csv"), "w", newline="") as f:
        csv.writer(f).writerows(rows)
    open(os.path.join(out_dir, "ava_train_excluded_timestamps_v2.2.csv"), "w").close()
    with open(os.path.join(out_dir, "ava_dense_proposals_train.FAIR.recall_93.9.pkl"), "wb") as f:
        pickle.dump(proposals, f)
    return num_videos * (seconds - 3)
