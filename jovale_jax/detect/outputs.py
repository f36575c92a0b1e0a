"""What `detect` writes: the staging folder that becomes `out_dir`, the detections CSV and
keyframe pictures as results come, the annotated video, and the class names they use."""

from __future__ import annotations

import dataclasses
import fractions
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Self

import av
import numpy as np
from PIL import Image

from jovale_jax import datasets
from jovale_jax.datasets import common
from jovale_jax.datasets import video as video_io
from jovale_jax.evaluation.ava import read_labelmap
from jovale_jax.evaluation.detections_csv import detection_rows, format_time
from jovale_jax.visualize import LabelScores, draw_detections, top_labels

MANIFEST = "detect.json"
VIDEO_OUT_FORMATS = (".mp4", ".mkv", ".mov")  # containers that take H.264
Shown = tuple[float, np.ndarray, Sequence[LabelScores]]  # keyframe time, boxes, their labels


@dataclasses.dataclass
class Keyframe:
    """One keyframe's result: its image, its proposals and their class scores."""

    index: int
    time: float  # seconds from the first frame
    image: Image.Image  # the clip frame nearest to the keyframe
    boxes: np.ndarray  # (n, 4) normalised
    scores: np.ndarray  # (n, C)


def label_map_of(config, path: str | None = None) -> dict[int, str]:
    """{action id: name} of the classes, in model-output order.

    From `path` (an AVA label-map pbtxt) when given; otherwise the dataset's
    (`datasets.label_map`: its builder's fixed classes, or the built dataset's label map).
    """
    if path is not None:
        label_map = read_labelmap(path)
    else:
        try:
            label_map, path = datasets.label_map(config)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"{common.one_line(e)}; or pass the label map (label_map=PBTXT)"
            ) from None
    if len(label_map) != config.model.num_classes:
        raise common.BadInputError(
            f"label map {path} has {len(label_map)} classes, the model "
            f"{config.model.num_classes} (config.model.num_classes)"
        )
    return label_map


class Staging:
    """A hidden temporary folder beside `out_dir` that becomes `out_dir` on `commit`.

    Refuses an `out_dir` that exists and is neither empty nor a previous `detect` output. On
    leaving without `commit` (an error), the folder and everything in it is removed.
    """

    def __init__(self, out_dir: str):
        self.out_dir = os.path.abspath(out_dir)
        if os.path.exists(self.out_dir) and not (
            os.path.isdir(self.out_dir)
            and (
                not os.listdir(self.out_dir) or os.path.exists(os.path.join(self.out_dir, MANIFEST))
            )
        ):
            raise common.BadInputError(
                f"output folder {out_dir} exists and is not a detect output (no {MANIFEST}): "
                f"choose another folder or remove it"
            )
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
            old = tempfile.mkdtemp(
                prefix=f".{os.path.basename(self.out_dir)}.old-", dir=os.path.dirname(self.out_dir)
            )
            os.rename(self.out_dir, os.path.join(old, "previous"))
        os.rename(self.path, self.out_dir)
        if old is not None:
            shutil.rmtree(old)


def write_annotated_video(
    path: str, out: str, origin: float, shown: Sequence[Shown], every: float, fallback_fps: float
) -> int:
    """Writes `path` again (H.264, and the source's first audio track as AAC) with every frame
    showing the detections of its nearest keyframe within `every` / 2; returns the number of
    video frames written."""
    times = np.array([t for t, _, _ in shown])
    nothing: Shown = (0.0, np.zeros((0, 4)), [])
    with video_io.open_video(path) as source, av.open(out, "w") as sink:
        stream_in = source.streams.video[0]
        audio_in = source.streams.audio[0] if source.streams.audio else None
        rate = stream_in.average_rate or fractions.Fraction(fallback_fps).limit_denominator(1001)
        stream, audio, pending, count = None, None, [], 0
        for frame in video_io.decode_frames(source, stream_in, audio_in, path):
            if isinstance(frame, av.AudioFrame):
                frame.pts = None  # the encoder numbers the samples
                if audio is None:  # the header waits for the video stream: keep it until then
                    pending.append(frame)
                else:
                    sink.mux(audio.encode(frame))
                continue
            count += 1
            t = (frame.time if frame.time is not None else (count - 1) / float(rate)) - origin
            nearest = int(np.argmin(np.abs(times - t)))
            _, boxes, labels = shown[nearest] if abs(times[nearest] - t) <= every / 2 else nothing
            image = draw_detections(frame.to_image(), boxes, labels)
            image = image.crop((0, 0, image.width // 2 * 2, image.height // 2 * 2))  # yuv420p
            if stream is None:
                stream = sink.add_stream(
                    "libx264", rate=rate, options={"crf": "20", "preset": "veryfast"}
                )
                stream.width, stream.height, stream.pix_fmt = image.width, image.height, "yuv420p"
                if audio_in is not None:
                    layout = "mono" if audio_in.channels == 1 else "stereo"  # more: downmixed
                    audio = sink.add_stream("aac", rate=audio_in.rate, layout=layout)
                    for early in pending:
                        sink.mux(audio.encode(early))
            sink.mux(stream.encode(av.VideoFrame.from_image(image)))
        for s in (stream, audio):
            if s is not None:
                sink.mux(s.encode())
    return count


def write_keyframes(
    folder: str,
    video_id: str,
    classes: dict[int, str],
    keyframes: Iterator[Keyframe],
    video: str | None = None,
    origin: float = 0.0,
) -> list[Shown]:
    """Writes detections.csv and keyframes/*.png into `folder` as the results come. With `video`,
    each PNG is drawn on the video's own frame at the keyframe time (its resolution; enlarged to
    a short side of 256 when smaller, for the labels), else on the model's clip frame."""
    os.makedirs(os.path.join(folder, "keyframes"))
    names = list(classes.values())
    shown: list[Shown] = []
    pictures = []  # (png path, time, clip frame, boxes, labels, title)
    with open(os.path.join(folder, "detections.csv"), "wb") as f:
        for kf in keyframes:
            timestamp = format_time(kf.time)
            f.write(
                detection_rows(
                    [video_id] * len(kf.boxes),
                    [kf.time] * len(kf.boxes),
                    kf.boxes,
                    kf.scores,
                    list(classes),
                )[0]
            )
            labels = top_labels(kf.scores, names)
            png = os.path.join(folder, "keyframes", f"{kf.index:05d}_{timestamp}s.png")
            title = f"{video_id} @ {timestamp} s"
            pictures.append((png, kf.time, kf.image, kf.boxes, labels, title))
            shown.append((kf.time, kf.boxes, labels))
    if not shown:
        raise common.BadInputError(f"{video_id}: no keyframe could be read")
    left = set(range(len(pictures)))

    def save(i: int, image: Image.Image) -> None:
        png, _, _, boxes, labels, title = pictures[i]
        draw_detections(image, boxes, labels, title=title).save(png)
        left.discard(i)

    if video:
        for_frames_at(video, origin, [p[1] for p in pictures], save)
    for i in sorted(left):  # past the decoded end, or no video: the clip frame
        save(i, pictures[i][2])
    return shown


def for_frames_at(
    path: str, origin: float, times: Sequence[float], use: Callable[[int, Image.Image], None]
) -> None:
    """``use(i, frame)`` with the first decoded frame of `path` at or after `times[i]` (seconds
    from `origin`, less half a frame), at the video's resolution; one decoding pass, stopping
    after the last time."""
    order = np.argsort(times, kind="stable")
    with video_io.open_video(path) as source:
        stream = source.streams.video[0]
        half = 0.5 / float(stream.average_rate or 25)
        j = 0
        for count, frame in enumerate(video_io.decode_frames(source, stream, None, path)):
            t = (frame.time if frame.time is not None else count * 2 * half) - origin
            while j < len(order) and t >= times[order[j]] - half:
                use(int(order[j]), frame.to_image())
                j += 1
            if j == len(order):
                break


def write_video_out(
    staging: Staging,
    video: str,
    video_out: str,
    origin: float,
    shown: Sequence[Shown],
    every: float,
    fallback_fps: float,
) -> int:
    """The annotated video, written in the staging folder; moved to `video_out` now when it lies
    outside `out_dir`, else with the folder at commit."""
    target = os.path.abspath(video_out)
    inside = os.path.commonpath([target, staging.out_dir]) == staging.out_dir
    partial = os.path.join(
        staging.path,
        os.path.relpath(target, staging.out_dir)
        if inside
        else "annotated" + os.path.splitext(target)[1],
    )
    os.makedirs(os.path.dirname(partial), exist_ok=True)
    frames = write_annotated_video(video, partial, origin, shown, every, fallback_fps)
    if not inside:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(partial, target)
    return frames
