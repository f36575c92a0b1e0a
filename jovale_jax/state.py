"""The model on a mesh, built once: :class:`ShardedModel`, and the ways to make one.

:func:`create` builds a :class:`ShardedModel` for training (the sharded parameters, frozen
parameters, optimizer state and the jitted eval-mode ``predict`` of ``programs.py``);
:func:`load_trained` builds one holding a checkpoint's parameters only; :func:`restore_newest`
fills one from the newest checkpoint that restores. The trainer (``train.py``) replaces ``state``
as it steps (``dataclasses.replace``); nothing assigns fields afterwards.

The train state is a dict of pure pytrees: ``params`` (trainable), ``opt_state`` and ``step``.
Frozen parameters (BLIP, fixed position tables) live in ``frozen`` and get neither gradients nor
optimizer state.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jovale_jax import checkpoint, optim, programs, sharding
from jovale_jax.checkpoint import abstract_like
from jovale_jax.models.jovale import JoVALE


def trainable_filter(cfg):
    """Parameters that train: every nnx.Param except BLIP's when it is frozen."""
    if "scene" in cfg.modalities and cfg.scene.frozen:
        return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("scene_encoder")))
    return nnx.Param


@dataclasses.dataclass(frozen=True, eq=False)
class ShardedModel:
    """The model sharded on a mesh: its graph (train and eval mode), its parameters (with the
    optimizer state when built for training), frozen parameters, their shardings and the jitted
    ``predict``. Everything the loop, the evaluator, ``detect`` and the benchmarks need, built
    once."""

    config: Any
    mesh: jax.sharding.Mesh
    graphdef: Any  # train mode (dropout on)
    eval_graphdef: Any
    state: dict[str, Any]  # params, opt_state, step
    frozen: Any
    rng_template: Any
    state_shardings: Any
    frozen_shardings: Any
    tx: optax.GradientTransformation | None  # None: loaded for inference (load_trained)
    steps_per_epoch: int
    predict: Callable  # jitted (params, frozen, global batch) -> sigmoid scores (B, K, C)

    def model(self, train: bool = False) -> JoVALE:
        """The model with the current parameters (for inspection and export)."""
        return nnx.merge(
            self.graphdef if train else self.eval_graphdef,
            self.state["params"],
            self.rng_template,
            self.frozen,
        )

    def replace(self, **changes) -> ShardedModel:
        """A copy with some fields replaced (the trainer's new ``state``, restored parameters)."""
        return dataclasses.replace(self, **changes)


def make_sharded_model(
    config, mesh, init_from: str | None = None, *, placeholders: bool = False
) -> JoVALE:
    """Create the model sharded over the mesh; optionally load converted pretrained weights.
    ``placeholders``: shapes and shardings only, for a checkpoint to fill
    (``sharding.create_sharded``)."""
    rules = sharding.rules_from_config(config)
    model, _ = sharding.create_sharded(
        lambda: JoVALE(config.model, rngs=nnx.Rngs(config.seed)),
        mesh,
        rules,
        placeholders=placeholders,
    )
    if init_from:
        from jovale_jax.convert import load_pretrained

        filled = load_pretrained(model, init_from)
        kept = f"; initialised at random: {', '.join(filled['not_in_checkpoint'])}"
        print(
            f"pretrained weights from {init_from}: {', '.join(filled['filled']) or 'none'}"
            + (kept if filled["not_in_checkpoint"] else ""),
            flush=True,
        )
    return model


def optimizer_state_shardings(opt_shapes, params, params_sh, default):
    """Each optimizer-state leaf mirroring a parameter (Adam's moments) takes that parameter's
    sharding; the rest (counts) gets ``default``."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    by_path = {
        tuple(path): (leaf.shape, sh) for (path, leaf), sh in zip(flat, jax.tree.leaves(params_sh))
    }

    def pick(path, leaf):
        for start in range(len(path)):
            shape, sh = by_path.get(tuple(path[start:]), (None, None))
            if sh is not None and shape == leaf.shape:
                return sh
        return default

    return jax.tree_util.tree_map_with_path(pick, opt_shapes)


def create(
    config,
    *,
    mesh: jax.sharding.Mesh,
    steps_per_epoch: int,
    init_from: str | None = None,
    placeholders: bool = False,
) -> ShardedModel:
    """Build the model, the sharded train state, the optimizer and the jitted ``predict``.
    ``placeholders``: the parameters and optimizer state are ShapeDtypeStructs with their
    shardings, a target for a checkpoint to restore onto (nothing initialised)."""
    s = _model_state(config, mesh, init_from, placeholders=placeholders)
    params = s.state["params"]
    tx = optim.make_optimizer(config, steps_per_epoch, params)
    replicated = sharding.replicated(mesh)
    opt_sh = optimizer_state_shardings(
        jax.eval_shape(tx.init, params), params, s.state_shardings["params"], replicated
    )
    if placeholders:
        opt_state = abstract_like(jax.eval_shape(tx.init, params), opt_sh)
        step = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
    else:
        opt_state = (
            jax.device_put(tx.init(params), opt_sh)  # op by op, as the parameters
            if sharding.is_local(mesh)
            else jax.jit(tx.init, out_shardings=opt_sh)(params)
        )
        # Every leaf is placed exactly as the step's out_shardings say, so the second call does
        # not recompile (a cache miss costs a full compile).
        step = jax.jit(lambda: jnp.zeros((), jnp.int32), out_shardings=replicated)()
    state = {"params": params, "opt_state": opt_state, "step": step}
    state_sh = {"params": s.state_shardings["params"], "opt_state": opt_sh, "step": replicated}
    return s.replace(state=state, state_shardings=state_sh, tx=tx, steps_per_epoch=steps_per_epoch)


def _model_state(
    config, mesh, init_from: str | None = None, *, placeholders: bool = False
) -> ShardedModel:
    """The sharded model's parameters and ``predict``, without an optimizer (``tx`` None,
    ``state`` holds ``params`` only); ``placeholders``: see :func:`create`."""
    model = make_sharded_model(config, mesh, init_from, placeholders=placeholders)
    model.train()
    graphdef, params, rngs, frozen = nnx.split(
        model, trainable_filter(config.model), nnx.RngState, ...
    )
    model.eval()
    eval_graphdef = nnx.graphdef(model)
    params, rngs, frozen = (nnx.to_pure_dict(s) for s in (params, rngs, frozen))

    def shardings_of(tree):
        return jax.tree.map(lambda x: x.sharding, tree)

    params_sh, frozen_sh = shardings_of(params), shardings_of(frozen)
    return ShardedModel(
        config=config,
        mesh=mesh,
        graphdef=graphdef,
        eval_graphdef=eval_graphdef,
        state={"params": params},
        frozen=frozen,
        rng_template=rngs,
        state_shardings={"params": params_sh},
        frozen_shardings=frozen_sh,
        tx=None,
        steps_per_epoch=1,
        predict=programs.make_predict(config, mesh, eval_graphdef, rngs, params_sh, frozen_sh),
    )


def restore_newest(
    s: ShardedModel, ckpt: checkpoint.Checkpointer, agree=lambda ok: ok
) -> tuple[ShardedModel, int | None, dict[str, Any] | None]:
    """``s`` with the train state and frozen parameters of the newest checkpoint that restores
    (``Checkpointer.restore_newest``: broken newer steps are set aside), its step and meta;
    ``s`` itself, None, None when there is no checkpoint."""
    target = abstract_like(
        {"state": s.state, "frozen": s.frozen},
        {"state": s.state_shardings, "frozen": s.frozen_shardings},
    )
    try:
        found = ckpt.restore_newest(target, agree)
    except checkpoint.MismatchError as e:
        raise named_fields(e, ckpt.directory, ckpt.latest_step(), s.config) from None
    if found is None:
        return s, None, None
    step, restored, meta = found
    return s.replace(state=restored["state"], frozen=restored["frozen"]), step, meta


def named_fields(error: Exception, directory: str, step: int, config) -> Exception:
    """A checkpoint that does not fit ``config``: the error naming the ``config.model`` fields
    it was written with that differ, and the overrides that read it (``error`` when none
    differ)."""
    saved = json.loads(checkpoint.read_step_meta(directory, step).get("config", "{}"))
    now = json.loads(config.to_json_best_effort())["model"]
    fields = _differences(saved.get("model", {}), now, "model")
    if not fields:
        return error
    named = ", ".join(f"{f} {a} (this config: {b})" for f, (a, b) in fields.items())
    overrides = " ".join(f"--config.{f}={a}" for f, (a, _) in fields.items())
    return ValueError(f"written with {named}: read it with {overrides}; {error}")


def _differences(saved: dict, now: dict, prefix: str) -> dict[str, tuple]:
    """{dotted field: (saved, now)} for the leaves of two config dicts that differ."""
    out = {}
    for key in sorted(set(saved) & set(now)):
        a, b, field = saved[key], now[key], f"{prefix}.{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(_differences(a, b, field))
        elif a != b:
            out[field] = (a, b)
    return out


def resolve_checkpoint(path: str) -> tuple[str, int]:
    """``W`` (newest step) or ``W/checkpoints/STEP`` -> (workdir, step); reads folder names
    only (``checkpoint.resolve``)."""
    directory, step = checkpoint.resolve(path)
    return os.path.dirname(directory), step


def load_trained(
    config, checkpoint_path: str, *, devices: Sequence[jax.Device] | None = None
) -> ShardedModel:
    """A ShardedModel holding a trained checkpoint's parameters, for evaluation and inference.
    Parameters only: no optimizer is built and the optimizer state is not read; nothing is
    written. ``state["step"]`` is the step restored."""
    directory, step = checkpoint.resolve(checkpoint_path)
    s = _model_state(config, sharding.make_mesh(config.mesh_shape, devices), placeholders=True)
    target = {"state": {"params": s.state["params"]}, "frozen": s.frozen}
    shardings = {"state": s.state_shardings, "frozen": s.frozen_shardings}
    try:
        got = checkpoint.read_items(directory, step, abstract_like(target, shardings))
    except checkpoint.MismatchError as e:
        raise named_fields(e, directory, step, config) from None
    return s.replace(state={"params": got["state"]["params"], "step": step}, frozen=got["frozen"])
