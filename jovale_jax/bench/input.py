"""``launch.py bench input``: clips per second through the input pipeline, whole and by stage, per
host core, against the pipeline as it was before issue 17 in the same run, and the host cores that
one GPU needs.

Stages, each timed on its own over the same ``num_batches * config.batch_size`` training examples
with the pipeline's ``data.num_parallel_calls``, after their first element (which carries the
tf.data start-up: graph optimisation, thread pools):

* read: TFRecord shards -> parsed examples (files shuffled, JPEGs still encoded);
* decode video / decode scene / decode: JPEG decoding and resizing to the uint8 canvas
  (:func:`input_pipeline.decode_images`);
* audio features: AST's fbank of :mod:`jovale_jax.audio_features` in TF (the pipeline's path),
  and its numpy twin for comparison (one Python call per example);
* augment: flip and SpecAugment of already decoded examples;
* pipeline: :func:`input_pipeline.create_train_iterator` end to end (example shuffling, numpy
  batches); the latency of its first batch (tracing, filling the shuffle buffer) is reported apart.

"old" rows run the same stages with :func:`legacy_decode_images`, the frames as the pipeline made
them before issue 17 (float32, stretched onto the same canvas, normalised on the host), so the
ratios compare the code on the same data, machine load and output size. The two whole pipelines
are timed alternately ``rounds`` times and the best round of each is kept (the machine may be
shared). Each rate is given per second of wall time and per second of this process's CPU time
(all its threads): the latter is the rate of one core that the pipeline has to itself, which a
shared machine's wall clock cannot show.

Host cores per GPU = ``gpu_clips_per_s`` / (pipeline clips per CPU second). Its default is what an
H100 / H200 (989 dense bf16 TFLOP/s) trains at 40% MFU: a train step costs about 3x the forward
MACs of the trained parts plus 1x those of the frozen BLIP (``jovale_jax.flops``), 2 FLOPs each.

``fixture=True`` generates the tiny AVA-geometry fixture (:mod:`jovale_jax.datasets.ava_fixture`)
and builds it for the config into ``data_dir``, so the bench runs without AVA. The read stage's
examples are cached in memory before the decode, audio and augment stages run, so those measure
their own work only. Runs as process 0 of 1. Prints a table, then one JSON line.
"""

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jovale_jax import audio_features, input_pipeline

GPU_PEAK_TFLOPS = 989.0  # H100 / H200 SXM, dense bfloat16
GPU_MFU = 0.4
FIXTURE_DIR = "runs/data/ava_fixture"


def legacy_decode_images(
    example: dict[str, tf.Tensor], config: ml_collections.ConfigDict, *, training: bool = False
) -> dict:
    """The frames as the pipeline decoded them before issue 17 (the baseline of the ratios):
    float32, stretched onto the canvas (video bilinear, scene bicubic antialiased) and normalised
    on the host. ``training`` is accepted and ignored, as it was then."""
    del training
    model = config.model

    def frames(jpegs, num_frames, size, mean, std, method, antialias):
        x = input_pipeline.decode_jpegs(jpegs, num_frames=num_frames)
        x = tf.image.resize(x, size, method=method, antialias=antialias)
        return (tf.clip_by_value(x, 0.0, 255.0) / 255.0 - tf.constant(mean)) / tf.constant(std)

    out = {}
    if "video" in model.modalities:
        out["video"] = frames(
            example["frames"],
            model.video.num_frames,
            tuple(model.video.image_size),
            input_pipeline.VIDEOMAE_MEAN,
            input_pipeline.VIDEOMAE_STD,
            "bilinear",
            False,
        )
    if "scene" in model.modalities:
        size = (model.scene.image_size,) * 2
        out["scene"] = frames(
            example["scene_frames"],
            model.scene.num_frames,
            size,
            input_pipeline.BLIP_MEAN,
            input_pipeline.BLIP_STD,
            "bicubic",
            True,
        )
    return out


@contextlib.contextmanager
def _legacy_frames() -> Iterator[None]:
    """Makes the pipeline decode frames with :func:`legacy_decode_images` for a while."""
    new = input_pipeline.decode_images
    input_pipeline.decode_images = legacy_decode_images
    try:
        yield
    finally:
        input_pipeline.decode_images = new


class Rate(NamedTuple):
    first_s: float  # seconds to the first item
    per_s: float  # examples per second of wall time after it
    per_cpu_s: float  # examples per second of this process's CPU time (all threads) after it


def _throughput(items: Iterator[Any], num_items: int, examples_per_item: int) -> Rate:
    """Timings of ``num_items`` items, the first apart (it carries the start-up)."""
    start = time.perf_counter()
    next(items)
    first, cpu = time.perf_counter(), time.process_time()
    for _ in range(num_items - 1):
        next(items)
    examples = (num_items - 1) * examples_per_item
    return Rate(
        first - start,
        examples / (time.perf_counter() - first),
        examples / max(time.process_time() - cpu, 1e-9),
    )


def _stage_rate(
    examples: tf.data.Dataset, fn: Callable, config: ml_collections.ConfigDict, n: int
) -> Rate:
    """Timings of ``fn`` mapped over cached ``examples`` as the pipeline maps it."""
    stage = input_pipeline.prefetched(input_pipeline.parallel_map(examples, fn, config), config)
    return _throughput(iter(stage), n, 1)


def _numpy_rate(waveforms: list[np.ndarray], config: ml_collections.ConfigDict) -> Rate:
    """Examples/s of the numpy audio features, one Python call per example."""
    audio = config.model.audio

    def features() -> Iterator[np.ndarray]:
        for waveform in waveforms:
            yield audio_features.audio_features_numpy(
                waveform,
                num_frames=audio.num_frames,
                num_mel_bins=audio.num_mel_bins,
                window_type=audio.window_type,
            )

    return _throughput(features(), len(waveforms), 1)


def default_gpu_clips_per_s(config: ml_collections.ConfigDict) -> float:
    """Clips/s one H100 / H200 trains ``config.model`` at, at 40% bf16 MFU (module docstring)."""
    from jovale_jax import flops

    costs = flops.component_costs(config.model)
    frozen = costs["scene"]["gmacs"] if "scene" in costs and config.model.scene.frozen else 0.0
    step_gmacs = 3 * (costs["total"]["gmacs"] - frozen) + frozen
    return GPU_MFU * GPU_PEAK_TFLOPS * 1e3 / (2 * step_gmacs)


def fixture_builder(config: ml_collections.ConfigDict, data_dir: str) -> tfds.core.DatasetBuilder:
    """The fixture built for ``config`` in ``data_dir`` (generated and built when missing)."""
    from jovale_jax import datasets
    from jovale_jax.datasets import ava_fixture

    if datasets.builder_class(config) is not datasets.AvaBuilder:
        raise ValueError(
            f"the input bench's fixture is AVA data; config.dataset is {config.dataset!r}"
        )
    raw_dir = os.path.join(data_dir, "raw")
    if not os.path.exists(os.path.join(raw_dir, "ava_train_v2.2.csv")):
        ava_fixture.generate_raw(
            raw_dir, num_classes=config.model.num_classes, label_map=config.data.label_map
        )
    datasets.build_dataset(
        config.dataset,
        config=config,
        raw_dir=raw_dir,
        data_dir=data_dir,
        split=config.data.train_split,
    )
    return datasets.get_builder(config, data_dir)


def _pipeline_rate(config, builder, num_batches: int) -> Rate:
    iterator = input_pipeline.create_train_iterator(
        config, seed=config.seed, process_index=0, process_count=1, builder=builder
    )
    return _throughput(iterator, num_batches, config.batch_size)


def run_input_bench(
    config: ml_collections.ConfigDict,
    data_dir: str | None = None,
    num_batches: int = 20,
    *,
    builder: tfds.core.DatasetBuilder | None = None,
    fixture: bool = False,
    gpu_clips_per_s: float | None = None,
    rounds: int = 2,
) -> dict[str, Any]:
    """Times the input pipeline on ``config``'s training split; returns (and prints) the numbers.

    ``builder`` (a prepared TFDS builder) replaces ``jovale_jax.datasets.get_builder(config,
    data_dir)``; ``fixture`` builds the AVA-geometry fixture in ``data_dir`` (default
    ``FIXTURE_DIR``) instead. Needs ``num_batches >= 2`` and ``num_batches * config.batch_size``
    examples (the fixture has 36). ``gpu_clips_per_s`` defaults to
    :func:`default_gpu_clips_per_s`.
    """
    load_before = os.getloadavg()
    if fixture:
        builder = fixture_builder(config, data_dir or FIXTURE_DIR)
    builder = builder or input_pipeline.open_builder(config, data_dir)
    split = config.data.train_split
    n = num_batches * config.batch_size
    if num_batches < 2 or builder.info.splits[split].num_examples < n:
        raise ValueError(f"need num_batches >= 2 and {split} with >= {n} examples")
    modalities = config.model.modalities

    raw = input_pipeline.read_split(builder, split, config, shuffle_seed=config.seed).take(n)
    raw = raw.cache()
    rates = {"read": _throughput(iter(raw), n, 1)}  # and fills the cache
    old: dict[str, Rate] = {}
    for key, keys in (("decode video", ("video",)), ("decode scene", ("scene",))):
        if set(keys) & set(modalities):
            stage_config = config.copy_and_resolve_references()
            stage_config.model.modalities = keys
            rates[key] = _stage_rate(
                raw,
                lambda e, c=stage_config: input_pipeline.decode_images(e, c, training=True),
                config,
                n,
            )
    if {"video", "scene"} & set(modalities):
        rates["decode"] = _stage_rate(
            raw, lambda e: input_pipeline.decode_images(e, config, training=True), config, n
        )
        old["decode"] = _stage_rate(raw, lambda e: legacy_decode_images(e, config), config, n)
    if "audio" in modalities:
        rates["audio features (tf)"] = _stage_rate(
            raw, lambda e: input_pipeline.decode_audio(e, config), config, n
        )
        waveforms = [e["waveform"] for e in raw.as_numpy_iterator() if e["has_audio"]]
        if waveforms:
            rates["audio features (numpy)"] = _numpy_rate(waveforms, config)
    key = tf.constant(input_pipeline.epoch_seeds(config.seed, 0, 0)[1], tf.int64)
    for rows, decode in ((rates, input_pipeline.decode_images), (old, legacy_decode_images)):
        with _legacy_frames() if decode is legacy_decode_images else contextlib.nullcontext():
            decoded = input_pipeline.parallel_map(
                raw, lambda e: input_pipeline.decode_example(e, config, training=True), config
            ).cache()
            for _ in decoded:  # fills the cache
                pass
        rows["augment"] = _stage_rate(
            decoded.enumerate(),
            lambda i, x: input_pipeline.augment(x, config, tf.stack([key, i])),
            config,
            n,
        )
    new_rounds, old_rounds = [], []
    for _ in range(rounds):
        with _legacy_frames():
            old_rounds.append(_pipeline_rate(config, builder, num_batches))
        new_rounds.append(_pipeline_rate(config, builder, num_batches))
    rates["pipeline"] = max(new_rounds, key=lambda r: r.per_s)
    old["pipeline"] = max(old_rounds, key=lambda r: r.per_s)

    cores = len(os.sched_getaffinity(0))
    gpu = gpu_clips_per_s or default_gpu_clips_per_s(config)
    per_core = rates["pipeline"].per_cpu_s
    result = {
        "dataset": config.dataset,
        "split": split,
        "geometry": {
            "frames": config.model.video.num_frames,
            "frame_stride": config.data.frame_stride,
            "short_side": config.data.short_side,
            "canvas": list(config.model.video.image_size),
            "scene": config.model.scene.image_size,
        },
        "batch_size": config.batch_size,
        "num_examples": n,
        "num_parallel_calls": config.data.num_parallel_calls,
        "cores": cores,
        "examples_per_s": {stage: round(r.per_s, 1) for stage, r in rates.items()},
        "examples_per_cpu_s": {stage: round(r.per_cpu_s, 1) for stage, r in rates.items()},
        "old_examples_per_s": {stage: round(r.per_s, 1) for stage, r in old.items()},
        "old_examples_per_cpu_s": {stage: round(r.per_cpu_s, 1) for stage, r in old.items()},
        "ratio_to_old": {stage: round(rates[stage].per_s / old[stage].per_s, 2) for stage in old},
        "ratio_to_old_cpu": {
            stage: round(rates[stage].per_cpu_s / old[stage].per_cpu_s, 2) for stage in old
        },
        "pipeline_clips_per_s_per_core": round(per_core, 2),
        "old_pipeline_clips_per_s_per_core": round(old["pipeline"].per_cpu_s, 2),
        "pipeline_wall_clips_per_s_per_core": round(rates["pipeline"].per_s / cores, 2),
        "pipeline_first_batch_s": round(min(r.first_s for r in new_rounds), 2),
        "gpu_clips_per_s": round(gpu, 1),
        "host_cores_per_gpu": round(gpu / per_core, 1),
        "old_host_cores_per_gpu": round(gpu / old["pipeline"].per_cpu_s, 1),
        "load_avg_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    _print_table(result)
    print(json.dumps(result))
    return result


def _print_table(result: dict[str, Any]) -> None:
    g = result["geometry"]
    print(
        f"input pipeline on {result['dataset']}/{result['split']}: {result['num_examples']} "
        f"examples, batch {result['batch_size']}, {result['num_parallel_calls']} parallel calls, "
        f"{result['cores']} cores; {g['frames']} frames at stride {g['frame_stride']}, short side "
        f"{g['short_side']} on a {g['canvas'][0]} x {g['canvas'][1]} canvas, scene {g['scene']}"
    )
    print(
        f"{'stage':<26}{'clips/s':>9}{'per CPU s':>10}{'old':>8}{'old CPU':>9}{'ratio':>7}"
        f"{'CPU':>6}"
    )
    for stage, rate in result["examples_per_s"].items():
        row = f"{stage:<26}{rate:>9.1f}{result['examples_per_cpu_s'][stage]:>10.1f}"
        if stage in result["old_examples_per_s"]:
            row += (
                f"{result['old_examples_per_s'][stage]:>8.1f}"
                f"{result['old_examples_per_cpu_s'][stage]:>9.1f}"
                f"{result['ratio_to_old'][stage]:>7.2f}"
                f"{result['ratio_to_old_cpu'][stage]:>6.2f}"
            )
        print(row)
    print(f"{'pipeline first batch (s)':<28}{result['pipeline_first_batch_s']:>10.2f}")
    print(
        f"pipeline per core: {result['pipeline_clips_per_s_per_core']} clips per CPU second "
        f"(wall clock / {result['cores']} cores: "
        f"{result['pipeline_wall_clips_per_s_per_core']}); "
        f"one GPU at {result['gpu_clips_per_s']} clips/s needs {result['host_cores_per_gpu']} "
        f"host cores (old pipeline: {result['old_host_cores_per_gpu']}); load average "
        f"{result['load_avg_1min'][0]} -> {result['load_avg_1min'][1]}"
    )
