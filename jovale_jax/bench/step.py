"""``launch.py bench step|forward|remat``: speed, work and memory of the compiled train
step and forward pass.

Every bench runs on synthetic inputs of the config's shapes (random arrays, boxes, masks and
targets: no dataset), on all local devices with the config's mesh, and reports:

* ``seconds`` and ``clips_per_s``: the median of ``repeats`` timed calls of the compiled function
  (``block_until_ready`` after each), after one untimed call; compilation is timed apart;
* ``gmacs``: the multiply-accumulates of the traced program, counted by
  :func:`jovale_jax.flops.jaxpr_macs` (every ``dot_general`` and convolution, backward pass and
  rematerialised recomputation included); XLA's own count of one device's share
  (``xla_gflops_per_device``, from ``compiled.cost_analysis()``, element-wise work included) is
  reported beside it when the backend gives one;
* ``achieved_gflops_per_s`` = 2 x MACs / seconds, and ``matmul_ratio``: that over the FLOP/s of a
  dense square matmul timed on the same devices in the same rounds, one matmul after each call
  (float32 on a CPU; the config's compute dtype elsewhere, so that on a GPU in bfloat16 it is the
  MFU against the chip's measured bfloat16 matmul);
* ``memory``: the compiled function's ``memory_analysis()`` per device, and ``peak_bytes_in_use``
  when the backend reports device memory (GPUs do, CPUs do not).

``component='model'`` times :func:`jovale_jax.programs.make_train_step` (loss, gradients
and the AdamW update) or ``predict``; ``component='amfn'`` times the model's fusion stage (the
AMFN, or the ``model.fusion_strategy`` it names) plus the action heads alone on random embeddings
of the shapes the encoders give (``jax.eval_shape``): for ``step``, the focal loss with its
gradients with respect to the fusion's parameters and to its inputs (as in the full model, where
they flow on into the encoders); no optimizer update.

:func:`run_remat_bench` (``bench remat``) measures what
``config.model.remat_policy`` costs in step time (``bench/profile.py`` says where the time goes).
The heads' logits (late fusion included) are the model's own ``head_logits``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jovale_jax import programs, sharding
from jovale_jax.bench.memory import memory_stats
from jovale_jax.flops import jaxpr_macs
from jovale_jax.losses import sigmoid_focal_loss
from jovale_jax.models.batch import abstract_batch, random_batch
from jovale_jax.models.fusion import head_logits
from jovale_jax.models.jovale import JoVALE, modality_boxes, time_steps
from jovale_jax.models.layers import dtype_of
from jovale_jax.sharding import check_divisibility, global_batch
from jovale_jax.state import ShardedModel, create

COMPONENTS = ("model", "amfn")
MODES = ("step", "forward")
MATMUL_SIZE = {"cpu": 2048}  # per platform; 8192 elsewhere
DEFAULT_MATMUL_SIZE = 8192
MACS_SOURCE = "jovale_jax.flops.jaxpr_macs of the traced program (dot_general + conv)"


def variant(
    config: ml_collections.ConfigDict, *, batch_size: int | None = None, remat: bool | None = None
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with another global batch size and/or ``model.remat_policy``
    (``full`` if ``remat`` else ``none``)."""
    config = config.copy_and_resolve_references()
    if batch_size is not None:
        config.batch_size = int(batch_size)
    if remat is not None:
        config.model.remat_policy = "full" if remat else "none"
    return config


def _random_like(rng: np.random.Generator, shape: jax.ShapeDtypeStruct) -> np.ndarray:
    """Standard-normal floats, or all-true booleans, of ``shape``."""
    if shape.dtype == jnp.bool_:
        return np.ones(shape.shape, bool)
    return rng.standard_normal(shape.shape, np.float32).astype(shape.dtype)


def _timed_rounds(calls: Sequence[Callable[[], Any]], repeats: int) -> list[list[float]]:
    """Wall seconds of each call in ``repeats`` rounds (each call waited for), after one untimed
    round. Interleaved, so that on a shared machine every call sees the same load."""
    for call in calls:
        jax.block_until_ready(call())
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for call, seconds in zip(calls, times, strict=True):
            start = time.perf_counter()
            jax.block_until_ready(call())
            seconds.append(time.perf_counter() - start)
    return times


def _matmul(
    mesh: jax.sharding.Mesh, dtype: str, size: int | None
) -> tuple[Callable[[], jax.Array], dict[str, Any]]:
    """A dense square matmul on the mesh's devices, ready to call, and its size and dtype
    (``dtype`` as a config names it: ``auto`` is bfloat16 on a GPU).

    The left operand's rows are split over every device of the mesh and the right operand is
    replicated, so each device multiplies a (size / devices, size) block: the practical matmul
    rate of these devices together. ``size`` defaults to :data:`MATMUL_SIZE` of the platform.
    """
    size = size or MATMUL_SIZE.get(mesh.devices.flat[0].platform, DEFAULT_MATMUL_SIZE)
    size = -(-size // mesh.size) * mesh.size
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))
    whole = sharding.replicated(mesh)
    dtype = dtype_of(dtype)
    a = jax.jit(lambda: jnp.full((size, size), 0.5, dtype), out_shardings=rows)()
    b = jax.jit(lambda: jnp.full((size, size), 0.25, dtype), out_shardings=whole)()
    product = jax.jit(jnp.matmul, out_shardings=rows)
    return (lambda: product(a, b)), {"matmul_size": size, "matmul_dtype": str(jnp.dtype(dtype))}


def matmul_flops_per_s(
    mesh: jax.sharding.Mesh, dtype: str, size: int | None = None, repeats: int = 5
) -> dict[str, Any]:
    """FLOP/s (median) of the reference matmul of :func:`_matmul` on its own."""
    call, info = _matmul(mesh, dtype, size)
    seconds = statistics.median(_timed_rounds([call], repeats)[0])
    return {**info, "matmul_gflops_per_s": 2 * info["matmul_size"] ** 3 / seconds / 1e9}


def peak_bytes_in_use() -> int | None:
    """The largest ``peak_bytes_in_use`` of the local devices, or None where none is reported."""
    stats = [d.memory_stats() for d in jax.local_devices()]
    peaks = [s["peak_bytes_in_use"] for s in stats if s and "peak_bytes_in_use" in s]
    return max(peaks) if peaks else None


@dataclasses.dataclass
class _Program:
    """A jitted function with its (device) arguments. With ``carry``, the first output replaces
    the first argument after each call (the donated train state)."""

    fn: Callable
    args: tuple
    carry: bool = False


def caller(program: _Program, compiled: jax.stages.Compiled) -> Callable[[], Any]:
    """A no-argument call of ``compiled`` on the program's arguments, carrying the state over."""
    args = list(program.args)

    def call():
        out = compiled(*args)
        if program.carry:
            args[0] = out[0]
        return out

    return call


def _measure(
    programs: Sequence[_Program], repeats: int, matmul: Callable[[], Any], matmul_size: int
) -> list[dict[str, Any]]:
    """Trace and compile each program, then time them all and the reference ``matmul`` in the
    same rounds; MACs from the traced jaxprs."""
    compiled, found = [], []
    for program in programs:
        traced = program.fn.trace(*program.args)
        start = time.perf_counter()
        compiled.append(traced.lower().compile())
        xla = (compiled[-1].cost_analysis() or {}).get("flops")
        found.append(
            {
                "compile_s": time.perf_counter() - start,
                "gmacs": jaxpr_macs(traced.jaxpr) / 1e9,
                "macs_source": MACS_SOURCE,
                "xla_gflops_per_device": None if xla is None else float(xla) / 1e9,
                "memory": memory_stats(compiled[-1]),
            }
        )
    *times, matmul_times = _timed_rounds(
        [caller(p, c) for p, c in zip(programs, compiled, strict=True)] + [matmul], repeats
    )
    matmul_rate = 2 * matmul_size**3 / statistics.median(matmul_times) / 1e9
    return [
        {**f, "seconds": statistics.median(t), "times_s": t, "matmul_gflops_per_s": matmul_rate}
        for f, t in zip(found, times, strict=True)
    ]


def _model_program(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    mode: str,
    prepared: ShardedModel | None,
) -> _Program:
    """The full model's train step or ``predict`` on a synthetic batch."""
    s = prepared or create(config, mesh=mesh, steps_per_epoch=1)
    batch = global_batch(mesh, random_batch(config.model, config.batch_size, config.seed))
    if mode == "step":
        state = jax.tree.map(jnp.copy, s.state) if prepared else s.state  # prepared stays valid
        return _Program(programs.make_train_step(s), (state, s.frozen, batch), carry=True)
    return _Program(s.predict, (s.state["params"], s.frozen, batch))


def _fusion_part(model_cfg: ml_collections.ConfigDict, seed: int) -> nnx.Dict:
    """The fusion stage and the heads of a JoVALE (under jit the encoders' unused init is
    dropped)."""
    model = JoVALE(model_cfg, rngs=nnx.Rngs(seed))
    return nnx.Dict({"fusion": model.fusion, "heads": model.heads})


def fusion_input_shapes(model_cfg: ml_collections.ConfigDict, batch_size: int) -> dict[str, Any]:
    """ShapeDtypeStructs of the fusion stage's inputs: queries {m: (B, K, T_m, D)}, context
    {m: (B, T_m, N_m, D)} (from ``jax.eval_shape`` of the encoders), box_mask, present and
    boxes {m: (B, K, 4)}."""
    model = nnx.eval_shape(lambda: JoVALE(model_cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    batch = abstract_batch(model_cfg, batch_size)
    context, present, _ = jax.eval_shape(
        lambda s, b: nnx.merge(graphdef, s).encode(b), state, batch
    )
    steps = time_steps(model_cfg)
    k, dim = model_cfg.num_proposals, model_cfg.embed_dim
    queries = {
        m: jax.ShapeDtypeStruct((batch_size, k, steps[m], dim), model.dtype)
        for m in model.modalities
    }
    return {
        "queries": queries,
        "context": context,
        "present": present,
        "box_mask": jax.ShapeDtypeStruct((batch_size, k), jnp.bool_),
        "boxes": modality_boxes(batch, model.modalities),
    }


def _fusion_program(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, mode: str
) -> _Program:
    """The fusion stage plus heads: loss and gradients (``step``) or sigmoid scores
    (``forward``)."""
    m = config.model
    rules = sharding.rules_from_config(config)
    part, _ = sharding.create_sharded(functools.partial(_fusion_part, m, config.seed), mesh, rules)
    if mode == "step":
        part.train()
    else:
        part.eval()
    graphdef, params, rest = nnx.split(part, nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)  # as state.create: no Variables
    rng = np.random.default_rng(config.seed)
    shapes = fusion_input_shapes(m, config.batch_size)
    inputs = jax.tree.map(functools.partial(_random_like, rng), shapes)
    inputs["targets"] = (
        rng.uniform(size=(config.batch_size, m.num_proposals, m.num_classes)) < 0.1
    ).astype(np.float32)
    inputs = global_batch(mesh, inputs)

    def logits(params, queries, context, x):
        part = nnx.merge(graphdef, params, rest)
        inputs = (queries, context, x["box_mask"], x["present"], x["boxes"])
        embeddings, _ = part["fusion"](*inputs)
        return head_logits(part["heads"], embeddings, x["present"])

    if mode == "forward":

        def scores(params, x):
            return jax.nn.sigmoid(logits(params, x["queries"], x["context"], x))

        return _Program(sharding.TracedInMesh(jax.jit(scores), mesh, rules), (params, inputs))

    def loss_and_grads(params, x):
        def loss(p, queries, context):
            return sigmoid_focal_loss(
                logits(p, queries, context, x),
                x["targets"],
                x["box_mask"],
                alpha=config.focal_alpha,
                gamma=config.focal_gamma,
            )

        return jax.value_and_grad(loss, argnums=(0, 1, 2))(params, x["queries"], x["context"])

    # Traced in the mesh, as the trainer's step: the layers' batch constraints apply.
    return _Program(sharding.TracedInMesh(jax.jit(loss_and_grads), mesh, rules), (params, inputs))


def build_program(
    config: ml_collections.ConfigDict, mode: str, component: str, prepared: ShardedModel | None
) -> tuple[jax.sharding.Mesh, _Program]:
    """The config's mesh and the program a bench times (``config.batch_size`` sets the batch)."""
    if mode not in MODES:
        raise ValueError(f"bench mode: expected one of {MODES}, got {mode!r}")
    if component not in COMPONENTS:
        raise ValueError(
            f"config field bench.component: expected one of {COMPONENTS}, got {component!r}"
        )
    mesh = sharding.make_mesh(config.mesh_shape)
    check_divisibility(config, mesh)
    if component == "model":
        return mesh, _model_program(config, mesh, mode, prepared)
    return mesh, _fusion_program(config, mesh, mode)


def _run(
    configs: Sequence[ml_collections.ConfigDict],
    mode: str,
    *,
    component: str,
    repeats: int,
    matmul_size: int | None,
    prepared: ShardedModel | None = None,
) -> list[dict[str, Any]]:
    """Benches (no printing) of configs that share a mesh and a batch size, timed in the same
    rounds: see the module docstring for the keys. ``prepared`` serves a single config."""
    meshes, built = zip(
        *(build_program(c, mode, component, prepared) for c in configs), strict=True
    )
    mesh = meshes[0]
    platform = mesh.devices.flat[0].platform
    matmul, info = _matmul(
        mesh, "float32" if platform == "cpu" else configs[0].model.dtype, matmul_size
    )
    results = []
    for config, measured in zip(
        configs, _measure(built, repeats, matmul, info["matmul_size"]), strict=True
    ):
        achieved = 2 * measured["gmacs"] / measured["seconds"]
        results.append(
            {
                "bench": mode,
                "component": component,
                "batch_size": config.batch_size,
                "dtype": str(dtype_of(config.model.dtype)),
                "remat": config.model.remat_policy != "none",
                "devices": mesh.size,
                "device_kind": mesh.devices.flat[0].device_kind,
                **info,
                **measured,
                "clips_per_s": config.batch_size / measured["seconds"],
                "gmacs_per_clip": measured["gmacs"] / config.batch_size,
                "achieved_gflops_per_s": achieved,
                "matmul_ratio": achieved / measured["matmul_gflops_per_s"],
                "peak_bytes_in_use": peak_bytes_in_use(),
            }
        )
    return results


def _gb(n: float | None) -> str:
    """Bytes in GB (MB below 1 GB)."""
    if n is None:
        return "n/a"
    return f"{n / 1e9:.2f} GB" if abs(n) >= 1e9 else f"{n / 1e6:.2f} MB"


def print_report(title: str, rows: Iterable[tuple[str, Any]], result: dict[str, Any]) -> None:
    """A two-column table, then ``result`` as one JSON line (always the last line)."""
    rows = list(rows)
    width = max(len(name) for name, _ in rows)
    print(title)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(json.dumps(result), flush=True)


def _bench_rows(r: dict[str, Any]) -> list[tuple[str, Any]]:
    """The human table of one bench result."""
    mem = r["memory"]
    return [
        ("devices", f"{r['devices']} x {r['device_kind']}"),
        ("batch / dtype / remat", f"{r['batch_size']} / {r['dtype']} / {r['remat']}"),
        ("compile", f"{r['compile_s']:.1f} s"),
        (
            "time (median)",
            f"{r['seconds'] * 1e3:.2f} ms  (runs: "
            + ", ".join(f"{t * 1e3:.1f}" for t in r["times_s"])
            + " ms)",
        ),
        ("clips/s", f"{r['clips_per_s']:.3f}"),
        ("GMACs / step, / clip", f"{r['gmacs']:.3f}, {r['gmacs_per_clip']:.3f}"),
        ("achieved", f"{r['achieved_gflops_per_s']:.1f} GFLOP/s"),
        (
            f"matmul {r['matmul_size']}^2 {r['matmul_dtype']}",
            f"{r['matmul_gflops_per_s']:.1f} GFLOP/s",
        ),
        ("matmul_ratio", f"{r['matmul_ratio']:.1%}"),
        (
            "memory: args/temps/total",
            " / ".join(_gb(mem.get(k)) for k in ("arguments", "temporaries", "total")),
        ),
        ("peak bytes in use", _gb(r["peak_bytes_in_use"])),
    ]


def run_bench(
    config: ml_collections.ConfigDict,
    mode: str = "step",
    *,
    batch_size: int | None = None,
    component: str = "model",
    repeats: int = 5,
    matmul_size: int | None = None,
    prepared: ShardedModel | None = None,
) -> dict[str, Any]:
    """Time the jitted train step (``mode='step'``) or the eval-mode forward pass (``'forward'``)
    of the whole model (``component='model'``) or of the fusion stage plus heads alone
    (``'amfn'``) at ``batch_size`` (default ``config.batch_size``); print a table and a JSON
    line; return the numbers. ``prepared``: a :class:`~jovale_jax.state.ShardedModel` of this config
    to reuse (the step runs on a copy of its state)."""
    config = variant(config, batch_size=batch_size or config.batch_size)
    (r,) = _run(
        [config],
        mode,
        component=component,
        repeats=repeats,
        matmul_size=matmul_size,
        prepared=prepared,
    )
    print_report(f"bench {mode} ({component})", _bench_rows(r), r)
    return r


def run_remat_bench(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int | None = None,
    repeats: int = 5,
    matmul_size: int | None = None,
) -> dict[str, Any]:
    """The train step with ``model.remat_policy`` none and full, timed in the same rounds: time,
    MACs and compiled temporaries, and their ratios (on / off). Prints a table and a JSON line."""
    config = variant(config, batch_size=batch_size or config.batch_size)
    off, on = _run(
        [variant(config, remat=False), variant(config, remat=True)],
        "step",
        component="model",
        repeats=repeats,
        matmul_size=matmul_size,
    )
    runs = {"remat_false": off, "remat_true": on}
    result = {
        "bench": "remat",
        "batch_size": off["batch_size"],
        "runs": runs,
        "time_ratio": on["seconds"] / off["seconds"],
        "gmacs_ratio": on["gmacs"] / off["gmacs"],
        "temporaries_ratio": on["memory"]["temporaries"] / off["memory"]["temporaries"],
    }
    table = [
        (
            name,
            ", ".join(
                [
                    f"{r['seconds'] * 1e3:.1f} ms",
                    f"{r['gmacs']:.2f} GMACs",
                    f"temporaries {_gb(r['memory']['temporaries'])}",
                ]
            ),
        )
        for name, r in runs.items()
    ]
    table += [(k, f"{result[k]:.3f}") for k in ("time_ratio", "gmacs_ratio", "temporaries_ratio")]
    print_report(f"remat trade-off, train step at batch {off['batch_size']}", table, result)
    return result
