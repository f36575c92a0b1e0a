"""Reads the clips of many keyframes from one video in a single decoding pass (PyAV).

For a keyframe at video time t, the clip's frames are the decoded frames nearest to
t + o / fps for the clip offsets o of the `ClipConfig` (and likewise the scene frames), so any
source frame rate is resampled to the config's `data.fps`; times before the first frame or after
the last take the edge frame. The audio is resampled to 16 kHz mono int16 and cut to the window
[t - W / (2 fps), t + W / (2 fps)), zero-padded where the track does not cover it.

Clip frames are stored with their short side at most the config's largest (`clip_short_side`),
scene frames already at BLIP's S x S, so the input pipeline decodes no more pixels than it uses
and, for most frames, resizes nothing. Frames are JPEG-encoded as they are chosen (each decoded
frame at most once per kind) and a keyframe is yielded as soon as its window has been decoded, so
memory stays bounded for 15-minute videos.
"""

import logging
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import av
import numpy as np
from PIL import Image

from jovale_jax.datasets import common

logger = logging.getLogger("jovale_jax.datasets")

_SEEK_MARGIN_S = 2.0  # seek this far before the first window (full-length AVA movies)


class Clip(NamedTuple):
    """What one keyframe takes from its video."""

    frames: list[bytes]
    scene_frames: list[bytes]
    waveform: np.ndarray  # int16, empty without an audio track
    has_audio: bool


def open_video(path: str) -> av.container.InputContainer:
    """Opens a media file for decoding; raises `common.VideoError` when it cannot be read."""
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError) as e:
        raise common.VideoError(f"cannot open {path}: {e}") from None
    if not container.streams.video:
        container.close()
        raise common.VideoError(f"{path} has no video stream")
    return container


def duration_s(container: av.container.InputContainer) -> float | None:
    """The container's declared duration in seconds, when it declares one."""
    return None if container.duration is None else container.duration / av.time_base


class _Samples:
    """A growable int16 buffer of the resampled audio track."""

    def __init__(self) -> None:
        self.data = np.zeros(1 << 16, np.int16)
        self.size = 0
        self.start: float | None = None  # time of the first sample

    def append(self, samples: np.ndarray) -> None:
        if self.size + len(samples) > len(self.data):
            self.data = np.resize(self.data, 2 * (self.size + len(samples)))
        self.data[self.size : self.size + len(samples)] = samples
        self.size += len(samples)

    def end(self) -> float:
        return -np.inf if self.start is None else self.start + self.size / common.AUDIO_SAMPLE_RATE

    def window(self, start: float, length: int) -> np.ndarray:
        out = np.zeros(length, np.int16)
        if self.start is None:
            return out
        first = round((start - self.start) * common.AUDIO_SAMPLE_RATE)
        lo, hi = max(first, 0), min(first + length, self.size)
        if hi > lo:
            out[lo - first : hi - first] = self.data[lo:hi]
        return out


class _Frame(NamedTuple):
    number: int
    time: float
    frame: av.VideoFrame


class _Requests:
    """Every frame that the keyframes need (time and kind), resolved in time order.

    `slots[k]` are the positions of keyframe k's frames and scene frames in the time-sorted list.
    """

    def __init__(self, centres: np.ndarray, spec: common.ClipConfig) -> None:
        period = 1.0 / spec.fps
        times = np.concatenate(
            [
                centres[:, None] + spec.clip_offsets() * period,
                centres[:, None] + spec.scene_offsets() * period,
            ],
            axis=1,
        )
        kinds = [0] * spec.num_frames + [1] * spec.scene_frames  # clip or scene frame
        by_time = np.argsort(times.ravel(), kind="stable")
        self.slots = np.empty(times.size, np.int64)
        self.slots[by_time] = np.arange(times.size)
        self.slots = self.slots.reshape(times.shape)
        self.times = times.ravel()[by_time]
        self.kinds = np.broadcast_to(np.array(kinds), times.shape).ravel()[by_time]
        self._spec = spec
        self.jpegs: list[bytes | None] = [None] * len(self.times)
        self.next = 0  # requests before it are resolved
        self.freed = 0  # requests before it are no longer needed
        self._encoded: dict[tuple[int, int], bytes] = {}
        self._reformatter = av.video.reformatter.VideoReformatter()  # one scaler for all frames

    def _jpeg(self, frame: av.VideoFrame, kind: int) -> bytes:
        """A clip frame (kind 0) with its short side at most `clip_short_side`, or a scene frame
        (kind 1) resized to `scene_size` squared by PIL's bicubic, as BLIP's test transform."""
        if kind == 1:
            size = self._spec.scene_size
            image = self._reformatter.reformat(frame, format="rgb24").to_image()
            return common.encode_jpeg(image.resize((size, size), Image.BICUBIC))
        scale = min(1.0, self._spec.clip_short_side / min(frame.width, frame.height))
        rgb = self._reformatter.reformat(
            frame,
            format="rgb24",
            width=round(frame.width * scale),
            height=round(frame.height * scale),
        )
        return common.encode_jpeg(rgb.to_image())

    def resolve_until(self, prev: _Frame | None, cur: _Frame, until: float) -> None:
        """Resolves the requests at times <= until to the nearer of two consecutive frames."""
        while self.next < len(self.times) and self.times[self.next] <= until:
            t = self.times[self.next]
            pick = cur if prev is None or cur.time - t < t - prev.time else prev
            key = (pick.number, int(self.kinds[self.next]))
            if key not in self._encoded:
                self._encoded[key] = self._jpeg(pick.frame, key[1])
            self.jpegs[self.next] = self._encoded[key]
            self.next += 1
        for key in [key for key in self._encoded if key[0] < cur.number]:
            del self._encoded[key]  # later requests fall on `cur` or after

    def take(self, k: int) -> list[bytes]:
        """Keyframe k's JPEGs; frees what no later keyframe needs."""
        jpegs = [self.jpegs[s] for s in self.slots[k]]
        keep_from = self.slots[k + 1].min() if k + 1 < len(self.slots) else len(self.times)
        for s in range(self.freed, keep_from):
            self.jpegs[s] = None
        self.freed = max(self.freed, keep_from)
        return jpegs


def read_clips(
    container: av.container.InputContainer,
    centres: Sequence[float],
    spec: common.ClipConfig,
    name: str,
) -> Iterator[tuple[int, Clip | None]]:
    """Yields (i, clip) for every keyframe centre (video seconds, not empty), in time order.

    The clip is None when the decoded video does not reach the centre itself (truncated file or an
    annotation past the video's end). Raises `common.VideoError` when no video frame decodes at
    all. A decoding error part-way is logged and ends the video there.
    """
    period = 1.0 / spec.fps
    order = np.argsort(np.asarray(centres, np.float64), kind="stable")
    centres = np.asarray(centres, np.float64)[order]
    requests = _Requests(centres, spec)
    audio_length = round(spec.window * period * common.AUDIO_SAMPLE_RATE)
    audio_starts = centres - spec.window * period / 2
    audio_ends = audio_starts + spec.window * period

    video = container.streams.video[0]
    video.thread_type = "AUTO"
    audio = container.streams.audio[0] if container.streams.audio else None
    resampler = av.AudioResampler(format="s16", layout="mono", rate=common.AUDIO_SAMPLE_RATE)
    samples = _Samples()
    if requests.times[0] > _SEEK_MARGIN_S:
        container.seek(int((requests.times[0] - _SEEK_MARGIN_S) * av.time_base))

    def clip(k: int, has_audio: bool) -> Clip:
        jpegs = requests.take(k)
        waveform = (
            samples.window(audio_starts[k], audio_length) if has_audio else np.zeros(0, np.int16)
        )
        return Clip(jpegs[: spec.num_frames], jpegs[spec.num_frames :], waveform, has_audio)

    k = 0  # the next keyframe to yield
    prev = first = None
    for frame in decode_frames(container, video, audio, name):
        if isinstance(frame, av.AudioFrame):
            if samples.start is None and frame.time is not None:
                samples.start = frame.time
            for out in resampler.resample(frame):
                samples.append(out.to_ndarray().reshape(-1))
        else:
            number = 0 if prev is None else prev.number + 1
            t = frame.time if frame.time is not None else number / float(video.average_rate)
            cur = _Frame(number, t, frame)
            first = first or cur
            requests.resolve_until(prev, cur, cur.time)
            prev = cur
        # Yield every keyframe whose frames and audio are all in.
        while (
            k < len(centres)
            and requests.slots[k].max() < requests.next
            and (audio is None or samples.end() >= audio_ends[k])
        ):
            yield (
                int(order[k]),
                (clip(k, audio is not None) if centres[k] >= first.time - period else None),
            )
            k += 1
    if prev is None:
        raise common.VideoError(f"no decodable video frame in {container.name}")
    if audio is not None:
        for out in resampler.resample(None):
            samples.append(out.to_ndarray().reshape(-1))
    # Past the last frame: the remaining requests take it (edge repetition).
    requests.resolve_until(prev, prev, np.inf)
    for rest in range(k, len(centres)):
        covered = first.time - period <= centres[rest] <= prev.time + period
        yield int(order[rest]), clip(rest, samples.size > 0) if covered else None


def decode_frames(
    container: av.container.InputContainer,
    video: av.video.stream.VideoStream,
    audio: av.audio.stream.AudioStream | None,
    name: str,
) -> Iterator[av.VideoFrame | av.AudioFrame]:
    """The decoded frames of the video stream (and of the audio stream, when given), interleaved
    in demuxing order. A decoding error part-way is logged (naming the video `name`) and ends
    the stream there."""
    streams = [video] if audio is None else [video, audio]
    try:
        for packet in container.demux(*streams):
            yield from packet.decode()
    except av.FFmpegError as e:
        logger.warning("video %s: decoding stopped: %s", name, e)
