"""``launch.py bench memory``: memory of the compiled train step, per device and per clip
(compiled, never run); :func:`memory_stats`, a compiled program's memory per device, which the
step and forward benches report too.

:func:`memory_report` builds the train state of a config on one device, compiles ``train_step``
for abstract batches of ``batch_size`` clips (``jax.jit(...).trace(...).lower().compile()``:
nothing executes) and reads XLA's ``memory_analysis()``. The backend compiling is the one measured:
on a CPU it is XLA:CPU's buffer assignment, a proxy for a GPU's (whose scheduler differs).
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jovale_jax import programs, sharding, state
from jovale_jax.flops import jaxpr_macs
from jovale_jax.models.batch import STEP, abstract_batch


def memory_stats(compiled: jax.stages.Compiled) -> dict[str, int]:
    """A compiled program's ``memory_analysis()`` per device, in bytes (empty when the backend
    gives none): ``arguments``, ``outputs``, ``aliased`` (donated inputs reused by the outputs),
    ``temporaries``, ``generated_code`` and ``total`` = arguments + outputs - aliased +
    temporaries + code."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    out = {
        "arguments": stats.argument_size_in_bytes,
        "outputs": stats.output_size_in_bytes,
        "aliased": stats.alias_size_in_bytes,
        "temporaries": stats.temp_size_in_bytes,
        "generated_code": stats.generated_code_size_in_bytes,
    }
    out["total"] = (
        out["arguments"]
        + out["outputs"]
        - out["aliased"]
        + out["temporaries"]
        + out["generated_code"]
    )
    return out


def tree_bytes(tree: Any) -> int:
    """Bytes of every array (or ShapeDtypeStruct) in ``tree``."""
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def memory_report(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, Any]:
    """Memory of ``config``'s train step with ``batch_size`` clips on one device, in bytes.

    Keys: ``params`` (trainable), ``opt_state``, ``frozen`` (BLIP, position tables), ``batch``,
    XLA's ``arguments``, ``outputs``, ``aliased`` (donated state reused by the outputs),
    ``temporaries`` (activations kept for the backward pass, workspace) and ``generated_code``;
    ``total`` = arguments + outputs - aliased + temporaries + code, ``per_clip`` = total /
    batch_size (everything included, as "clips per GPU" counts it); ``gmacs_per_clip``: the
    step's multiply-accumulates (rematerialised recomputation included); and what was measured
    (``batch_size``, ``dtype``, ``remat_policy``, ``attention_impl``, ``backend``).
    """
    if batch_size < 1:
        raise ValueError(f"memory_report: batch_size must be >= 1, got {batch_size}")
    config = config.copy_and_resolve_references()
    config.batch_size = int(batch_size)
    config.mesh_shape = (1, 1)
    mesh = sharding.make_mesh(config.mesh_shape, jax.devices()[:1])
    s = state.create(config, mesh=mesh, steps_per_epoch=1)
    shapes = abstract_batch(config.model, batch_size, uses=STEP)  # what the step reads
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (s.state, s.frozen, shapes)
    )
    traced = programs.make_train_step(s).trace(*abstract)
    stats = memory_stats(traced.lower().compile())
    if not stats:
        raise RuntimeError(f"the {jax.default_backend()} backend reports no memory analysis")
    report = {
        "batch_size": int(batch_size),
        "dtype": str(s.model().dtype),
        "remat_policy": config.model.remat_policy,
        "attention_impl": config.model.attention_impl,
        "backend": jax.default_backend(),
        "params": tree_bytes(s.state["params"]),
        "opt_state": tree_bytes(s.state["opt_state"]),
        "frozen": tree_bytes(s.frozen),
        "batch": tree_bytes(shapes),
        **stats,
        "gmacs_per_clip": jaxpr_macs(traced.jaxpr) / 1e9 / batch_size,
    }
    report["per_clip"] = report["total"] / batch_size
    return report


def print_memory(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, Any]:
    """``bench memory``: :func:`memory_report` as a table (GB) and one JSON line; returns it."""
    r = memory_report(config, batch_size)
    print(
        f"train step, batch {r['batch_size']} on one {r['backend']} device, {r['dtype']}, "
        f"remat_policy {r['remat_policy']}:"
    )
    for key in (
        "params",
        "opt_state",
        "frozen",
        "batch",
        "arguments",
        "outputs",
        "aliased",
        "temporaries",
        "generated_code",
        "total",
        "per_clip",
    ):
        print(f"  {key:<15} {r[key] / 1e9:10.3f} GB")
    print(f"  {'GMACs per clip':<15} {r['gmacs_per_clip']:10.1f}")
    print(json.dumps({"bench": "memory", **r}))
    return r
