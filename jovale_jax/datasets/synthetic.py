"""The synthetic audio-visual action set (SPEC.md section 5), generated with fixed seeds.

`generate_raw` writes the raw AVA v2.2 layout (mp4 videos with H.264 video and 16 kHz AAC audio,
label CSVs, label-map pbtxt, excluded timestamps, dense-proposals pickles) and `SyntheticBuilder`
builds it with the AVA builder itself, so the set goes through the same builder, pipeline, training
and evaluation as AVA.

Each video is 12 s of 128 x 96 frames at 8 fps on a plain or a finely tiled background, with a
yellow disc that is either the striped ball or a plain decoy (the four combinations in turn, so the
scene classes are balanced), maybe a distractor square of another colour, and 1-6 actors (a
textured body and head of a random colour) standing on the ground. Every second s of the video
(the window s - 0.5 to s + 0.5 s) each actor stands still, walks horizontally or jumps, and the
soundtrack (a faint hiss) holds a tone, a noise burst or nothing. Keyframes are the seconds 2-11 of
each video (AVA timestamps 902-911: the video is taken as AVA's 15-minute cut starting at 900 s)
and the window of a keyframe is exactly its second, as in the synthetic config (8 frames at 8 fps).

Classes (label-map id: name, group; an actor may have several):
  1 walk         motion: the actor moves horizontally across the frame
  2 jump         motion: the actor bounces up and down
  3 hear_tone    sound: the actor stands still while a tone sounds (looks like any idle actor;
                 every actor standing still in that second has it)
  4 hear_noise   sound: the actor stands still while a noise burst sounds
  5 tiled_room   scene: the background is tiled in 1 px columns (the place, not the actor)
  6 near_ball    scene: the yellow disc in the frame is the ball, striped in 1 px columns (an
                 object, not on the actor); the decoy is plain
The scene cues are finer than the video stream's half-size clip resolves (`_background`): they
need the scene stream's full-resolution keyframe, as fine detail needs BLIP's in the paper.
`CLASS_GROUPS` lists these ids (label-map ids: column i of the labels is id i + 1).

Actors with no action have no ground-truth row (they are people doing nothing the set labels).
Proposals: every actor's box jittered, with a detector score; some actors are missed, some
proposals are far off, and a few false positives on the background have low scores. A few keyframes
per split are excluded (listed in the excluded-timestamps CSV and not annotated), as in AVA.
"""

import concurrent.futures
import csv
import dataclasses
import functools
import itertools
import os
import pickle
from collections.abc import Iterable
from typing import ClassVar

import av
import numpy as np
import tqdm

from jovale_jax.datasets import ava, common

CLASSES = {1: "walk", 2: "jump", 3: "hear_tone", 4: "hear_noise", 5: "tiled_room", 6: "near_ball"}
CLASS_GROUPS = {"motion": [1, 2], "sound": [3, 4], "scene": [5, 6]}
WALK, JUMP, TONE, NOISE, TILED, BALL = CLASSES

WIDTH, HEIGHT, FPS = 128, 96, 8
SECONDS = 12  # keyframes at the seconds 2 .. SECONDS - 1
_WINDOWS = SECONDS + 1  # the windows of the seconds 0 .. SECONDS overlap the video
FIRST_KEYFRAME_S = 2
SAMPLE_RATE = common.AUDIO_SAMPLE_RATE
NUM_TRAIN_VIDEOS = 250  # 10 keyframes each
NUM_VAL_VIDEOS = 45

IDLE, WALKING, JUMPING = 0, 1, 2
_MOTION_P = (0.4, 0.3, 0.3)  # idle, walk, jump in each second
_SOUND_P = (0.4, 0.3, 0.3)  # none, tone, noise in each second
_EXCLUDED_P = 0.03
_MISS_P = 0.07  # an actor without proposal
_OFF_P = 0.1  # a proposal far off its actor
_FALSE_POSITIVES = 0.3  # Poisson mean per keyframe
_AAC_FRAME = 1024  # samples per AAC frame
RAW_VERSION = "2"  # 2: the 1 px scene cues; a raw folder stamped otherwise is generated again
_STAMP = "synthetic_version.txt"
BALL_COLOUR = (215, 195, 45)  # the ball's mean colour (its stripes are +-30), the decoy's colour


@dataclasses.dataclass
class _Actor:
    sprite: np.ndarray  # (h, w, 3) float colours
    mask: np.ndarray  # (h, w) bool
    x: np.ndarray  # (frames,) left edge
    y: np.ndarray  # (frames,) top edge
    motion: np.ndarray  # (_WINDOWS,) IDLE | WALKING | JUMPING


@dataclasses.dataclass
class _Video:
    frames: np.ndarray  # (SECONDS * FPS, HEIGHT, WIDTH, 3) uint8
    audio: np.ndarray  # (SECONDS * SAMPLE_RATE,) int16
    actors: list[_Actor]
    sounds: np.ndarray  # (_WINDOWS,) 0 none, 1 tone, 2 noise
    scene_labels: list[int]


def _second(t: np.ndarray) -> np.ndarray:
    """The second s whose window [s - 0.5, s + 0.5) holds time t."""
    return np.floor(t + 0.5).astype(int)


def _background(rng: np.random.Generator, tiled: bool, ball: bool) -> tuple[np.ndarray, list[int]]:
    """A wall (tiled or plain) with a disc (the ball or a decoy) and maybe a distractor square.

    The scene cues are fine-grained: the tiles are 1 px wide columns of alternating brightness and
    the ball is a disc striped the same way, while the decoy disc (in every video without the ball)
    has the ball's mean colour. Halving the frames, as the video stream's 64 x 48 clip does,
    averages the stripes away (a tiled wall then looks plain, the ball like the decoy); the scene
    stream's keyframe at full resolution resolves them, as BLIP's keyframe does in the paper.
    """
    base = rng.uniform(60, 170, 3)
    ramp = np.linspace(-1, 1, HEIGHT)[:, None, None] * rng.uniform(-25, 25, 3)  # a soft gradient
    image = np.broadcast_to(base + ramp, (HEIGHT, WIDTH, 3)).copy()
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    stripes = np.where(xx % 2 == 0, 1.0, -1.0)
    if tiled:
        image += rng.uniform(20, 35) * stripes[..., None]
    image += rng.normal(0, 6, image.shape)
    labels = [TILED] if tiled else []
    cx, cy, r = rng.uniform(10, WIDTH - 10), rng.uniform(8, HEIGHT * 0.45), rng.uniform(4, 7)
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    image[disc] = BALL_COLOUR
    if ball:  # the ball: the disc striped; the decoy: plain
        image[disc] += 30 * stripes[disc][:, None]
        labels.append(BALL)
    if rng.random() < 0.5:  # a distractor: a square of another colour, no label
        side = int(rng.integers(7, 13))
        x0, y0 = int(rng.integers(0, WIDTH - side)), int(rng.integers(0, HEIGHT // 2))
        image[y0 : y0 + side, x0 : x0 + side] = rng.choice(
            [(40, 90, 220), (200, 60, 60), (60, 190, 90)]
        )
    return image, labels


def _actor(rng: np.random.Generator, num_frames: int) -> _Actor:
    w, body, head = int(rng.integers(8, 15)), int(rng.integers(16, 28)), int(rng.integers(6, 10))
    h = body + head
    hue = rng.uniform(0, 1)  # any colour but yellow (the ball's)
    hue = hue if not 0.1 < hue < 0.2 else hue + 0.3
    colour = 255 * np.clip(np.abs((hue * 6 + np.array([0, 4, 2])) % 6 - 3) - 1, 0, 1) * 0.8 + 30
    sprite = colour * rng.uniform(0.8, 1.2, (h, w, 1))  # texture
    yy, xx = np.mgrid[:h, :w]
    head_mask = (xx - (w - 1) / 2) ** 2 + (yy - head / 2) ** 2 <= (head / 2) ** 2
    mask = head_mask | ((yy >= head) & (xx >= 1) & (xx < w - 1))
    motion = rng.choice(3, _WINDOWS, p=_MOTION_P)
    speed = rng.choice([-1, 1], _WINDOWS) * rng.uniform(20, 36, _WINDOWS)  # pixels per second
    amplitude = rng.uniform(6, 11, _WINDOWS)
    x = np.empty(num_frames)
    x[0] = rng.uniform(0, WIDTH - w)
    ground = rng.uniform(HEIGHT * 0.55, HEIGHT - 2) - h
    t = np.arange(num_frames) / FPS
    second = _second(t)
    for n in range(1, num_frames):
        step = speed[second[n]] / FPS if motion[second[n]] == WALKING else 0.0
        x[n] = x[n - 1] + step
        if not 0 <= x[n] <= WIDTH - w:  # turn back at the frame's edges
            speed[second[n]] *= -1
            x[n] = np.clip(x[n - 1] - step, 0, WIDTH - w)
    phase = t - (second - 0.5)
    hop = amplitude[second] * np.abs(np.sin(3 * np.pi * phase))
    y = ground - np.where(motion[second] == JUMPING, hop, 0.0)
    return _Actor(sprite, mask, x, y, motion)


def _soundtrack(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    audio = rng.normal(0, 0.005, SECONDS * SAMPLE_RATE)
    sounds = rng.choice(3, _WINDOWS, p=_SOUND_P)
    for s in np.flatnonzero(sounds):
        length = int(rng.uniform(0.5, 0.8) * SAMPLE_RATE)
        start = int((s - 0.5 + rng.uniform(0.05, 0.95 - length / SAMPLE_RATE)) * SAMPLE_RATE)
        start = max(start, 0)
        n = min(length, len(audio) - start)
        envelope = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / 320)
        if sounds[s] == 1:
            event = 0.3 * np.sin(2 * np.pi * rng.uniform(400, 1000) * np.arange(n) / SAMPLE_RATE)
        else:
            event = rng.normal(0, 0.15, n)
        audio[start : start + n] += envelope * event
    return (np.clip(audio, -1, 1) * 32767).astype(np.int16), sounds


def _render(rng: np.random.Generator, scene: int) -> _Video:
    """A video; its background is tiled when bit 0 of `scene` is set, has the ball when bit 1 is."""
    num_frames = SECONDS * FPS
    background, scene_labels = _background(rng, tiled=bool(scene & 1), ball=bool(scene & 2))
    actors = [_actor(rng, num_frames) for _ in range(int(rng.integers(1, 7)))]
    frames = np.repeat(background[None].astype(np.float32), num_frames, axis=0)
    for n, image in enumerate(frames):
        for actor in sorted(actors, key=lambda a: a.y[n] + len(a.mask)):  # nearer actors in front
            x0, y0 = round(actor.x[n]), round(actor.y[n])
            h, w = actor.mask.shape
            region = image[y0 : y0 + h, x0 : x0 + w]
            visible = actor.mask[: region.shape[0], : region.shape[1]]
            region[visible] = actor.sprite[: region.shape[0], : region.shape[1]][visible]
    frames += rng.standard_normal(frames.shape, dtype=np.float32) * 4
    audio, sounds = _soundtrack(rng)
    return _Video(np.clip(frames, 0, 255).astype(np.uint8), audio, actors, sounds, scene_labels)


def _labels(video: _Video, actor: _Actor, second: int) -> list[int]:
    motion = actor.motion[second]
    labels = {WALKING: [WALK], JUMPING: [JUMP]}.get(motion, [])
    if motion == IDLE and video.sounds[second]:
        labels.append(TONE if video.sounds[second] == 1 else NOISE)
    return labels + video.scene_labels


def _box(actor: _Actor, frame: int) -> np.ndarray:
    h, w = actor.mask.shape
    x0, y0 = round(actor.x[frame]), round(actor.y[frame])
    box = np.array([x0, y0, x0 + w, y0 + h], np.float64) / [WIDTH, HEIGHT, WIDTH, HEIGHT]
    return np.clip(box, 0, 1)


def _proposals(rng: np.random.Generator, boxes: list[np.ndarray]) -> np.ndarray:
    rows = []
    for box in boxes:
        if rng.random() < _MISS_P:
            continue
        size = np.tile(box[2:] - box[:2], 2)
        off = rng.random() < _OFF_P
        jitter = rng.normal(0, 0.2 if off else 0.05, 4) * size
        rows.append([*(box + jitter), rng.uniform(0.3, 0.7) if off else rng.uniform(0.7, 0.99)])
    for _ in range(rng.poisson(_FALSE_POSITIVES)):
        w, h = rng.uniform(0.05, 0.15), rng.uniform(0.2, 0.4)
        x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        rows.append([x, y, x + w, y + h, rng.uniform(0.05, 0.5)])
    return np.asarray(rows, np.float32).reshape(-1, 5)


def write_mp4(path: str, frames: Iterable[np.ndarray], audio: np.ndarray, fps: float) -> None:
    """An mp4 of H.264 video (the (h, w, 3) uint8 RGB `frames` at `fps`) and 16 kHz AAC audio
    (`audio`: int16 mono)."""
    frames = iter(frames)
    first = next(frames)
    with av.open(path, "w") as container:
        stream = container.add_stream(
            "libx264", rate=fps, options={"crf": "20", "preset": "veryfast"}
        )
        stream.width, stream.height, stream.pix_fmt = first.shape[1], first.shape[0], "yuv420p"
        sound = container.add_stream(
            "aac", rate=SAMPLE_RATE, layout="mono", options={"aac_coder": "fast"}
        )
        for image in itertools.chain([first], frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
        samples = audio.astype(np.float32) / 32768
        for start in range(0, len(samples), _AAC_FRAME):
            frame = av.AudioFrame.from_ndarray(
                samples[None, start : start + _AAC_FRAME], format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = SAMPLE_RATE, start
            container.mux(sound.encode(frame))
        container.mux(sound.encode())


@dataclasses.dataclass
class _Annotations:
    rows: list[tuple] = dataclasses.field(default_factory=list)
    excluded: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    proposals: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def _make_video(videos_dir: str, split: str, split_id: int, seed: int, i: int) -> _Annotations:
    """Renders and writes video i of a split; returns its label rows, excluded keyframes and
    proposals."""
    video_id = f"syn_{split}_{i:04d}"
    rng = np.random.default_rng([seed, split_id, i])
    video = _render(rng, scene=i % 4)
    write_mp4(os.path.join(videos_dir, f"{video_id}.mp4"), video.frames, video.audio, FPS)
    out = _Annotations()
    for second in range(FIRST_KEYFRAME_S, SECONDS):
        timestamp = int(ava.TRIMMED_START_S) + second
        boxes = [_box(actor, second * FPS) for actor in video.actors]
        out.proposals[f"{video_id},{timestamp:04d}"] = _proposals(rng, boxes)
        if rng.random() < _EXCLUDED_P:
            out.excluded.append((video_id, timestamp))
            continue
        for person, (actor, box) in enumerate(zip(video.actors, boxes)):
            out.rows += [
                (video_id, f"{timestamp:04d}", *np.round(box, 4), label, person)
                for label in _labels(video, actor, second)
            ]
    return out


def generate_raw(
    out_dir: str,
    *,
    seed: int = 0,
    num_train_videos: int = NUM_TRAIN_VIDEOS,
    num_val_videos: int = NUM_VAL_VIDEOS,
) -> None:
    """Writes the raw AVA layout of the synthetic set into `out_dir` (deterministic for a seed).

    Videos are made on two threads (the encoders release the GIL); each has its own random stream.
    The scene classes are balanced by construction: every 4 consecutive videos hold the 4
    combinations of tiled / plain background, with / without the ball.
    """
    videos_dir = os.path.join(out_dir, "videos")
    os.makedirs(videos_dir, exist_ok=True)
    common.write_label_map(os.path.join(out_dir, ava.LABEL_MAP), CLASSES)
    for split_id, (split, num_videos) in enumerate(
        [("train", num_train_videos), ("val", num_val_videos)]
    ):
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            made = pool.map(
                functools.partial(_make_video, videos_dir, split, split_id, seed), range(num_videos)
            )
            videos = list(
                tqdm.tqdm(
                    made, total=num_videos, desc=f"synthetic/{split} videos", dynamic_ncols=True
                )
            )
        with open(os.path.join(out_dir, f"ava_{split}_v2.2.csv"), "w", newline="") as f:
            csv.writer(f).writerows(row for v in videos for row in v.rows)
        with open(os.path.join(out_dir, f"ava_{split}_excluded_timestamps_v2.2.csv"), "w") as f:
            f.writelines(f"{vid},{ts:04d}\n" for v in videos for vid, ts in v.excluded)
        with open(
            os.path.join(out_dir, f"ava_dense_proposals_{split}.FAIR.recall_93.9.pkl"), "wb"
        ) as f:
            pickle.dump({k: p for v in videos for k, p in v.proposals.items()}, f)
    with open(os.path.join(out_dir, _STAMP), "w") as f:  # last: the folder is complete
        f.write(RAW_VERSION + "\n")


def raw_is_current(raw_dir: str) -> bool:
    """Whether `raw_dir` holds a complete raw set of this generator's `RAW_VERSION`."""
    path = os.path.join(raw_dir, _STAMP)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return f.read().strip() == RAW_VERSION


class SyntheticBuilder(ava.AvaBuilder):
    """The synthetic audio-visual set, built from its raw AVA layout by the AVA builder."""

    name = "jovale_synthetic"
    MANUAL_DOWNLOAD_INSTRUCTIONS = "written by jovale_jax.datasets.synthetic.generate_raw"
    CLASS_GROUPS: ClassVar = {k: tuple(v) for k, v in CLASS_GROUPS.items()}
    CLASSES = CLASSES
    PRESET = "synthetic"
    PRIOR_BASELINE = True  # small: the class-prior baseline is scored beside every table

    @classmethod
    def prepare_raw(cls, raw_dir: str | None, data_dir: str) -> str:
        """Generates the raw set in `raw_dir` (default `<data_dir>/raw`) when the folder does not
        hold it, or holds an older `RAW_VERSION` (it is deterministic)."""
        raw_dir = raw_dir or os.path.join(data_dir, "raw")
        if not raw_is_current(raw_dir):  # absent, incomplete or older
            generate_raw(raw_dir)
        return raw_dir
