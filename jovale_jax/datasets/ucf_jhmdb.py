"""UCF101-24 and JHMDB51-21 as TFRecord shards: one example per keyframe (data/SCHEMA.md).

The raw layout (data/ucf24/README.md, data/jhmdb21/README.md): the standard annotation pickle
(`UCF101v2-GT.pkl` / `JHMDB-GT.pkl`, Python-2 pickles of ACT / MOC / YOWO: labels, gttubes, nframes,
train_videos, test_videos, resolution), the frames `rgb-images/<Class>/<video>/00001.jpg ...` and
`proposals.pkl`, a dict {"<Class>/<video>,<frame>": (N, 5 + F) array x1, y1, x2, y2 (normalised to
[0, 1]), score, features} (the frame 1-based, any zero padding), as AVA's dense proposals.

Keyframes: in `train`, every frame inside a ground-truth tube; in `test`, every frame of the video
(frame-mAP counts detections on frames without ground truth as false positives, as ACT's
evaluation does). Timestamps are 1-based frame indices; the clip's frames are keyframe + offset
frames of the `ClipConfig`, clamped to the frames on disk (edge repetition); `data.fps` is not used.
The JPEG files are stored as they are. These sets have no audio: the waveform is empty and
`has_audio` false. JHMDB's split (1-3) is `config.data.split_index`.
"""

import collections
import functools
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jovale_jax import box_ops
from jovale_jax.datasets import common, safe_pickle

PROPOSALS = "proposals.pkl"
FRAMES = "rgb-images"

Keyframes = dict[int, tuple[np.ndarray, np.ndarray]]  # frame -> (boxes, labels)


def read_annotations(
    annotations: dict[str, Any],
    video: str,
    num_classes: int,
    all_frames: bool,
    stats: common.BuildStats,
) -> tuple[Keyframes, list[common.GtRow]]:
    """Ground truth per keyframe of one video, and its rows in the AVA CSV layout."""
    height, width = annotations["resolution"][video]
    scale = np.array([width, height, width, height], np.float32)
    actors = collections.defaultdict(list)  # frame -> [(box, label, tube id)]
    tube_id = 0
    for label, tubes in sorted(annotations["gttubes"].get(video, {}).items()):
        for tube in tubes:
            tube = np.asarray(tube, np.float32).reshape(-1, 5)
            boxes, clipped = box_ops.clip_boxes(tube[:, 1:] / scale)
            stats.boxes_clipped["gt"] += clipped
            for frame, box in zip(tube[:, 0].astype(int), boxes):
                actors[frame].append((box, int(label), tube_id))
            tube_id += 1
    frames = range(1, annotations["nframes"][video] + 1) if all_frames else sorted(actors)
    keyframes, rows = {}, []
    for frame in frames:
        boxes = np.array([box for box, _, _ in actors[frame]], np.float32).reshape(-1, 4)
        labels = np.zeros((len(boxes), num_classes), np.int8)
        for i, (box, label, tube) in enumerate(actors[frame]):
            labels[i, label] = 1
            rows.append((video, frame, *map(float, box), label + 1, tube))
        keyframes[frame] = (boxes, labels)
    return keyframes, rows


class _FrameFolderBuilder(common.KeyframeBuilder, skip_registration=True):
    """Keyframes of a frame-folder dataset with its annotation pickle."""

    PICKLE: str
    SPLITS = ("train", "test")
    METRIC = "frame_map"

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        raw = os.fspath(dl_manager.manual_dir)
        spec = self.builder_config
        annotations = safe_pickle.load(os.path.join(raw, self.PICKLE))
        label_map = {i + 1: name for i, name in enumerate(annotations["labels"])}
        self.check_classes(label_map, os.path.join(raw, self.PICKLE))
        proposals = common.read_proposals(os.path.join(raw, PROPOSALS), spec.file_feature_dim)
        generators = {}
        for split in self.splits:
            lists = annotations[f"{split}_videos"]
            if not 1 <= spec.split_index <= len(lists):
                raise ValueError(f"{self.PICKLE} has {len(lists)} split(s), not {spec.split_index}")
            keyframes, rows = {}, []
            for video in sorted(lists[spec.split_index - 1]):
                keyframes[video], video_rows = read_annotations(
                    annotations, video, spec.num_classes, split == "test", self.stats
                )
                rows += video_rows
            common.write_eval_files(os.path.join(self.data_dir, "eval"), split, label_map, rows, [])
            generators[split] = self._generate_examples(
                split,
                {video: len(frames) for video, frames in keyframes.items()},
                functools.partial(
                    self._video_examples,
                    keyframes=keyframes,
                    proposals=proposals,
                    frames_dir=os.path.join(raw, FRAMES),
                ),
            )
        return generators

    def _video_examples(
        self,
        video: str,
        *,
        keyframes: dict[str, Keyframes],
        proposals: dict[tuple[str, int], np.ndarray],
        frames_dir: str,
    ) -> Iterator[tuple[str, dict[str, Any]] | None]:
        """One item per keyframe of the video (see `KeyframeBuilder._generate_examples`)."""
        spec = self.builder_config
        folder = os.path.join(frames_dir, video)
        available = (
            len([n for n in os.listdir(folder) if n.endswith(".jpg")])
            if os.path.isdir(folder)
            else 0
        )
        if not available:
            raise common.VideoError(f"no frames in {folder}")

        def read(frame: int) -> bytes:
            with open(os.path.join(folder, f"{np.clip(frame, 1, available):05d}.jpg"), "rb") as f:
                return f.read()

        for frame, (boxes, labels) in keyframes[video].items():
            if frame > available:
                yield None
                continue
            yield (
                f"{video},{frame:05d}",
                common.make_example(
                    spec,
                    self.stats,
                    video_id=video,
                    timestamp=frame,
                    frames=[read(frame + o) for o in spec.clip_offsets()],
                    scene_frames=[read(frame + o) for o in spec.scene_offsets()],
                    waveform=np.zeros(0, np.int16),
                    has_audio=False,
                    gt_boxes=boxes,
                    gt_labels=labels,
                    proposals=proposals.get((video, frame)),
                    detector=self.detector,
                ),
            )


class Ucf24Builder(_FrameFolderBuilder):
    """UCF101-24 keyframes with clip, scene frames, proposals and Hungarian targets."""

    name = "jovale_ucf24"
    PICKLE = "UCF101v2-GT.pkl"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "UCF101-24 pickle, rgb-images, proposals: data/ucf24/README.md"
    RAW_FILES = f"{PICKLE}, {PROPOSALS} and {FRAMES}/"
    PRESET = "ucf24"


class Jhmdb21Builder(_FrameFolderBuilder):
    """JHMDB51-21 keyframes (one of three splits) with clip, scene frames, proposals, targets."""

    name = "jovale_jhmdb21"
    PICKLE = "JHMDB-GT.pkl"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "JHMDB-GT.pkl, rgb-images and proposals: data/jhmdb21/README.md"
    RAW_FILES = f"{PICKLE}, {PROPOSALS} and {FRAMES}/"
    PRESET = "jhmdb21"

    @classmethod
    def config_prefix(cls, config: Any) -> str:
        """The split (`config.data.split_index`): each of the three is its own dataset."""
        return f"split{int(config.data.get('split_index', 1))}_"
