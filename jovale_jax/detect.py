"""`launch.py detect`: a trained JoVALE on any video file -> AVA-format detections and drawings.

    python launch.py detect --config configs/synthetic.py --video clip.mp4 --out DIR
        [--checkpoint W] [--boxes boxes.csv | --detector MODEL] [--video_out annotated.mp4]

Keyframes: one every `keyframe_every` seconds from the first frame: t = 0, e, 2e, ... below the
video's duration (at least one). Timestamps in the outputs are these seconds, written as integers
when they are whole (AVA's format) and with up to 3 decimals otherwise.

Inputs of a keyframe: read exactly as the dataset builders read a keyframe
(`jovale_jax.datasets.video.read_clips`: `model.video.num_frames` frames `data.frame_stride` apart
at `data.fps`, centred on the keyframe, edge frames repeated past the video's ends, stored as JPEG
with a short side of at most 256 px; the scene frames of the same window; the window's 16 kHz mono
audio), then resized and normalised by the input pipeline's own `decode_images` (video bilinear,
scene bicubic antialiased), the audio turned into AST's features by `audio_features_numpy`. A file
without an audio track gets zero audio features with `audio_mask` false: the audio modality is
masked, as for such examples in training, and the output says so.

Person proposals, the K = `model.num_proposals` best by score, clipped to the frame:
  * `boxes_csv`: AVA-style rows `video_id, timestamp, x1, y1, x2, y2[, score]` (normalised, no
    header, a missing score is 1). Rows of other videos are ignored; a file without a row for this
    video (its id is the file name without extension) is an error naming the ids it has. A row
    must fall on a keyframe time (to the millisecond); rows that do not are counted in the result.
  * `detector`: a transformers object-detection model (hub id or local folder, loaded with
    `AutoModelForObjectDetection` and `AutoImageProcessor`; the optional `convert` extra), run on
    the keyframe image (the clip frame nearest to the keyframe, as the model sees it); the boxes
    whose predicted label is the class named "person" in its `config.id2label`, with a score of at
    least `detector_threshold`.
  * neither: the documented fallback, one whole-frame box (0, 0, 1, 1) with score 1 per keyframe.
    It is right when one person fills the frame; with several people the labels describe the
    whole scene rather than one actor.

Outputs, in `out_dir`:
  * `detections.csv`: AVA format `video_id, timestamp, x1, y1, x2, y2, action_id, score`, every
    class of every proposal (action ids from the dataset's label map);
  * `keyframes/NNNNN_<t>s.png`: the keyframe image with the boxes and their top-3 labels;
  * `detect.json`: what `detect` returns (the manifest), written last.
Everything is written in a hidden temporary folder beside `out_dir` and renamed to `out_dir` at
the end, so an interrupted or failed run leaves no `out_dir` that looks complete; an existing
`out_dir` is replaced only when it is empty or a previous `detect` output (it holds
`detect.json`). With `video_out`, the video is also written with every frame showing the
detections of its nearest keyframe (H.264, the source's frame rate, no audio).

Bad input (a missing path, a file that is not a video, a boxes CSV for another video, an
`out_dir` holding other files) raises `FileNotFoundError` or `common.BadInputError` (a
`ValueError`) with a one-line message naming the file and the problem, before the model is loaded;
a video that fails to decode later fails the same way, and the staging folder is removed.
`detect` runs in one process, on the devices of the config's mesh.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import fractions
import io
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Self

import av
import jax
import numpy as np
import tensorflow as tf
import tqdm
from PIL import Image

from jovale_jax import audio_features, box_ops, datasets, input_pipeline, train
from jovale_jax.datasets import common, synthetic
from jovale_jax.datasets import video as video_io
from jovale_jax.visualize import LabelScores, draw_detections, top_labels

DEMO_WORKDIR = os.path.join("runs", "demo")  # where `make demo` trains, from the repository root
MANIFEST = "detect.json"
VIDEO_OUT_FORMATS = (".mp4", ".mkv", ".mov")  # containers that take H.264
WHOLE_FRAME = np.array([[0.0, 0.0, 1.0, 1.0, 1.0]], np.float32)  # x1, y1, x2, y2, score
_BOX_COLUMNS = [("video_id", str), ("timestamp", common.parse_finite), *common.BOX_COLUMNS,
                ("score", common.parse_finite)]

Proposer = Callable[[Sequence[int], Sequence[Image.Image]], list[np.ndarray]]


def _one_line(error: BaseException) -> str:
    """The error's message with its line breaks and runs of spaces collapsed."""
    return " ".join(str(error).split())


def format_time(seconds: float) -> str:
    """A keyframe time as written in the outputs: `3`, `2.5`, `0.125`."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


# ----------------------------------------------------------------------------- the video's timeline


def _decoded_duration(path: str) -> float:
    """Seconds of a stream that declares no duration (raw streams): its frames over its rate."""
    with video_io.open_video(path) as container:
        stream = container.streams.video[0]
        if not stream.average_rate:
            raise common.BadInputError(f"{path} declares neither a duration nor a frame rate")
        frames = sum(1 for _ in video_io._decode(container, stream, None, path))
    return frames / float(stream.average_rate)


def keyframe_times(container: av.container.InputContainer, path: str,
                   every: float) -> tuple[float, np.ndarray]:
    """(video time of the first frame, keyframe times in seconds from it: 0, every, ...)."""
    stream = container.streams.video[0]
    origin = 0.0 if stream.start_time is None else float(stream.start_time * stream.time_base)
    duration = video_io.duration_s(container)
    duration = _decoded_duration(path) if duration is None else duration
    count = max(1, math.ceil(duration / every - 1e-9))
    return origin, np.round(every * np.arange(count), 6)


# ----------------------------------------------------------------------------- proposals


def read_boxes_csv(path: str, video_id: str,
                   times: np.ndarray) -> tuple[dict[int, np.ndarray], int]:
    """The rows of a boxes CSV for `video_id` by keyframe index ((N, 5): box, score), and the
    number of its rows at no keyframe time. See the module docstring for the format."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"boxes CSV {path}: no such file")
    keyframe_of = {round(t * 1000): i for i, t in enumerate(times)}
    rows, other_ids, unmatched = collections.defaultdict(list), set(), 0
    for vid, timestamp, *values in common.read_csv(path, _BOX_COLUMNS, optional=1):
        if vid != video_id:
            other_ids.add(vid)
            continue
        index = keyframe_of.get(round(timestamp * 1000))
        if index is None:
            unmatched += 1
        else:
            rows[index].append(values[:4] + [values[4] if len(values) > 4 else 1.0])
    if not rows and not unmatched:
        shown = ", ".join(sorted(other_ids)[:5]) + (", ..." if len(other_ids) > 5 else "")
        raise common.BadInputError(
            f"boxes CSV {path} has no row for video {video_id!r} (the video ids it has: "
            f"{shown or 'none'})")
    if not rows:
        keyframes = ", ".join(map(format_time, times[:3])) + (", ..." if len(times) > 3 else "")
        raise common.BadInputError(
            f"boxes CSV {path}: none of the {unmatched} rows of video {video_id!r} is at a "
            f"keyframe time ({keyframes} s from the first frame)")
    return {i: np.asarray(r, np.float32) for i, r in rows.items()}, unmatched


class PersonDetector:
    """A transformers object-detection model kept to its person class.

    `detector(images)` -> per image, (N, 5) rows x1, y1, x2, y2 (normalised), score.
    """

    def __init__(self, name_or_path: str, *, threshold: float):
        try:
            import torch
            from transformers import AutoImageProcessor, AutoModelForObjectDetection
        except ImportError:
            raise ImportError("--detector needs transformers and torch: "
                              "pip install -e '.[convert]'") from None
        try:
            self.processor = AutoImageProcessor.from_pretrained(name_or_path)
            self.model = AutoModelForObjectDetection.from_pretrained(name_or_path).eval()
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"cannot load the detector {name_or_path}: {_one_line(e)}") \
                from None
        labels = self.model.config.id2label
        persons = [int(i) for i, name in labels.items() if str(name).lower() == "person"]
        if not persons:
            raise common.BadInputError(f"detector {name_or_path} has no class named 'person' "
                                       f"(its classes: {', '.join(map(str, labels.values()))})")
        self.person = persons[0]
        self.threshold = threshold
        self._no_grad = torch.no_grad

    def __call__(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        inputs = self.processor(images=list(images), return_tensors="pt")
        with self._no_grad():
            outputs = self.model(**inputs)
        sizes = [(image.height, image.width) for image in images]
        results = self.processor.post_process_object_detection(
            outputs, threshold=self.threshold, target_sizes=sizes)
        rows = []
        for result, (h, w) in zip(results, sizes):
            person = result["labels"].numpy() == self.person
            boxes = result["boxes"].numpy()[person] / np.array([w, h, w, h], np.float32)
            rows.append(np.concatenate([boxes, result["scores"].numpy()[person, None]], axis=1))
        return rows


def make_proposer(boxes: dict[int, np.ndarray] | None, detector: PersonDetector | None) -> Proposer:
    """(keyframe indices, keyframe images) -> their proposal rows, from the chosen source."""
    if boxes is not None:
        empty = np.zeros((0, 5), np.float32)
        return lambda indices, images: [boxes.get(i, empty) for i in indices]
    if detector is not None:
        return lambda indices, images: detector(images)
    return lambda indices, images: [WHOLE_FRAME] * len(indices)


def top_proposals(rows: np.ndarray, k: int) -> np.ndarray:
    """The `k` best rows by score (stable), boxes clipped to the frame: (n <= k, 4)."""
    rows = np.asarray(rows, np.float32).reshape(-1, 5)
    best = rows[np.argsort(-rows[:, 4], kind="stable")[:k]]
    return box_ops.clip_boxes(best[:, :4])[0]


# ----------------------------------------------------------------------------- model inputs


@dataclasses.dataclass
class Keyframe:
    """One keyframe's result: its image, its proposals and their class scores."""

    index: int
    time: float  # seconds from the first frame
    image: Image.Image  # the clip frame nearest to the keyframe
    boxes: np.ndarray  # (n, 4) normalised
    scores: np.ndarray  # (n, C)


def example_inputs(config, clip: video_io.Clip, boxes: np.ndarray) -> dict[str, np.ndarray]:
    """One keyframe's model inputs (data/SCHEMA.md's batch entries, without the batch axis)."""
    model = config.model
    encoded = {"frames": tf.constant(clip.frames), "scene_frames": tf.constant(clip.scene_frames)}
    out = {k: v.numpy() for k, v in input_pipeline.decode_images(encoded, config).items()}
    if "audio" in model.modalities:
        has_audio = clip.has_audio and clip.waveform.size > 0
        shape = (model.audio.num_frames, model.audio.num_mel_bins)
        out["audio"] = audio_features.audio_features_numpy(
            clip.waveform, num_frames=shape[0], num_mel_bins=shape[1],
            window_type=model.audio.window_type,
        ) if has_audio else np.zeros(shape, np.float32)
        out["audio_mask"] = np.asarray(has_audio)
    k = model.num_proposals
    out["boxes"] = np.zeros((k, 4), np.float32)
    out["boxes"][: len(boxes)] = boxes
    out["box_mask"] = np.arange(k) < len(boxes)
    return out


def stack_padded(examples: Sequence[dict[str, np.ndarray]], size: int) -> dict[str, np.ndarray]:
    """A batch of `size` examples: `examples` then all-zero ones (no real box)."""
    return {key: np.stack([e[key] for e in examples]
                          + [np.zeros_like(examples[0][key])] * (size - len(examples)))
            for key in examples[0]}


def predict_keyframes(
    s: train.Setup,
    container: av.container.InputContainer,
    centres: np.ndarray,
    times: np.ndarray,
    propose: Proposer,
    *,
    batch_size: int,
    name: str,
) -> Iterator[Keyframe]:
    """Reads the keyframes' clips in one pass and yields their results in time order, predicting
    `batch_size` keyframes at a time, with a progress bar. `centres` are the keyframes' video
    times, `times` the same from the first frame. Keyframes that the decoded video does not reach
    are skipped."""
    config = s.config
    spec = common.clip_config(config)
    key = int(np.argmin(np.abs(spec.clip_offsets())))  # the clip frame nearest to the keyframe
    pending: list[tuple[int, video_io.Clip]] = []

    def flush() -> Iterator[Keyframe]:
        indices = [i for i, _ in pending]
        images = [Image.open(io.BytesIO(clip.frames[key])).convert("RGB") for _, clip in pending]
        boxes = [top_proposals(rows, config.model.num_proposals)
                 for rows in propose(indices, images)]
        batch = stack_padded([example_inputs(config, clip, b)
                              for (_, clip), b in zip(pending, boxes)], batch_size)
        scores = np.asarray(s.predict(s.state["params"], s.frozen,
                                      train.global_batch(s.mesh, batch)))
        pending.clear()
        for n, (i, image, b) in enumerate(zip(indices, images, boxes)):
            yield Keyframe(i, float(times[i]), image, b, scores[n, : len(b)])

    with tqdm.tqdm(total=len(centres), desc="detect", unit="keyframe",
                   dynamic_ncols=True) as progress:
        try:
            for i, clip in video_io.read_clips(container, centres, spec, name):
                progress.update(1)
                if clip is not None:
                    pending.append((i, clip))
                if len(pending) == batch_size:
                    yield from flush()
        except common.VideoError as e:
            raise common.BadInputError(_one_line(e)) from None
        if pending:
            yield from flush()


# ----------------------------------------------------------------------------- outputs


def label_map_of(config, path: str | None = None) -> dict[int, str]:
    """{action id: name} of the classes, in model-output order.

    From `path` (an AVA label-map pbtxt) when given; the synthetic set's `CLASSES` for the
    synthetic preset; otherwise the built dataset's `eval/label_map.pbtxt`.
    """
    if path is not None:
        label_map = common.read_label_map(path)
    elif config.dataset == "synthetic":
        label_map, path = dict(synthetic.CLASSES), "jovale_jax.datasets.synthetic.CLASSES"
    else:
        try:
            path = os.path.join(datasets.eval_dir(config), "label_map.pbtxt")
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{_one_line(e)}; or pass the label map (label_map=PBTXT)") \
                from None
        label_map = common.read_label_map(path)
    if len(label_map) != config.model.num_classes:
        raise common.BadInputError(f"label map {path} has {len(label_map)} classes, the model "
                                   f"{config.model.num_classes} (config.model.num_classes)")
    return label_map


def resolve_checkpoint(checkpoint: str | None) -> str:
    """`checkpoint`, or the demo's trained workdir when None; an error saying what to run."""
    if checkpoint is None:
        if os.path.isdir(os.path.join(DEMO_WORKDIR, "checkpoints")):
            try:
                train.resolve_checkpoint(DEMO_WORKDIR)
                return DEMO_WORKDIR
            except FileNotFoundError:
                pass
        raise FileNotFoundError(f"no checkpoint given and no trained demo checkpoint in "
                                f"{DEMO_WORKDIR}/checkpoints: run `make demo` first, or pass "
                                f"--checkpoint WORKDIR")
    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint}: no such file or folder")
    train.resolve_checkpoint(checkpoint)
    return checkpoint


class Staging:
    """A hidden temporary folder beside `out_dir` that becomes `out_dir` on `commit`.

    Refuses an `out_dir` that exists and is neither empty nor a previous `detect` output. On
    leaving without `commit` (an error), the folder and everything in it is removed.
    """

    def __init__(self, out_dir: str):
        self.out_dir = os.path.abspath(out_dir)
        if os.path.exists(self.out_dir) and not (
                os.path.isdir(self.out_dir) and (not os.listdir(self.out_dir) or os.path.exists(
                    os.path.join(self.out_dir, MANIFEST)))):
            raise common.BadInputError(
                f"output folder {out_dir} exists and is not a detect output (no {MANIFEST}): "
                f"choose another folder or remove it")
        self.path = ""

    def __enter__(self) -> Self:
        parent, name = os.path.split(self.out_dir)
        os.makedirs(parent, exist_ok=True)
        self.path = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.path, 0o777 & ~umask)  # mkdtemp's 0700 would stay on out_dir
        return self

    def __exit__(self, *exc_info: object) -> None:
        if os.path.exists(self.path):
            shutil.rmtree(self.path)

    def commit(self, manifest: dict[str, Any]) -> None:
        """Writes the manifest into the folder and renames it to `out_dir` (replacing it)."""
        with open(os.path.join(self.path, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1)
        old = None
        if os.path.exists(self.out_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(self.out_dir)}.old-",
                                   dir=os.path.dirname(self.out_dir))
            os.rename(self.out_dir, os.path.join(old, "previous"))
        os.rename(self.path, self.out_dir)
        if old is not None:
            shutil.rmtree(old)


Shown = tuple[float, np.ndarray, Sequence[LabelScores]]  # keyframe time, boxes, their labels


def write_annotated_video(path: str, out: str, origin: float, shown: Sequence[Shown],
                          every: float, fallback_fps: float) -> int:
    """Writes `path` again (H.264, no audio) with every frame showing the detections of its
    nearest keyframe within `every` / 2; returns the number of frames written."""
    times = np.array([t for t, _, _ in shown])
    nothing: Shown = (0.0, np.zeros((0, 4)), [])
    with video_io.open_video(path) as source, av.open(out, "w") as sink:
        stream_in = source.streams.video[0]
        rate = stream_in.average_rate or fractions.Fraction(fallback_fps).limit_denominator(1001)
        stream, count = None, 0
        for count, frame in enumerate(video_io._decode(source, stream_in, None, path), start=1):
            t = (frame.time if frame.time is not None else (count - 1) / float(rate)) - origin
            nearest = int(np.argmin(np.abs(times - t)))
            _, boxes, labels = shown[nearest] if abs(times[nearest] - t) <= every / 2 else nothing
            image = draw_detections(frame.to_image(), boxes, labels)
            image = image.crop((0, 0, image.width // 2 * 2, image.height // 2 * 2))  # yuv420p
            if stream is None:
                stream = sink.add_stream("libx264", rate=rate,
                                         options={"crf": "20", "preset": "veryfast"})
                stream.width, stream.height, stream.pix_fmt = image.width, image.height, "yuv420p"
            sink.mux(stream.encode(av.VideoFrame.from_image(image)))
        if stream is not None:
            sink.mux(stream.encode())
    return count


def open_video(path: str) -> av.container.InputContainer:
    """The file opened for decoding; a one-line `FileNotFoundError` or `BadInputError` naming
    the file when it is missing or not a video."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video {path}: no such file")
    try:
        return video_io.open_video(path)
    except common.VideoError as e:
        raise common.BadInputError(_one_line(e)) from None


def detect(
    config,
    *,
    video: str,
    out_dir: str,
    checkpoint: str | None = None,
    boxes_csv: str | None = None,
    detector: str | None = None,
    keyframe_every: float = 1.0,
    video_out: str | None = None,
    detector_threshold: float = 0.5,
    label_map: str | None = None,
    batch_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    setup: train.Setup | None = None,
) -> dict[str, Any]:
    """Runs the model of `checkpoint` on the keyframes of `video` (see the module docstring).

    Args:
      config: the preset the checkpoint was trained with.
      video: any file PyAV decodes; its id in the outputs is its name without extension.
      out_dir: the output folder (replaced when it holds a previous detect output).
      checkpoint: a workdir or workdir/checkpoints/STEP; None: the demo's (`runs/demo`), unless
        `setup` is given.
      boxes_csv, detector: the proposal source (at most one; neither: one whole-frame box).
      keyframe_every: seconds between keyframes.
      video_out: also write the annotated video there (.mp4, .mkv or .mov).
      detector_threshold: the detector's minimum person score.
      label_map: an AVA label-map pbtxt (default: see `label_map_of`).
      batch_size: keyframes per forward pass, rounded up to a multiple of the mesh's 'data'
        size (default: `config.eval_batch_size`, at most the number of keyframes).
      devices: the devices of the mesh (default all).
      setup: an already loaded model (`train.load_trained` of this config), used instead of
        loading `checkpoint`: several videos then share one model and its compiled forward pass.

    Returns: the manifest written to `out_dir/detect.json`: paths, keyframes (predicted and
      skipped), detection rows, whether the file has audio and whether the audio modality was
      masked, the proposal source, `notes` (also printed) and the seconds taken.
    """
    start = time.time()
    if not (math.isfinite(keyframe_every) and keyframe_every > 0):
        raise ValueError(f"keyframe_every must be a positive number of seconds: {keyframe_every}")
    if boxes_csv is not None and detector is not None:
        raise ValueError("give boxes_csv or detector, not both")
    if video_out and os.path.splitext(video_out)[1].lower() not in VIDEO_OUT_FORMATS:
        raise ValueError(f"video_out {video_out}: expected a file name ending in "
                         f"{', '.join(VIDEO_OUT_FORMATS)}")
    if config.model.actor.detector_feature_dim:
        raise ValueError("detect has no detector RoI features: use a config with "
                         "model.actor.detector_feature_dim = 0")
    video_id = os.path.splitext(os.path.basename(video))[0]
    with open_video(video) as container:
        origin, times = keyframe_times(container, video, keyframe_every)
        boxes, unused = read_boxes_csv(boxes_csv, video_id, times) if boxes_csv else (None, 0)
        staging = Staging(out_dir)
        classes = label_map_of(config, label_map)
        checkpoint = None if setup else resolve_checkpoint(checkpoint)
        stream = container.streams.video[0]
        has_audio = bool(container.streams.audio)
        audio_masked = not has_audio and "audio" in config.model.modalities
        source = "boxes_csv" if boxes_csv else "detector" if detector else "whole_frame"
        print(f"detect: {video} ({stream.codec_context.width}x{stream.codec_context.height}, "
              f"{len(times)} keyframe(s) every {format_time(keyframe_every)} s, audio track: "
              f"{'yes' if has_audio else 'none'}), proposals: {source}", flush=True)
        notes = [f"{video} has no audio track: the audio modality is masked (audio_mask false)"
                 ] if audio_masked else []
        if unused:
            notes.append(f"{unused} row(s) of {boxes_csv} for {video_id} are at no keyframe "
                         f"time: not used")
        if source == "whole_frame":
            notes.append("no boxes_csv or detector: one whole-frame proposal per keyframe")

        propose = make_proposer(boxes, PersonDetector(detector, threshold=detector_threshold)
                                if detector else None)
        s = setup or train.load_trained(config, checkpoint, devices=devices)
        data = s.mesh.shape["data"]
        size = batch_size or min(config.eval_batch_size, len(times))
        size = -(-size // data) * data
        with staging:
            shown = _write_keyframes(
                staging.path, video_id, classes, predict_keyframes(
                    s, container, origin + times, times, propose, batch_size=size, name=video))
            if len(shown) < len(times):
                notes.append(f"{len(times) - len(shown)} keyframe(s) past the decoded end of "
                             f"{video}: skipped")
            frames = 0
            if video_out:
                frames = _write_video_out(staging, video, video_out, origin, shown,
                                          keyframe_every, config.data.fps)
            manifest = {
                "video": os.path.abspath(video),
                "video_id": video_id,
                "out_dir": staging.out_dir,
                "detections_csv": os.path.join(staging.out_dir, "detections.csv"),
                "keyframes_dir": os.path.join(staging.out_dir, "keyframes"),
                "video_out": os.path.abspath(video_out) if video_out else None,
                "video_out_frames": frames,
                "checkpoint": checkpoint and os.path.abspath(checkpoint),
                "keyframe_every": keyframe_every,
                "keyframes": len(shown),
                "keyframes_skipped": len(times) - len(shown),
                "detection_rows": sum(len(boxes) for _, boxes, _ in shown) * len(classes),
                "proposals": source,
                "boxes_rows_unused": unused,
                "has_audio": has_audio,
                "audio_masked": audio_masked,
                "notes": notes,
                "seconds": round(time.time() - start, 1),
            }
            staging.commit(manifest)
    for note in notes:
        print(note, flush=True)
    print(f"wrote {manifest['detection_rows']} detection rows for {len(shown)} keyframe(s) to "
          f"{staging.out_dir}" + (f" and {video_out}" if video_out else ""), flush=True)
    return manifest


def _write_keyframes(folder: str, video_id: str, classes: dict[int, str],
                     keyframes: Iterator[Keyframe]) -> list[Shown]:
    """Writes detections.csv and keyframes/*.png into `folder` as the results come."""
    os.makedirs(os.path.join(folder, "keyframes"))
    names = list(classes.values())
    shown: list[Shown] = []
    with open(os.path.join(folder, "detections.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        for kf in keyframes:
            timestamp = format_time(kf.time)
            for box, scores in zip(kf.boxes, kf.scores):
                writer.writerows([video_id, timestamp, *(f"{v:.4f}" for v in box), class_id,
                                  f"{score:.6f}"] for class_id, score in zip(classes, scores))
            labels = top_labels(kf.scores, names)
            image = draw_detections(kf.image, kf.boxes, labels, title=f"{video_id} @ {timestamp} s")
            image.save(os.path.join(folder, "keyframes", f"{kf.index:05d}_{timestamp}s.png"))
            shown.append((kf.time, kf.boxes, labels))
    if not shown:
        raise common.BadInputError(f"{video_id}: no keyframe could be read")
    return shown


def _write_video_out(staging: Staging, video: str, video_out: str, origin: float,
                     shown: Sequence[Shown], every: float, fallback_fps: float) -> int:
    """The annotated video, written in the staging folder; moved to `video_out` now when it lies
    outside `out_dir`, else with the folder at commit."""
    target = os.path.abspath(video_out)
    inside = os.path.commonpath([target, staging.out_dir]) == staging.out_dir
    partial = os.path.join(staging.path, os.path.relpath(target, staging.out_dir) if inside
                           else "annotated" + os.path.splitext(target)[1])
    os.makedirs(os.path.dirname(partial), exist_ok=True)
    frames = write_annotated_video(video, partial, origin, shown, every, fallback_fps)
    if not inside:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(partial, target)
    return frames
