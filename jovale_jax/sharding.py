"""The device mesh, logical axis names and the rules that map them to mesh axes.

Parameters are annotated where they are created with logical names (``EMBED``, ``MLP``, ``HEADS``
...); the config's ``sharding_rules`` map each name to a mesh axis (``'data'`` or ``'model'``) or to
``None`` (replicated). ``config.fsdp`` shards ``EMBED`` over ``'data'`` as well (fully sharded data
parallel). The same code runs on one CPU, on fake CPU devices and on GPUs.

A per-process host batch becomes global arrays sharded over ``'data'`` with :func:`global_batch`
and comes back with :func:`to_host`; :func:`check_divisibility` says when the batch does not
divide over the mesh and the processes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from flax.core import spmd
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Logical axis names used by parameters and (BATCH) activations.
BATCH = "batch"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"
CLASSES = "classes"
CONV_IN = "conv_in"

MESH_AXES = ("data", "model")


def mesh_shape_for(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Resolve a ``-1`` in ``config.mesh_shape`` and check the product equals the device count."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(
            f"config.mesh_shape must have {len(MESH_AXES)} entries {MESH_AXES}, got {shape}"
        )
    if shape.count(-1) > 1:
        raise ValueError(f"config.mesh_shape {shape}: at most one entry may be -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"config.mesh_shape {shape} does not divide the {num_devices} devices")
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"config.mesh_shape {shape} needs {math.prod(shape)} devices, "
            f"but {num_devices} are available"
        )
    return shape


def make_mesh(mesh_shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'model') mesh with Auto axes (``jax.make_mesh`` defaults to Explicit ones)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape_for(mesh_shape, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def rules_from_config(config) -> tuple[tuple[str, str | None], ...]:
    """The config's logical-to-mesh rules, with ``EMBED`` over 'data' when ``config.fsdp``."""
    rules = tuple(
        (str(name), None if axis is None else str(axis)) for name, axis in config.sharding_rules
    )
    if config.fsdp:
        rules = tuple((n, "data") if n == EMBED else (n, a) for n, a in rules)
    return rules


def logical_to_spec(
    axes: Sequence[str | None] | None,
    rules,
    shape: Sequence[int] = (),
    mesh: Mesh | None = None,
    strict_name: str | None = None,
) -> PartitionSpec:
    """Map logical names to a PartitionSpec; a mesh axis is used at most once per array.

    A mesh axis that does not divide its dimension leaves that dimension replicated, or, with
    ``strict_name`` (parameters: a wrong ``config.mesh_shape`` would otherwise give a slow run of
    replicated weights, not an error), raises naming the array, the dimension and the mesh axis.
    The 'data' axis stays lenient: under ``config.fsdp`` small parameters (SlowFast's 8-channel
    Fast BatchNorm vectors) are replicated, as FSDP does with what does not divide.
    """
    if not axes:
        return PartitionSpec()
    table = dict(rules)
    used: set[str] = set()
    out = []
    for i, name in enumerate(axes):
        axis = table.get(name) if name is not None else None
        if name is not None and name not in table:
            raise ValueError(f"logical axis {name!r} has no entry in config.sharding_rules")
        ok = axis is not None and axis not in used
        if ok and mesh is not None and shape:
            ok = shape[i] % mesh.shape[axis] == 0
            if not ok and strict_name is not None and axis != "data":
                raise ValueError(
                    f"{strict_name}: dimension {i} ({name!r}, size {shape[i]}) is not divisible by "
                    f"mesh axis {axis!r} of size {mesh.shape[axis]} (mesh {dict(mesh.shape)}, "
                    f"config.mesh_shape / config.sharding_rules); pick a mesh axis size that "
                    f"divides {shape[i]} or map {name!r} to None in config.sharding_rules"
                )
        out.append(axis if ok else None)
        if ok:
            used.add(axis)
    return PartitionSpec(*out)


def state_shardings(state: nnx.State, mesh: Mesh, rules) -> nnx.State:
    """NamedShardings for every variable of an (abstract) nnx state, from its ``logical_axes``.

    A mesh axis that does not divide the dimension it is mapped to is an error naming the variable
    (:func:`logical_to_spec` with ``strict_name``).
    """

    def one(path, var):
        axes = var.get_metadata().get("logical_axes") if isinstance(var, nnx.Variable) else None
        shape = getattr(var, "shape", ())
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        return NamedSharding(mesh, logical_to_spec(axes, rules, shape, mesh, strict_name=name))

    return jax.tree.map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def create_sharded(
    make_model: Callable[[], nnx.Module], mesh: Mesh, rules, *, placeholders: bool = False
):
    """Create a module with every variable placed as the rules say; returns (model, shardings).

    ``placeholders``: every variable but the RNG keys is a ShapeDtypeStruct carrying its sharding,
    for a checkpoint to fill: nothing is initialised (no initialiser compiled, no second copy of
    the parameters in memory while the checkpoint is read). The keys are computed: XLA drops the
    unused initialisers from that program."""
    if not placeholders and is_local(mesh):
        # Op by op, then placed: each initialiser's ops compile once per shape and process and
        # serve every model built after (a tiny model 3.5 s, the next ones 0.2-0.5 s; one
        # program of all the initialisers compiles anew for each model).
        graphdef, state = nnx.split(make_model())
        shardings = state_shardings(state, mesh, rules)
        return nnx.merge(graphdef, jax.device_put(state, shardings)), shardings
    abstract = nnx.eval_shape(make_model)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh, rules)
    if not placeholders:  # a mesh over several processes: one program makes each one's shards
        state = jax.jit(lambda: nnx.state(make_model()), out_shardings=shardings)()
        return nnx.merge(graphdef, state), shardings
    model = nnx.merge(
        graphdef,
        jax.tree.map(
            lambda var, sh: var.replace(jax.ShapeDtypeStruct(var.shape, var.dtype, sharding=sh)),
            abstract_state,
            shardings,
            is_leaf=lambda x: isinstance(x, nnx.Variable),
        ),
    )
    keys = jax.jit(
        lambda: nnx.state(make_model(), nnx.RngState),
        out_shardings=state_shardings(nnx.state(abstract, nnx.RngState), mesh, rules),
    )
    nnx.update(model, keys())
    return model, shardings


def is_local(mesh: Mesh) -> bool:
    """Whether every device of ``mesh`` belongs to this process (JAX's ``Mesh.is_multi_process``;
    one name for the two initialisation paths, and for tests to take the other one)."""
    return not mesh.is_multi_process


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Batch-major arrays: the first axis over 'data', the rest replicated."""
    return NamedSharding(mesh, PartitionSpec("data", *([None] * (ndim - 1))))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Every batch entry: the leading axis over 'data' (a prefix for the whole batch dict)."""
    return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same copy on every device of the mesh (scalars, metrics, the step counter)."""
    return NamedSharding(mesh, PartitionSpec())


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules) -> Iterator[None]:
    """Trace (first-call) a model inside this context to apply its activation constraints:
    layer inputs and outputs keep ``BATCH`` on the mesh axis the rules give it (MaxText's
    pattern); outside it the constraints are no-ops."""
    with jax.set_mesh(mesh), spmd.logical_axis_rules(rules):
        yield


class TracedInMesh:
    """A jitted function that is traced (called or lowered) inside :func:`activation_sharding`,
    so that the model's batch constraints apply: the trainer's step and ``predict`` are these."""

    def __init__(self, jitted: Callable, mesh: Mesh, rules) -> None:
        self.jitted, self.mesh, self.rules = jitted, mesh, rules

    def __call__(self, *args):
        with activation_sharding(self.mesh, self.rules):
            return self.jitted(*args)

    def lower(self, *args):
        with activation_sharding(self.mesh, self.rules):
            return self.jitted.lower(*args)

    def trace(self, *args):
        with activation_sharding(self.mesh, self.rules):
            return self.jitted.trace(*args)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """``x`` constrained to the logical ``axes`` under :func:`activation_sharding`, else ``x``."""
    rules = spmd.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, rules, x.shape, mesh))


def global_batch(mesh, local: Mapping[str, Any]) -> dict[str, Any]:
    """Per-process numpy batch (a dict; nested dicts too) -> global arrays with the leading
    (batch) axis sharded over 'data' (multi-host safe); entries that are not numbers (video ids)
    are left out."""
    out = {}
    for key, value in local.items():
        if isinstance(value, Mapping):
            out[key] = global_batch(mesh, value)
        elif np.asarray(value).dtype.kind in "biuf":
            sharding = batch_sharding(mesh, np.ndim(value))
            out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out


def to_host(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in local batch order."""
    if jax.process_count() == 1:
        return np.asarray(x)
    rows = {s.index[0].start or 0: s for s in x.addressable_shards}  # replicas over 'model': once
    return np.concatenate([np.asarray(rows[start].data) for start in sorted(rows)])


def check_divisibility(config, mesh) -> None:
    """Batch and mesh sizes must agree; fail before compiling, with the numbers."""
    data = mesh.shape["data"]
    if config.batch_size % data:
        raise ValueError(
            f"config.batch_size {config.batch_size} does not divide over the 'data' "
            f"mesh axis of size {data} (config.mesh_shape "
            f"{tuple(config.mesh_shape)} -> {dict(mesh.shape)})"
        )
    if config.batch_size % jax.process_count():
        raise ValueError(
            f"config.batch_size {config.batch_size} does not divide over "
            f"{jax.process_count()} processes"
        )
