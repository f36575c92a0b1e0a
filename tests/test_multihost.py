"""Several real processes through `launch.py` (2 processes x 2 CPU devices, gloo collectives) and
checkpoints moving between topologies: (4, 2) mesh -> 2 processes -> 1 device.

One module-scoped run does the expensive part once and every test reads it:
  1. in this process (8 devices), 2 training steps on the (4, 2) mesh, checkpoint at step 2;
  2. the README's `srun` command (SLURM's variables set as srun sets them, 2 tasks) trains on 2
     processes from that checkpoint (another topology), checkpoints every 2 steps and is
     SIGKILLed once step 6 is written;
  3. the README's two-machine commands (here both on localhost) resume the killed run's step 4
     up to step 6.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import multi_process_env, train_flags, xla_flags

from configs import synthetic
from jovale_jax import checkpoint, distributed
from jovale_jax.checkpoint import Checkpointer
from jovale_jax.datasets import load_split
from jovale_jax.input_pipeline import create_eval_iterator, create_train_iterator
from jovale_jax.state import load_trained
from jovale_jax.train import train

TWO_DEVICES = multi_process_env(2)
ONE_DEVICE = dict(os.environ, XLA_FLAGS=xla_flags())
MESH_SHAPE = "(2, 2)"  # 'data' across the 2 processes, 'model' within each
MESH = f"--config.mesh_shape={MESH_SHAPE}"
# A peer silent for half of this is taken as dead (distributed.watch_peers), and JAX's coordination
# service ends every process with SIGABRT after all of it (measured otherwise: one process 50 s
# late at a collective passes, 40 s late at its first one gets gloo's fixed 30 s error, exit 1).
# A live process stalled that long on a loaded machine would be taken for dead, so the 2-process
# runs wait 900 s; only the dead-peer test asks for a short bound.
PATIENT_S = 900
PATIENT = f"--config.distributed.heartbeat_timeout_s={PATIENT_S}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(command, *args, num_processes=2, env=TWO_DEVICES, port=None, per_process=None):
    """Start `launch.py COMMAND` on ``num_processes`` processes (1: no distributed flags);
    ``per_process(i)`` adds flags to process ``i``."""
    port = port or free_port()
    procs = []
    for i in range(num_processes):
        flags = (
            []
            if num_processes == 1
            else [
                "--coordinator_address",
                f"localhost:{port}",
                "--num_processes",
                str(num_processes),
                "--process_id",
                str(i),
                "--coordinator_timeout_s",
                "120",
            ]
        )
        flags += per_process(i) if per_process else []
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "launch.py",
                    command,
                    "--config",
                    "configs/synthetic.py:test",
                    *args,
                    *flags,
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


def readme_commands(workdir, port, extra):
    """The README's "Scale" commands with this test's values: (the two-machine commands, the
    srun command's launch.py part). host0:8476 -> localhost:PORT, the synthetic preset's `test`
    variant, the workdir; ``extra`` flags appended."""
    text = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = re.sub(r"\\\n\s*", "", text.split("## Scale", 1)[1].split("\n## ", 1)[0])
    lines = [line.strip() for line in section.splitlines()]

    def argv(line):
        line = (
            line.replace("host0:8476", f"localhost:{port}")
            .replace("configs/synthetic.py", "configs/synthetic.py:test")
            .replace("/shared/runs/multi", str(workdir))
        )
        words = line.split()
        return [sys.executable, *words[words.index("launch.py") :], *extra]

    hosts = [argv(line) for line in lines if line.startswith("python launch.py train")]
    srun = [argv(line) for line in lines if line.startswith("srun ")]
    assert len(hosts) == 2 and len(srun) == 1, lines
    return hosts, srun[0]


def start(argvs, envs):
    return [
        subprocess.Popen(a, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for a, e in zip(argvs, envs)
    ]


def slurm_env(task, port):
    """What `srun --ntasks 2` on one node gives task ``task`` (JAX reads these itself)."""
    return dict(
        TWO_DEVICES,
        SLURM_JOB_ID="4242",
        SLURM_STEP_NODELIST="localhost",
        SLURM_NTASKS="2",
        SLURM_PROCID=str(task),
        SLURM_LOCALID=str(task),
        JAX_COORDINATOR_PORT=str(port),
    )


def finish(procs, timeout=900):
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def train_args(workdir, data_dir, steps):
    """The 2-process runs' `launch.py train` flags: a checkpoint every 2 steps, on MESH, and a
    heartbeat bound that a loaded machine does not reach (``PATIENT``)."""
    return [*train_flags(workdir, data_dir, steps, every=2, mesh=MESH_SHAPE), PATIENT]


def params_at(workdir, step=None, *, mesh_shape=(1, 1), devices=None):
    """The trainable parameters of a checkpoint restored on ``devices`` (default: one)."""
    cfg = synthetic.get_config("test")
    cfg.mesh_shape = mesh_shape
    path = os.path.join(workdir, "checkpoints", str(step)) if step else str(workdir)
    s = load_trained(cfg, path, devices=jax.devices()[:1] if devices is None else devices)
    return {
        jax.tree_util.keystr(p): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(s.state["params"])[0]
    }


def assert_same(a, b, what):
    assert a.keys() == b.keys() and a, what
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{what}: {k}")


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    t0 = time.time()
    # 1. the (4, 2) mesh, one process, 8 devices
    cfg = synthetic.get_config("test")
    cfg.update(
        mesh_shape=(4, 2),
        num_train_steps=2,
        checkpoint_every_steps=2,
        log_every_steps=1,
        eval_every_steps=0,
    )
    train(cfg, str(root / "mesh42"), data_dir=tiny_data)
    # 2. two processes resume it, until SIGKILL after step 6
    killed = root / "killed"
    shutil.copytree(root / "mesh42" / "checkpoints", killed / "checkpoints")
    port = free_port()
    _, srun = readme_commands(killed, port, train_args(killed, tiny_data, 1000)[2:])
    procs = start([srun, srun], [slurm_env(i, port) for i in range(2)])
    deadline = time.time() + 900
    while not (killed / "checkpoints" / "6").is_dir():
        assert time.time() < deadline and all(p.poll() is None for p in procs), (
            procs[0].communicate()[0][-3000:] if procs[0].poll() is not None else "timed out"
        )
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    first_out = procs[0].communicate()[0]
    for p in procs[1:]:
        p.communicate()
    shutil.copytree(killed / "checkpoints" / "6", root / "straight6")
    for later in (killed / "checkpoints").iterdir():  # as if killed right after step 4
        if not later.name.isdigit() or int(later.name) > 4:
            shutil.rmtree(later)
    # 3. two processes resume step 4 to step 6
    hosts, _ = readme_commands(killed, free_port(), train_args(killed, tiny_data, 6)[2:])
    resume_outs = finish(start(hosts, [TWO_DEVICES] * 2))
    return {
        "root": root,
        "data": tiny_data,
        "first_out": first_out,
        "resume_outs": resume_outs,
        "seconds": time.time() - t0,
    }


def test_sigkill_and_resume_on_two_processes_match_a_straight_run(runs):
    root = runs["root"]
    straight = root / "straight_copy"
    (straight / "checkpoints").mkdir(parents=True)
    shutil.copytree(root / "straight6", straight / "checkpoints" / "6")
    assert Checkpointer(str(root / "killed")).latest_step() == 6
    assert_same(params_at(root / "killed", 6), params_at(straight, 6), "resumed vs straight")
    # only process 0 writes the run's files; both took part in the checkpoints
    assert "resumed from" in runs["resume_outs"][1]
    # process 1 loaded programs that process 0 compiled in the first run (tests/shared_cache)
    loaded = re.findall(r"persistent cache: (\d+) of \d+ programs loaded", runs["resume_outs"][1])
    assert len(loaded) == 1 and int(loaded[0]) > 0, runs["resume_outs"][1][-2000:]
    metrics = [
        json.loads(line) for line in (root / "killed" / "metrics.jsonl").read_text().splitlines()
    ]
    steps = [m["step"] for m in metrics]
    assert steps[:4] == [3, 4, 5, 6] and steps[-2:] == [5, 6]  # the first run, then the resumed
    assert steps.count(5) == 2  # one line per run: process 1 wrote none
    assert [m["loss"] for m in metrics][-2:] == [m["loss"] for m in metrics][2:4]
    assert (root / "killed" / "log.txt").exists()
    ck = Checkpointer(str(root / "killed"))
    meta = ck.read_meta(6)
    ck.close()
    assert meta["topology"] == {"process_count": 2, "mesh": {"data": 2, "model": 2}}


def test_resume_on_another_topology_carries_the_input_position(runs):
    """The (4, 2) checkpoint of one process went on with 2 processes: epoch and batch position
    continue (4 global batches per epoch: 37 train examples, batch 8), the order is new."""
    assert (
        "checkpoint written on 1 processes, resuming on 2: epoch 0 continues after 2 batches"
        in runs["first_out"]
    )
    ck = Checkpointer(str(runs["root"] / "killed"))
    states = {step: ck.read_meta(step)["input_state"] for step in (4, 6)}
    ck.close()
    assert states[4] | {"seed": 0} == {
        "seed": 0,
        "epoch": 0,
        "batches_in_epoch": 4,
        "per_process_batch_size": 4,
        "process_count": 2,
    }
    assert (states[6]["epoch"], states[6]["batches_in_epoch"]) == (1, 2)


def test_checkpoint_of_the_4x2_mesh_restores_everywhere_with_equal_parameters(runs):
    mesh42 = runs["root"] / "mesh42"
    want = params_at(mesh42, 2, mesh_shape=(4, 2), devices=jax.devices())
    assert_same(params_at(mesh42, 2), want, "(4, 2) -> 1 device")
    assert_same(
        params_at(mesh42, 2, mesh_shape=(4, 1), devices=jax.devices()[:4]), want, "8 devices -> 4"
    )
    # ... and on 2 processes (process 0 gathers what both restored and saves it)
    out = runs["root"] / "restored_on_2.npz"
    port = free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RESTORE_ON_PROCESSES,
                str(port),
                str(i),
                str(mesh42 / "checkpoints" / "2"),
                str(out),
                str(PATIENT_S),
            ],
            env=TWO_DEVICES,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    finish(procs)
    with np.load(out) as got:
        assert_same(dict(got), want, "(4, 2) -> 2 processes")
    # the 2-process checkpoint on one device and on the (4, 2) mesh
    killed = runs["root"] / "killed"
    assert_same(
        params_at(killed, 6),
        params_at(killed, 6, mesh_shape=(4, 2), devices=jax.devices()),
        "2 processes -> 1 device / (4, 2)",
    )


RESTORE_ON_PROCESSES = """
import sys
import numpy as np
from configs import synthetic
from jovale_jax import checkpoint, distributed
port, pid, path, out = sys.argv[1:5]
config = synthetic.get_config("test")
config.mesh_shape = (2, 2)
config.distributed.heartbeat_timeout_s = int(sys.argv[5])
distributed.start(config, f"localhost:{port}", 2, int(pid), timeout_s=120)
import jax
from jax.experimental import multihost_utils
from jovale_jax.state import load_trained
params = load_trained(config, path).state["params"]
distributed.sync("restored")  # the gather below compiles: start together
full = multihost_utils.process_allgather(params, tiled=True)
if jax.process_index() == 0:
    np.savez(out, **{jax.tree_util.keystr(p): np.asarray(v)
                     for p, v in jax.tree_util.tree_flatten_with_path(full)[0]})
"""


def test_eval_on_two_processes_equals_one_process(runs):
    ckpt = str(runs["root"] / "killed")
    out2, out1 = runs["root"] / "eval2", runs["root"] / "eval1"
    common = ["--checkpoint", ckpt, "--data_dir", runs["data"]]
    procs = launch("eval", *common, "--out", str(out2), MESH, PATIENT)
    procs += launch(
        "eval",
        *common,
        "--out",
        str(out1),
        "--config.mesh_shape=(1, 1)",
        num_processes=1,
        env=ONE_DEVICE,
    )
    outs = finish(procs)
    assert "wrote" in outs[0] and "wrote" not in outs[1]  # process 0 reports, process 1 not
    r2, r1 = (json.loads((d / "results.json").read_text()) for d in (out2, out1))
    assert r2["mAP"] == pytest.approx(r1["mAP"], abs=1e-6) and r1["mAP"] > 0
    rows2, rows1 = (
        sorted(
            (tuple(r.split(",")[:7]), float(r.split(",")[7]))
            for r in (d / "detections.csv").read_text().splitlines()
        )
        for d in (out2, out1)
    )
    assert [k for k, _ in rows2] == [k for k, _ in rows1] and rows1  # every proposal once
    np.testing.assert_allclose([v for _, v in rows2], [v for _, v in rows1], atol=2e-6)


def test_input_shards_of_processes_are_disjoint_and_cover_the_split(tiny_data):
    """Eval: exactly the split. Train: equal shares (same number of steps on every process),
    the remainder N mod P left out of every epoch."""
    config = synthetic.get_config("test")

    def keys(batches):
        return {
            (b, int(t))
            for batch in batches
            for b, t, real in zip(batch["video_id"], batch["timestamp"], batch["example_mask"])
            if real
        }

    whole = keys(create_eval_iterator(config, "train", batch_size=8, data_dir=tiny_data))
    n = load_split(config, "train", data_dir=tiny_data)[1]  # 37 in the tiny set
    shares = [
        keys(
            create_eval_iterator(
                config, "train", batch_size=4, process_index=i, process_count=2, data_dir=tiny_data
            )
        )
        for i in range(2)
    ]
    assert not shares[0] & shares[1] and shares[0] | shares[1] == whole and len(whole) == n

    def train_share(i):  # the examples one epoch of process i reads (before decoding)
        it = create_train_iterator(
            config, seed=0, process_index=i, process_count=2, data_dir=tiny_data
        )
        # n // 2 examples, 4 per batch: as many batches as on one process (n // 8)
        assert it.batches_per_epoch == (n // 2) // 4 == n // 8
        return {
            (ex["video_id"], int(ex["timestamp"])) for ex in it._read_epoch(i).as_numpy_iterator()
        }

    train0, train1 = train_share(0), train_share(1)
    assert not train0 & train1 and len(train0) == len(train1) == n // 2
    assert len(whole - (train0 | train1)) == n % 2 and train0 | train1 <= whole


def run_fails(procs, timeout=120):
    """Each process exits 1 with exactly one 'error:' line; returns those lines."""
    lines = []
    for p in procs:
        out = p.communicate(timeout=timeout)[0]
        assert p.returncode == 1, out[-2000:]
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, out[-2000:]
        lines.append(errors[0])
    return lines


def test_bad_process_id_and_unreachable_coordinator_fail_on_every_process(tiny_data, tmp_path):
    port = free_port()
    args = [
        "--workdir",
        str(tmp_path),
        "--data_dir",
        tiny_data,
        "--coordinator_address",
        f"localhost:{port}",
        "--num_processes",
        "2",
        "--coordinator_timeout_s",
        "4",
    ]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "launch.py",
                "train",
                "--config",
                "configs/synthetic.py:test",
                *args,
                "--process_id",
                pid,
            ],
            env=TWO_DEVICES,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for pid in ("2", "1")
    ]
    bad_id, alone = run_fails(procs)
    assert "--process_id=2 is outside [0, 2)" in bad_id
    assert (
        f"process 1 of 2 could not reach all processes through the coordinator at "
        f"localhost:{port} within 4 s (--coordinator_address"
    ) in alone


def test_processes_with_different_configs_fail_naming_the_field(tiny_data, tmp_path):
    procs = launch(
        "train",
        "--workdir",
        str(tmp_path),
        "--data_dir",
        tiny_data,
        per_process=lambda i: [f"--config.seed={i}"],
    )
    for line in run_fails(procs):
        assert (
            "processes disagree on the config: config.seed is 0 on process 0 but 1 on "
            "process 1" in line
        )


def test_cluster_detection_and_flag_checks_without_a_backend(monkeypatch):
    for var in (
        "SLURM_JOB_ID",
        "SLURM_STEP_NODELIST",
        "SLURM_NTASKS",
        "SLURM_PROCID",
        "SLURM_LOCALID",
        "OMPI_MCA_orte_hnp_uri",
        "KUBERNETES_SERVICE_HOST",
    ):
        monkeypatch.delenv(var, raising=False)
    assert distributed.resolve(None, None, None).source == "single process"
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node[1-2]")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    assert distributed.resolve(None, None, None) == distributed.Topology(2, 1, None, "SlurmCluster")
    with pytest.raises(ValueError, match="--process_id missing"):
        distributed.resolve("h:1", 2, None)
    with pytest.raises(ValueError, match="--coordinator_address='h': expected HOST:PORT"):
        distributed.resolve("h", 2, 0)
    assert distributed.config_difference('{"a": {"b": 1}, "c": 2}', '{"a": {"b": 3}, "c": 2}') == (
        "a.b",
        1,
        3,
    )


def test_jax_internals_that_distributed_reads_are_still_there():
    """distributed._jax_internals is the one place that reads JAX's private modules (no public API
    in jax 0.10): if a JAX upgrade moves them, this fails, naming what moved."""
    cluster_env, state = distributed._jax_internals()
    assert isinstance(cluster_env._cluster_types, list) and cluster_env._cluster_types, (
        "jax._src.clusters.ClusterEnv._cluster_types moved: update distributed._jax_internals"
    )
    for env in cluster_env._cluster_types:
        for name in ("opt_in_only_method", "is_env_present", "get_process_count", "get_process_id"):
            assert hasattr(env, name), f"{env.__name__}.{name} moved: update distributed.py"
    assert hasattr(state, "client"), "jax._src.distributed.global_state.client moved"
    from jax._src.lib import _jax

    for name in ("key_value_set", "key_value_try_get", "blocking_key_value_get", "wait_at_barrier"):
        assert hasattr(_jax.DistributedRuntimeClient, name), f"client.{name} moved"


def resume_from_step4(runs, name, steps, heartbeat=PATIENT):
    """2 processes training from a copy of the killed run's step 4 (process 0's output first)."""
    workdir = runs["root"] / name
    shutil.copytree(runs["root"] / "killed" / "checkpoints" / "4", workdir / "checkpoints" / "4")
    args = train_flags(workdir, runs["data"], steps, every=2, mesh=MESH_SHAPE)
    return workdir, launch("train", *args, heartbeat)


def wait_for_step(workdir, procs, step):
    metrics, deadline = workdir / "metrics.jsonl", time.time() + 900
    while not (metrics.exists() and f'"step": {step}' in metrics.read_text()):
        assert time.time() < deadline and all(p.poll() is None for p in procs), (
            procs[0].communicate()[0][-3000:] if procs[0].poll() is not None else "timed out"
        )
        time.sleep(0.1)


def straight_params(runs):
    """The parameters of the straight 2-process run's step 6 (``runs``' straight6 step folder)."""
    ref = runs["root"] / "straight_ref"
    if not ref.exists():
        shutil.copytree(runs["root"] / "straight6", ref / "checkpoints" / "6")
    return params_at(ref, 6)


def test_dead_peer_is_named_and_a_restart_resumes_exactly(runs):
    """SIGKILL of process 1: process 0 stops within the heartbeat's bound, with one line naming
    process 1 and the command to resume, no stack dump; restarting both processes resumes
    bit-exactly (the straight run's step 6)."""
    workdir, procs = resume_from_step4(
        runs, "dead_peer", 1000, "--config.distributed.heartbeat_timeout_s=12"
    )
    wait_for_step(workdir, procs, 5)
    procs[1].send_signal(signal.SIGKILL)
    out = procs[0].communicate(timeout=300)[0]
    procs[1].communicate()
    assert procs[0].returncode == 1, out[-3000:]
    errors = [x for x in out.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: process 1 of 2 stopped answering (nothing from it for "
    ), out[-3000:]
    assert (
        "config.distributed.heartbeat_timeout_s=12); the checkpoints written so far are "
        in (errors[0])
    )
    assert f"launch.py train --config configs/synthetic.py:test --workdir {workdir}" in errors[0]
    assert "Traceback" not in out and "Fatal Python" not in out and "client.h" not in out
    assert errors[0][len("error: ") :] in (workdir / "log.txt").read_text()  # and in the log
    for later in (workdir / "checkpoints").iterdir():  # the restart goes on from step 4
        if not later.name.isdigit() or int(later.name) > 4:
            shutil.rmtree(later)
    finish(launch("train", *train_args(workdir, runs["data"], 6)))
    assert_same(params_at(workdir, 6), straight_params(runs), "restart vs straight")


def test_sigterm_on_every_process_saves_one_step_and_exits_zero(runs):
    workdir, procs = resume_from_step4(runs, "preempted", 1000)
    wait_for_step(workdir, procs, 5)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    outs = finish(procs, timeout=300)
    stops = [re.findall(r"training stopped by SIGTERM at step (\d+)", out) for out in outs]
    assert stops[0] == stops[1] and len(stops[0]) == 1, outs[0][-2000:]
    step = int(stops[0][0])
    assert step > 4 and Checkpointer(str(workdir)).latest_step() == step
    assert params_at(workdir, step).keys() == straight_params(runs).keys()


KILL_DURING_SAVE = """
import os, signal, sys
import numpy as np
port, pid, workdir, patience = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
from configs import synthetic
from jovale_jax import checkpoint, distributed
config = synthetic.get_config("test")
config.distributed.heartbeat_timeout_s = patience
distributed.start(config, f"localhost:{port}", 2, pid, timeout_s=120)
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jovale_jax.checkpoint import Checkpointer
sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
def filled(n, value):  # a global array of n values, each process holding its half
    return jax.make_array_from_callback(
        (n,), sharding, lambda i: np.full(len(range(*i[0].indices(n))), value, np.float32))
ck = Checkpointer(workdir)
ck.save(1, {"w": filled(8, 1.0)}, {"input_state": {"epoch": 1}})
ck.wait()
ck.save(2, {"w": filled(2**26, 0.0)}, {"input_state": {"epoch": 2}})  # 256 MB, written async
print("saving step 2", flush=True)
if pid == 1:
    os.kill(os.getpid(), signal.SIGKILL)
ck.wait()  # process 0: the step cannot be committed without process 1
"""


def test_sigkill_during_an_asynchronous_save_on_two_processes_keeps_the_step_uncounted(tmp_path):
    """Process 1 is SIGKILLed while both processes write step 2 asynchronously (process 0 is
    killed too, as a scheduler ends the job): step 2 does not count as written, step 1 restores."""
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", KILL_DURING_SAVE, str(port), str(i), str(tmp_path), "900"],
            env=TWO_DEVICES,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    out1 = procs[1].communicate(timeout=600)[0]
    assert procs[1].returncode == -signal.SIGKILL and "saving step 2" in out1, out1[-3000:]
    time.sleep(3)  # process 0 writes its half meanwhile, and waits for process 1 (or fails)
    if procs[0].poll() is None:
        procs[0].send_signal(signal.SIGKILL)
    procs[0].communicate()
    # step 2 was under way (orbax's temporary folder), and it is not counted
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("2.")]
    ck = Checkpointer(str(tmp_path))
    assert ck.latest_step() == 1 and checkpoint.steps_in(str(tmp_path / "checkpoints")) == [1]
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # restored on this process
    state, meta = ck.restore(1, {"w": jax.ShapeDtypeStruct((8,), np.float32, sharding=one)})
    ck.close()
    np.testing.assert_array_equal(np.asarray(state["w"]), np.ones(8))
    assert meta["input_state"] == {"epoch": 1}
