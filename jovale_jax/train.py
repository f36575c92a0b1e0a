"""Sharded training of JoVALE, readable top to bottom (big_vision's trainer is the model).

    python launch.py train --config configs/synthetic.py --workdir runs/demo

Sections, in the order things happen: distributed set-up and mesh; input pipeline; model and
sharded state; optimizer; the jitted train step (explicit in/out shardings, the state donated, no
host synchronisation inside); checkpoint restore; the loop (progress line, JSON-lines metrics,
TensorBoard, periodic checkpoints and evaluation, SIGTERM and non-finite loss handling).

The train state is a dict of pure pytrees: ``params`` (trainable), ``opt_state`` and ``step``.
Frozen parameters (BLIP, fixed position tables) live in ``frozen`` and get neither gradients nor
optimizer state. Dropout keys are derived from (seed, step), so a resumed run is bit-identical.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jovale_jax import optim, sharding
from jovale_jax.checkpoint import Checkpointer, abstract_like
from jovale_jax.losses import sigmoid_focal_loss
from jovale_jax.models.jovale import JoVALE, expected_inputs

log = logging.getLogger(__name__)


def model_inputs(cfg, batch: dict[str, Any]) -> dict[str, Any]:
    """The entries of a pipeline batch that the model reads."""
    keys = set(expected_inputs(cfg)) | {"audio_mask", "frame_extent"}
    return {k: v for k, v in batch.items() if k in keys}


def trainable_filter(cfg):
    """Parameters that train: every nnx.Param except BLIP's when it is frozen."""
    if "scene" in cfg.modalities and cfg.scene.frozen:
        return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("scene_encoder")))
    return nnx.Param


@dataclasses.dataclass
class Setup:
    """Everything the loop, the evaluator and the benchmarks need, built once."""

    config: Any
    mesh: jax.sharding.Mesh
    graphdef: Any  # train mode (dropout on)
    eval_graphdef: Any
    state: dict[str, Any]  # params, opt_state, step
    frozen: Any
    rng_template: Any
    state_shardings: Any
    frozen_shardings: Any
    tx: optax.GradientTransformation
    steps_per_epoch: int
    train_step: Callable = None
    predict: Callable = None

    def model(self, train: bool = False) -> JoVALE:
        """The model with the current parameters (for inspection and export)."""
        return nnx.merge(self.graphdef if train else self.eval_graphdef, self.state["params"],
                         self.rng_template, self.frozen)


def make_sharded_model(config, mesh, init_from: str | None = None):
    """Create the model sharded over the mesh; optionally load converted pretrained weights."""
    rules = sharding.rules_from_config(config)
    model, _ = sharding.create_sharded(lambda: JoVALE(config.model, rngs=nnx.Rngs(config.seed)), mesh, rules)
    if init_from:
        from jovale_jax.convert import load_pretrained

        filled = load_pretrained(model, init_from)
        log.info("initialised from %s: %s", init_from, filled)
    return model


def setup(config, *, mesh: jax.sharding.Mesh, steps_per_epoch: int, init_from: str | None = None) -> Setup:
    """Build the model, the sharded train state, the optimizer and the jitted functions."""
    model = make_sharded_model(config, mesh, init_from)
    model.train()
    graphdef, params, rngs, frozen = nnx.split(model, trainable_filter(config.model), nnx.RngState, ...)
    model.eval()
    eval_graphdef = nnx.graphdef(model)
    params, rngs, frozen = (nnx.to_pure_dict(s) for s in (params, rngs, frozen))

    def shardings_of(tree):
        return jax.tree.map(lambda x: x.sharding, tree)

    tx = optim.make_optimizer(config, steps_per_epoch)
    params_sh = shardings_of(params)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    opt_sh = optimizer_state_shardings(jax.eval_shape(tx.init, params), params, params_sh, replicated)
    opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
    # Every leaf is placed exactly as the step's out_shardings say, so the second call does not
    # recompile (a cache miss costs a full compile).
    state = {"params": params, "opt_state": opt_state,
             "step": jax.device_put(jnp.zeros((), jnp.int32), replicated)}
    state_sh = {"params": params_sh, "opt_state": opt_sh, "step": replicated}
    s = Setup(config=config, mesh=mesh, graphdef=graphdef, eval_graphdef=eval_graphdef, state=state,
              frozen=frozen, rng_template=rngs, state_shardings=state_sh,
              frozen_shardings=shardings_of(frozen), tx=tx, steps_per_epoch=steps_per_epoch)
    s.train_step = make_train_step(s)
    s.predict = make_predict(s)
    return s


def optimizer_state_shardings(opt_shapes, params, params_sh, default):
    """Each optimizer-state leaf mirroring a parameter (Adam's moments) takes that parameter's
    sharding; the rest (counts) gets ``default``."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    by_path = {tuple(path): (leaf.shape, sh) for (path, leaf), sh in zip(flat, jax.tree.leaves(params_sh))}

    def pick(path, leaf):
        for start in range(len(path)):
            shape, sh = by_path.get(tuple(path[start:]), (None, None))
            if sh is not None and shape == leaf.shape:
                return sh
        return default

    return jax.tree_util.tree_map_with_path(pick, opt_shapes)


def step_rngs(template, seed: int, step: jax.Array):
    """Dropout keys for one step: a function of (seed, step, position), never carried over."""
    base = jax.random.fold_in(jax.random.key(seed), step)
    leaves, treedef = jax.tree.flatten(template)
    out = []
    for i, leaf in enumerate(leaves):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            out.append(jax.random.fold_in(base, i))
        else:
            out.append(jnp.zeros_like(leaf))
    return jax.tree.unflatten(treedef, out)


def make_train_step(s: Setup) -> Callable:
    """The jitted ``(state, frozen, batch) -> (state, metrics)`` with explicit shardings."""
    cfg = s.config

    def train_step(state, frozen, batch):
        rngs = step_rngs(s.rng_template, cfg.seed, state["step"])
        example_mask = batch.get("example_mask", jnp.ones(batch["box_mask"].shape[:1], bool))
        mask = batch["box_mask"] & example_mask[:, None]

        def loss_fn(params):
            model = nnx.merge(s.graphdef, params, rngs, frozen)
            logits = model(model_inputs(cfg.model, batch))
            return sigmoid_focal_loss(logits, batch["targets"], mask, alpha=cfg.focal_alpha,
                                      gamma=cfg.focal_gamma)

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = s.tx.update(grads, state["opt_state"], state["params"])
        grad_norm = optax.tree.norm(grads)
        metrics = {"loss": loss, "grad_norm": grad_norm,
                   "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
        new_state = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
                     "step": state["step"] + 1}
        return new_state, metrics

    replicated = jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec())
    return jax.jit(train_step, donate_argnums=0,
                   in_shardings=(s.state_shardings, s.frozen_shardings, data_sharding(s.mesh)),
                   out_shardings=(s.state_shardings, replicated))


def data_sharding(mesh) -> jax.sharding.NamedSharding:
    """Every batch entry: the leading axis over 'data' (a prefix for the whole batch dict)."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def make_predict(s: Setup) -> Callable:
    """The jitted eval-mode forward ``(params, frozen, batch) -> sigmoid scores (B, K, C)``."""
    cfg = s.config

    def predict(params, frozen, batch):
        model = nnx.merge(s.eval_graphdef, params, s.rng_template, frozen)
        return jax.nn.sigmoid(model(model_inputs(cfg.model, batch)))

    return jax.jit(predict, in_shardings=(s.state_shardings["params"], s.frozen_shardings,
                                          data_sharding(s.mesh)))


def global_batch(mesh, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Per-process numpy batch -> global arrays sharded over 'data' (multi-host safe)."""
    arrays = {k: v for k, v in local.items() if np.asarray(v).dtype.kind in "biuf"}
    return {k: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, np.ndim(v)), v)
            for k, v in arrays.items()}


def check_divisibility(config, mesh) -> None:
    """Batch and mesh sizes must agree; fail before compiling, with the numbers."""
    data = mesh.shape["data"]
    if config.batch_size % data:
        raise ValueError(f"config.batch_size {config.batch_size} does not divide over the 'data' mesh axis "
                         f"of size {data} (config.mesh_shape {tuple(config.mesh_shape)} -> {dict(mesh.shape)})")
    if config.batch_size % jax.process_count():
        raise ValueError(f"config.batch_size {config.batch_size} does not divide over "
                         f"{jax.process_count()} processes")


class _Stop:
    """Set by SIGTERM: the loop saves a checkpoint and returns."""

    requested = False

    @classmethod
    def install(cls):
        cls.requested = False
        try:
            signal.signal(signal.SIGTERM, lambda *_: setattr(cls, "requested", True))
        except ValueError:  # not the main thread: the caller handles signals
            pass


class MetricsWriter:
    """Console progress, ``metrics.jsonl`` and TensorBoard events; only process 0 writes."""

    def __init__(self, workdir: str, total_steps: int):
        self.enabled = jax.process_index() == 0
        self.total = total_steps
        self.t0, self.step0 = time.time(), None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.step0 is None:
            self.step0, self.t0 = step, time.time()
            rate = float("nan")
        else:
            rate = (step - self.step0) / max(time.time() - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        record = {"step": step, **metrics, "steps_per_s": rate}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)
        self.tb.flush()
        parts = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        eta_s = "?" if math.isnan(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
        print(f"step {step}/{self.total} {parts} | {rate:.2f} steps/s | ETA {eta_s}", flush=True)

    def close(self):
        if self.enabled:
            self.jsonl.close()
            self.tb.close()


def num_train_steps(config, steps_per_epoch: int) -> int:
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    if config.num_epochs <= 0:
        raise ValueError("set config.num_train_steps or config.num_epochs")
    return int(math.ceil(config.num_epochs * steps_per_epoch))


def train(config, workdir: str, *, init_from: str | None = None, data_dir: str | None = None,
          devices: Sequence[jax.Device] | None = None,
          evaluate_fn: Callable[[Setup, int], dict[str, float]] | None = None) -> dict[str, Any]:
    """Train (or resume) in ``workdir``; returns {"step", "params", "status", ...}."""
    from jovale_jax.input_pipeline import create_train_iterator

    _Stop.install()  # from here on, SIGTERM means: save at the next step and return

    # --- distributed set-up and mesh ---
    if os.environ.get("JAX_COORDINATOR_ADDRESS") and jax.process_count() == 1:
        jax.distributed.initialize()
    mesh = sharding.make_mesh(config.mesh_shape, devices)
    check_divisibility(config, mesh)

    # --- checkpoint manager and the input pipeline's position ---
    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
    latest = ckpt.latest_step()
    meta = ckpt.read_meta(latest) if latest is not None else None
    data = create_train_iterator(config, seed=config.seed, data_dir=data_dir,
                                 state=meta["input_state"] if meta else None)
    steps_per_epoch = data.batches_per_epoch
    total = num_train_steps(config, steps_per_epoch)

    # --- model, state, optimizer, step ---
    s = setup(config, mesh=mesh, steps_per_epoch=steps_per_epoch,
              init_from=None if latest is not None else init_from)
    if latest is not None:
        restored, _ = ckpt.restore(latest, abstract_like(
            {"state": s.state, "frozen": s.frozen}, {"state": s.state_shardings, "frozen": s.frozen_shardings}))
        s.state, s.frozen = restored["state"], restored["frozen"]
        print(f"resumed from {ckpt.directory}/{latest}", flush=True)
    schedules = optim.schedules(config, steps_per_epoch)

    # --- loop ---
    writer = MetricsWriter(workdir, total)
    step = int(s.state["step"])
    pending: list[tuple[int, dict]] = []
    status = "done"

    def flush_pending() -> bool:
        """Fetch the metrics of finished steps; False when one of them was not finite."""
        nonlocal status
        for i, m in pending:
            if not bool(m["finite"]):
                status = f"non-finite loss or gradient at step {i}"
                return False
        return True

    def save(step_now: int) -> None:
        ckpt.save(step_now, {"state": s.state, "frozen": s.frozen},
                  {"input_state": data.get_state(), "config": config.to_json_best_effort()})

    while step < total:
        batch = global_batch(mesh, next(data))
        s.state, metrics = s.train_step(s.state, s.frozen, batch)
        step += 1
        pending.append((step, metrics))
        if step % config.log_every_steps == 0 or step == total:
            if not flush_pending():
                break
            last = pending[-1][1]
            lrs = {f"lr_{k}": float(f(step - 1)) for k, f in schedules.items()}
            writer.write(step, {"loss": float(last["loss"]), "grad_norm": float(last["grad_norm"]), **lrs})
            pending.clear()
        if step % config.checkpoint_every_steps == 0 or step == total or _Stop.requested:
            if not flush_pending():
                break
            pending.clear()
            save(step)
        if evaluate_fn is not None and config.eval_every_steps and (
                step % config.eval_every_steps == 0 or step == total):
            writer.write(step, evaluate_fn(s, step))
        if _Stop.requested:
            status = "stopped by SIGTERM"
            break
    ckpt.close()
    writer.close()
    if status.startswith("non-finite"):
        raise FloatingPointError(f"{status}; the last good checkpoint is step {ckpt.latest_step()} "
                                 f"in {ckpt.directory}")
    print(f"training {status} at step {step}", flush=True)
    return {"step": step, "status": status, "setup": s}



def resolve_checkpoint(path: str) -> tuple[str, int]:
    """``W`` (newest step) or ``W/checkpoints/STEP`` -> (workdir, step)."""
    path = os.path.abspath(path)
    parent, last = os.path.split(path)
    if last.isdigit() and os.path.basename(parent) == "checkpoints":
        return os.path.dirname(parent), int(last)
    step = Checkpointer(path).latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {path}/checkpoints (train first: "
                                f"python launch.py train --config ... --workdir {path})")
    return path, step


def load_trained(config, checkpoint: str, *, devices: Sequence[jax.Device] | None = None) -> Setup:
    """A Setup holding a trained checkpoint's parameters, for evaluation and inference."""
    workdir, step = resolve_checkpoint(checkpoint)
    mesh = sharding.make_mesh(config.mesh_shape, devices)
    s = setup(config, mesh=mesh, steps_per_epoch=1)
    ckpt = Checkpointer(workdir)
    restored, _ = ckpt.restore(step, abstract_like(
        {"state": s.state, "frozen": s.frozen}, {"state": s.state_shardings, "frozen": s.frozen_shardings}))
    ckpt.close()
    s.state, s.frozen = restored["state"], restored["frozen"]
    return s
