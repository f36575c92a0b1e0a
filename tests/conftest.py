"""Test set-up: 8 fake CPU devices (set before jax is imported) and shared tiny fixtures."""

import atexit
import os
import shutil
import sys
import tempfile

# XLA:CPU compiles the tiny test models 3-6x faster without its fusion emitters and LLVM's
# expensive passes (measured: a train step 18 s -> 3 s, model init 9 s -> 2.5 s); the compiled
# code runs about half as fast, which the tests' few steps do not notice. One codegen thread per
# program instead of XLA's split over threads: compiling a train step of the test model took
# 2.5 CPU-s instead of 3.0 (medians of 4 and 5 runs; 2.1-2.7 s on the clock against 2.5-2.7 s),
# while the two test workers already keep both cores busy.
# Subprocesses that set their own XLA_FLAGS (device counts) keep these: ``xla_flags(devices)``.
FAST_COMPILE = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
    "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1"
)
# XLA:CPU ends a process when the threads of its local devices do not all reach a collective's
# rendezvous within 40 s (xla_cpu_collective_call_terminate_timeout_seconds): on a loaded 2-core
# machine, 8 fake devices' threads can miss it. The likely cause of the -6 aborts (issue 23).
RENDEZVOUS = (
    "--xla_cpu_collective_call_terminate_timeout_seconds=600 "
    "--xla_cpu_collective_call_warn_stuck_timeout_seconds=120"
)


def xla_flags(devices: int | None = None) -> str:
    """XLA_FLAGS for a test process: fast compilation, ``devices`` fake CPU devices if given."""
    count = f" --xla_force_host_platform_device_count={devices}" if devices else ""
    return f"{FAST_COMPILE} {RENDEZVOUS}{count}"


def multi_process_env(devices: int) -> dict[str, str]:
    """The environment of one process of a multi-process test run with ``devices`` CPU devices:
    its processes share compiled programs through the persistent cache (tests/shared_cache)."""
    site = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shared_cache")
    path = os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, XLA_FLAGS=xla_flags(devices), PYTHONPATH=path)


def train_flags(workdir, data_dir, steps: int, every: int = 1, mesh: str = "(1, 1)") -> list[str]:
    """`launch.py train` flags of the tests' runs: ``steps`` steps, a checkpoint every ``every``,
    a log line every step, no evaluation (the same in every run of a test, so that resumed runs
    are bit-exact); the workdir and data dir first."""
    return [
        "--workdir",
        str(workdir),
        "--data_dir",
        str(data_dir),
        f"--config.mesh_shape={mesh}",
        f"--config.num_train_steps={steps}",
        f"--config.checkpoint_every_steps={every}",
        "--config.log_every_steps=1",
        "--config.eval_every_steps=0",
    ]


def launch_command(command: str, *args: str) -> list[str]:
    """``python launch.py COMMAND --config configs/synthetic.py:test ARGS``."""
    return [sys.executable, "launch.py", command, "--config", "configs/synthetic.py:test", *args]


os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# A persistent compilation cache for this run (inherited by the subprocesses tests start): tests
# that build the same tiny model compile it once. The process that made it removes it at exit
# (45-60 MB a run, which would otherwise stay in the temporary folder).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jax_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
# Every program, however quick to compile (JAX's default keeps those over 1 s): the ~110 small
# programs of an op-by-op initialisation load in ~1 s where they compile in ~2 s, in every process
# after the first (a `launch.py train` subprocess of the tests: 14.1 -> 11.6-12.4 CPU-s, measured).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # as launch.py: no Keras import

import numpy as np
import pytest

from configs import synthetic
from jovale_jax.runtime import configure_gc, configure_jax

configure_gc()  # as launch.py: cyclic garbage collected less often
configure_jax()  # as launch.py: JAX's custom softmax derivative


@pytest.fixture
def tiny_config():
    """The synthetic preset's `test` variant: a model small enough for a CPU test."""
    return synthetic.get_config("test")


def random_batch(model_cfg, batch_size: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of the inputs a `config.model` reads (models/batch.py's spec; frames as normalised
    floats), with valid boxes and some padded proposals."""
    from jovale_jax.models.batch import INPUT, OPTIONAL
    from jovale_jax.models.batch import random_batch as spec_batch

    batch = spec_batch(model_cfg, batch_size, seed, uses=(INPUT, OPTIONAL), float_frames=True)
    batch.pop("frame_extent", None)  # the frame fills the canvas
    k = model_cfg.num_proposals
    batch["box_mask"] = (
        np.arange(k)[None, :] < np.maximum(1, k - 1 - np.arange(batch_size))[:, None]
    )
    return batch


def make_forward(model):
    """The jitted eval-mode forward of a JoVALE model: batch -> logits (compiled once per shape)."""
    import jax
    from flax import nnx

    model.eval()
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, b: nnx.merge(graphdef, s)(b))
    return lambda batch: np.asarray(fn(state, batch))


def check_masking_and_equivariance(model_cfg, seed: int = 1, moved_actor_affects: int = 0):
    """A JoVALE(``model_cfg``) on a batch with proposal 3 padded: the logits' shape is right and
    finite; the padded box changes no real output; permuting real actors permutes the outputs;
    moving actor 0's box changes actor ``moved_actor_affects``'s output (the checks are not
    vacuous). Returns the logits."""
    from flax import nnx

    from jovale_jax.models import JoVALE

    forward = make_forward(JoVALE(model_cfg, rngs=nnx.Rngs(seed)))
    batch = random_batch(model_cfg, batch_size=2, seed=3)
    batch["box_mask"][:] = [True, True, True, False]
    base = forward(batch)
    assert base.shape == (2, model_cfg.num_proposals, model_cfg.num_classes)
    assert np.isfinite(base).all()
    moved = dict(batch, boxes=batch["boxes"].copy())
    moved["boxes"][:, 3] = [0.0, 0.0, 1.0, 1.0]
    np.testing.assert_allclose(forward(moved)[:, :3], base[:, :3], atol=1e-5)
    perm = np.array([2, 0, 1, 3])
    permuted = dict(batch, boxes=batch["boxes"][:, perm])
    np.testing.assert_allclose(forward(permuted)[:, :3], base[:, perm[:3]], atol=1e-5)
    changed = dict(batch, boxes=batch["boxes"].copy())
    changed["boxes"][:, 0] = [0.0, 0.0, 1.0, 1.0]
    i = moved_actor_affects
    assert np.abs(forward(changed)[:, i] - base[:, i]).max() > 1e-6
    return base


# Scheduling for `make test` (`-n 2 --dist worksteal`: worker i is first sent the i-th of n
# consecutive, near-equal parts of the list; a worker that runs out takes the last half of the
# busiest one's queue). The ablation tables share a workdir (rows common to tables train once) and
# test_multihost.py's module fixture `runs` is built once per worker that runs its tests: each
# block opens a part (ablation: worker 0's, the multi-process block and the longest trainings:
# worker 1's), where a steal, taken from a queue's end, comes last. The other tests fill the
# parts in their order (with plain `-n 2`, xdist's `load`, blocks may split: slower, still
# correct), and the modules whose tests take well under a second each (about 115 tests, 9 s in
# all) end every part: they are what the steals move, so both workers end close together.
# (`--dist loadgroup` does not group here: pytest-xdist 3.8 cannot add its "@group" suffix to
# pytest 9's node ids.)
LAST_MODULES = (
    "test_assignment.py",
    "test_audio_features.py",
    "test_batch_spec.py",
    "test_convert_scene.py",
    "test_eval_ava.py",
    "test_frame_map.py",
    "test_optim.py",
    "test_splits.py",
    "test_untrusted.py",
)
BLOCKS = (
    ("test_ablate.py::test_ablate_",),
    (
        "test_multihost.py::",
        "test_train.py::test_sharded_training_equals_one_device",
        "test_train.py::test_resume_after_sigkill_is_exact",
        "test_slowfast.py::test_slowfast_trains_on_synthetic_with_frozen_statistics",
        "test_train.py::test_training_lowers_loss_and_keeps_blip_frozen",
        "test_demo_eval.py::test_demo_report_and_eval_outputs",
    ),
)


def pytest_collection_modifyitems(items):
    def block(prefixes):
        ranked = [
            (i, item)
            for item in items
            for i, p in enumerate(prefixes)
            if item.nodeid.rsplit("/", 1)[-1].startswith(p)
        ]
        return [item for _, item in sorted(ranked, key=lambda r: r[0])]

    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    blocks = [block(prefixes) for prefixes in BLOCKS]
    merged = [item for b in blocks[workers - 1 :] for item in b]  # fewer workers than blocks
    blocks = blocks[: workers - 1] + [merged]
    taken = {id(item) for b in blocks for item in b}
    rest = [item for item in items if id(item) not in taken]
    last = [item for item in rest if item.nodeid.split("::")[0].endswith(LAST_MODULES)]
    body = [item for item in rest if item not in last]
    parts, left = [], len(items)
    for i in range(workers):  # the sizes worksteal sends: len // n, then of the rest ...
        size, left = left // (workers - i), left - left // (workers - i)
        own = blocks[i] if i < len(blocks) else []
        tail = last[: len(last) // (workers - i)]
        fill = body[: max(0, size - len(own) - len(tail))] if i < workers - 1 else body
        body, last = body[len(fill) :], last[len(tail) :]
        parts.append(own + fill + tail)
    items[:] = [item for part in parts for item in part]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A tiny synthetic set (4 train videos, 2 val videos) built for the `test` config."""
    from jovale_jax.datasets import build_dataset
    from jovale_jax.datasets import synthetic as synthetic_data

    root = tmp_path_factory.mktemp("synthetic")
    synthetic_data.generate_raw(str(root / "raw"), num_train_videos=4, num_val_videos=2)
    build_dataset(
        "synthetic",
        config=synthetic.get_config("test"),
        raw_dir=str(root / "raw"),
        data_dir=str(root),
    )
    return str(root)
