"""Test set-up: 8 fake CPU devices (set before jax is imported) and shared tiny fixtures."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from configs import synthetic  # noqa: E402


@pytest.fixture
def tiny_config():
    """The synthetic preset's `test` variant: a model small enough for a CPU test."""
    return synthetic.get_config("test")


def random_batch(model_cfg, batch_size: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of the inputs a `config.model` needs, with valid boxes and some padded proposals."""
    from jovale_jax.models.jovale import expected_inputs

    rng = np.random.default_rng(seed)
    batch = {k: rng.normal(size=(batch_size,) + s).astype(np.float32)
             for k, (s, _) in expected_inputs(model_cfg).items()}
    k = model_cfg.num_proposals
    xy = rng.uniform(0, 0.6, size=(batch_size, k, 2))
    wh = rng.uniform(0.1, 0.4, size=(batch_size, k, 2))
    batch["boxes"] = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    batch["box_mask"] = np.arange(k)[None, :] < np.maximum(1, k - 1 - np.arange(batch_size))[:, None]
    if "audio" in model_cfg.modalities:
        batch["audio_mask"] = np.ones((batch_size,), bool)
    return batch
