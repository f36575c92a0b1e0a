"""launch.py as a new user runs it: a quiet console, a log file that records the run, metrics as
valid JSON, and eval's --compare_to (the bad-input cases: tests/test_bad_input.py)."""

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import pytest
from conftest import xla_flags

from configs import synthetic
from jovale_jax import evaluate, state

REPO = pathlib.Path(__file__).resolve().parent.parent
NOISE = re.compile(r"^[IWE]\d{4} |INFO|absl|orbax|deprecated|oneDNN|WARNING: All log messages")


def _no_nan(constant):
    raise AssertionError(f"metrics.jsonl holds {constant}, which is not JSON")


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """`launch.py train` from a folder outside the repo with relative paths: 2 steps, then the
    periodic evaluation. Returns (the folder, the finished process)."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    configs = os.path.relpath(REPO / "configs", cwd)
    run = subprocess.run(
        [sys.executable, str(REPO / "launch.py"), "train"]
        + ["--config", f"{configs}/synthetic.py:test", "--workdir", "runs/w"]
        + ["--data_dir", os.path.relpath(tiny_data, cwd), "--config.mesh_shape=(1, 1)"]
        + ["--config.num_train_steps=2", "--config.log_every_steps=1"]
        + ["--config.eval_every_steps=2", "--config.eval_batch_size=8"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, XLA_FLAGS=xla_flags()),  # one CPU device
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return cwd, run


def test_console_is_quiet_and_log_txt_records_the_run(trained):
    cwd, run = trained
    console = (run.stdout + run.stderr).replace("\r", "\n").splitlines()
    assert not [line for line in console if NOISE.search(line)], "\n".join(console)
    assert "step 2/2 loss" in run.stdout and "eval_mAP" in run.stdout
    log = (cwd / "runs" / "w" / "log.txt").read_text()
    for want in ("versions: python", "jax ", "config:", "dataset: synthetic", "step 1/2 loss"):
        assert want in log, want
    assert re.search(r"step 2/2 eval_mAP \d\.\d{4}", log)
    assert "INFO absl" not in log and "deprecated" not in log  # only with --verbosity=0
    records = [
        json.loads(line, parse_constant=_no_nan)
        for line in (cwd / "runs" / "w" / "metrics.jsonl").read_text().splitlines()
    ]
    assert records[0]["steps_per_s"] > 0  # the first line has a rate too (the window's mean)
    assert [r["step"] for r in records] == [1, 2, 2] and "eval_mAP" in records[-1]
    import tensorflow as tf

    tags = {
        value.tag
        for events in (cwd / "runs" / "w" / "tensorboard").glob("events.*")
        for event in tf.compat.v1.train.summary_iterator(str(events))
        for value in event.summary.value
    }
    assert {"loss", "eval_mAP", "steps_per_s"} <= tags


def test_compare_to_on_the_console_and_stale_chart_removed(trained, tiny_data, tmp_path, capsys):
    cwd, _ = trained
    config = synthetic.get_config("test")
    config.mesh_shape = (1, 1)
    before = tmp_path / "before" / "results.json"
    before.parent.mkdir()
    before.write_text(json.dumps({"mAP": 0.1, "per_class": {str(c): 0.1 for c in range(1, 7)}}))
    out = tmp_path / "eval"
    result = evaluate.evaluate_checkpoint(
        config,
        str(cwd / "runs" / "w"),
        out_dir=str(out),
        data_dir=tiny_data,
        compare_to=str(before),
        devices=jax.devices()[:1],
    )
    shown = capsys.readouterr().out
    assert f"compared with {before}: mAP 0.1000 then, {result['mAP']:.4f} now" in shown
    assert (out / "per_class_ap_diff.png").stat().st_size > 1000
    # Again without --compare_to (the same predictions): the earlier comparison is removed.
    with pytest.MonkeyPatch.context() as m:
        m.setattr(state, "load_trained", lambda *a, **k: None)
        m.setattr(evaluate, "predict_split", lambda *a, **k: result["predictions"])
        evaluate.evaluate_checkpoint(
            config, str(cwd / "runs" / "w"), out_dir=str(out), data_dir=tiny_data
        )
    assert not (out / "per_class_ap_diff.png").exists()
    assert (out / "per_class_ap.png").exists()


def test_difference_chart_keeps_the_class_order(tmp_path):
    a = {"mAP": 0.5, "per_class": {1: 0.2, 2: 0.8, 3: 0.5}, "names": {}}
    b = {"mAP": 0.6, "per_class": {1: 0.5, 2: 0.7, 3: float("nan")}, "names": {1: "x", 2: "y"}}
    rows = evaluate.plot_difference(a, b, str(tmp_path / "diff.png"), labels=("v", "v+a+s"))
    assert [r[0] for r in rows] == ["1 x", "2 y", "3 "]  # per_class_ap.png's order, not sorted
    assert rows[0][1] == pytest.approx(0.3) and rows[2][1] == pytest.approx(-0.5)


def test_checkpoint_of_another_embed_dim_names_the_field(trained, tiny_data):
    """Issue 25 item 8: a workdir checkpoint read with another `model.embed_dim` names the
    field, both values and the override that reads it."""
    cwd, _ = trained
    config = synthetic.get_config("test")
    config.mesh_shape = (1, 1)
    trained_dim = config.model.embed_dim
    config.model.embed_dim = 2 * trained_dim
    with pytest.raises(ValueError) as error:
        state.load_trained(config, str(cwd / "runs" / "w"), devices=jax.devices()[:1])
    assert str(error.value).startswith(
        f"written with model.embed_dim {trained_dim} (this config: {2 * trained_dim}): read it "
        f"with --config.model.embed_dim={trained_dim}; checkpoint "
    )


def test_main_applies_the_process_settings_before_the_command(monkeypatch):
    """launch.main sets the garbage collector's thresholds and JAX's defaults (jovale_jax.runtime)
    before a command runs: the command sees them."""
    import gc

    import launch
    from jovale_jax import run_log, runtime

    seen = {}

    def probe(argv):
        seen.update(gc=gc.get_threshold(), softmax=jax.config.jax_softmax_custom_jvp)

    before = gc.get_threshold()
    monkeypatch.setattr(run_log, "quiet_console", lambda: None)
    monkeypatch.setattr(launch, "start_processes", lambda command: None)
    monkeypatch.setitem(launch.HANDLERS, "probe", probe)
    gc.set_threshold(700, 10, 10)
    jax.config.update("jax_softmax_custom_jvp", False)
    try:
        launch.main(["launch.py", "probe"])
    finally:
        gc.set_threshold(*before)
        jax.config.update("jax_softmax_custom_jvp", True)
    assert seen == {"gc": runtime.GC_THRESHOLD, "softmax": True}
    assert runtime.GC_THRESHOLD[0] > 700  # less often than Python's default
