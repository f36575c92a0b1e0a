"""Bad model input fails with a message that names the field and the expected value."""

import json
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest
from conftest import random_batch
from flax import nnx

from jovale_jax.models import JoVALE
from jovale_jax.models.jovale import check_batch, modalities_of


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


# ----------------------------------------------------------------------------- the command line
# Every case runs as a user types it: from a folder outside the repo, with relative paths. The
# cases share one subprocess (launch.py's flag parsing and main, each in turn) to keep the suite
# fast; test_entry_point_* run the real `python launch.py` once.

REPO = pathlib.Path(__file__).resolve().parent.parent

DRIVER = """
import contextlib, io, json, sys
sys.path.insert(0, sys.argv[1])
import launch
from absl import flags

results = []
for argv in json.loads(sys.argv[2]):
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
        delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    sys.argv = ["launch.py", *argv]  # config_flags reads the overrides from it
    out, err, status = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = launch.main(launch.parse_flags(sys.argv)) or 0
        except SystemExit as e:
            status = e.code
    results.append([status, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def launch_cases(cwd, cases: list[list[str]]) -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of launch.py on each argv, run in ``cwd`` in one process."""
    run = subprocess.run(
        [sys.executable, "-c", DRIVER, str(REPO), json.dumps(cases)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return [tuple(r) for r in json.loads(run.stdout.strip().splitlines()[-1])]


def tree(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in pathlib.Path(folder).rglob("*")}


def assert_one_line_error(status, out, err, want_status, *needles):
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == want_status, (status, out, err)
    assert lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err and "Traceback" not in out, err
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


def test_typos_and_mistyped_paths_are_one_line_errors_that_create_nothing(tmp_path):
    """Issue 25 items 1-3, 6 and 14, issue 22 item 4: each mistake gives one `error:` line naming
    the flag, field or file (with the nearest valid value), and creates no folder."""
    home = tmp_path / "home"
    cwd = home / "project"
    cwd.mkdir(parents=True)
    configs = os.path.relpath(REPO / "configs", cwd)
    cfg = f"{configs}/synthetic.py:test"
    (cwd / "empty").mkdir()  # a workdir without checkpoints
    (cwd / "clip.mp4").write_bytes(b"not a video")
    (cwd / "notes.json").write_text("not JSON")
    (cwd / "other.json").write_text('{"per_class": {}}')
    before = tree(home)
    cases = {
        "unknown command": (["trian"], 2, "'trian'", "did you mean 'train'"),
        "no command": ([], 2, "no command given", "train, eval"),
        "bench flag now a config field": (
            ["bench", "step", "--config", cfg, "--component", "amfn"],
            2,
            "--component is now a config field: --config.bench.component=amfn",
        ),
        "unknown field": (
            ["flops", "--config", cfg, "--config.model.amfn.num_layer=2"],
            2,
            "--config.model.amfn.num_layer",
            "did you mean 'num_layers'",
        ),
        "missing config file": (
            ["train", "--config", f"{configs}/synthtic.py", "--workdir", "runs/w"],
            2,
            "synthtic.py: no such file",
            "did you mean 'synthetic.py'",
        ),
        "unknown variant": (
            ["flops", "--config", f"{configs}/synthetic.py:tset"],
            2,
            "unknown variant 'tset'",
        ),
        "unknown dataset": (
            ["build-data", "--dataset", "kinetics", "--data_dir", "data"],
            2,
            "--dataset kinetics: unknown dataset",
            "synthetic, ava, ucf24, jhmdb21",
        ),
        "unknown table": (
            ["ablate", "--config", cfg, "--config.ablate.table=8", "--workdir", "runs/abl"],
            2,
            "--config.ablate.table=8: no such table",
            "4, 5, 6, 7, scene",
        ),
        "unknown modality": (
            [
                "train",
                "--config",
                cfg,
                "--workdir",
                "runs/t",
                "--config.model.modalities=('smell',)",
            ],
            1,
            "model.modalities",
            "'smell'",
        ),
        "flag of another command": (
            ["eval", "--config", cfg, "--workdir", "runs/w", "--checkpoint", "empty"],
            2,
            "--workdir does not apply to eval",
        ),
        "missing checkpoint folder": (
            ["eval", "--config", cfg, "--checkpoint", "../no/such/dir"],
            2,
            f"--checkpoint {home / 'no' / 'such' / 'dir'}: no such file or folder",
        ),
        "workdir without checkpoints": (
            ["eval", "--config", cfg, "--checkpoint", "empty"],
            1,
            f"no checkpoint in {cwd / 'empty'}",
        ),
        "detect in an empty workdir": (
            ["detect", "--config", cfg, "--checkpoint", "empty", "--video", "clip.mp4"]
            + ["--out", "detections"],
            1,
        ),
        "compare_to not JSON": (
            ["eval", "--config", cfg, "--checkpoint", "empty", "--compare_to", "notes.json"],
            1,
            f"{cwd / 'notes.json'}: not JSON",
        ),
        "compare_to without mAP": (
            ["eval", "--config", cfg, "--checkpoint", "empty", "--compare_to", "other.json"],
            1,
            f"{cwd / 'other.json'}: no 'mAP' field",
        ),
        "convert from a missing source": (
            ["convert", "--config", cfg, "--from", "hf_ast", "--src", "weights/ast"]
            + ["--out", "runs/pretrained"],
            1,
            str(cwd / "weights" / "ast"),
        ),
    }
    results = launch_cases(cwd, [argv for argv, *_ in cases.values()])
    for (name, (argv, status, *needles)), (got, out, err) in zip(cases.items(), results):
        try:
            assert_one_line_error(got, out, err, status, *needles)
        except AssertionError as e:
            raise AssertionError(f"{name}: launch.py {' '.join(argv)}: {e}") from None
    assert tree(home) == before  # no folder, checkpoint manager or log file was created


def test_per_command_help_lists_that_commands_flags(tmp_path):
    (status, out, err), (bench_status, bench_out, _) = launch_cases(
        tmp_path, [["train", "--help"], ["bench", "--help"]]
    )
    assert status == 0 and bench_status == 0, err
    assert out.startswith("usage: python launch.py train [flags]")
    assert "--workdir" in out and "--init_from" in out and "--config.FIELD=VALUE" in out
    assert "--video" not in out and "--compare_to" not in out  # other commands' flags
    assert "step,forward,memory" in bench_out and "config.bench" in bench_out
    assert "--data_dir" in bench_out and "--num_batches" not in bench_out  # config.bench.*


@pytest.mark.parametrize(
    "config,overrides",
    [("configs/nope.py", []), ("configs/synthetic.py", ["--config.num_train_steps=2"])],
    ids=["missing", "the repo's preset, with an override"],
)
def test_entry_point_one_line_error_from_another_folder(tmp_path, config, overrides):
    """The real `python launch.py` (absl's app.run): a config file given relative to another
    folder, where it is not, is one line, exit status 2, and the workdir is not created (with
    an override the flag parser fails before the config flag is parsed)."""
    out = subprocess.run(
        [sys.executable, str(REPO / "launch.py"), "train", "--config", config, *overrides]
        + ["--workdir", "runs/w"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [f"error: --config {config}: no such file"]
    assert not (tmp_path / "runs").exists()


def test_main_turns_only_our_own_input_errors_into_one_line(monkeypatch, capsys):
    """Issue 22 item 4: a check of ours is one `error:` line (exit status 1); a ValueError from
    inside jit (an array split that does not divide: a bug, not an input) keeps its traceback."""
    import jax
    import jax.numpy as jnp

    import launch
    from jovale_jax import run_log

    monkeypatch.setattr(run_log, "quiet_console", lambda: None)  # this process keeps its logging

    def our_check(argv):
        modalities_of(types.SimpleNamespace(modalities=("smell",)))

    def inside_jit(argv):
        jax.jit(lambda x: jnp.split(x, 4))(jnp.ones(6))

    monkeypatch.setitem(launch.HANDLERS, "flops", our_check)
    assert launch.main(["launch.py", "flops"]) == 1
    assert capsys.readouterr().err == (
        "error: config field model.modalities: expected a non-empty subset of "
        "('video', 'audio', 'scene'), got ('smell',)\n"
    )
    monkeypatch.setitem(launch.HANDLERS, "flops", inside_jit)
    with pytest.raises(ValueError, match="equal division"):
        launch.main(["launch.py", "flops"])


def test_synthetic_variants_are_switches():
    """`slowfast,test` in any order is the older `slowfast_test`; an unknown switch is named."""
    from configs import synthetic

    want = synthetic.get_config("slowfast_test").to_json(sort_keys=True)
    for variant in ("slowfast,test", "test, slowfast"):
        assert synthetic.get_config(variant).to_json(sort_keys=True) == want
    assert synthetic.get_config("test").model.video.backbone == "vit"
    with pytest.raises(ValueError, match=r"unknown variant 'fast' in 'test,fast'; expected"):
        synthetic.get_config("test,fast")
