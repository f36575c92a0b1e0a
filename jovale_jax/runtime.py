"""Process-wide settings, applied once where the project starts (``launch.py``, the tests).

:func:`configure_jax` switches on JAX's custom softmax derivative (``jax_softmax_custom_jvp``):
the backward pass of every attention computes ``y (g - sum(y g))`` instead of differentiating
through exp / sum / divide, which bench/README.md measured at 74-77% instead of 58% of the matmul
rate on the AMFN step and 36-46% fewer temporaries on the train step. The flag is global and part
of JAX's compilation cache key, so it must be set before anything is traced.

:func:`configure_gc` runs Python's cyclic garbage collector less often (:data:`GC_THRESHOLD`).
Tracing and lowering a model allocate millions of short-lived objects; at Python's default
(a young collection every 700 net allocations, a full one every 100 of those) a warm
``launch.py train`` of the test model spent 1.5 s of its 12 s in 1,681 collections, and a process
that has traced many models (the test suite's) pays about 0.3 s for each full collection of its
heap. At GC_THRESHOLD: 0.24 s in 106 collections, 0.89x the CPU time (bench/README.md,
"Python's garbage collector"). Objects without reference cycles are still freed at once.
"""

import gc

import jax

GC_THRESHOLD = (10_000, 10, 10)


def configure_jax() -> None:
    """Apply the project's JAX defaults to this process (call before tracing anything)."""
    jax.config.update("jax_softmax_custom_jvp", True)


def configure_gc() -> None:
    """Collect cyclic garbage at :data:`GC_THRESHOLD` instead of Python's (700, 10, 10)."""
    gc.set_threshold(*GC_THRESHOLD)
