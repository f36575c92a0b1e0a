"""Multi-process start-up: ``jax.distributed.initialize`` before anything touches JAX's backend.

    python launch.py train --config C --workdir W \
        --coordinator_address HOST:PORT --num_processes 2 --process_id 0

``launch.py`` calls :func:`start` first for the commands that run on several processes (train,
eval). Without the three flags, JAX's own cluster detection (SLURM, Open MPI, Kubernetes, Cloud
TPU: ``jax._src.clusters``, the same that ``jax.distributed.initialize()`` uses) decides; outside
a cluster the run is single-process and nothing is initialised. Several processes on CPU use gloo
collectives. The start-up never hangs: a process that cannot reach all the others through the
coordinator within ``timeout_s`` exits with a one-line error (JAX itself would abort with a stack
trace after its own timeout), and processes started with different configs all fail naming the
first field that differs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import sys
import threading

import numpy as np

CONFIG_KEY = "jovale/config/{}"  # the coordinator's key-value store: one config per process
_BARRIERS = itertools.count()  # every process passes the same barriers in the same order


@dataclasses.dataclass(frozen=True)
class Topology:
    """How this run is spread: ``num_processes``, this ``process_id``, and where that came from
    (``source``: "flags", a JAX cluster type such as "SlurmCluster", or "single process")."""

    num_processes: int
    process_id: int
    coordinator_address: str | None
    source: str


def detected_cluster():
    """The cluster environment JAX would auto-detect here, or None. Reads environment variables
    only (Cloud TPU VMs: their metadata server); never initialises a backend."""
    from jax._src import clusters

    for env in clusters.ClusterEnv._cluster_types:
        if not env.opt_in_only_method and env.is_env_present():
            return env
    return None


def resolve(
    coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> Topology:
    """The topology the flags (or, without any, a detected cluster) describe; checks the values."""
    given = {
        "--coordinator_address": coordinator_address,
        "--num_processes": num_processes,
        "--process_id": process_id,
    }
    if all(v is None for v in given.values()):
        env = detected_cluster()
        if env is None or env.get_process_count() <= 1:
            return Topology(1, 0, None, "single process")
        return Topology(env.get_process_count(), env.get_process_id(), None, env.__name__)
    missing = [name for name, v in given.items() if v is None]
    if missing:
        raise ValueError(
            f"{', '.join(missing)} missing: give --coordinator_address HOST:PORT, "
            f"--num_processes N and --process_id I together"
        )
    if num_processes < 1:
        raise ValueError(f"--num_processes={num_processes}: must be at least 1")
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"--process_id={process_id} is outside [0, {num_processes}) "
            f"(--num_processes={num_processes})"
        )
    host, _, port = coordinator_address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--coordinator_address={coordinator_address!r}: expected HOST:PORT")
    return Topology(num_processes, process_id, coordinator_address, "flags")


@contextlib.contextmanager
def _deadline(timeout_s: float, message: str):
    """Exit the process with ``message`` (one line on stderr, status 1) if the block has not
    finished after ``timeout_s``; works while the main thread waits inside JAX's C++ code."""
    done = threading.Event()

    def watch():
        if not done.wait(timeout_s):
            print(f"error: {message}", file=sys.stderr, flush=True)
            os._exit(1)

    threading.Thread(target=watch, daemon=True, name="distributed-deadline").start()
    try:
        yield
    finally:
        done.set()


def _coordinator_client():
    """The coordination-service client of ``jax.distributed`` (None before ``initialize``). JAX
    has no public accessor: its own ``multihost_utils`` and orbax read the same private state."""
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.client


def _flat(tree, prefix: str = "") -> dict[str, object]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, object] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_difference(mine: str, other: str) -> tuple[str, object, object] | None:
    """The first (sorted) config field whose value differs between two JSON configs, with both
    values; None when they agree."""
    a, b = _flat(json.loads(mine)), _flat(json.loads(other))
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            return key, a.get(key, "<absent>"), b.get(key, "<absent>")
    return None


def _check_same_config(config, topology: Topology, timeout_s: float) -> None:
    """Every process publishes its config in the coordinator's key-value store and compares it
    with every other one; all processes fail alike when any two differ."""
    client = _coordinator_client()
    ms = int(timeout_s * 1000)
    mine = config.to_json_best_effort(sort_keys=True)
    client.key_value_set(CONFIG_KEY.format(topology.process_id), mine)
    client.wait_at_barrier("jovale_config_published", ms)
    configs = [
        client.blocking_key_value_get(CONFIG_KEY.format(i), ms)
        for i in range(topology.num_processes)
    ]
    client.wait_at_barrier("jovale_config_read", ms)  # nobody exits while another still reads
    for i, other in enumerate(configs[1:], start=1):
        diff = config_difference(configs[0], other)
        if diff is not None:
            key, a, b = diff
            raise ValueError(
                f"processes disagree on the config: config.{key} is {a!r} on process "
                f"0 but {b!r} on process {i} (start every process with the same "
                f"--config and --config.* flags)"
            )


def start(
    config,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: float = 300.0,
) -> Topology:
    """Initialise JAX's distributed runtime when the run spans several processes (call before any
    other JAX call), then check that all processes hold the same ``config``."""
    topology = resolve(coordinator_address, num_processes, process_id)
    if topology.num_processes == 1:
        return topology
    import jax

    jax.config.update(
        "jax_cpu_collectives_implementation", "gloo"
    )  # CPU collectives across processes
    where = topology.coordinator_address or f"the {topology.source} coordinator"
    message = (
        f"process {topology.process_id} of {topology.num_processes} could not reach all "
        f"processes through the coordinator at {where} within {timeout_s:g} s "
        f"(--coordinator_address, --num_processes, --coordinator_timeout_s)"
    )
    with _deadline(timeout_s, message):
        jax.distributed.initialize(
            coordinator_address=topology.coordinator_address,
            num_processes=topology.num_processes,
            process_id=topology.process_id,
            initialization_timeout=int(timeout_s) + 60,
        )
        _check_same_config(config, topology, timeout_s)
    return topology


def sync(name: str, timeout_s: float = 1800.0) -> None:
    """Wait until every process gets here (a barrier of the coordinator, not a collective); no-op
    on one process. Call it after compiling and before the first collective: gloo gives up on a
    peer after 30 s, and one process may compile for longer than that."""
    client = _coordinator_client()
    if client is not None:
        client.wait_at_barrier(f"jovale/{name}/{next(_BARRIERS)}", int(timeout_s * 1000))


def all_agree(ok: bool) -> bool:
    """True when ``ok`` holds on every process (one process: ``ok``): a decision all processes
    take together, such as which checkpoint step to resume from."""
    import jax

    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(multihost_utils.process_allgather(np.asarray(ok)).all())


def compile_synced(jitted, *args):
    """``jitted`` compiled for ``args`` (ahead of time), returned once every process has compiled
    it (:func:`sync`); call the result like ``jitted``."""
    compiled = jitted.lower(*args).compile()
    sync("compiled")
    return compiled
