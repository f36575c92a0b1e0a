"""Training: loss, schedule, sharding equivalence, exact resume, NaN handling, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import launch_command, train_flags, xla_flags

from jovale_jax import optim
from jovale_jax.checkpoint import Checkpointer
from jovale_jax.losses import sigmoid_focal_loss
from jovale_jax.train import train


def small(config, steps, **over):
    config.num_train_steps = steps
    config.log_every_steps = 1
    config.checkpoint_every_steps = steps
    config.eval_every_steps = 0
    for k, v in over.items():
        config[k] = v
    return config


def flat_params(tree):
    return {
        jax.tree_util.keystr(p): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def test_focal_loss_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4)) * 3
    targets = (rng.uniform(size=(2, 3, 4)) < 0.3).astype(np.float32)
    mask = np.array([[1, 1, 0], [1, 0, 0]], bool)
    p = 1 / (1 + np.exp(-logits))
    ce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    pt = np.where(targets == 1, p, 1 - p)
    at = np.where(targets == 1, 0.25, 0.75)
    want = (at * (1 - pt) ** 2 * ce).sum(-1)[mask].sum() / mask.sum()
    got = sigmoid_focal_loss(logits, targets, mask, alpha=0.25, gamma=2.0)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_lr_schedule_boundaries(tiny_config):
    c = tiny_config
    c.lr, c.warmup_steps, c.decay_epochs, c.decay_factor = 1e-3, 10, (2,), 0.1
    c.lr_mults = (("video_encoder/.*", 0.1),)
    params = {"video_encoder": {"kernel": 0}, "amfn": {"kernel": 0}}
    sched = optim.schedules(c, steps_per_epoch=7, params=params)
    assert sorted(sched) == ["x0.1", "x1"]
    for name, base in (("x1", 1e-3), ("x0.1", 1e-4)):
        f = sched[name]
        assert float(f(0)) == 0.0
        assert float(f(5)) == pytest.approx(base / 2)
        assert float(f(10)) == pytest.approx(base)
        assert float(f(13)) == pytest.approx(base)  # last step before the decay epoch (2 x 7)
        assert float(f(14)) == pytest.approx(base * 0.1)


def test_training_lowers_loss_and_keeps_blip_frozen(tiny_config, tiny_data, tmp_path):
    c = small(tiny_config, 60, lr=3e-3, warmup_steps=5)
    c.log_every_steps = 10
    c.mesh_shape = (1, 1)
    from jovale_jax.state import load_trained

    run = train(c, str(tmp_path / "w"), data_dir=tiny_data, devices=jax.devices()[:1])
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()
    ]
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:2]), losses
    trained = flat_params(run["setup"].frozen)
    init = load_trained_init(c)
    blip = [k for k in trained if "scene_encoder" in k]
    assert blip and all(np.array_equal(trained[k], init[k]) for k in blip)
    assert not any("scene_encoder" in k for k in flat_params(run["setup"].state["params"]))
    assert load_trained(c, str(tmp_path / "w"), devices=jax.devices()[:1]) is not None


def load_trained_init(c):
    from jovale_jax import sharding, state

    s = state.create(c, mesh=sharding.make_mesh((1, 1), jax.devices()[:1]), steps_per_epoch=1)
    return flat_params(s.frozen)


def test_sharded_training_equals_one_device(tiny_config, tiny_data, tmp_path):
    """3 steps on one device, on a (4, 2) mesh and with FSDP over 8 end with the same parameters."""
    runs = {}
    for name, mesh_shape, fsdp, devices in (
        ("one", (1, 1), False, jax.devices()[:1]),
        ("4x2", (4, 2), False, None),
        ("fsdp8", (8, 1), True, None),
    ):
        cfg = small(tiny_config.copy_and_resolve_references(), 3, mesh_shape=mesh_shape, fsdp=fsdp)
        runs[name] = train(cfg, str(tmp_path / name), data_dir=tiny_data, devices=devices)["setup"]
    want = flat_params(runs["one"].state["params"])
    for name in ("4x2", "fsdp8"):
        got = flat_params(runs[name].state["params"])
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_allclose(got[k], want[k], atol=1e-5, err_msg=f"{name} {k}")
        fc1 = runs[name].state["params"]["video_encoder"]["encoder"]["layers"]["mlp"]["fc1"]
        fc1 = fc1["kernel"]
        assert len(fc1.sharding.device_set) == 8
        assert fc1.addressable_shards[0].data.shape != fc1.shape  # really split, not replicated


def _train_cmd(workdir, data_dir, steps, every):
    """The tests' `launch.py train` with 2 batches prefetched: batches past a checkpoint are in
    flight when the process is killed."""
    flags = train_flags(workdir, data_dir, steps, every)
    return launch_command("train", *flags, "--config.device_prefetch=2")


# Training subprocesses run on one CPU device (the fake 8-device flag is dropped): the sharded
# equivalence is tested in-process above; here the point is a real process being killed.
ONE_DEVICE = dict(os.environ, XLA_FLAGS=xla_flags())


def test_resume_after_sigkill_is_exact(tiny_data, tmp_path):
    """A run SIGKILLed after its checkpoint of step 8 is the straight run; from its step 4 (as if
    killed right after it) an 8-step run resumes and ends with the same parameters."""
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(killed, tiny_data, 1000, 4),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ONE_DEVICE,
    )
    ckpt_dir = killed / "checkpoints"
    deadline = time.time() + 300
    while not (ckpt_dir / "8").is_dir() and time.time() < deadline:
        assert proc.poll() is None, "training exited before its checkpoint of step 8"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    straight = tmp_path / "straight"
    shutil.copytree(ckpt_dir / "8", straight / "checkpoints" / "8")
    for later in ckpt_dir.iterdir():  # keep step 4 only, as if killed right after it
        if later.name != "4":
            shutil.rmtree(later)
    run = subprocess.run(
        _train_cmd(killed, tiny_data, 8, 4),
        check=True,
        capture_output=True,
        text=True,
        env=ONE_DEVICE,
    )
    # The console shows progress and results; TFDS's INFO lines go nowhere unless asked for
    # (--verbosity=0, tests/test_launch.py), the step lines to the run's log file too.
    assert f"resumed from {ckpt_dir}/4" in run.stdout
    assert "step 8/8" in run.stdout and "training done at step 8" in run.stdout
    for info in ("Load dataset info", "Creating a tf.data.Dataset"):
        assert info not in run.stdout + run.stderr
    assert "training done at step 8" in (killed / "log.txt").read_text()

    def final(workdir):
        ck = Checkpointer(str(workdir))
        step = ck.latest_step()
        state, _ = ck.read(step)
        ck.close()
        return step, flat_params(state["state"]["params"])

    (s1, a), (s2, b) = final(straight), final(killed)
    assert s1 == s2 == 8
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


KILL_DURING_SAVE = """
import os, signal, sys
import numpy as np
from jovale_jax.checkpoint import Checkpointer
ck = Checkpointer(sys.argv[1])
ck.save(1, {"w": np.ones((4,), np.float32)}, {"input_state": {"epoch": 1}})
ck.wait()
ck.save(2, {"w": np.zeros((64, 1024, 1024), np.float32)}, {"input_state": {"epoch": 2}})
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_kill_during_checkpoint_write_keeps_previous(tmp_path):
    subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE, str(tmp_path)], capture_output=True, check=False
    )
    ck = Checkpointer(str(tmp_path))
    assert ck.latest_step() == 1
    state, meta = ck.read(1)
    np.testing.assert_array_equal(state["w"], np.ones(4))
    assert meta["input_state"] == {"epoch": 1}
    ck.close()


def test_non_finite_loss_stops_and_names_step(tiny_config, tiny_data, tmp_path):
    c = small(tiny_config, 6, lr=1e30, mesh_shape=(1, 1), grad_clip_norm=0.0)
    c.checkpoint_every_steps = 1
    with pytest.raises(
        FloatingPointError,
        match=r"non-finite loss or gradient at step \d+; the last good "
        r"checkpoint is step \d+",
    ):
        train(c, str(tmp_path / "w"), data_dir=tiny_data, devices=jax.devices()[:1])
    ck = Checkpointer(str(tmp_path / "w"))
    step = ck.latest_step()
    state, _ = ck.read(step)
    ck.close()
    assert all(np.isfinite(v).all() for v in flat_params(state).values())


def test_bad_mesh_and_batch_fail_before_compiling(tiny_config, tiny_data, tmp_path):
    c = small(tiny_config, 1, mesh_shape=(3, 2))
    with pytest.raises(ValueError, match=r"\(3, 2\) needs 6 devices, but 8"):
        train(c, str(tmp_path / "a"), data_dir=tiny_data)
    c = small(tiny_config, 1, mesh_shape=(-1, 1), batch_size=4)
    with pytest.raises(
        ValueError, match=r"batch_size 4 does not divide over the 'data' mesh axis of size 8"
    ):
        train(c, str(tmp_path / "b"), data_dir=tiny_data)


def test_checkpoint_of_another_config_is_named(tiny_config, tiny_data, tmp_path):
    c = small(tiny_config, 1, mesh_shape=(1, 1))
    train(c, str(tmp_path / "w"), data_dir=tiny_data, devices=jax.devices()[:1])
    other = small(tiny_config.copy_and_resolve_references(), 2, mesh_shape=(1, 1))
    other.model.amfn.mlp_dim = 48
    with pytest.raises(
        ValueError,
        match=r"(?s)does not fit this config.*mfe.*fc1.*kernel.*checkpoint shape "
        r"\(2, 32, 64\), model shape \(2, 32, 48\)",
    ):
        train(other, str(tmp_path / "w"), data_dir=tiny_data, devices=jax.devices()[:1])


def test_sigterm_saves_and_exits_zero(tiny_data, tmp_path):
    proc = subprocess.Popen(
        _train_cmd(tmp_path, tiny_data, 100000, 100000),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ONE_DEVICE,
    )
    deadline = time.time() + 300
    metrics = tmp_path / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        assert proc.poll() is None, proc.stdout.read()[-2000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:]
    assert "stopped by SIGTERM" in out
    step = Checkpointer(str(tmp_path)).latest_step()
    assert step is not None and step > 0
