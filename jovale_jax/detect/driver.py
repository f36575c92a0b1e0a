"""The thin driver of `detect`: the video's keyframes, their model inputs, batched prediction,
and :func:`detect`, which ties proposals, prediction and outputs together."""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import av
import jax
import numpy as np
import tensorflow as tf
import tqdm
from PIL import Image

from jovale_jax import input_pipeline
from jovale_jax.datasets import common
from jovale_jax.datasets import video as video_io
from jovale_jax.datasets.detector_features import DetectorFeatures
from jovale_jax.detect import outputs, proposals
from jovale_jax.detect.outputs import Keyframe
from jovale_jax.evaluation.detections_csv import format_time
from jovale_jax.models.batch import model_inputs
from jovale_jax.models.inputs import query_source
from jovale_jax.programs import predict_batch
from jovale_jax.state import ShardedModel, load_trained, resolve_checkpoint

DEMO_WORKDIR = os.path.join("runs", "demo")  # where `make demo` trains, from the repository root


# ----------------------------------------------------------------------------- the video's timeline


def _decoded_duration(path: str) -> float:
    """Seconds of a stream that declares no duration (raw streams): its frames over its rate."""
    with video_io.open_video(path) as container:
        stream = container.streams.video[0]
        if not stream.average_rate:
            raise common.BadInputError(f"{path} declares neither a duration nor a frame rate")
        frames = sum(1 for _ in video_io.decode_frames(container, stream, None, path))
    return frames / float(stream.average_rate)


def keyframe_times(
    container: av.container.InputContainer, path: str, every: float
) -> tuple[float, np.ndarray]:
    """(video time of the first frame, keyframe times in seconds from it: 0, every, ...)."""
    stream = container.streams.video[0]
    origin = 0.0 if stream.start_time is None else float(stream.start_time * stream.time_base)
    duration = video_io.duration_s(container)
    duration = _decoded_duration(path) if duration is None else duration
    count = max(1, math.ceil(duration / every - 1e-9))
    return origin, np.round(every * np.arange(count), 6)


# ----------------------------------------------------------------------------- model inputs


def example_inputs(
    config, clip: video_io.Clip, boxes: np.ndarray, features: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """One keyframe's model inputs (data/SCHEMA.md's batch entries the model reads, without the
    batch axis), made by the input pipeline's own `decode_example` from the clip as a stored
    example; `features`: the boxes' detector features (model.query_source "detector")."""
    n = len(boxes)
    example = {
        "frames": tf.constant(clip.frames),
        "scene_frames": tf.constant(clip.scene_frames),
        "waveform": tf.constant(clip.waveform),
        "has_audio": tf.constant(clip.has_audio),
        "proposals": tf.constant(boxes, tf.float32),
        "proposal_scores": tf.zeros((n,)),  # not a model input
        "targets": tf.zeros((n, config.model.num_classes)),  # not a model input
    }
    if features is not None:
        example["proposal_features"] = tf.constant(features, tf.float32)
    decoded = input_pipeline.decode_example(example, config)
    return {k: v.numpy() for k, v in model_inputs(config.model, decoded).items()}


def stack_padded(examples: Sequence[dict[str, np.ndarray]], size: int) -> dict[str, np.ndarray]:
    """A batch of `size` examples: `examples` then all-zero ones (no real box)."""
    return {
        key: np.stack(
            [e[key] for e in examples] + [np.zeros_like(examples[0][key])] * (size - len(examples))
        )
        for key in examples[0]
    }


def predict_keyframes(
    s: ShardedModel,
    container: av.container.InputContainer,
    centres: np.ndarray,
    times: np.ndarray,
    propose: proposals.Proposer,
    *,
    batch_size: int,
    name: str,
    featurize: DetectorFeatures | None = None,
) -> Iterator[Keyframe]:
    """Reads the keyframes' clips in one pass and yields their results in time order, predicting
    `batch_size` keyframes at a time, with a progress bar. `centres` are the keyframes' video
    times, `times` the same from the first frame. Keyframes that the decoded video does not reach
    are skipped. `featurize` gives the boxes' detector features (the model's queries)."""
    config = s.config
    spec = common.clip_config(config)
    key = int(np.argmin(np.abs(spec.clip_offsets())))  # the clip frame nearest to the keyframe
    pending: list[tuple[int, video_io.Clip]] = []

    def flush() -> Iterator[Keyframe]:
        indices = [i for i, _ in pending]
        images = [Image.open(io.BytesIO(clip.frames[key])).convert("RGB") for _, clip in pending]
        boxes = [
            proposals.top_proposals(rows, config.model.num_proposals)
            for rows in propose(indices, images)
        ]
        features = featurize(images, boxes) if featurize else [None] * len(boxes)
        batch = stack_padded(
            [
                example_inputs(config, clip, b, f)
                for (_, clip), b, f in zip(pending, boxes, features)
            ],
            batch_size,
        )
        scores = predict_batch(s, batch)["scores"]
        pending.clear()
        for n, (i, image, b) in enumerate(zip(indices, images, boxes)):
            yield Keyframe(i, float(times[i]), image, b, scores[n, : len(b)])

    with tqdm.tqdm(
        total=len(centres), desc="detect", unit="keyframe", dynamic_ncols=True
    ) as progress:
        try:
            for i, clip in video_io.read_clips(container, centres, spec, name):
                progress.update(1)
                if clip is not None:
                    pending.append((i, clip))
                if len(pending) == batch_size:
                    yield from flush()
        except common.VideoError as e:
            raise common.BadInputError(common.one_line(e)) from None
        if pending:
            yield from flush()


# ----------------------------------------------------------------------------- the driver


def checkpoint_or_demo(checkpoint: str | None) -> str:
    """`checkpoint`, or the demo's trained workdir when None; an error saying what to run."""
    if checkpoint is None:
        if os.path.isdir(os.path.join(DEMO_WORKDIR, "checkpoints")):
            try:
                resolve_checkpoint(DEMO_WORKDIR)
                return DEMO_WORKDIR
            except FileNotFoundError:
                pass
        raise FileNotFoundError(
            f"no checkpoint given and no trained demo checkpoint in "
            f"{DEMO_WORKDIR}/checkpoints: run `make demo` first, or pass "
            f"--checkpoint WORKDIR"
        )
    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint}: no such file or folder")
    resolve_checkpoint(checkpoint)
    return checkpoint


def open_input_video(path: str) -> av.container.InputContainer:
    """The file opened for decoding; a one-line `FileNotFoundError` or `BadInputError` naming
    the file when it is missing or not a video."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video {path}: no such file")
    try:
        return video_io.open_video(path)
    except common.VideoError as e:
        raise common.BadInputError(common.one_line(e)) from None


def detect(
    config,
    *,
    video: str,
    out_dir: str,
    checkpoint: str | None = None,
    boxes_csv: str | None = None,
    video_out: str | None = None,
    label_map: str | None = None,
    devices: Sequence[jax.Device] | None = None,
    model_state: ShardedModel | None = None,
) -> dict[str, Any]:
    """Runs the model of `checkpoint` on the keyframes of `video` (see the package docstring).

    Args:
      config: the preset the checkpoint was trained with; its `detect` section sets the keyframe
        spacing (`keyframe_every` seconds), the person detector (`detector`, a transformers
        model; "" for none) and its `detector_threshold`, and `batch_size`: keyframes per
        forward pass, rounded up to a multiple of the mesh's 'data' size (0: at most
        `config.eval_batch_size`, at most the number of keyframes).
      video: any file PyAV decodes; its id in the outputs is its name without extension.
      out_dir: the output folder (replaced when it holds a previous detect output).
      checkpoint: a workdir or workdir/checkpoints/STEP; None: the demo's (`runs/demo`), unless
        `model_state` is given.
      boxes_csv: person boxes (not together with `config.detect.detector`; neither: one
        whole-frame box per keyframe). With `model.query_source` "detector" the detector is
        required: it gives the boxes' features (`datasets/detector_features.py`), at its own
        boxes or these.
      video_out: also write the annotated video there (.mp4, .mkv or .mov).
      label_map: an AVA label-map pbtxt (default: see `outputs.label_map_of`).
      devices: the devices of the mesh (default all).
      model_state: an already loaded model (`state.load_trained` of this config), used instead
        of loading `checkpoint`: several videos then share one model and its compiled forward.

    Returns: the manifest written to `out_dir/detect.json`: paths, keyframes (predicted and
      skipped), detection rows, whether the file has audio and whether the audio modality was
      masked, the proposal source, `notes` (also printed) and the seconds taken.
    """
    start = time.time()
    options = config.detect
    keyframe_every, detector = float(options.keyframe_every), options.detector or None
    if not (math.isfinite(keyframe_every) and keyframe_every > 0):
        raise ValueError(
            f"config.detect.keyframe_every must be a positive number of seconds: {keyframe_every}"
        )
    detector_queries = query_source(config.model) == "detector"
    if boxes_csv is not None and detector is not None and not detector_queries:
        raise ValueError("give boxes_csv or config.detect.detector, not both")
    if detector_queries and detector is None:
        raise ValueError(
            "config field model.query_source is 'detector': detect needs config.detect.detector, "
            "the detector whose features the model was trained on"
        )
    if video_out and os.path.splitext(video_out)[1].lower() not in outputs.VIDEO_OUT_FORMATS:
        raise ValueError(
            f"video_out {video_out}: expected a file name ending in "
            f"{', '.join(outputs.VIDEO_OUT_FORMATS)}"
        )
    video_id = os.path.splitext(os.path.basename(video))[0]
    with open_input_video(video) as container:
        origin, times = keyframe_times(container, video, keyframe_every)
        boxes, unused = (
            proposals.read_boxes_csv(boxes_csv, video_id, times) if boxes_csv else (None, 0)
        )
        staging = outputs.Staging(out_dir)
        classes = outputs.label_map_of(config, label_map)
        checkpoint = None if model_state else checkpoint_or_demo(checkpoint)
        stream = container.streams.video[0]
        has_audio = bool(container.streams.audio)
        audio_masked = not has_audio and "audio" in config.model.modalities
        source = "boxes_csv" if boxes_csv else "detector" if detector else "whole_frame"
        featurize = (
            DetectorFeatures.load(detector, feature_dim=config.model.actor.detector_feature_dim)
            if detector_queries
            else None
        )
        print(
            f"detect: {video} ({stream.codec_context.width}x{stream.codec_context.height}, "
            f"{len(times)} keyframe(s) every {format_time(keyframe_every)} s, audio track: "
            f"{'yes' if has_audio else 'none'}), proposals: {source}",
            flush=True,
        )
        notes = (
            [f"{video} has no audio track: the audio modality is masked (audio_mask false)"]
            if audio_masked
            else []
        )
        if unused:
            notes.append(
                f"{unused} row(s) of {boxes_csv} for {video_id} are at no keyframe time: not used"
            )
        if source == "whole_frame":
            notes.append("no boxes_csv or detector: one whole-frame proposal per keyframe")

        person_detector = (
            proposals.PersonDetector(
                detector,
                threshold=options.detector_threshold,
                loaded=featurize and (featurize.processor, featurize.model),  # loaded once
            )
            if detector and boxes is None
            else None
        )
        propose = proposals.make_proposer(boxes, person_detector)
        s = model_state or load_trained(config, checkpoint, devices=devices)
        data = s.mesh.shape["data"]
        size = options.batch_size or min(config.eval_batch_size, len(times))
        size = -(-size // data) * data
        with staging:
            shown = outputs.write_keyframes(
                staging.path,
                video_id,
                classes,
                predict_keyframes(
                    s,
                    container,
                    origin + times,
                    times,
                    propose,
                    batch_size=size,
                    name=video,
                    featurize=featurize,
                ),
                video=video,
                origin=origin,
            )
            if len(shown) < len(times):
                notes.append(
                    f"{len(times) - len(shown)} keyframe(s) past the decoded end of "
                    f"{video}: skipped"
                )
            missed = person_detector and proposals.miss_note(
                person_detector.misses, options.detector_threshold
            )
            if missed:
                notes.append(missed)
            frames = 0
            if video_out:
                frames = outputs.write_video_out(
                    staging, video, video_out, origin, shown, keyframe_every, config.data.fps
                )
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
    print(
        f"wrote {manifest['detection_rows']} detection rows for {len(shown)} keyframe(s) to "
        f"{staging.out_dir}" + (f" and {video_out}" if video_out else ""),
        flush=True,
    )
    return manifest
