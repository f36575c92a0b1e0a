"""Test set-up: 8 fake CPU devices (set before jax is imported) and shared tiny fixtures."""

import os
import tempfile

# XLA:CPU compiles the tiny test models 3-6x faster without its fusion emitters and LLVM's
# expensive passes (measured: a train step 18 s -> 3 s, model init 9 s -> 2.5 s); the compiled
# code runs about half as fast, which the tests' few steps do not notice. Subprocesses that set
# their own XLA_FLAGS (device counts) keep these: ``xla_flags(devices)``.
FAST_COMPILE = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
    "--xla_cpu_use_fusion_emitters=false"
)


def xla_flags(devices: int | None = None) -> str:
    """XLA_FLAGS for a test process: fast compilation, ``devices`` fake CPU devices if given."""
    count = f" --xla_force_host_platform_device_count={devices}" if devices else ""
    return FAST_COMPILE + count


os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# A persistent compilation cache for this run (inherited by the subprocesses tests start): tests
# that build the same tiny model compile it once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jax_cache_"))

import numpy as np
import pytest

from configs import synthetic
from jovale_jax.runtime import configure_jax

configure_jax()  # as launch.py: JAX's custom softmax derivative


@pytest.fixture
def tiny_config():
    """The synthetic preset's `test` variant: a model small enough for a CPU test."""
    return synthetic.get_config("test")


def random_batch(model_cfg, batch_size: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of the inputs a `config.model` needs, with valid boxes and some padded proposals."""
    from jovale_jax.models.jovale import expected_inputs

    rng = np.random.default_rng(seed)
    batch = {
        k: rng.normal(size=(batch_size,) + s).astype(np.float32)
        for k, (s, _) in expected_inputs(model_cfg).items()
    }
    k = model_cfg.num_proposals
    xy = rng.uniform(0, 0.6, size=(batch_size, k, 2))
    wh = rng.uniform(0.1, 0.4, size=(batch_size, k, 2))
    batch["boxes"] = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    batch["box_mask"] = (
        np.arange(k)[None, :] < np.maximum(1, k - 1 - np.arange(batch_size))[:, None]
    )
    if "audio" in model_cfg.modalities:
        batch["audio_mask"] = np.ones((batch_size,), bool)
    return batch


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
