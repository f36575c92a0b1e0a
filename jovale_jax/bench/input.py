"""``launch.py bench input``: examples per second through the input pipeline, whole and by stage.

Stages, each timed on its own over the same ``num_batches * config.batch_size`` training examples
with the pipeline's ``data.num_parallel_calls``, after their first element (which carries the
tf.data start-up: graph optimisation, thread pools):

* read: TFRecord shards -> parsed examples (files shuffled, JPEGs still encoded);
* decode: JPEG decoding, resizing and normalisation of the video and scene frames;
* audio features: the log-mel of :mod:`jovale_jax.audio_features` in TF (the pipeline's path),
  and the librosa reference for comparison (one Python call per example);
* augment: flip and SpecAugment of already decoded examples;
* pipeline: :func:`input_pipeline.create_train_iterator` end to end (example shuffling, numpy
  batches); the latency of its first batch (tracing, filling the shuffle buffer) is reported apart.

The read stage's examples are cached in memory before the decode, audio and augment stages run,
so those measure their own work only. Runs as process 0 of 1. Prints a table, then one JSON line.
"""

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jovale_jax import audio_features, input_pipeline


def _throughput(
    items: Iterator[Any], num_items: int, examples_per_item: int
) -> tuple[float, float]:
    """(seconds to the first item, examples/s over the other ``num_items - 1`` items)."""
    start = time.perf_counter()
    next(items)
    first = time.perf_counter()
    for _ in range(num_items - 1):
        next(items)
    return first - start, (num_items - 1) * examples_per_item / (time.perf_counter() - first)


def _stage_rate(
    examples: tf.data.Dataset, fn: Callable, config: ml_collections.ConfigDict, n: int
) -> float:
    """Examples/s of ``fn`` mapped over cached ``examples`` as the pipeline maps it."""
    stage = input_pipeline.parallel_map(examples, fn, config).prefetch(config.data.prefetch)
    return _throughput(iter(stage), n, 1)[1]


def _librosa_rate(waveforms: list[np.ndarray], config: ml_collections.ConfigDict) -> float:
    """Examples/s of the librosa reference features, one Python call per example."""
    audio = config.model.audio

    def features() -> Iterator[np.ndarray]:
        for waveform in waveforms:
            yield audio_features.audio_features_numpy(
                waveform, num_frames=audio.num_frames, num_mel_bins=audio.num_mel_bins
            )

    return _throughput(features(), len(waveforms), 1)[1]  # the first call compiles numba code


def run_input_bench(
    config: ml_collections.ConfigDict,
    data_dir: str | None = None,
    num_batches: int = 20,
    *,
    builder: tfds.core.DatasetBuilder | None = None,
) -> dict[str, Any]:
    """Times the input pipeline on ``config``'s training split; returns (and prints) the numbers.

    ``builder`` (a prepared TFDS builder) replaces ``jovale_jax.datasets.get_builder(config,
    data_dir)``. Needs ``num_batches >= 2`` and ``num_batches * config.batch_size`` examples.
    """
    builder = builder or input_pipeline.open_builder(config, data_dir)
    split = config.data.train_split
    n = num_batches * config.batch_size
    if num_batches < 2 or builder.info.splits[split].num_examples < n:
        raise ValueError(f"need num_batches >= 2 and {split} with >= {n} examples")
    modalities = config.model.modalities

    raw = input_pipeline.read_split(builder, split, config, shuffle_seed=config.seed).take(n)
    raw = raw.cache()
    rates = {"read": _throughput(iter(raw), n, 1)[1]}  # and fills the cache
    if {"video", "scene"} & set(modalities):
        rates["decode"] = _stage_rate(
            raw, lambda e: input_pipeline.decode_images(e, config), config, n
        )
    if "audio" in modalities:
        rates["audio features (tf)"] = _stage_rate(
            raw, lambda e: input_pipeline.decode_audio(e, config), config, n
        )
        waveforms = [e["waveform"] for e in raw.as_numpy_iterator() if e["has_audio"]]
        if waveforms:
            rates["audio features (librosa)"] = _librosa_rate(waveforms, config)
    decoded = input_pipeline.parallel_map(
        raw, lambda e: input_pipeline.decode_example(e, config), config
    ).cache()
    for _ in decoded:  # fills the cache
        pass
    key = tf.constant(input_pipeline.epoch_seeds(config.seed, 0, 0)[1], tf.int64)
    rates["augment"] = _stage_rate(
        decoded.enumerate(),
        lambda i, x: input_pipeline.augment(x, config, tf.stack([key, i])),
        config,
        n,
    )
    iterator = input_pipeline.create_train_iterator(
        config, seed=config.seed, process_index=0, process_count=1, builder=builder
    )
    first_batch_s, rates["pipeline"] = _throughput(iterator, num_batches, config.batch_size)

    result = {
        "dataset": config.dataset,
        "split": split,
        "batch_size": config.batch_size,
        "num_examples": n,
        "num_parallel_calls": config.data.num_parallel_calls,
        "examples_per_s": {stage: round(rate, 1) for stage, rate in rates.items()},
        "pipeline_first_batch_s": round(first_batch_s, 2),
    }
    _print_table(result)
    print(json.dumps(result))
    return result


def _print_table(result: dict[str, Any]) -> None:
    print(
        f"input pipeline on {result['dataset']}/{result['split']}: {result['num_examples']} "
        f"examples, batch {result['batch_size']}, {result['num_parallel_calls']} parallel calls"
    )
    print(f"{'stage':<28}{'examples/s':>12}")
    for stage, rate in result["examples_per_s"].items():
        print(f"{stage:<28}{rate:>12.1f}")
    print(f"{'pipeline first batch (s)':<28}{result['pipeline_first_batch_s']:>12.2f}")
