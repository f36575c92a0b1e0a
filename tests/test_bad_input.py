"""Bad model input fails with a message that names the field and the expected value."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import random_batch
from flax import nnx

from jovale_jax.models import JoVALE
from jovale_jax.models.jovale import check_batch


def test_wrong_shape_names_key_and_field(tiny_config):
    cfg = tiny_config.model
    batch = random_batch(cfg)
    batch["video"] = batch["video"][:, :2]
    with pytest.raises(ValueError, match=r"batch\['video'\].*model.video.num_frames/image_size"):
        check_batch(cfg, batch)


def test_wrong_dtype(tiny_config):
    cfg = tiny_config.model
    batch = random_batch(cfg)
    batch["box_mask"] = batch["box_mask"].astype(np.float32)
    with pytest.raises(ValueError, match=r"batch\['box_mask'\]: expected a bool array"):
        check_batch(cfg, batch)
    batch = random_batch(cfg)
    batch["audio"] = batch["audio"].astype(np.int32)
    with pytest.raises(ValueError, match=r"batch\['audio'\]: expected a floating array"):
        check_batch(cfg, batch)


def test_modality_mismatch_both_ways(tiny_config):
    cfg = tiny_config.model
    batch = random_batch(cfg)
    cfg.modalities = ("video", "scene")
    with pytest.raises(ValueError, match=r"batch has 'audio' but config field model.modalities"):
        check_batch(cfg, batch)
    cfg.modalities = ("video", "audio", "scene")
    del batch["scene"]
    with pytest.raises(ValueError, match=r"batch lacks 'scene'"):
        check_batch(cfg, batch)


def test_bad_config_values(tiny_config):
    cfg = tiny_config.model
    cfg.modalities = ("video", "smell")
    with pytest.raises(ValueError, match="model.modalities"):
        JoVALE(cfg, rngs=nnx.Rngs(0))
    cfg.modalities = ("video",)
    cfg.amfn.fusion = "max"
    with pytest.raises(ValueError, match=r"model.amfn.fusion: expected one of .*'max'"):
        JoVALE(cfg, rngs=nnx.Rngs(0))


def test_unknown_config_field_on_the_command_line():
    out = subprocess.run(
        [
            sys.executable,
            "launch.py",
            "flops",
            "--config",
            "configs/synthetic.py",
            "--config.model.no_such_field=3",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0
    assert "no_such_field" in out.stderr
