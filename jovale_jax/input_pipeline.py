"""TFRecord shards -> decoded, augmented, fixed-shape numpy batches (data/SCHEMA.md).

Entry points:

* :func:`create_train_iterator` -> :class:`TrainIterator`: an endless iterator of training batches
  with a resumable position (``get_state()`` / ``state=``).
* :func:`create_eval_iterator` -> :class:`EvalIterator`: a re-iterable pass over a split, with the
  last batch padded and masked (``example_mask``), the same number of batches on every process.

Both open the dataset's TFDS builder (``jovale_jax.datasets.get_builder``) and hand its examples,
JPEGs still encoded, to the core functions :func:`train_dataset` (one epoch) and
:func:`eval_dataset`, which take any ``tf.data.Dataset`` of such example dicts (the features of
data/SCHEMA.md with ``frames`` / ``scene_frames`` as (T,) JPEG strings, as TFDS yields them with
``SkipDecoding``); tests feed those directly.

Multi-process: every process reads its own contiguous, equal-sized range of the split
(``tfds.even_splits``), so it opens only its own shard files, and gets ``config.batch_size //
process_count`` examples per batch.

Determinism and resumption: epoch ``e`` of process ``p`` shuffles files and examples with seeds
drawn from ``(seed, e, p)``; every example's augmentation uses stateless random ops seeded by the
same triple and the example's position in the shuffled epoch, never by iteration order. Resuming
from ``{"epoch": e, "batches_in_epoch": n, ...}`` rebuilds epoch ``e`` and drops its first ``n``
batches' examples before anything is decoded, so the next batch is exactly the one an
uninterrupted run would have produced.
"""

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jovale_jax import audio_features
from jovale_jax.models.batch import stored_features
from jovale_jax.models.inputs import (  # noqa: F401
    BLIP_MEAN,
    BLIP_STD,
    VIDEOMAE_MEAN,
    VIDEOMAE_STD,
    query_source,
    video_statistics,
)

try:  # TF must not take the accelerators that JAX uses; only possible before TF's first op.
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:
    pass

Batch = dict[str, np.ndarray]

# Frames leave the host as uint8; the model normalises them on the device (models/inputs.py).
# The canvas around an aspect-preserved video frame is filled with the video encoder's mean colour
# (VideoMAE's by default), which normalises to about 0.
VIDEO_PAD_VALUE = tuple(round(255 * m) for m in VIDEOMAE_MEAN)


def video_pad_value(video_cfg) -> tuple[int, ...]:
    """The uint8 colour of the canvas padding: the mean the video encoder normalises with."""
    return tuple(round(255 * m) for m in video_statistics(video_cfg)[0])


# ------------------------------------------------------------------------------------------------
# Per-example stages: decode (+ resize, fit to the canvas, audio features, fixed shapes), augment.
# ------------------------------------------------------------------------------------------------


def fitted_size(
    height: tf.Tensor, width: tf.Tensor, *, short_side: int, canvas: tuple[int, int]
) -> tuple[tf.Tensor, tf.Tensor]:
    """(h, w), int32, of a height x width frame resized by its short side to ``short_side``, and
    further down when that does not fit the (H, W) ``canvas``: the aspect ratio is kept."""
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    scale = tf.minimum(short_side / tf.minimum(h, w), tf.minimum(canvas[0] / h, canvas[1] / w))
    new_h = tf.clip_by_value(tf.cast(tf.round(h * scale), tf.int32), 1, canvas[0])
    new_w = tf.clip_by_value(tf.cast(tf.round(w * scale), tf.int32), 1, canvas[1])
    return new_h, new_w


def decode_jpegs(jpegs: tf.Tensor, *, num_frames: int) -> tf.Tensor:
    """(T,) JPEGs of one size -> (T, h, w, 3) uint8, each frame decoded once, at full scale.

    (libjpeg's reduced-scale decoding, ``ratio=2``, was measured and not adopted: its DCT-domain
    downscale is 4 grey levels on average from an area downscale of the full decode on a
    detailed image, against 0.9 for the latter from PIL's bicubic.)
    """
    jpegs = tf.ensure_shape(jpegs, (num_frames,))
    return tf.stack([tf.io.decode_jpeg(j, channels=3) for j in tf.unstack(jpegs, num_frames)])


def _to_uint8(frames: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.round(tf.clip_by_value(frames, 0.0, 255.0)), tf.uint8)


def decode_video(
    jpegs: tf.Tensor,
    *,
    num_frames: int,
    canvas: tuple[int, int],
    short_side: int,
    pad_value: tuple[int, ...] = VIDEO_PAD_VALUE,
) -> tuple[tf.Tensor, tf.Tensor]:
    """(T,) JPEGs -> ((T, H, W, 3) uint8 canvas, (4,) ``frame_extent``).

    The frames are resized by their short side (bilinear, as VideoMAE's cv2 INTER_LINEAR; no
    antialiasing: the stored frames are at most 1.2x larger) and shrunk further if needed to fit
    the (H, W) canvas, aspect ratio kept; the frame goes to the canvas's top-left corner, the rest
    is ``pad_value``. ``frame_extent`` = (0, 0, w / W, h / H): where the frame lies,
    normalised to the canvas, so frame-normalised boxes map onto it exactly.
    """
    frames = decode_jpegs(jpegs, num_frames=num_frames)
    shape = tf.shape(frames)
    h, w = fitted_size(shape[1], shape[2], short_side=short_side, canvas=canvas)
    frames = tf.cond(
        tf.reduce_all(tf.shape(frames)[1:3] == tf.stack([h, w])),
        lambda: frames,
        lambda: _to_uint8(
            tf.raw_ops.ResizeBilinear(images=frames, size=tf.stack([h, w]), half_pixel_centers=True)
        ),
    )
    pad = tf.constant(pad_value, tf.uint8)
    for axis, missing in ((2, canvas[1] - w), (1, canvas[0] - h)):  # no copy when nothing misses
        block = tf.concat([tf.shape(frames)[:axis], [missing], tf.shape(frames)[axis + 1 :]], 0)
        frames = tf.cond(
            missing > 0,
            lambda f=frames, b=block, a=axis: tf.concat([f, tf.broadcast_to(pad, b)], axis=a),
            lambda f=frames: f,
        )
    frames = tf.ensure_shape(frames, (num_frames, *canvas, 3))
    extent = tf.stack(
        [0.0, 0.0, tf.cast(w / canvas[1], tf.float32), tf.cast(h / canvas[0], tf.float32)]
    )
    return frames, extent


def decode_scene(jpegs: tf.Tensor, *, num_frames: int, size: int) -> tf.Tensor:
    """(T_s,) JPEGs -> (T_s, S, S, 3) uint8, the whole frame resized to S x S as BLIP's own test
    transform does (``Resize((S, S))``, no crop). The AVA builder stores them at S x S already
    (PIL's bicubic, BLIP's exact transform); other sizes are shrunk by area averaging (an
    antialiased downscale, within a grey level of PIL's bicubic on average:
    tests/test_input_pipeline.py) or enlarged bicubic."""
    frames = decode_jpegs(jpegs, num_frames=num_frames)
    shape = tf.shape(frames)
    frames = tf.case(
        [
            (tf.reduce_all(shape[1:3] == size), lambda: frames),
            (
                tf.reduce_all(shape[1:3] >= size),
                lambda: _to_uint8(tf.raw_ops.ResizeArea(images=frames, size=[size, size])),
            ),
        ],
        default=lambda: _to_uint8(tf.image.resize(frames, (size, size), method="bicubic")),
        exclusive=False,
    )
    return tf.ensure_shape(frames, (num_frames, size, size, 3))


def decode_images(
    example: dict[str, tf.Tensor], config: ml_collections.ConfigDict, *, training: bool = False
) -> dict:
    """uint8 ``video`` (+ ``frame_extent``) and ``scene`` of the modalities in
    ``config.model.modalities``; the video short side is ``config.data.short_side`` when
    ``training``, else ``config.data.eval_short_side``."""
    model = config.model
    out = {}
    if "video" in model.modalities:
        out["video"], out["frame_extent"] = decode_video(
            example["frames"],
            num_frames=model.video.num_frames,
            canvas=tuple(model.video.image_size),
            short_side=config.data.short_side if training else config.data.eval_short_side,
            pad_value=video_pad_value(model.video),
        )
    if "scene" in model.modalities:
        out["scene"] = decode_scene(
            example["scene_frames"],
            num_frames=model.scene.num_frames,
            size=model.scene.image_size,
        )
    return out


def decode_audio(example: dict[str, tf.Tensor], config: ml_collections.ConfigDict) -> dict:
    """``audio`` (AST's normalised fbank; all 0, the neutral value, without audio) and
    ``audio_mask``."""
    audio = config.model.audio
    shape = (audio.num_frames, audio.num_mel_bins)
    waveform = example["waveform"]
    has_audio = tf.logical_and(example["has_audio"], tf.size(waveform) > 0)
    features = tf.cond(
        has_audio,
        lambda: audio_features.audio_features_tf(
            waveform,
            num_frames=audio.num_frames,
            num_mel_bins=audio.num_mel_bins,
            window_type=audio.window_type,
        ),
        lambda: tf.zeros(shape, tf.float32),
    )
    return {"audio": features, "audio_mask": has_audio}


def pad_proposals(example: dict[str, tf.Tensor], config: ml_collections.ConfigDict) -> dict:
    """The first K proposals (already sorted by score), zero-padded to K, with ``box_mask``."""
    k = config.model.num_proposals

    def fit(x: tf.Tensor, trailing: tuple[int, ...]) -> tf.Tensor:
        x = tf.cast(tf.ensure_shape(x, (None, *trailing))[:k], tf.float32)
        x = tf.pad(x, [[0, k - tf.shape(x)[0]]] + [[0, 0]] * len(trailing))
        return tf.ensure_shape(x, (k, *trailing))

    out = {
        "boxes": fit(example["proposals"], (4,)),
        "box_mask": tf.range(k) < tf.shape(example["proposals"])[0],
        "proposal_scores": fit(example["proposal_scores"], ()),
        "targets": fit(example["targets"], (config.model.num_classes,)),
    }
    if query_source(config.model) == "detector":  # the action queries' source
        feature_dim = config.model.actor.detector_feature_dim
        out["proposal_features"] = fit(example["proposal_features"], (feature_dim,))
    return out


def decode_example(
    example: dict[str, tf.Tensor], config: ml_collections.ConfigDict, *, training: bool = False
) -> dict:
    """All model inputs of one example, fixed shapes, no augmentation; ``example_mask`` true."""
    out = decode_images(example, config, training=training)
    if "audio" in config.model.modalities:
        out.update(decode_audio(example, config))
    out.update(pad_proposals(example, config))
    out["example_mask"] = tf.constant(True)
    return out


def augment(features: dict, config: ml_collections.ConfigDict, seed: tf.Tensor) -> dict:
    """Training augmentation of decoded features, a function of ``seed`` (stateless RNG, (2,)).

    A horizontal flip (probability ``config.data.flip_prob``) of the video canvas, the scene
    frames, the real boxes (x1' = 1 - x2, x2' = 1 - x1, in frame coordinates; targets do not
    change) and the ``frame_extent`` (the frame moves to the other side of the canvas) together,
    and SpecAugment on the audio (masks at the neutral value, ``audio_features.spec_augment``).
    """
    flip_seed, spec_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    flip = tf.random.stateless_uniform((), flip_seed) < config.data.flip_prob
    out = dict(features)
    for key in ("video", "scene"):
        if key in out:
            frames = out[key]
            out[key] = tf.cond(flip, lambda f=frames: tf.reverse(f, axis=[-2]), lambda f=frames: f)
    x1, y1, x2, y2 = tf.unstack(out["boxes"], axis=-1)
    flipped = tf.stack([1.0 - x2, y1, 1.0 - x1, y2], axis=-1)
    out["boxes"] = tf.where(tf.logical_and(flip, out["box_mask"])[:, None], flipped, out["boxes"])
    if "frame_extent" in out:
        x1, y1, x2, y2 = tf.unstack(out["frame_extent"])
        out["frame_extent"] = tf.where(
            flip, tf.stack([1.0 - x2, y1, 1.0 - x1, y2]), out["frame_extent"]
        )
    if "audio" in out:
        out["audio"] = audio_features.spec_augment(
            out["audio"],
            spec_seed,
            max_time_mask=config.data.spec_time_mask,
            max_freq_mask=config.data.spec_freq_mask,
        )
    return out


# ------------------------------------------------------------------------------------------------
# Core datasets: any tf.data.Dataset of encoded example dicts in, batches out.
# ------------------------------------------------------------------------------------------------


def parallel_map(
    ds: tf.data.Dataset, fn: Callable, config: ml_collections.ConfigDict
) -> tf.data.Dataset:
    """``ds.map(fn)`` in order, ``config.data.num_parallel_calls`` at a time, without autograph
    (the stages have no Python control flow on tensors; skipping it halves tracing time)."""
    return ds.map(
        tf.autograph.experimental.do_not_convert(fn),
        num_parallel_calls=config.data.num_parallel_calls,
        deterministic=True,
    )


def prefetched(ds: tf.data.Dataset, config: ml_collections.ConfigDict) -> tf.data.Dataset:
    """``ds`` with ``config.data.prefetch`` batches read ahead, and tf.data's autotuning off:
    every parallelism and buffer here is set by the config. Autotuning's model thread makes the
    iterator's destructor wait for its next wake-up: measured, each epoch's end stalled the train
    loop 8-10 s (2 processes: the other process idle meanwhile in the step's all-reduce)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(config.data.prefetch).with_options(options)


def epoch_seeds(seed: int, epoch: int, process_index: int) -> tuple[int, int]:
    """(shuffle seed, augmentation key) of one process's epoch, both drawn from the triple."""
    shuffle_seed, key = np.random.SeedSequence([seed, epoch, process_index]).generate_state(2)
    return int(shuffle_seed), int(key)


def train_dataset(
    examples: tf.data.Dataset,
    config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    process_index: int = 0,
    skip_batches: int = 0,
) -> tf.data.Dataset:
    """One training epoch: shuffled, augmented batches of ``batch_size``, the remainder dropped.

    ``examples`` is the epoch's stream of encoded examples in reading order (its files already
    shuffled, if it has several). The first ``skip_batches`` batches' examples are dropped before
    decoding, so resuming costs reading them only.
    """
    shuffle_seed, key = epoch_seeds(seed, epoch, process_index)
    ds = examples.shuffle(config.data.shuffle_buffer, seed=shuffle_seed)
    ds = ds.enumerate().skip(skip_batches * batch_size)

    def preprocess(position: tf.Tensor, example: dict) -> dict:
        example_seed = tf.stack([tf.constant(key, tf.int64), position])
        return augment(decode_example(example, config, training=True), config, example_seed)

    ds = parallel_map(ds, preprocess, config)
    return prefetched(ds.batch(batch_size, drop_remainder=True), config)


def eval_dataset(
    examples: tf.data.Dataset,
    config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    num_batches: int,
) -> tf.data.Dataset:
    """``num_batches`` unaugmented batches of the examples in order, with ``video_id`` and
    ``timestamp``; all-zero padding examples (``example_mask`` false) fill the remainder."""
    cardinality = int(examples.cardinality())
    if cardinality > num_batches * batch_size:
        raise ValueError(f"{cardinality} examples do not fit {num_batches} x {batch_size} batches")

    def preprocess(example: dict) -> dict:
        out = decode_example(example, config)
        out.update(video_id=example["video_id"], timestamp=example["timestamp"])
        return out

    ds = parallel_map(examples, preprocess, config)
    padding = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
    return prefetched(ds.take(num_batches * batch_size).batch(batch_size), config)


# ------------------------------------------------------------------------------------------------
# Iterators over a built dataset.
# ------------------------------------------------------------------------------------------------


class TrainIterator(Iterator[Batch]):
    """Endless training batches (numpy dicts of data/SCHEMA.md), epoch after epoch.

    ``read_epoch(shuffle_seed)`` returns one epoch's encoded examples (files shuffled with the
    seed). ``get_state()`` gives the position as a JSON-serialisable dict; a new iterator built
    with ``state=`` that dict continues exactly where this one stopped. Every process holds the
    same state (equal per-process splits), so process 0's is the one to checkpoint. Each epoch
    builds a new tf.data pipeline (about 1 s of tracing and start-up on a CPU).
    """

    def __init__(
        self,
        read_epoch: Callable[[int], tf.data.Dataset],
        config: ml_collections.ConfigDict,
        *,
        batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        batches_per_epoch: int | None = None,
        state: dict[str, Any] | None = None,
    ):
        self._read_epoch = read_epoch
        self._config = config
        self._batch_size = batch_size
        self._seed = seed
        self._process_index = process_index
        self._process_count = process_count
        self.batches_per_epoch = batches_per_epoch  # None when the reader cannot tell
        self._epoch, self._batches_in_epoch = 0, 0
        self._iterator: Iterator[Batch] | None = None
        if state is not None:
            self.set_state(state)

    def get_state(self) -> dict[str, Any]:
        """The position after the last batch returned (JSON-serialisable)."""
        return {
            "seed": self._seed,
            "epoch": self._epoch,
            "batches_in_epoch": self._batches_in_epoch,
            "per_process_batch_size": self._batch_size,
            "process_count": self._process_count,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue after the batch where ``state`` (a ``get_state()``) was taken; an error names
        the field that cannot be resumed exactly (another seed, batch size or process count)."""
        mine = self.get_state()
        for field in ("seed", "per_process_batch_size", "process_count"):
            if state[field] != mine[field]:
                raise ValueError(
                    f"cannot resume the input pipeline exactly: saved {field}={state[field]}, "
                    f"now {mine[field]}"
                )
        self._epoch, self._batches_in_epoch = state["epoch"], state["batches_in_epoch"]
        self._iterator = None

    def __next__(self) -> Batch:
        while True:
            if self._iterator is None:
                shuffle_seed, _ = epoch_seeds(self._seed, self._epoch, self._process_index)
                dataset = train_dataset(
                    self._read_epoch(shuffle_seed),
                    self._config,
                    batch_size=self._batch_size,
                    seed=self._seed,
                    epoch=self._epoch,
                    process_index=self._process_index,
                    skip_batches=self._batches_in_epoch,
                )
                self._iterator = dataset.as_numpy_iterator()
            try:
                batch = next(self._iterator)
            except StopIteration:
                if self._batches_in_epoch == 0:
                    raise ValueError(
                        f"an epoch yields no batch of {self._batch_size} examples"
                    ) from None
                self._epoch, self._batches_in_epoch, self._iterator = self._epoch + 1, 0, None
                continue
            self._batches_in_epoch += 1
            return batch


@dataclasses.dataclass(frozen=True)
class EvalIterator:
    """A re-iterable evaluation pass: ``num_batches`` numpy batches, the same on every process;
    ``num_examples`` real examples on this process (the rest is masked padding)."""

    dataset: tf.data.Dataset
    num_batches: int
    num_examples: int

    def __iter__(self) -> Iterator[Batch]:
        return self.dataset.as_numpy_iterator()

    def __len__(self) -> int:
        return self.num_batches


def _process_topology(
    config: ml_collections.ConfigDict, process_index: int | None, process_count: int | None
) -> tuple[int, int]:
    if config.data.audio_sample_rate != audio_features.SAMPLE_RATE:
        raise ValueError(
            f"data.audio_sample_rate={config.data.audio_sample_rate}: the audio features are "
            f"defined at {audio_features.SAMPLE_RATE} Hz"
        )
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    return index, count


def open_builder(
    config: ml_collections.ConfigDict, data_dir: str | None
) -> tfds.core.DatasetBuilder:
    """The prepared TFDS builder of ``config.dataset`` (``jovale_jax.datasets.get_builder``)."""
    from jovale_jax import datasets  # the builders import heavy dependencies

    return datasets.get_builder(config, data_dir=data_dir)


def read_features(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The example features that the pipeline reads for ``config``, those the entries of an
    evaluation batch are decoded from (``models/batch.py``); the others are not parsed (TF's
    parser crashes on a zero-width ``proposal_features``, written only when F > 0)."""
    return stored_features(config.model)


def read_split(
    builder: tfds.core.DatasetBuilder,
    split: Any,
    config: ml_collections.ConfigDict,
    *,
    shuffle_seed: int | None,
) -> tf.data.Dataset:
    """A (sub-)split's examples, only the features the config needs, JPEGs left encoded (so that
    skipped examples are never decoded); files shuffled when a seed is given."""
    keys = read_features(config)
    decoders = tfds.decode.PartialDecoding(
        {key: True for key in keys},
        decoders={
            key: tfds.decode.SkipDecoding() for key in ("frames", "scene_frames") if key in keys
        },
    )
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
    return builder.as_dataset(
        split=split,
        shuffle_files=shuffle_seed is not None,
        read_config=read_config,
        decoders=decoders,
    )


def create_train_iterator(
    config: ml_collections.ConfigDict,
    *,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    data_dir: str | None = None,
    state: dict[str, Any] | None = None,
    builder: tfds.core.DatasetBuilder | None = None,
) -> TrainIterator:
    """Training batches of ``config.data.train_split`` for this process.

    Args:
      config: a preset (configs/); batches hold ``config.batch_size // process_count`` examples.
      seed: non-negative; the same seed gives the same batches.
      process_index, process_count: default to ``jax.process_index()`` / ``jax.process_count()``.
      data_dir: passed to ``jovale_jax.datasets.get_builder`` (None: its default).
      state: a ``TrainIterator.get_state()`` to resume from.
      builder: a TFDS builder to read instead of the config's dataset.
    """
    process_index, process_count = _process_topology(config, process_index, process_count)
    if config.batch_size % process_count:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {process_count}")
    builder = builder or open_builder(config, data_dir)
    split = tfds.even_splits(config.data.train_split, process_count, drop_remainder=True)[
        process_index
    ]
    batch_size = config.batch_size // process_count
    return TrainIterator(
        lambda shuffle_seed: read_split(builder, split, config, shuffle_seed=shuffle_seed),
        config,
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        batches_per_epoch=builder.info.splits[split].num_examples // batch_size,
        state=state,
    )


def create_eval_iterator(
    config: ml_collections.ConfigDict,
    split: str,
    *,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    data_dir: str | None = None,
    builder: tfds.core.DatasetBuilder | None = None,
) -> EvalIterator:
    """Evaluation batches of ``split`` for this process: no shuffling, no augmentation.

    ``batch_size`` is the per-process batch. The split is divided evenly over the processes (sizes
    differ by at most one) and every process runs ``ceil(ceil(N / process_count) / batch_size)``
    batches, padding with masked examples; each example appears exactly once overall.
    """
    process_index, process_count = _process_topology(config, process_index, process_count)
    builder = builder or open_builder(config, data_dir)
    total = builder.info.splits[split].num_examples
    sub_split = tfds.even_splits(split, process_count)[process_index]
    num_batches = math.ceil(math.ceil(total / process_count) / batch_size)
    dataset = eval_dataset(
        read_split(builder, sub_split, config, shuffle_seed=None),
        config,
        batch_size=batch_size,
        num_batches=num_batches,
    )
    return EvalIterator(dataset, num_batches, builder.info.splits[sub_split].num_examples)
