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
first field that differs. Once running, a process that stops answering is named by the others in
one line (:func:`watch_peers`, ``config.distributed.heartbeat_timeout_s``). JAX's private modules
are read in one function, :func:`_jax_internals` (no public API for them in jax 0.10).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import shlex
import sys
import threading
import time

CONFIG_KEY = "jovale/config/{}"  # the coordinator's key-value store: one config per process
ALIVE_KEY = "jovale/alive/{}"  # each process's heartbeat counter (watch_peers), DONE at exit
DONE = "done"
_BARRIERS = itertools.count()  # every process passes the same barriers in the same order


@dataclasses.dataclass(frozen=True)
class Topology:
    """How this run is spread: ``num_processes``, this ``process_id``, and where that came from
    (``source``: "flags", a JAX cluster type such as "SlurmCluster", or "single process")."""

    num_processes: int
    process_id: int
    coordinator_address: str | None
    source: str


def _jax_internals():
    """The two pieces of JAX this module needs that have no public API (jax 0.10): the cluster
    types that ``jax.distributed.initialize()`` detects (to tell a one-process run from a cluster
    before initialising anything) and the distributed state that holds the coordination-service
    client (key-value store and barriers, which ``multihost_utils`` and orbax read the same way).
    tests/test_multihost.py checks that both are still there, so a JAX upgrade that moves them
    fails there first."""
    from jax._src import clusters
    from jax._src import distributed as jax_distributed

    return clusters.ClusterEnv, jax_distributed.global_state


def detected_cluster():
    """The cluster environment JAX would auto-detect here, or None. Reads environment variables
    only (Cloud TPU VMs: their metadata server); never initialises a backend."""
    cluster_env, _ = _jax_internals()
    for env in cluster_env._cluster_types:
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
    """The coordination-service client of ``jax.distributed`` (None before ``initialize``)."""
    return _jax_internals()[1].client


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
    heartbeat_s = int(config.distributed.heartbeat_timeout_s)
    with _deadline(timeout_s, message):
        jax.distributed.initialize(
            coordinator_address=topology.coordinator_address,
            num_processes=topology.num_processes,
            process_id=topology.process_id,
            initialization_timeout=int(timeout_s) + 60,
            heartbeat_timeout_seconds=heartbeat_s,
        )
        _check_same_config(config, topology, timeout_s)
    watch_peers(topology, heartbeat_s)
    return topology


def watch_peers(topology: Topology, heartbeat_s: float) -> None:
    """Stop this process with one line when another one stops answering.

    Each process bumps a counter in the coordinator's key-value store every ``heartbeat_s / 20``
    seconds and reads the others'. A peer whose counter has not moved for ``heartbeat_s / 2``
    seconds (and for 10 polls, so that a pause of this process itself does not count) is named
    on the console with the command to resume, the details go to the log file, and the process
    exits with status 1, before JAX's coordination service would abort it (after
    ``heartbeat_s``, with a fatal log and a stack dump). Processes that exit normally say so
    first and are not reported. A collective that fails meanwhile (the usual first sign) waits
    for this verdict instead of printing its traceback."""
    import jax

    client = _coordinator_client()
    me, count = topology.process_id, topology.num_processes
    limit, interval = heartbeat_s / 2, max(0.2, heartbeat_s / 20)

    def run():
        beat, answered = 0, time.monotonic()
        seen = {i: [None, time.monotonic(), 0] for i in range(count) if i != me}
        while True:
            now = time.monotonic()
            try:
                client.key_value_set(ALIVE_KEY.format(me), str(beat), allow_overwrite=True)
                beat, answered = beat + 1, now
                for i, entry in seen.items():
                    value = _try_get(client, ALIVE_KEY.format(i))
                    if value == DONE:
                        entry[:] = [DONE, now, 0]
                    elif value != entry[0]:
                        entry[:] = [value, now, 0]
                    else:
                        entry[2] += 1
            except Exception as e:  # noqa: BLE001 - the coordinator (process 0) is gone
                if now - answered > limit:
                    _peer_stopped(0, count, now - answered, heartbeat_s, e)
            for i, (value, since, polls) in seen.items():
                if value != DONE and now - since > limit and polls >= 10:
                    _peer_stopped(i, count, now - since, heartbeat_s, None)
            time.sleep(interval)

    def done():
        with contextlib.suppress(Exception):
            client.key_value_set(ALIVE_KEY.format(me), DONE, allow_overwrite=True)

    previous_hook = sys.excepthook

    def hook(kind, error, tb):
        """A failed collective (gloo: "Connection closed by peer") usually means a peer died:
        its traceback goes to the log file, and the watcher gets the time to name the peer and
        exit; any other error is printed as usual."""
        if issubclass(kind, jax.errors.JaxRuntimeError):
            logging.getLogger(__name__).info("a collective failed", exc_info=(kind, error, tb))
            time.sleep(limit + 12 * interval)
        previous_hook(kind, error, tb)

    atexit.register(done)  # runs before JAX's own shutdown (registered earlier)
    sys.excepthook = hook
    threading.Thread(target=run, daemon=True, name="jovale-peer-watch").start()


def _try_get(client, key: str) -> str | None:
    try:
        return client.key_value_try_get(key)
    except Exception as e:
        if "NOT_FOUND" in str(e):  # the peer has not beaten yet
            return None
        raise


def _peer_stopped(peer: int, count: int, seconds: float, heartbeat_s: float, error) -> None:
    """One line on the console, the details in the log file, exit status 1 (from any thread)."""
    command = " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable), *sys.argv])
    line = (
        f"error: process {peer} of {count} stopped answering (nothing from it for "
        f"{seconds:.0f} s; config.distributed.heartbeat_timeout_s={heartbeat_s:g}); the "
        f"checkpoints written so far are intact: start all {count} processes again with the "
        f"same command to resume from the newest one: {command}"
    )
    logging.getLogger(__name__).info("%s (coordinator error: %r)", line, error)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    print(line, file=sys.stderr, flush=True)
    os._exit(1)


def sync(name: str, timeout_s: float = 1800.0) -> None:
    """Wait until every process gets here (a barrier of the coordinator, not a collective); no-op
    on one process. Call it after compiling and before the first collective: gloo gives up on a
    peer after 30 s, and one process may compile for longer than that."""
    client = _coordinator_client()
    if client is not None:
        client.wait_at_barrier(f"jovale/{name}/{next(_BARRIERS)}", int(timeout_s * 1000))


def all_agree(ok: bool, timeout_s: float = 1800.0) -> bool:
    """True when ``ok`` holds on every process (one process: ``ok``): a decision all processes
    take together, such as which checkpoint step to resume from. Through the coordinator's
    key-value store, not a collective (no gloo timeout while a peer is still restoring)."""
    client = _coordinator_client()
    if client is None:
        return ok
    import jax

    name, ms = f"jovale/agree/{next(_BARRIERS)}", int(timeout_s * 1000)
    client.key_value_set(f"{name}/{jax.process_index()}", "1" if ok else "0")
    client.wait_at_barrier(name, ms)
    votes = [client.blocking_key_value_get(f"{name}/{i}", ms) for i in range(jax.process_count())]
    return all(v == "1" for v in votes)


def compile_synced(jitted, *args):
    """``jitted`` compiled for ``args`` (ahead of time), returned once every process has compiled
    it (:func:`sync`); call the result like ``jitted``."""
    compiled = jitted.lower(*args).compile()
    sync("compiled")
    return compiled
