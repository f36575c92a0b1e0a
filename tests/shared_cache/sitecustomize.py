"""Loaded by the tests' multi-process runs (``conftest.multi_process_env``): every process of a
run keys JAX's persistent compilation cache alike, so process 1 loads what process 0 compiled.

On CPU JAX hashes into each key the fingerprint of the topology the process sees
(``jax._src.cache_key._hash_accelerator_config``), which differs from process to process, and only
process 0 writes entries: process 1 of every 2-process test run compiled its programs again
(measured: 4-8 CPU-s more than process 0, which waited for it at the first collective). For GPUs
JAX strips the device assignment from the key for the same reason (``cache_key.get``); for CPU it
does not. Here the key names each device of the program by platform, kind, id and process
instead; the program, its options and the flags stay in the key.

At exit each process prints ``persistent cache: H of R programs loaded`` (the tests check
process 1's). Programs on one process's own devices still differ by process (their device ids).
"""

import atexit
import sys

from jax import monitoring
from jax._src import cache_key

if not hasattr(cache_key, "_hash_accelerator_config"):
    raise ImportError(
        "tests/shared_cache: jax._src.cache_key._hash_accelerator_config moved; update this file"
    )


def _hash_devices_alike_on_every_process(hash_obj, accelerators) -> None:
    for d in accelerators.flat:
        hash_obj.update(f"{d.platform}:{d.device_kind}:{d.id}:{d.process_index};".encode())


cache_key._hash_accelerator_config = _hash_devices_alike_on_every_process

_HITS, _REQUESTS = (
    "/jax/compilation_cache/cache_hits",
    "/jax/compilation_cache/compile_requests_use_cache",
)
_counts = {_HITS: 0, _REQUESTS: 0}


def _count(event: str, **_) -> None:
    if event in _counts:
        _counts[event] += 1


monitoring.register_event_listener(_count)
atexit.register(
    lambda: print(
        f"persistent cache: {_counts[_HITS]} of {_counts[_REQUESTS]} programs loaded",
        file=sys.stderr,
        flush=True,
    )
)
