"""Faults a long run meets, each as a user meets it (issue 23): a broken newest checkpoint, a
full disk while saving, Ctrl-C, a typo in --checkpoint. Each test asserts the exit status (or the
exception), the one-line message, and that what existed before the fault still restores."""

import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import launch_command, train_flags, xla_flags

from configs import synthetic
from jovale_jax import checkpoint, sharding
from jovale_jax.checkpoint import BrokenCheckpointError, Checkpointer
from jovale_jax.datasets import check_dataset
from jovale_jax.datasets.verify import BadShardError
from jovale_jax.state import load_trained

ONE_DEVICE = dict(os.environ, XLA_FLAGS=xla_flags())


def tiny(steps, every=1):
    c = synthetic.get_config("test")
    c.update(
        mesh_shape=(1, 1),
        num_train_steps=steps,
        checkpoint_every_steps=every,
        log_every_steps=1,
        eval_every_steps=0,
    )
    return c


def flat(tree):
    return {
        jax.tree_util.keystr(p): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def params_of(path):
    """The trainable parameters of checkpoint ``path`` (a workdir or a step folder)."""
    return flat(load_trained(tiny(3), str(path), devices=jax.devices()[:1]).state["params"])


def launch(*args, env=ONE_DEVICE):
    return subprocess.run(
        launch_command(*args),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def break_step(step_dir):
    """The issue's setup: three data files of the newest checkpoint truncated."""
    state = step_dir / "state"
    data = sorted((state / "ocdbt.process_0" / "d").iterdir(), key=lambda p: -p.stat().st_size)
    for path in [state / "_sharding", *data[:2]]:
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 3)


@pytest.fixture(scope="module")
def three_steps(tiny_data, tmp_path_factory):
    """Checkpoints at steps 1, 2, 3 of the tiny preset, and the parameters of each."""
    workdir = tmp_path_factory.mktemp("faults") / "w"
    run = launch("train", *train_flags(workdir, tiny_data, 3))
    assert run.returncode == 0, run.stderr[-2000:]
    params = {step: params_of(workdir / "checkpoints" / str(step)) for step in (1, 2, 3)}
    return workdir, params


def test_load_trained_reads_params_only_and_creates_nothing(three_steps, tmp_path, monkeypatch):
    workdir, params = three_steps
    from jovale_jax import optim

    monkeypatch.setattr(optim, "make_optimizer", lambda *a: pytest.fail("optimizer built"))
    created, create = [], sharding.create_sharded  # the parameters are not initialised first
    monkeypatch.setattr(
        sharding, "create_sharded", lambda *a, **k: created.append(k) or create(*a, **k)
    )
    s = load_trained(tiny(3), str(workdir), devices=jax.devices()[:1])
    assert created == [{"placeholders": True}]
    assert s.tx is None and set(s.state) == {"params", "step"} and s.state["step"] == 3
    got = flat(s.state["params"])
    assert got.keys() == params[3].keys()
    for k in got:
        np.testing.assert_array_equal(got[k], params[3][k], err_msg=k)
    # a typo: a one-line error, nothing created, no orbax INFO lines on the console
    typo = tmp_path / "typo"
    run = launch("eval", "--checkpoint", str(typo))
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1] == (
        f"error: --checkpoint {typo}: no such file or folder"
    )
    assert not typo.exists()
    # a folder without checkpoints: named, and no checkpoints/ folder made in it
    empty = tmp_path / "empty"
    empty.mkdir()
    run = launch("eval", "--checkpoint", str(empty))
    assert run.returncode == 1, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1] == (
        f"error: no checkpoint in {empty}/checkpoints (train first: python launch.py train "
        f"--config ... --workdir {empty})"
    )
    assert list(empty.iterdir()) == []
    assert "INFO" not in run.stdout + run.stderr


def test_broken_newest_step_is_named_and_skipped(three_steps, tiny_data, tmp_path):
    good, params = three_steps
    workdir = tmp_path / "w"
    shutil.copytree(good, workdir)
    break_step(workdir / "checkpoints" / "3")
    ckdir = workdir / "checkpoints"

    # eval on the broken step: the step, the file, the steps that restore
    run = launch("eval", "--checkpoint", str(ckdir / "3"), "--data_dir", tiny_data)
    assert run.returncode == 1, run.stderr[-2000:]
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: checkpoint step 3 in {ckdir} does not restore: "), line
    assert f"{ckdir}/3/state/_sharding" in line
    assert line.endswith(f"steps that restore: 1, 2 (pass --checkpoint {ckdir}/2)"), line
    with pytest.raises(BrokenCheckpointError, match="step 3 .* steps that restore: 1, 2"):
        load_trained(tiny(3), str(workdir), devices=jax.devices()[:1])

    # train resumes from step 2, warns once about step 3, keeps it aside, and goes on
    run = launch("train", *train_flags(workdir, tiny_data, 3))
    assert run.returncode == 0, run.stderr[-2000:]
    warnings = [x for x in run.stderr.splitlines() if x.startswith("warning: skipped checkpoint")]
    assert len(warnings) == 1 and "step 3 (" in warnings[0], run.stderr[-2000:]
    assert warnings[0].endswith(f"kept as {ckdir}/3.broken")
    assert f"resumed from {ckdir}/2" in run.stdout
    assert (ckdir / "3.broken" / "state" / "_sharding").exists()
    assert checkpoint.steps_in(str(ckdir)) == [1, 2, 3]
    # the retrained step 3 equals the original one (exact resume); steps 1 and 2 still restore
    for step in (1, 2, 3):
        got = params_of(ckdir / str(step))
        for k in got:
            np.testing.assert_array_equal(got[k], params[step][k], err_msg=f"{step} {k}")


def test_no_step_restores_lists_why(three_steps, tmp_path):
    good, _ = three_steps
    workdir = tmp_path / "w"
    shutil.copytree(good, workdir)
    for step in (1, 2, 3):
        break_step(workdir / "checkpoints" / str(step))
    ck = Checkpointer(str(workdir))
    with pytest.raises(BrokenCheckpointError, match=r"no checkpoint in .* restores: step 3: .*"):
        ck.restore_newest({"w": jax.ShapeDtypeStruct((1,), np.float32)})
    ck.close()
    assert checkpoint.steps_in(str(workdir / "checkpoints")) == [1, 2, 3]  # nothing renamed


# `launch.py train` in a process whose file writes beyond LIMIT bytes fail (RLIMIT_FSIZE: the
# kernel refuses the rest of the write, as a full disk does) from the save of step FULL_FROM on.
FULL_DISK = """
import resource, runpy, signal, sys
from jovale_jax.checkpoint import Checkpointer
save, full_from, limit = Checkpointer.save, int(sys.argv.pop(1)), int(sys.argv.pop(1))

def save_on_a_full_disk(self, step, state, meta):
    if step >= full_from:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return save(self, step, state, meta)

Checkpointer.save = save_on_a_full_disk
sys.argv[0] = "launch.py"
runpy.run_path("launch.py", run_name="__main__")
"""


def test_full_disk_keeps_earlier_steps_and_resumes_exactly(three_steps, tiny_data, tmp_path):
    good, params = three_steps
    workdir = tmp_path / "w"
    shutil.copytree(good, workdir)
    ckdir = workdir / "checkpoints"
    shutil.rmtree(ckdir / "3")
    # The file-size limit stands in for the disk: the earlier run's log.txt is at it, so the log
    # file's next write is refused too (the parameters' files are larger).
    limit = str((workdir / "log.txt").stat().st_size)
    flags = ["--config", "configs/synthetic.py:test", *train_flags(workdir, tiny_data, 3)]
    run = subprocess.run(
        [sys.executable, "-c", FULL_DISK, "3", limit, "train", *flags],
        capture_output=True,
        text=True,
        env=ONE_DEVICE,
        check=False,
    )
    assert run.returncode == 1, run.stderr[-2000:]
    # orbax's writer threads print their own tracebacks meanwhile, which can share a line with ours
    errors = re.findall(r"error: [^\n]*", run.stderr)
    assert len(errors) == 1, run.stderr[-3000:]
    line = errors[0]
    assert line.startswith(
        f"error: could not save checkpoint step 3 in {ckdir}: file too large (it needs about "
    ), line
    assert line.endswith(
        "the steps saved before, [1, 2], are intact: free space and run the same command to resume"
    ), line
    refused = [x for x in re.findall(r"warning: [^\n]*", run.stderr) if "log.txt" in x]
    assert len(refused) == 1 and "the disk refused a write" in refused[0], run.stderr[-6000:]
    assert "Logging error" not in run.stderr
    assert sorted(os.listdir(ckdir)) == ["1", "2"]  # no half-written step left behind
    for step in (1, 2):
        got = params_of(ckdir / str(step))
        for k in got:
            np.testing.assert_array_equal(got[k], params[step][k], err_msg=f"{step} {k}")
    # space freed: the same command resumes from step 2 and writes the step 3 of an unbroken run
    run = launch("train", *train_flags(workdir, tiny_data, 3))
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"resumed from {ckdir}/2" in run.stdout
    got = params_of(ckdir / "3")
    for k in got:
        np.testing.assert_array_equal(got[k], params[3][k], err_msg=k)


def test_bad_shard_is_named_before_training(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns("raw"))
    run = launch("check-data", "--data_dir", str(data))
    assert run.returncode == 0, run.stderr[-2000:]
    want = "2 shards, 56 records read, counts and checksums as built; videos skipped at build: 0"
    assert want in run.stdout, run.stdout
    (shard,) = data.glob("jovale_synthetic/*/1.0.0/*-train.tfrecord-*")
    original = shard.read_bytes()
    # a flipped byte: the size is right, check-data names the shard and the record
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    named = rf"^{re.escape(str(shard))}: record \d+ does not read \(.*\); rebuild the dataset"
    with pytest.raises(BadShardError, match=named):
        check_dataset(tiny(1), str(data))
    # truncated: train stops before building anything, naming the shard and both sizes
    shard.write_bytes(original[: len(original) // 2])
    workdir = tmp_path / "w"
    run = launch("train", *train_flags(workdir, str(data), 1))
    assert run.returncode == 1, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1] == (
        f"error: {shard}: {len(original) // 2} bytes, but the build wrote {len(original)} bytes "
        f"(truncated or replaced); run launch.py check-data, or rebuild the dataset"
    )
    assert not (workdir / "checkpoints").exists()
    shard.write_bytes(original)  # the data as built reads again
    assert check_dataset(tiny(1), str(data))["records"] == 56
