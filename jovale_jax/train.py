"""The training loop of JoVALE, readable top to bottom (big_vision's trainer is the model).

    python launch.py train --config configs/synthetic.py --workdir runs/demo

Sections, in the order things happen: distributed set-up and mesh; input pipeline; model and
sharded state (``state.create``); checkpoint restore; the jitted train step
(``programs.make_train_step``: explicit in/out shardings, the state donated, no host
synchronisation inside; dropout keys derived from (seed, step), so a resumed run is
bit-identical); the loop (progress line, JSON-lines metrics, TensorBoard, periodic checkpoints and
evaluation, SIGTERM/SIGINT and non-finite loss handling).

The loop never waits for the host when the input keeps up: ``config.device_prefetch`` batches are
already on the devices (sharded global arrays) while a step runs (:class:`DeviceBatches`, as
big_vision's ``n_prefetch``), and the step runs under ``jax.transfer_guard("disallow")``, so an
accidental host transfer inside it is an error. Logged metrics are means over the logging window,
with steps/s and ``input_wait``, the share of the window spent getting the next batch.
"""

from __future__ import annotations

import collections
import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
from jax.experimental import multihost_utils

from jovale_jax import distributed, optim, run_log, sharding
from jovale_jax.checkpoint import Checkpointer
from jovale_jax.programs import make_train_step
from jovale_jax.sharding import check_divisibility, global_batch
from jovale_jax.state import (
    ShardedModel,
    create,
    restore_newest,
)


class DeviceBatches:
    """Global batches put on the devices ``n_prefetch`` steps ahead (0: synchronous).

    ``make_array_from_process_local_data`` (:func:`sharding.global_batch`) returns before the copy
    ends, so the next batches travel while the step runs. Each batch carries the input pipeline's
    position after it: :attr:`state` is that of the last batch handed out, i.e. what a checkpoint
    must record (not the prefetched ones). :attr:`waited_s` sums the time spent in ``next``.
    """

    def __init__(self, data: Iterator, mesh, n_prefetch: int):
        self._data, self._mesh, self._ahead = data, mesh, n_prefetch
        self._queue: collections.deque = collections.deque()
        self.state = data.get_state()
        self.waited_s = 0.0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, jax.Array]:
        start = time.perf_counter()
        while len(self._queue) <= self._ahead:
            self._queue.append((global_batch(self._mesh, next(self._data)), self._data.get_state()))
        batch, self.state = self._queue.popleft()
        self.waited_s += time.perf_counter() - start
        return batch


class _Window:
    """The logging window: metrics of its steps (device arrays until logged), its wall time less
    checkpointing and evaluation, and the input wait in it."""

    def __init__(self, batches: DeviceBatches):
        self.batches = batches
        self.reset()

    def reset(self) -> None:
        self.pending: list[tuple[int, dict]] = []
        self.start, self.paused_s, self.waited0 = time.perf_counter(), 0.0, self.batches.waited_s

    def summary(self, fetched: list[dict]) -> dict[str, float]:
        """Means of ``fetched`` (the window's metrics on the host), steps/s and input wait."""
        seconds = max(time.perf_counter() - self.start - self.paused_s, 1e-9)
        return {
            "loss": sum(float(m["loss"]) for m in fetched) / len(fetched),
            "grad_norm": sum(float(m["grad_norm"]) for m in fetched) / len(fetched),
            "steps_per_s": len(fetched) / seconds,
            "input_wait": (self.batches.waited_s - self.waited0) / seconds,
        }


class _Stop:
    """SIGTERM (a scheduler's preemption) or SIGINT (Ctrl-C): the loop saves a checkpoint at the
    end of a step and returns; a second Ctrl-C interrupts at once. On several processes JAX's
    preemption service takes SIGTERM (Ctrl-C is passed on to it as SIGTERM) and makes every
    process stop at the same step (``multihost_utils.reached_preemption_sync_point``)."""

    signal: str | None = None

    @classmethod
    def install(cls):
        cls.signal = None
        several = jax.process_count() > 1

        def handler(number, frame):
            if cls.signal is not None and number == signal.SIGINT:
                raise KeyboardInterrupt
            cls.signal = signal.Signals(number).name
            if several:
                os.kill(os.getpid(), signal.SIGTERM)

        try:
            for number in (signal.SIGINT,) if several else (signal.SIGTERM, signal.SIGINT):
                signal.signal(number, handler)
        except ValueError:  # not the main thread: the caller handles signals
            pass

    @classmethod
    def at(cls, step: int) -> str | None:
        """The signal to stop for after ``step`` (call once per step, on every process)."""
        if jax.process_count() > 1:
            synced = multihost_utils.reached_preemption_sync_point(step)
            return (cls.signal or "SIGTERM") if synced else None
        return cls.signal


def topology(mesh) -> dict[str, Any]:
    """Where a checkpoint was written: process count and mesh axes (stored in its meta)."""
    return {"process_count": jax.process_count(), "mesh": dict(mesh.shape)}


def carry_input_state(meta: dict[str, Any], config) -> dict[str, Any]:
    """The checkpoint's input position for this run. On the same process count it is exact (the
    next batch is the one an uninterrupted run would read). On another process count the epoch and
    the number of global batches into it carry over, so no epoch is cut short or repeated, but the
    rest of that epoch is drawn from the new per-process shards in a new order. A changed global
    batch size is not carried over (the pipeline names the field)."""
    saved = meta["input_state"]
    count = jax.process_count()
    if (
        saved["process_count"] == count
        or saved["per_process_batch_size"] * saved["process_count"] != config.batch_size
    ):
        return saved
    print(
        f"input pipeline: checkpoint written on {saved['process_count']} processes, resuming on "
        f"{count}: epoch {saved['epoch']} continues after {saved['batches_in_epoch']} batches, "
        f"in a new order",
        flush=True,
    )
    return dict(saved, process_count=count, per_process_batch_size=config.batch_size // count)


def num_train_steps(config, steps_per_epoch: int) -> int:
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    if config.num_epochs <= 0:
        raise ValueError("set config.num_train_steps or config.num_epochs")
    return math.ceil(config.num_epochs * steps_per_epoch)


def train(
    config,
    workdir: str,
    *,
    init_from: str | None = None,
    data_dir: str | None = None,
    devices: Sequence[jax.Device] | None = None,
    evaluate_fn: Callable[[ShardedModel, int], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Train (or resume) in ``workdir``; returns {"step", "status", "setup": the final
    ShardedModel}."""
    from jovale_jax.input_pipeline import create_train_iterator

    _Stop.install()  # from here on, SIGTERM or SIGINT: save at the next step and return

    # --- mesh (several processes: launch.py has run jax.distributed.initialize) ---
    mesh = sharding.make_mesh(config.mesh_shape, devices)
    check_divisibility(config, mesh)

    # --- checkpoint manager, input pipeline, model and state; resume from the newest step that
    # restores (newer broken steps are named and set aside) ---
    data = create_train_iterator(config, seed=config.seed, data_dir=data_dir)  # checks shards
    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
    steps_per_epoch = data.batches_per_epoch
    total = num_train_steps(config, steps_per_epoch)
    # resuming: nothing is initialised, the checkpoint fills the parameters' placeholders (a step
    # that restores, or BrokenCheckpointError)
    resuming = ckpt.latest_step() is not None
    s = create(
        config,
        mesh=mesh,
        steps_per_epoch=steps_per_epoch,
        init_from=None if resuming else init_from,
        placeholders=resuming,
    )
    s, latest, meta = restore_newest(s, ckpt, distributed.all_agree)
    if latest is not None:
        data.set_state(carry_input_state(meta, config))
        saved = meta.get("topology", {})
        print(
            f"resumed from {ckpt.directory}/{latest}"
            + (f" (written on {saved}, now {topology(mesh)})" if saved != topology(mesh) else ""),
            flush=True,
        )
    train_step = make_train_step(s)
    schedules = optim.schedules(config, steps_per_epoch, s.state["params"])

    # --- loop ---
    writer = run_log.MetricsWriter(workdir, total)
    state, frozen = s.state, s.frozen
    step = int(state["step"])
    batches = DeviceBatches(data, mesh, config.device_prefetch)
    window = _Window(batches)
    pending_compile = True
    status = "done"

    def flush_pending() -> list[dict] | None:
        """The window's metrics on the host; None when one of them was not finite."""
        nonlocal status
        fetched = jax.device_get([m for _, m in window.pending])
        for (i, _), m in zip(window.pending, fetched):
            if not m["finite"]:
                status = f"non-finite loss or gradient at step {i}"
                return None
        return fetched

    def save(step_now: int) -> None:
        ckpt.save(
            step_now,
            {"state": state, "frozen": frozen},
            {
                "input_state": batches.state,
                "config": config.to_json_best_effort(),
                "topology": topology(mesh),
            },
        )

    while step < total:
        batch = next(batches)
        if pending_compile:  # every process compiles before any runs (multi-process: gloo)
            train_step, pending_compile = (
                distributed.compile_synced(train_step, state, frozen, batch),
                False,
            )
            window.reset()  # steps/s and the input wait count from the first compiled step
        with jax.transfer_guard("disallow"):  # the batch is on the devices: no copy in the step
            state, metrics = train_step(state, frozen, batch)
        step += 1
        stop = _Stop.at(step)
        window.pending.append((step, metrics))
        if step % config.log_every_steps == 0 or step == total:
            fetched = flush_pending()
            if fetched is None:
                break
            lrs = {f"lr_{k}": float(f(step - 1)) for k, f in schedules.items()}
            writer.write(step, {**window.summary(fetched), **lrs})
            window.reset()
        paused = time.perf_counter()
        if step % config.checkpoint_every_steps == 0 or step == total or stop:
            if flush_pending() is None:
                break
            save(step)
        if (
            evaluate_fn is not None
            and config.eval_every_steps
            and (step % config.eval_every_steps == 0 or step == total)
        ):
            writer.write(step, evaluate_fn(s.replace(state=state), step))
        window.paused_s += time.perf_counter() - paused
        if stop:
            status = f"stopped by {stop}"
            break
    ckpt.close()
    writer.close()
    if status.startswith("non-finite"):
        raise FloatingPointError(
            f"{status}; the last good checkpoint is step {ckpt.latest_step()} in {ckpt.directory}"
        )
    print(f"training {status} at step {step}", flush=True)
    return {"step": step, "status": status, "setup": s.replace(state=state)}
