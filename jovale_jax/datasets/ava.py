"""AVA v2.2 as TFRecord shards: one example per annotated keyframe (data/SCHEMA.md).

The raw layout (data/ava/README.md): the official `ava_{split}_v2.2.csv`, the 60-class
`ava_action_list_v2.2_for_activitynet_2019.pbtxt`, `ava_{split}_excluded_timestamps_v2.2.csv`, a
person-proposal file per split and `videos/<video_id>.<any extension>`. Your own set in this layout
(data/README.md) may name its label map (`config.data.label_map`) and its CSVs `{split}.csv`,
`{split}_excluded_timestamps.csv`; it has any number of classes.

Keyframes are AVA's timestamps 902-1798 (seconds of the movie). A video shorter than 30 minutes is
taken as AVA's 15-minute cut starting at 900 s of the movie (what SlowFast's and MMAction2's
preparation scripts make, and what the synthetic set writes), a longer one as the full movie. Rows
whose action is not in the label map, outside 902-1798 or at an excluded timestamp are dropped (as
the official evaluator does) and counted; a keyframe is written when at least one row remains.
Ground-truth actors are the distinct (box, person_id) of a keyframe, with the multi-hot of their
actions.
"""

import collections
import functools
import os
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from jovale_jax import box_ops
from jovale_jax.datasets import common, video
from jovale_jax.evaluation.ava import ACTION_GROUPS, read_labelmap

KEYFRAMES = range(902, 1799)
TRIMMED_START_S = 900.0  # AVA's 15-minute cuts begin at this second of the movie
FULL_MOVIE_MIN_S = 1800.0  # a video at least this long is the full movie (time offset 0)
LABEL_MAP = "ava_action_list_v2.2_for_activitynet_2019.pbtxt"
ANNOTATION_FILES = ("ava_{split}_v2.2.csv", "{split}.csv")  # looked for in this order
EXCLUDED_FILES = ("ava_{split}_excluded_timestamps_v2.2.csv", "{split}_excluded_timestamps.csv")
PROPOSAL_FILES = (  # looked for in this order
    "proposals_{split}.pkl",
    "proposals_{split}.csv",
    "ava_dense_proposals_{split}.FAIR.recall_93.9.pkl",  # MMAction2's name
    "ava_{split}_predicted_boxes.csv",  # SlowFast's name
)

_ROW = [
    ("video_id", str),
    ("timestamp", int),
    *common.BOX_COLUMNS,
    ("action_id", int),
    ("person_id", int),
]
_KEYFRAME = [("video_id", str), ("timestamp", int)]

Keyframes = dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]  # video -> ts -> (boxes, labels)


def read_annotations(
    path: str,
    label_map: dict[int, str],
    excluded: set[tuple[str, int]],
    stats: common.BuildStats,
) -> tuple[Keyframes, list[common.GtRow]]:
    """Ground truth per keyframe from an AVA CSV (person_id optional), and the rows kept."""
    index = {class_id: i for i, class_id in enumerate(label_map)}
    actors = collections.defaultdict(lambda: collections.defaultdict(set))
    for vid, ts, x1, y1, x2, y2, action, *person in common.read_csv(path, _ROW, optional=1):
        if ts not in KEYFRAMES:
            stats.rows_dropped["timestamp_outside_902_1798"] += 1
        elif (vid, ts) in excluded:
            stats.rows_dropped["excluded_timestamp"] += 1
        elif action not in index:
            stats.rows_dropped["action_not_in_label_map"] += 1
        else:
            actors[vid, ts][(x1, y1, x2, y2), person[0] if person else -1].add(action)
    keyframes: Keyframes = collections.defaultdict(dict)
    rows = []
    for (vid, ts), keyframe_actors in sorted(actors.items()):
        boxes, clipped = box_ops.clip_boxes([box for box, _ in keyframe_actors])
        stats.boxes_clipped["gt"] += clipped
        labels = np.zeros((len(boxes), len(index)), np.int8)
        for i, ((_, person), actions) in enumerate(keyframe_actors.items()):
            labels[i, [index[a] for a in actions]] = 1
            rows += [(vid, ts, *map(float, boxes[i]), a, person) for a in sorted(actions)]
        keyframes[vid][ts] = (boxes, labels)
    return dict(keyframes), rows


def read_excluded(raw_dir: str, split: str) -> set[tuple[str, int]]:
    """The (video_id, timestamp) pairs of the split's excluded-timestamps CSV (`EXCLUDED_FILES`);
    empty when there is none."""
    try:
        path = find_file(raw_dir, split, EXCLUDED_FILES, "excluded timestamps")
    except FileNotFoundError as e:
        common.logger.warning("%s: no excluded timestamps", e)
        return set()
    return set(common.read_csv(path, _KEYFRAME))


def find_file(raw_dir: str, split: str, patterns: tuple[str, ...], what: str) -> str:
    """The first file of `patterns` present for the split."""
    for pattern in patterns:
        path = os.path.join(raw_dir, pattern.format(split=split))
        if os.path.exists(path):
            return path
    raise FileNotFoundError(
        f"no {what} for split {split!r} in {raw_dir}: expected one of "
        + ", ".join(p.format(split=split) for p in patterns)
    )


def video_files(videos_dir: str) -> dict[str, str]:
    """{video_id: path} of the files in `videos_dir`, the id being the name up to its extension."""
    files = {}
    for name in sorted(os.listdir(videos_dir)):
        video_id = os.path.splitext(name)[0]
        if video_id in files:
            raise common.BadInputError(
                f"{videos_dir}: two files for video {video_id!r}: {files[video_id]} and {name}"
            )
        files[video_id] = os.path.join(videos_dir, name)
    return files


class AvaBuilder(common.KeyframeBuilder):
    """AVA v2.2 keyframes with clip, scene frames, audio, proposals and Hungarian targets."""

    name = "jovale_ava"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "AVA v2.2 CSVs, label map, proposals, videos: data/ava/README.md"
    SPLITS = ("train", "val")
    METRIC = "ava"
    CLASS_GROUPS: ClassVar = {k: tuple(range(a, b + 1)) for k, (_, a, b) in ACTION_GROUPS.items()}
    RAW_FILES = (
        f"{LABEL_MAP} (or config.data.label_map), ava_<split>_v2.2.csv, "
        "ava_<split>_excluded_timestamps_v2.2.csv, the person proposals and videos/"
    )
    PRESET = "ava_vitb16"

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        raw = os.fspath(dl_manager.manual_dir)
        spec = self.builder_config
        label_map_path = os.path.join(raw, self.label_map_file or LABEL_MAP)
        label_map = read_labelmap(label_map_path)
        self.check_classes(label_map, label_map_path)
        videos = video_files(os.path.join(raw, "videos"))
        generators = {}
        for split in self.splits:
            excluded = read_excluded(raw, split)
            keyframes, rows = read_annotations(
                find_file(raw, split, ANNOTATION_FILES, "annotations"),
                label_map,
                excluded,
                self.stats,
            )
            common.write_eval_files(
                os.path.join(self.data_dir, "eval"), split, label_map, rows, sorted(excluded)
            )
            proposals = common.read_proposals(
                find_file(raw, split, PROPOSAL_FILES, "person proposals"), spec.file_feature_dim
            )
            generators[split] = self._generate_examples(
                split,
                {vid: len(frames) for vid, frames in keyframes.items()},
                functools.partial(
                    self._video_examples, keyframes=keyframes, proposals=proposals, videos=videos
                ),
            )
        return generators

    def _video_examples(
        self,
        video_id: str,
        *,
        keyframes: Keyframes,
        proposals: dict[tuple[str, int], np.ndarray],
        videos: dict[str, str],
    ) -> Iterator[tuple[str, dict[str, Any]] | None]:
        """One item per keyframe of the video (see `KeyframeBuilder._generate_examples`)."""
        if video_id not in videos:
            raise common.VideoError("no file in videos/")
        timestamps = sorted(keyframes[video_id])
        with video.open_video(videos[video_id]) as container:
            duration = video.duration_s(container)
            full_movie = duration is not None and duration >= FULL_MOVIE_MIN_S
            offset = 0.0 if full_movie else TRIMMED_START_S
            centres = [ts - offset for ts in timestamps]
            for i, clip in video.read_clips(container, centres, self.builder_config, video_id):
                if clip is None:
                    yield None
                    continue
                ts = timestamps[i]
                boxes, labels = keyframes[video_id][ts]
                yield (
                    f"{video_id},{ts:04d}",
                    common.make_example(
                        self.builder_config,
                        self.stats,
                        video_id=video_id,
                        timestamp=ts,
                        frames=clip.frames,
                        scene_frames=clip.scene_frames,
                        waveform=clip.waveform,
                        has_audio=clip.has_audio,
                        gt_boxes=boxes,
                        gt_labels=labels,
                        proposals=proposals.get((video_id, ts)),
                        detector=self.detector,
                    ),
                )
