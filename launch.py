"""The one command line of jovale-jax.

    python launch.py COMMAND --config configs/NAME.py[:variant] [--config.field=value ...] [flags]

Commands:
  train       train (resumes from the newest checkpoint in --workdir)
  eval        evaluate a checkpoint on the eval split (mAP, CSV, per-class chart)
  detect      run a trained model on any video file
  convert     import pretrained weights (--from KIND --src PATH, repeatable)
  flops       parameters and multiply-accumulates per component (no execution)
  bench       step | forward | memory | remat | profile | input | eval measurements
  build-data  write the TFRecord shards of a dataset
  ablate      train and evaluate every row of one of the paper's ablation tables (--table)
  demo        build the synthetic set, train, evaluate and write a report (what `make demo` runs)

Options that are configuration live in the config (`--config.eval.split=val`,
`--config.detect.keyframe_every=0.5`, configs/common.py lists them); flags name files and folders.
train and eval run on several processes (one per host, README "Scale") with
`--coordinator_address HOST:PORT --num_processes N --process_id I`; under SLURM or Open MPI JAX
reads these from the environment.
`build-data --dataset NAME` without --config uses the dataset's own preset (DATASET_PRESETS).
"""

from __future__ import annotations

import importlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags
from ml_collections import config_flags

from jovale_jax import runtime

config_flags.DEFINE_config_file(
    "config", None, "Config preset: configs/NAME.py[:variant].", lock_config=True
)
flags.DEFINE_string("workdir", None, "Run folder: checkpoints, logs, results.")
flags.DEFINE_bool("json", False, "flops: end with one JSON line.")
flags.DEFINE_string(
    "table",
    None,
    "ablate (required) / flops: one of the paper's ablation tables: "
    "4 | 5 | 6 | 7 | scene (jovale_jax/ablate.py).",
)
flags.DEFINE_string(
    "data_dir", None, "Where the TFRecord shards are (default config.data.data_dir)."
)
flags.DEFINE_string("raw_dir", None, "build-data: the raw dataset folder.")
flags.DEFINE_string(
    "dataset",
    None,
    "build-data: synthetic | ava | ucf24 | jhmdb21 (without --config: that dataset's preset).",
)
flags.DEFINE_bool("strict", False, "build-data: a corrupt video is an error instead of skipped.")
flags.DEFINE_multi_string("from", [], "convert: source kind, repeat with --src.")
flags.DEFINE_multi_string("src", [], "convert: source path, one per --from.")
flags.DEFINE_string("out", None, "convert / detect: output folder.")
flags.DEFINE_bool("overwrite", False, "convert: replace an earlier converted --out.")
flags.DEFINE_list("source_grid", None, "convert: T,H,W token grid of a VideoMAE checkpoint.")
flags.DEFINE_string("init_from", None, "train: converted pretrained weights (launch.py convert).")
flags.DEFINE_string("checkpoint", None, "eval / detect: a workdir or workdir/checkpoints/STEP.")
flags.DEFINE_integer("batch_size", None, "bench: batch size (default config.batch_size).")
flags.DEFINE_string("component", "model", "bench step/forward/profile: model | amfn.")
flags.DEFINE_integer("num_batches", 20, "bench input: batches to time.")
flags.DEFINE_bool(
    "fixture",
    False,
    "bench input: generate and build the tiny AVA-geometry fixture "
    "into --data_dir (default runs/data/ava_fixture) and time that.",
)
flags.DEFINE_float(
    "gpu_clips_per_s",
    None,
    "bench input: one GPU's training rate (default: "
    "an H100/H200 at 40% bf16 MFU on the config's model).",
)

flags.DEFINE_string(
    "compare_to", None, "eval: a results.json to draw the per-class difference against."
)
flags.DEFINE_string(
    "coordinator_address",
    None,
    "train / eval on several processes: HOST:PORT of "
    "process 0's coordinator (with --num_processes, --process_id).",
)
flags.DEFINE_integer("num_processes", None, "train / eval: the number of processes.")
flags.DEFINE_integer("process_id", None, "train / eval: this process's id in [0, num_processes).")
flags.DEFINE_float(
    "coordinator_timeout_s",
    300.0,
    "train / eval: seconds to wait for all processes to reach the coordinator before failing.",
)
flags.DEFINE_string(
    "ablation_dir",
    None,
    "demo: the `launch.py ablate --table 4` workdir whose table the report shows "
    "(default runs/ablate4, when it holds one).",
)
flags.DEFINE_string("video", None, "detect: the video file.")
flags.DEFINE_string("boxes", None, "detect: an AVA-style CSV of person boxes.")
flags.DEFINE_string("video_out", None, "detect: also write an annotated mp4 here.")

FLAGS = flags.FLAGS
BENCHES = ("step", "forward", "memory", "remat", "profile", "input", "eval")
DATASET_PRESETS = {
    "synthetic": "synthetic",
    "ava": "ava_vitb16",
    "ucf24": "ucf24",
    "jhmdb21": "jhmdb21",
}  # build-data --dataset NAME without --config
DISTRIBUTED_COMMANDS = ("train", "eval")  # the commands that run on several processes
COMMANDS = (
    "train",
    "eval",
    "detect",
    "convert",
    "flops",
    "bench",
    "build-data",
    "check-data",
    "ablate",
    "demo",
)


def _config():
    if FLAGS.config is None:
        raise app.UsageError("--config is required, e.g. --config configs/synthetic.py")
    return FLAGS.config


def cmd_flops(args):
    """Print parameters and GMACs per component for one forward pass at batch 1; with --table,
    the fusion stage's GMACs for every row of that ablation table."""
    from jovale_jax.flops import component_costs

    if FLAGS.table is not None:
        from jovale_jax.ablate import fusion_cost_table

        text, rows = fusion_cost_table(_config(), FLAGS.table)
        print(text)
        if FLAGS.json:
            print(json.dumps(rows))
        return
    costs = component_costs(_config().model)
    print(f"{'component':<10} {'params (M)':>12} {'GMACs':>10}")
    for name, c in costs.items():
        print(f"{name:<10} {c['params'] / 1e6:>12.2f} {c['gmacs']:>10.1f}")
    if FLAGS.json:
        out = {
            "total_gmacs": costs["total"]["gmacs"],
            "params": costs["total"]["params"],
            "components": costs,
        }
        print(json.dumps(out))


def cmd_train(argv):
    """Train (or resume) the config in --workdir, with periodic evaluation."""
    from jovale_jax import run_log, train
    from jovale_jax.evaluate import periodic_evaluator

    config = _config()
    _require("workdir")
    run_log.log_to_file(FLAGS.workdir)
    train.train(
        config,
        FLAGS.workdir,
        init_from=FLAGS.init_from,
        data_dir=FLAGS.data_dir,
        evaluate_fn=periodic_evaluator(config, FLAGS.data_dir),
    )


def cmd_eval(argv):
    """Evaluate --checkpoint on the eval split."""
    from jovale_jax.evaluate import evaluate_checkpoint

    _require("checkpoint")
    config = _config()
    evaluate_checkpoint(
        config,
        FLAGS.checkpoint,
        split=config.eval.split or None,
        out_dir=FLAGS.out,
        data_dir=FLAGS.data_dir,
        compare_to=FLAGS.compare_to,
    )


def cmd_convert(argv):
    """Convert pretrained weights (--from KIND --src PATH, repeatable) into --out."""
    from jovale_jax.convert import convert_main
    from jovale_jax.convert.io import summary

    _require("out")
    kinds, srcs = FLAGS["from"].value, FLAGS.src
    if not kinds or len(kinds) != len(srcs):
        raise app.UsageError(
            f"give one --src per --from (got {len(kinds)} --from, {len(srcs)} --src)"
        )
    grid = None if FLAGS.source_grid is None else tuple(int(n) for n in FLAGS.source_grid)
    manifest = convert_main(
        list(zip(kinds, srcs)), FLAGS.out, _config(), overwrite=FLAGS.overwrite, source_grid=grid
    )
    print(summary(manifest, FLAGS.out))


def cmd_build_data(argv):
    """Write the TFRecord shards of --dataset (default: the config's) into --data_dir."""
    from jovale_jax.datasets import build_dataset

    config = build_data_config()
    name = FLAGS.dataset or config.dataset
    data_dir = FLAGS.data_dir or config.data.data_dir
    summary = build_dataset(
        name, config=config, raw_dir=FLAGS.raw_dir, data_dir=data_dir, strict=FLAGS.strict
    )
    print(json.dumps(summary, default=str))


def cmd_check_data(argv):
    """Read every record of the config's built dataset; compare counts and checksums with the
    build's metadata (jovale_jax/datasets/verify.py)."""
    from jovale_jax.datasets import check_dataset

    report = check_dataset(_config(), FLAGS.data_dir)
    print(
        f"{report['data_path']}: {report['shards']} shards, {report['records']} records read, "
        f"counts and checksums as built; videos skipped at build: {report['videos_skipped']}"
    )
    print(json.dumps(report))


def build_data_config():
    """--config, or without it the preset of --dataset (DATASET_PRESETS)."""
    if FLAGS.config is None and FLAGS.dataset in DATASET_PRESETS:
        return importlib.import_module(f"configs.{DATASET_PRESETS[FLAGS.dataset]}").get_config()
    return _config()


def cmd_bench(argv):
    """bench step | forward | memory | remat | profile | input | eval (bench/README.md)."""
    what = argv[2]
    if what == "input":
        from jovale_jax.bench.input import run_input_bench

        run_input_bench(
            _config(),
            FLAGS.data_dir,
            FLAGS.num_batches,
            fixture=FLAGS.fixture,
            gpu_clips_per_s=FLAGS.gpu_clips_per_s,
        )
    elif what == "eval":
        from jovale_jax.bench.eval import run_eval_bench

        run_eval_bench()
    elif what == "profile":
        from jovale_jax.bench.profile import profile_breakdown

        profile_breakdown(_config(), component=FLAGS.component, batch_size=FLAGS.batch_size)
    else:
        from jovale_jax.bench import step

        if what == "memory":
            print_memory(_config(), FLAGS.batch_size or _config().batch_size)
        elif what == "remat":
            step.run_remat_bench(_config(), batch_size=FLAGS.batch_size)
        else:
            step.run_bench(_config(), what, batch_size=FLAGS.batch_size, component=FLAGS.component)


def print_memory(config, batch_size: int) -> None:
    """``bench memory``: jovale_jax.memory.memory_report as a table (GB) and one JSON line."""
    from jovale_jax.memory import memory_report

    r = memory_report(config, batch_size)
    print(
        f"train step, batch {r['batch_size']} on one {r['backend']} device, {r['dtype']}, "
        f"remat_policy {r['remat_policy']}:"
    )
    for key in (
        "params",
        "opt_state",
        "frozen",
        "batch",
        "arguments",
        "outputs",
        "aliased",
        "temporaries",
        "generated_code",
        "total",
        "per_clip",
    ):
        print(f"  {key:<15} {r[key] / 1e9:10.3f} GB")
    print(f"  {'GMACs per clip':<15} {r['gmacs_per_clip']:10.1f}")
    print(json.dumps({"bench": "memory", **r}))


def cmd_detect(argv):
    """Run a trained model on --video; write detections and drawn keyframes to --out."""
    from jovale_jax.detect import detect

    _require("video")
    _require("out")
    detect(
        _config(),
        video=FLAGS.video,
        out_dir=FLAGS.out,
        checkpoint=FLAGS.checkpoint,
        boxes_csv=FLAGS.boxes,
        video_out=FLAGS.video_out,
    )


def cmd_ablate(argv):
    """Train and evaluate every row of --table in its own folder of --workdir."""
    from jovale_jax import run_log
    from jovale_jax.ablate import ablate

    _require("workdir")
    _require("table")
    run_log.log_to_file(FLAGS.workdir)
    ablate(
        _config(), FLAGS.workdir, FLAGS.table, data_dir=FLAGS.data_dir, init_from=FLAGS.init_from
    )


def cmd_demo(argv):
    """Build the synthetic set, train, evaluate, and write the report."""
    from jovale_jax import run_log
    from jovale_jax.demo import demo

    workdir = FLAGS.workdir or "runs/demo"
    run_log.log_to_file(workdir)
    demo(
        _config() if FLAGS.config is not None else None,
        workdir,
        data_dir=FLAGS.data_dir,
        ablation_dir=FLAGS.ablation_dir or "runs/ablate4",
    )


def _require(name: str) -> None:
    if FLAGS[name].value is None:
        raise app.UsageError(f"--{name} is required for this command")


HANDLERS = {
    "flops": cmd_flops,
    "train": cmd_train,
    "eval": cmd_eval,
    "convert": cmd_convert,
    "build-data": cmd_build_data,
    "check-data": cmd_check_data,
    "bench": cmd_bench,
    "detect": cmd_detect,
    "ablate": cmd_ablate,
    "demo": cmd_demo,
}


def check_command(argv) -> None:
    """The positional arguments left after the flags: one command (and a bench's kind)."""
    if len(argv) < 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"expected one command of {COMMANDS}, got {argv[1:]}")
    if argv[1] == "bench":
        if len(argv) != 3 or argv[2] not in BENCHES:
            raise app.UsageError(f"bench needs one of {BENCHES}, got {argv[2:]}")
    elif len(argv) != 2:
        raise app.UsageError(f"unexpected arguments {argv[2:]}")


def start_processes(command: str) -> None:
    """Join the other processes (jax.distributed) before anything touches JAX; see
    jovale_jax/distributed.py."""
    from jovale_jax import distributed

    names = ("coordinator_address", "num_processes", "process_id")
    if command not in DISTRIBUTED_COMMANDS:
        given = [f"--{n}" for n in names if FLAGS[n].value is not None]
        if given:
            raise app.UsageError(
                f"{', '.join(given)}: only {DISTRIBUTED_COMMANDS} run on several "
                f"processes, not {command}"
            )
        return
    distributed.start(
        _config(), *(FLAGS[n].value for n in names), timeout_s=FLAGS.coordinator_timeout_s
    )


def main(argv):
    check_command(argv)
    runtime.configure_jax()  # settings only: the backend is still untouched
    try:
        start_processes(argv[1])
        HANDLERS[argv[1]](argv)
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(app.run(main))
