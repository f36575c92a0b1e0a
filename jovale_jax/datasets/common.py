"""What every dataset builder shares: the example schema, the clip geometry, input parsing, the
label assignment of one example, the `eval/` files and the build counters.

The schema is data/SCHEMA.md. A builder's `ClipConfig` is derived from the model config
(`clip_config`), so data built for one clip geometry (frames, stride, fps, T_s, K, matching weights)
is never read by a model that expects another: each geometry gets its own TFDS config directory,
named by its sizes and a digest of every field.
"""

import collections
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from PIL import Image

from jovale_jax import assignment, box_ops
from jovale_jax.datasets import safe_pickle
from jovale_jax.models.inputs import query_source

logger = logging.getLogger("jovale_jax.datasets")

JPEG_QUALITY = 90
AUDIO_SAMPLE_RATE = 16000


class BadInputError(ValueError):
    """Raw data that cannot be used as it is (a bad CSV value, or any loss under `strict`)."""


class VideoError(Exception):
    """A video (file or frame folder) that cannot be read at all."""


def one_line(error: BaseException) -> str:
    """The error's message with its line breaks and runs of spaces collapsed."""
    return " ".join(str(error).split())


@dataclasses.dataclass(eq=False)
class ClipConfig(tfds.core.BuilderConfig):
    """The clip geometry and label assignment that one build writes (see `clip_config`)."""

    num_frames: int = 16
    frame_stride: int = 4
    fps: float = 30.0
    scene_frames: int = 4
    num_proposals: int = 15
    num_classes: int = 60
    feature_dim: int = 0
    detector: str = ""  # config.detect.detector when build-data computes the features with it
    match: tuple[float, float, float, float] = (1.0, 5.0, 2.0, 0.0)  # class, l1, giou, iou thr
    split_index: int = 1  # JHMDB's split (1-3); recorded for every dataset, used by JHMDB only
    clip_short_side: int = 224  # video frames: short side at most this (the config's largest)
    scene_size: int = 384  # scene frames: resized to S x S as BLIP's test transform does

    def __repr__(self) -> str:  # TFDS logs the config it is given; the name says it all
        return f"ClipConfig({self.name})"

    @property
    def window(self) -> int:
        """Length of the window around the keyframe, in frames at `fps`."""
        return self.num_frames * self.frame_stride

    def clip_offsets(self) -> np.ndarray:
        """Frame offsets from the keyframe of the clip's frames: -W/2, -W/2 + stride, ..."""
        return -(self.window // 2) + self.frame_stride * np.arange(self.num_frames)

    def scene_offsets(self) -> np.ndarray:
        """Frame offsets of the scene frames: the centres of T_s equal parts of the window."""
        parts = (np.arange(self.scene_frames) + 0.5) * self.window / self.scene_frames
        return -(self.window // 2) + np.floor(parts).astype(np.int64)

    @property
    def file_feature_dim(self) -> int:
        """The feature columns the proposals file must carry: F, unless the detector makes them."""
        return 0 if self.detector else self.feature_dim

    def assignment_kwargs(self) -> dict[str, float]:
        cost_class, cost_l1, cost_giou, iou_threshold = self.match
        return {
            "cost_class": cost_class,
            "cost_l1": cost_l1,
            "cost_giou": cost_giou,
            "iou_threshold": iou_threshold,
        }


def clip_config(config: Any, prefix: str = "") -> ClipConfig:
    """The `ClipConfig` (TFDS builder config) that a model config reads and writes.

    With `model.query_source` "detector" and `config.detect.detector` set, the features are that
    detector's (its name is part of the config); without a detector, the proposals file's columns.
    `prefix` starts its name (the builder's `config_prefix`: JHMDB's split, your own set's name).
    """
    m, d = config.model, config.data
    detector = config.detect.detector if query_source(m) == "detector" else ""
    fields = {
        "num_frames": int(m.video.num_frames),
        "frame_stride": int(d.frame_stride),
        "fps": float(d.fps),
        "scene_frames": int(m.scene.num_frames),
        "num_proposals": int(m.num_proposals),
        "num_classes": int(m.num_classes),
        "feature_dim": int(m.actor.detector_feature_dim),
        "match": tuple(float(v) for v in assignment.assignment_kwargs(config).values()),
        "split_index": int(d.get("split_index", 1)),
        "clip_short_side": int(max(d.short_side, d.eval_short_side)),
        "scene_size": int(m.scene.image_size),
        **({"detector": str(detector)} if detector else {}),  # absent: the digests stay as before
    }
    description = json.dumps(fields, sort_keys=True)
    digest = hashlib.sha1(description.encode()).hexdigest()[:8]
    name = (
        f"{prefix}f{fields['num_frames']}x{fields['frame_stride']}_s{fields['scene_frames']}"
        f"_k{fields['num_proposals']}_{digest}"
    )
    return ClipConfig(name=name, description=description, **fields)


def features(spec: ClipConfig) -> tfds.features.FeaturesDict:
    """The TFDS features of one example (data/SCHEMA.md).

    `proposal_features` exists only when F > 0: TF's example parser dies of a division by zero
    (SIGFPE) on a zero-width tensor feature.
    """
    c, f = spec.num_classes, spec.feature_dim
    jpeg = tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
    optional = {"proposal_features": tfds.features.Tensor(shape=(None, f), dtype=np.float32)}
    return tfds.features.FeaturesDict(
        {
            "video_id": tfds.features.Text(),
            "timestamp": tfds.features.Scalar(np.int64),
            "frames": tfds.features.Sequence(jpeg),
            "scene_frames": tfds.features.Sequence(jpeg),
            "waveform": tfds.features.Tensor(
                shape=(None,), dtype=np.int16, encoding=tfds.features.Encoding.BYTES
            ),
            "has_audio": tfds.features.Scalar(np.bool_),
            "gt_boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
            "gt_labels": tfds.features.Tensor(shape=(None, c), dtype=np.int8),
            "proposals": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
            "proposal_scores": tfds.features.Tensor(shape=(None,), dtype=np.float32),
            "targets": tfds.features.Tensor(shape=(None, c), dtype=np.int8),
            **(optional if f else {}),
        }
    )


@dataclasses.dataclass
class BuildStats:
    """What a build wrote and what it could not use; `summary()` is what `build_dataset` returns."""

    strict: bool = False
    examples: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped_videos: list[str] = dataclasses.field(default_factory=list)
    truncated_videos: list[str] = dataclasses.field(default_factory=list)
    keyframes_lost: int = 0
    rows_dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    boxes_clipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def video_lost(self, video_id: str, reason: str, keyframes: int, *, truncated: bool) -> None:
        """Records (and logs) a video skipped, or truncated, with the keyframes it lost."""
        what = "truncated" if truncated else "skipped"
        message = f"video {video_id}: {reason}; {what}, {keyframes} keyframe(s) not written"
        if self.strict:
            raise BadInputError(message + " (strict build)")
        logger.warning(message)
        (self.truncated_videos if truncated else self.skipped_videos).append(video_id)
        self.keyframes_lost += keyframes

    def summary(self) -> dict[str, Any]:
        return {
            "examples": dict(self.examples),
            "videos_skipped": len(self.skipped_videos),
            "videos_truncated": len(self.truncated_videos),
            "skipped_video_ids": list(self.skipped_videos),
            "truncated_video_ids": list(self.truncated_videos),
            "keyframes_lost": self.keyframes_lost,
            "rows_dropped": dict(self.rows_dropped),
            "boxes_clipped": dict(self.boxes_clipped),
        }


class KeyframeBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the dataset builders: the schema's features, split selection, the build counters,
    and the dataset's facts that the rest of the code reads from here (class attributes below).

    Built with a `ClipConfig` (`config=clip_config(model_config)`); `strict` makes any video lost an
    error; `splits` restricts the build to some of `SPLITS`; `detector` computes the proposals'
    features when the config names one (`make_example`); `label_map` names the label-map file
    of the raw folder where the layout has one (`config.data.label_map`). `stats` holds the
    counts afterwards.
    """

    VERSION = tfds.core.Version("1.0.0")
    SPLITS: tuple[str, ...] = ()
    METRIC = "ava"  # evaluation protocol: "ava" (evaluation/ava.py) | "frame_map" (VOC frame mAP)
    CLASS_GROUPS: ClassVar[dict[str, tuple[int, ...]]] = {}  # {group: label-map ids} to average
    CLASSES: ClassVar[dict[int, str] | None] = None  # a fixed label map; None: the built one's
    RAW_FILES = "the raw files"  # what the raw folder holds (errors name it)
    PRESET = ""  # configs/<PRESET>.py: `build-data --dataset NAME` without --config
    PRIOR_BASELINE = False  # small enough to score the class-prior baseline (ablate's last row)
    # TFDS 4.9.10 finds a builder's source file (for a checksums file these builders do not have)
    # through `importlib_resources`, which it does not install on Python >= 3.9
    # (tensorflow/datasets#11212). Without a code path it skips the look-up.
    code_path = None

    def __init__(
        self,
        *,
        strict: bool = False,
        splits: Sequence[str] | None = None,
        detector: Callable | None = None,
        label_map: str = "",
        **kwargs: Any,
    ):
        self.stats = BuildStats(strict=strict)
        self.detector = detector
        self.splits = tuple(splits or self.SPLITS)
        self.label_map_file = label_map
        super().__init__(**kwargs)

    @classmethod
    def config_prefix(cls, config: Any) -> str:
        """What starts the TFDS config's name before the clip geometry (`clip_config`)."""
        return ""

    @classmethod
    def prepare_raw(cls, raw_dir: str | None, data_dir: str) -> str | None:
        """The raw folder to build from, made ready first where the builder makes its own."""
        return raw_dir

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=self.__doc__, features=features(self.builder_config)
        )

    # TFDS prints "Downloading and preparing dataset ..." though these builders download nothing.
    def _log_download_bytes(self) -> None:
        print(f"building {self.name} into {self.data_dir}", flush=True)

    def _log_download_done(self) -> None:
        print(f"built {self.name} in {self.data_dir}", flush=True)

    def check_classes(self, label_map: dict[int, str], source: str) -> None:
        if len(label_map) != self.builder_config.num_classes:
            raise BadInputError(
                f"{source} lists {len(label_map)} classes but the config's model.num_classes is "
                f"{self.builder_config.num_classes}"
            )

    def _generate_examples(
        self,
        split: str,
        keyframes: dict[str, int],
        examples_of: Callable[[str], Iterator[tuple[str, dict[str, Any]] | None]],
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """The (key, example) pairs of a split, video by video, with a progress bar and the counts.

        `keyframes` gives each video's number of keyframes; `examples_of(video_id)` yields one item
        per keyframe: a (key, example) pair, or None for a keyframe that its truncated video does
        not reach. It raises `VideoError` for a video that cannot be read at all.
        """
        stats = self.stats
        keyframes = {video_id: count for video_id, count in keyframes.items() if count}
        with tqdm.tqdm(
            total=sum(keyframes.values()),
            desc=f"{self.name}/{split}",
            unit="keyframe",
            dynamic_ncols=True,
        ) as bar:
            for n, (video_id, count) in enumerate(keyframes.items(), start=1):
                bar.set_postfix_str(f"videos {n}/{len(keyframes)}, written {stats.examples[split]}")
                done = lost = 0
                try:
                    for item in examples_of(video_id):
                        done += 1
                        bar.update(1)
                        if item is None:
                            lost += 1
                        else:
                            stats.examples[split] += 1
                            yield item
                except VideoError as e:
                    bar.update(count - done)
                    stats.video_lost(video_id, str(e), count - done, truncated=False)
                    continue
                if lost:
                    stats.video_lost(
                        video_id,
                        f"the decoded video ends before {lost} keyframe(s)",
                        lost,
                        truncated=True,
                    )


# ----------------------------------------------------------------------------- parsing raw files


def parse_finite(value: str) -> float:
    """float(value), refusing NaN and infinities."""
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(value)
    return x


Column = tuple[str, Callable[[str], Any]]
BOX_COLUMNS: list[Column] = [(c, parse_finite) for c in ("x1", "y1", "x2", "y2")]


def read_csv(path: str, columns: Sequence[Column], optional: int = 0) -> Iterator[tuple]:
    """Yields the typed rows of a header-less CSV; the last `optional` columns may be absent.

    A row that does not parse raises `BadInputError` naming file:line, the column and the value.
    """
    with open(path, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            if not len(columns) - optional <= len(row) <= len(columns):
                raise BadInputError(
                    f"{path}:{lineno}: expected {len(columns) - optional} to {len(columns)} "
                    f"columns, got {len(row)}: {','.join(row)!r}"
                )
            values = []
            for (name, parse), value in zip(columns, row):
                try:
                    values.append(parse(value.strip()))
                except ValueError:
                    raise BadInputError(
                        f"{path}:{lineno}: cannot parse {name} {value!r} (row {','.join(row)!r})"
                    ) from None
            yield tuple(values)


def write_label_map(path: str, label_map: dict[int, str]) -> None:
    """Writes {id: name} in the official AVA pbtxt format (what the ActivityNet evaluator reads)."""
    with open(path, "w") as f:
        f.writelines(
            f'item {{\n  name: "{name}"\n  id: {class_id}\n}}\n'
            for class_id, name in label_map.items()
        )


def read_proposals(path: str, feature_dim: int) -> dict[tuple[str, int], np.ndarray]:
    """Detector boxes per keyframe: {(video_id, timestamp): (N, 5 + F) rows x1, y1, x2, y2, score,
    features}, normalised. F > 0 (`ClipConfig.file_feature_dim`): the file must carry the features.

    `.pkl`: the dense-proposals dict of SlowFast / MMAction2, keys "video_id,timestamp" (any zero
    padding), values (N, 5 + F) arrays. `.csv`: AVA-style rows video_id, timestamp, x1, y1, x2, y2,
    (ignored), score, as SlowFast's predicted-box files (no features).
    """
    width = 5 + feature_dim
    if path.endswith(".csv"):
        if feature_dim:
            raise BadInputError(f"{path}: a CSV carries no detector features; {_NO_FEATURES}")
        columns = [
            ("video_id", str),
            ("timestamp", int),
            *BOX_COLUMNS,
            ("action", str),
            ("score", parse_finite),
        ]
        rows = collections.defaultdict(list)
        for vid, ts, *box, _, score in read_csv(path, columns):
            rows[vid, ts].append([*box, score])
        return {k: np.asarray(v, np.float32) for k, v in rows.items()}
    raw = safe_pickle.load(path)
    proposals = {}
    for key, value in raw.items():
        vid, _, ts = str(key).rpartition(",")
        array = np.asarray(value, np.float32)
        if array.size == 0:
            array = array.reshape(0, width)
        if feature_dim and array.ndim == 2 and array.shape[1] == 5:
            raise BadInputError(
                f"{path}: entry {key!r} has no proposal_features (rows of 5 values, not 5 + "
                f"{feature_dim}); {_NO_FEATURES}"
            )
        if not vid or not ts.strip().isdigit() or array.ndim != 2 or array.shape[1] != width:
            raise BadInputError(
                f"{path}: entry {key!r} with shape {np.shape(value)}: expected key "
                f"'video_id,timestamp' and rows of {width} values (x1, y1, x2, y2, score"
                f"{', features' if feature_dim else ''})"
            )
        proposals[vid, int(ts)] = array
    return proposals


_NO_FEATURES = (
    "model.query_source 'detector' needs model.actor.detector_feature_dim features per box: "
    "store them after the score, or set config.detect.detector to compute them"
)


# ----------------------------------------------------------------------------- one example


def encode_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def make_example(
    spec: ClipConfig,
    stats: BuildStats,
    *,
    video_id: str,
    timestamp: int,
    frames: list[bytes],
    scene_frames: list[bytes],
    waveform: np.ndarray,
    has_audio: bool,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    proposals: np.ndarray | None,
    detector: Callable | None = None,
) -> dict[str, Any]:
    """One keyframe's example: top-K proposals by score, clipped, with their Hungarian targets.

    `proposals` are (N, 5 + `spec.file_feature_dim`) detector rows or None (the keyframe is kept
    with no proposals). With `spec.detector`, `detector`
    (`datasets.detector_features.DetectorFeatures`) computes the features of the kept boxes on
    the keyframe, the clip frame nearest to it.
    """
    width = 5 + spec.file_feature_dim
    rows = np.zeros((0, width), np.float32) if proposals is None else proposals
    rows = rows[np.argsort(-rows[:, 4], kind="stable")[: spec.num_proposals]]
    boxes, clipped = box_ops.clip_boxes(rows[:, :4])
    stats.boxes_clipped["proposals"] += clipped
    scores = rows[:, 4].astype(np.float32)
    gt_labels = np.asarray(gt_labels, np.int8).reshape(-1, spec.num_classes)
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    example = {
        "video_id": video_id,
        "timestamp": timestamp,
        "frames": frames,
        "scene_frames": scene_frames,
        "waveform": np.asarray(waveform, np.int16),
        "has_audio": has_audio,
        "gt_boxes": gt_boxes,
        "gt_labels": gt_labels,
        "proposals": boxes,
        "proposal_scores": scores,
        "targets": assignment.assign_targets(
            boxes, scores, gt_boxes, gt_labels, **spec.assignment_kwargs()
        ),
    }
    if spec.detector:
        keyframe = Image.open(io.BytesIO(frames[int(np.argmin(np.abs(spec.clip_offsets())))]))
        (example["proposal_features"],) = detector([keyframe.convert("RGB")], [boxes])
    elif spec.feature_dim:
        example["proposal_features"] = rows[:, 5:].astype(np.float32)
    return example


# ----------------------------------------------------------------------------- eval/ folder

GtRow = tuple[str, int, float, float, float, float, int, int]


def write_eval_files(
    eval_dir: str,
    split: str,
    label_map: dict[int, str],
    groundtruth: Sequence[GtRow],
    excluded: Sequence[tuple[str, int]],
) -> None:
    """Writes label_map.pbtxt, {split}_groundtruth.csv, {split}_excluded_timestamps.csv (AVA)."""
    os.makedirs(eval_dir, exist_ok=True)
    write_label_map(os.path.join(eval_dir, "label_map.pbtxt"), label_map)
    with open(os.path.join(eval_dir, f"{split}_groundtruth.csv"), "w") as f:
        f.writelines(
            f"{vid},{ts:04d},{x1:.6f},{y1:.6f},{x2:.6f},{y2:.6f},{action},{person}\n"
            for vid, ts, x1, y1, x2, y2, action, person in groundtruth
        )
    with open(os.path.join(eval_dir, f"{split}_excluded_timestamps.csv"), "w") as f:
        f.writelines(f"{vid},{ts:04d}\n" for vid, ts in excluded)
