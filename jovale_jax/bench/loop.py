"""``launch.py bench loop``: the train loop fed by the real input pipeline against the same loop on
one batch that stays on the devices.

Both run the trainer's own pieces: :func:`jovale_jax.programs.make_train_step` (compiled once,
timed apart) under the loop's transfer guard, and, for the fed loop, :class:`train.DeviceBatches`
with ``config.device_prefetch`` batches in flight. The two loops alternate ``config.bench.rounds``
times over ``config.bench.loop_steps`` steps each, after two untimed steps of each, and the best
round of each is kept (the machine may be shared); ``ratio`` = fed seconds / resident seconds
(1.0: input costs nothing; the goal is at most 1.05). ``input_wait`` is the share of the fed
loop's time spent in ``next`` (host pipeline plus the start of the copy).

On a CPU the "device" is the host's own cores, so input work takes cores from the step and the
ratio is an upper bound of what a GPU run sees. ``fixture=True`` builds the AVA-layout fixture of
``bench input`` (real H.264 videos, AVA's raw layout) for the config; otherwise the config's
dataset is read from ``data_dir``. Prints a line, then one JSON line.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections

from jovale_jax import distributed, input_pipeline, programs, sharding, train
from jovale_jax.sharding import check_divisibility
from jovale_jax.state import create


def run_loop_bench(
    config: ml_collections.ConfigDict,
    data_dir: str | None = None,
    *,
    fixture: bool = False,
) -> dict[str, Any]:
    """Times the fed and the resident loop (module docstring); returns and prints the numbers."""
    from jovale_jax.bench.input import FIXTURE_DIR, fixture_builder

    load_before = os.getloadavg()
    bench = config.bench
    builder = fixture_builder(config, data_dir or FIXTURE_DIR) if fixture else None
    builder = builder or input_pipeline.open_builder(config, data_dir)
    mesh = sharding.make_mesh(config.mesh_shape)
    check_divisibility(config, mesh)
    data = input_pipeline.create_train_iterator(
        config, seed=config.seed, process_index=0, process_count=1, builder=builder
    )
    s = create(config, mesh=mesh, steps_per_epoch=data.batches_per_epoch)
    feed = train.DeviceBatches(data, mesh, config.device_prefetch)
    resident = next(feed)
    start = time.perf_counter()
    step = distributed.compile_synced(programs.make_train_step(s), s.state, s.frozen, resident)
    compile_s = time.perf_counter() - start
    state, frozen = s.state, s.frozen

    def loop(batches: Iterator, steps: int) -> float:
        nonlocal state
        start = time.perf_counter()
        for _ in range(steps):
            batch = next(batches)
            with jax.transfer_guard("disallow"):
                state, _ = step(state, frozen, batch)
        jax.block_until_ready(state)
        return time.perf_counter() - start

    same = itertools.repeat(resident)
    loop(feed, 2), loop(same, 2)  # warm-up: the pipeline's start, the first runs
    fed, kept, waits = [], [], []
    for _ in range(bench.rounds):
        waited = feed.waited_s
        fed.append(loop(feed, bench.loop_steps))
        waits.append((feed.waited_s - waited) / fed[-1])
        kept.append(loop(same, bench.loop_steps))
    best = min(range(len(fed)), key=fed.__getitem__)
    result = {
        "bench": "loop",
        "dataset": "ava_fixture" if fixture else config.dataset,
        "batch_size": config.batch_size,
        "device_prefetch": config.device_prefetch,
        "steps_per_round": bench.loop_steps,
        "rounds": bench.rounds,
        "compile_s": round(compile_s, 2),
        "fed_steps_per_s": round(bench.loop_steps / fed[best], 3),
        "resident_steps_per_s": round(bench.loop_steps / min(kept), 3),
        "ratio": round(fed[best] / min(kept), 3),
        "input_wait": round(waits[best], 3),
        "devices": jax.device_count(),
        "platform": jax.default_backend(),
        "load_avg_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    print(
        f"train loop on {result['dataset']}, batch {config.batch_size}, "
        f"{config.device_prefetch} batches prefetched: fed {result['fed_steps_per_s']} steps/s, "
        f"device-resident batch {result['resident_steps_per_s']} steps/s, ratio "
        f"{result['ratio']} (goal <= 1.05), input wait {result['input_wait']:.1%}; compile "
        f"{result['compile_s']} s; load {result['load_avg_1min']}"
    )
    print(json.dumps(result))
    return result
