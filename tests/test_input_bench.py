"""`launch.py bench input` on a tiny AVA-layout fixture: the numbers are there and consistent.

No timing assertions: only keys and relations that hold on any machine.
"""

import pytest

from configs import synthetic
from jovale_jax.bench import input as input_bench
from jovale_jax.datasets import ava_fixture


def test_input_bench_on_the_fixture(tmp_path, capsys):
    config = synthetic.get_config("test")
    config.dataset = "ava"  # the fixture is AVA data; the test model's sizes keep it quick
    config.batch_size = 2
    # Two 16:9 videos, 4 keyframes each, generated small (the bench's default is 640 x 360).
    ava_fixture.generate_raw(
        str(tmp_path / "raw"),
        num_videos=2,
        seconds=7,
        size=(72, 128),
        num_classes=config.model.num_classes,
    )
    r = input_bench.run_input_bench(
        config, str(tmp_path), num_batches=2, fixture=True, gpu_clips_per_s=100.0, rounds=1
    )
    assert r["geometry"] == {
        "frames": 4,
        "frame_stride": 2,
        "short_side": 24,
        "canvas": [32, 32],
        "scene": 32,
    }
    stages = {
        "read",
        "decode video",
        "decode scene",
        "decode",
        "audio features (tf)",
        "audio features (numpy)",
        "augment",
        "pipeline",
    }
    assert set(r["examples_per_s"]) == set(r["examples_per_cpu_s"]) == stages
    assert (
        set(r["old_examples_per_s"]) == set(r["ratio_to_old"]) == {"decode", "augment", "pipeline"}
    )
    assert all(v > 0 for v in r["examples_per_s"].values())
    assert r["ratio_to_old"]["pipeline"] == pytest.approx(
        r["examples_per_s"]["pipeline"] / r["old_examples_per_s"]["pipeline"], rel=0.02
    )
    assert r["host_cores_per_gpu"] == pytest.approx(
        100.0 / r["pipeline_clips_per_s_per_core"], rel=0.02, abs=0.05
    )  # rounded to 0.1
    assert r["gpu_clips_per_s"] == 100.0 and r["num_examples"] == 4
    assert "host cores" in capsys.readouterr().out


def test_default_gpu_rate_follows_the_model_cost():
    """40% of 989 TFLOP/s over 2 x (3 x trained + 1 x frozen BLIP forward MACs)."""
    from jovale_jax import flops

    config = synthetic.get_config("test")
    costs = flops.component_costs(config.model)
    step = 3 * (costs["total"]["gmacs"] - costs["scene"]["gmacs"]) + costs["scene"]["gmacs"]
    assert input_bench.default_gpu_clips_per_s(config) == pytest.approx(0.4 * 989e3 / (2 * step))
