"""The one command line of jovale-jax.

    python launch.py COMMAND --config configs/NAME.py[:variant] [--config.field=value ...] [flags]

Commands:
  train       train (resumes from the newest checkpoint in --workdir)
  eval        evaluate a checkpoint on the eval split (mAP, CSV, per-class chart)
  detect      run a trained model on any video file
  convert     import pretrained weights (--from KIND --src PATH, repeatable)
  flops       parameters and multiply-accumulates per component (no execution)
  bench       step | forward | memory | remat | profile | input | eval | loop | peers measurements
  build-data  write the TFRecord shards of a dataset
  ablate      train and evaluate every row of one of the paper's ablation tables
              (--config.ablate.table)
  demo        build the synthetic set, train, evaluate and write a report (what `make demo` runs)
  attention   the paper's Figure 6: actors' attention maps on keyframes (--checkpoint, --out)

Options that are configuration live in the config (`--config.data.eval_split=val`,
`--config.detect.keyframe_every=0.5`, configs/common.py lists them); flags name files and folders.
train and eval run on several processes (one per host, README "Scale") with
`--coordinator_address HOST:PORT --num_processes N --process_id I`; under SLURM or Open MPI JAX
reads these from the environment.
`build-data --dataset NAME` without --config uses the dataset's own preset (its builder's PRESET).

`launch.py COMMAND --help` lists the flags a command reads (COMMAND_FLAGS; another is an error).
Paths are made absolute at the command line. Every mistake on the command line (a typo in a
command, flag, config field, variant, dataset or table; a missing file) is one `error:` line with
exit status 2, and an input error found by the project's own checks one line with status 1, both
before anything is created; other exceptions keep their traceback. The console shows what the
program prints and warnings; `train`, `ablate` and `demo` write the run's log.txt (run_log.py).
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ INFO and warnings
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # and its oneDNN note at import
# TensorFlow imports Keras at start-up (keras.src.optimizers, for its SavedModel registry), and
# Keras imports matplotlib.pyplot and scikit-learn: 1.6 s of every command that reads data
# (measured on a 2-core CPU), for a library this program never uses. With TF_USE_LEGACY_KERAS
# TensorFlow tries tf_keras instead, which is not installed, and goes on without it; `tf.keras`
# is then unavailable in this process.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

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
    "flops: one of the paper's ablation tables: 4 | 5 | 6 | 7 | scene (jovale_jax/ablate.py); "
    "ablate reads config.ablate.table.",
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
flags.DEFINE_multi_string(
    "from",
    [],
    "convert: source kind, one per --src: videomae_v2 | hf_videomae | hf_blip | hf_blip_itm | "
    "hf_clip | hf_ast | pyslowfast | acar | pytorchvideo (README, Pretrained weights).",
)
flags.DEFINE_multi_string("src", [], "convert: source path, one per --from.")
flags.DEFINE_string("out", None, "convert / detect: output folder.")
flags.DEFINE_bool("overwrite", False, "convert: replace an earlier converted --out.")
flags.DEFINE_list("source_grid", None, "convert: T,H,W token grid of a VideoMAE checkpoint.")
flags.DEFINE_string("init_from", None, "train: converted pretrained weights (launch.py convert).")
flags.DEFINE_string("checkpoint", None, "eval / detect: a workdir or workdir/checkpoints/STEP.")

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
    "demo: the `launch.py ablate --config.ablate.table=4` workdir whose table the report shows "
    "(default runs/ablate4, when it holds one).",
)
flags.DEFINE_string("video", None, "detect: the video file.")
flags.DEFINE_string("boxes", None, "detect: an AVA-style CSV of person boxes.")
flags.DEFINE_string("video_out", None, "detect: also write an annotated mp4 here.")
config_flags.DEFINE_config_file(
    "compare_config", None, "attention: the config of --compare_checkpoint.", lock_config=True
)
flags.DEFINE_string("compare_checkpoint", None, "attention: a second model, drawn beside.")
flags.DEFINE_list("classes", None, "attention: class names, one keyframe each (default: all).")

FLAGS = flags.FLAGS
BENCHES = ("step", "forward", "memory", "remat", "profile", "input", "eval", "loop", "peers")
DISTRIBUTED_COMMANDS = ("train", "eval")  # the commands that run on several processes
DISTRIBUTED_FLAGS = ("coordinator_address", "num_processes", "process_id", "coordinator_timeout_s")
COMMAND_FLAGS = {  # the flags each command reads (its --help lists them; others are an error)
    "train": ("config", "workdir", "init_from", "data_dir", *DISTRIBUTED_FLAGS),
    "eval": ("config", "checkpoint", "out", "data_dir", "compare_to", *DISTRIBUTED_FLAGS),
    "detect": ("config", "video", "out", "checkpoint", "boxes", "video_out"),
    "convert": ("config", "from", "src", "out", "overwrite", "source_grid"),
    "flops": ("config", "table", "json"),
    "bench": ("config", "data_dir"),
    "build-data": ("dataset", "config", "raw_dir", "data_dir", "strict"),
    "check-data": ("config", "data_dir"),
    "ablate": ("config", "workdir", "data_dir", "init_from"),
    "demo": ("config", "workdir", "data_dir", "ablation_dir"),
    "attention": (
        "config",
        "checkpoint",
        "compare_config",
        "compare_checkpoint",
        "classes",
        "out",
        "data_dir",
    ),
}
COMMANDS = tuple(COMMAND_FLAGS)
PATH_FLAGS = (
    "workdir",
    "data_dir",
    "raw_dir",
    "out",
    "init_from",
    "checkpoint",
    "compare_checkpoint",
    "video",
    "boxes",
    "video_out",
    "compare_to",
    "ablation_dir",
    "src",
)  # made absolute at the command line: the code never depends on the working directory
HELP = ("--help", "-h", "--helpshort", "-?")
MOVED_FLAGS = {  # bench flags that became config fields (issue 22): the error says where they went
    "batch_size": "--config.batch_size=N",
    "component": "--config.bench.component=amfn",
    "num_batches": "--config.bench.input_batches=N",
    "fixture": "--config.bench.fixture=True",
    "gpu_clips_per_s": "--config.bench.gpu_clips_per_s=X",
}
HERE = os.path.dirname(os.path.abspath(__file__))


class InputError(Exception):
    """A mistake on the command line: printed as one `error:` line, exit status 2."""


def _config():
    if FLAGS.config is None:
        raise InputError("--config is required, e.g. --config configs/synthetic.py")
    return FLAGS.config


def check_model(config) -> None:
    """Every `config.model` value the model checks (modalities, strategies, sizes), checked
    abstractly (no weights), before anything is created."""
    from flax import nnx

    from jovale_jax.models import JoVALE

    nnx.eval_shape(lambda: JoVALE(config.model, rngs=nnx.Rngs(0)))


def cmd_flops(args):
    """Print parameters and GMACs per component for one forward pass at batch 1; with --table,
    the fusion stage's GMACs for every row of that ablation table."""
    from jovale_jax.flops import component_costs, format_costs

    if FLAGS.table is not None:
        from jovale_jax.ablate import fusion_cost_table

        text, rows = fusion_cost_table(_config(), FLAGS.table)
        print(text)
        if FLAGS.json:
            print(json.dumps(rows))
        return
    costs = component_costs(_config().model)
    print(format_costs(costs))
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
    _not_a_file("workdir")
    check_model(config)
    _exists("init_from")
    run_log.log_to_file(FLAGS.workdir, config, _verbosity())
    train.train(
        config,
        FLAGS.workdir,
        init_from=FLAGS.init_from,
        data_dir=FLAGS.data_dir,
        evaluate_fn=periodic_evaluator(config, FLAGS.data_dir),
    )


def cmd_eval(argv):
    """Evaluate --checkpoint on the eval split (config.data.eval_split)."""
    from jovale_jax.evaluate import evaluate_checkpoint

    _require("checkpoint")
    _exists("checkpoint")
    config = _config()
    evaluate_checkpoint(
        config,
        FLAGS.checkpoint,
        out_dir=FLAGS.out,
        data_dir=FLAGS.data_dir,
        compare_to=FLAGS.compare_to,
    )


def cmd_convert(argv):
    """Convert pretrained weights (--from KIND --src PATH, repeatable) into --out."""
    from jovale_jax.convert import convert_main
    from jovale_jax.convert.io import summary

    _require("out")
    _not_a_file("out")
    kinds, srcs = FLAGS["from"].value, FLAGS.src
    if not kinds or len(kinds) != len(srcs):
        raise InputError(f"give one --src per --from (got {len(kinds)} --from, {len(srcs)} --src)")
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
    data_dir = FLAGS.data_dir or os.path.abspath(config.data.data_dir)
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
    """--config, or without it the preset of --dataset (its builder's PRESET)."""
    from jovale_jax.datasets import BUILDERS

    presets = {name: builder.PRESET for name, builder in BUILDERS.items()}
    if FLAGS.dataset is not None and FLAGS.config is None and FLAGS.dataset not in presets:
        raise InputError(
            f"--dataset {FLAGS.dataset}: unknown dataset{_nearest(FLAGS.dataset, presets)}"
            f"; known: {', '.join(presets)} (your own set: --config, data/README.md)"
        )
    if FLAGS.config is None and FLAGS.dataset is not None:
        return importlib.import_module(f"jovale_jax.configs.{presets[FLAGS.dataset]}").get_config()
    if FLAGS.config is None:
        raise InputError(f"build-data needs --dataset NAME ({', '.join(presets)}) or --config")
    return FLAGS.config


def cmd_bench(argv):
    """bench step | forward | memory | remat | profile | input | eval | loop | peers
    (bench/README.md); options: config.bench.* and config.batch_size (configs/common.py)."""
    what, config = argv[2], _config()
    bench = config.bench
    if what == "loop":
        from jovale_jax.bench.loop import run_loop_bench

        run_loop_bench(config, FLAGS.data_dir, fixture=bench.fixture)
    elif what == "peers":
        from jovale_jax.bench.peers import run_peers_bench

        run_peers_bench(config)
    elif what == "input":
        from jovale_jax.bench.input import run_input_bench

        run_input_bench(
            config,
            FLAGS.data_dir,
            bench.input_batches,
            fixture=bench.fixture,
            gpu_clips_per_s=bench.gpu_clips_per_s or None,
        )
    elif what == "eval":
        from jovale_jax.bench.eval import run_eval_bench

        run_eval_bench()
    elif what == "profile":
        from jovale_jax.bench.profile import profile_breakdown

        profile_breakdown(config, component=bench.component)
    else:
        from jovale_jax.bench import step

        if what == "memory":
            from jovale_jax.bench.memory import print_memory

            print_memory(config, config.batch_size)
        elif what == "remat":
            step.run_remat_bench(config)
        else:
            step.run_bench(config, what, component=bench.component)


def cmd_detect(argv):
    """Run a trained model on --video; write detections and drawn keyframes to --out."""
    from jovale_jax.detect import detect

    _require("video")
    _require("out")
    _not_a_file("out")
    for name in ("video", "checkpoint", "boxes"):
        _exists(name)
    detect(
        _config(),
        video=FLAGS.video,
        out_dir=FLAGS.out,
        checkpoint=FLAGS.checkpoint,
        boxes_csv=FLAGS.boxes,
        video_out=FLAGS.video_out,
    )


def cmd_ablate(argv):
    """Train and evaluate every row of config.ablate.table in its own folder of --workdir."""
    from jovale_jax import run_log
    from jovale_jax.ablate import TABLES, ablate, validate_row

    config = _config()
    table = config.ablate.table
    if not table:
        raise InputError(
            f"config.ablate.table is required for ablate: --config.ablate.table=T, T one of "
            f"{', '.join(TABLES)}"
        )
    _require("workdir")
    _not_a_file("workdir")
    _exists("init_from")
    if table not in TABLES:
        raise InputError(
            f"--config.ablate.table={table}: no such table{_nearest(table, TABLES)}; "
            f"expected one of {', '.join(TABLES)}"
        )
    for row in TABLES[table][1]:  # every row's config, before anything is created
        validate_row(config, row)
    run_log.log_to_file(FLAGS.workdir, config, _verbosity())
    ablate(config, FLAGS.workdir, data_dir=FLAGS.data_dir, init_from=FLAGS.init_from)


def cmd_demo(argv):
    """Build the synthetic set, train, evaluate, and write the report."""
    from jovale_jax import run_log
    from jovale_jax.demo import default_config, demo

    config = _config() if FLAGS.config is not None else default_config()
    check_model(config)
    workdir = FLAGS.workdir or os.path.abspath("runs/demo")
    _not_a_file("workdir")
    run_log.log_to_file(workdir, config, _verbosity())
    demo(
        config,
        workdir,
        data_dir=FLAGS.data_dir,
        ablation_dir=FLAGS.ablation_dir or os.path.abspath("runs/ablate4"),
    )


def _verbosity() -> int:
    """absl's --verbosity when given (0: libraries' INFO in log.txt, 1: DEBUG), else -1 (absl
    turns an absent flag into 0 after parsing)."""
    return FLAGS.verbosity if FLAGS["verbosity"].present else -1


def cmd_attention(argv):
    """Figure 6: --checkpoint's (and --compare_checkpoint's) attention maps, in --out."""
    from jovale_jax.attention import attention_figure

    _require("checkpoint")
    _require("out")
    compare = None
    if FLAGS.compare_checkpoint:
        if FLAGS.compare_config is None:
            raise InputError("--compare_checkpoint needs --compare_config")
        compare = (FLAGS.compare_config, FLAGS.compare_checkpoint)
    out = os.path.join(FLAGS.out, "attention.png")
    result = attention_figure(
        _config(),
        FLAGS.checkpoint,
        out,
        compare=compare,
        classes=FLAGS.classes,
        data_dir=FLAGS.data_dir,
    )
    with open(os.path.join(FLAGS.out, "attention.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {result['path']}")


def _require(name: str) -> None:
    if FLAGS[name].value is None:
        raise InputError(f"--{name} is required for this command")


def _exists(name: str) -> None:
    """A one-line error unless the path flag `name`, when given, exists."""
    path = FLAGS[name].value
    if path is not None and not os.path.exists(path):
        raise InputError(f"--{name} {path}: no such file or folder")


def _not_a_file(name: str) -> None:
    """A one-line error when the folder flag `name` names an existing file."""
    path = FLAGS[name].value
    if path is not None and os.path.isfile(path):
        raise InputError(f"--{name} {path}: is a file, not a folder")


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
    "attention": cmd_attention,
}


def _nearest(word: str, choices) -> str:
    """`; did you mean 'x'?` for the closest of `choices`, or ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_command(argv) -> None:
    """The positional arguments left after the flags: one command (and a bench's kind)."""
    if len(argv) < 2:
        raise InputError(f"no command given; expected one of {', '.join(COMMANDS)}")
    if argv[1] not in COMMANDS:
        raise InputError(
            f"unknown command {argv[1]!r}{_nearest(argv[1], COMMANDS)}; "
            f"expected one of {', '.join(COMMANDS)}"
        )
    if argv[1] == "bench":
        if len(argv) != 3 or argv[2] not in BENCHES:
            got = argv[2] if len(argv) > 2 else ""
            raise InputError(
                f"bench needs one of {', '.join(BENCHES)}, got {' '.join(argv[2:]) or 'none'}"
                + _nearest(got, BENCHES)
            )
    elif len(argv) != 2:
        raise InputError(f"unexpected arguments {' '.join(argv[2:])} after {argv[1]}")
    given = [n for n in _command_line_flags() if n not in COMMAND_FLAGS[argv[1]]]
    if given:
        raise InputError(
            f"--{given[0]} does not apply to {argv[1]}; its flags: "
            + ", ".join(f"--{n}" for n in COMMAND_FLAGS[argv[1]])
        )


def _command_line_flags() -> list[str]:
    """The launch.py flags given on the command line (not the config's overrides, nor absl's)."""
    ours = {n for flags_ in COMMAND_FLAGS.values() for n in flags_}
    return [n for n in ours if FLAGS[n].present]


def resolve_paths() -> None:
    """Every path flag made absolute (relative to the working directory), `~` expanded."""
    for name in PATH_FLAGS:
        value = FLAGS[name].value
        if isinstance(value, list):
            FLAGS[name].value = [os.path.abspath(os.path.expanduser(v)) for v in value]
        elif value is not None:
            FLAGS[name].value = os.path.abspath(os.path.expanduser(value))


def command_help(command: str) -> str:
    """`launch.py COMMAND --help`: what the command does and the flags it reads."""
    usage = f"usage: python launch.py {command}"
    if command == "bench":
        usage += " {" + ",".join(BENCHES) + "}"
    lines = [usage + " [flags]", "", HANDLERS[command].__doc__.strip(), "", "flags:"]
    for name in COMMAND_FLAGS[command]:
        flag = FLAGS[name]
        default = "" if flag.default in (None, False, []) else f" (default {flag.default})"
        lines.append(f"  --{name}: {flag.help}{default}")
    if "config" in COMMAND_FLAGS[command]:
        lines.append("  --config.FIELD=VALUE: set any config field (configs/common.py lists them)")
    lines.append("  --verbosity=0: libraries' INFO lines in the run's log.txt (1: DEBUG)")
    return "\n".join(lines)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with per-command --help and one-line errors (exit status 2) for an
    unknown flag or config field, a missing or broken config file, an unknown variant or
    command, and a flag the command does not read."""
    command = next((a for a in argv[1:] if a in COMMANDS), None)
    if command is not None and any(a in HELP for a in argv[1:]):
        FLAGS([argv[0]], known_only=True)  # defaults only, to read the flags' help
        print(command_help(command))
        sys.exit(0)
    try:
        try:
            rest = FLAGS(argv)
        except (flags.Error, AttributeError, KeyError, ValueError, OSError) as e:
            raise InputError(flag_error(e, argv)) from None
        check_command(rest)
        if FLAGS["config"].present:
            try:
                FLAGS.config.keys()  # a config file that failed to load raises here
            except OSError as e:
                raise InputError(flag_error(e, argv)) from None
        resolve_paths()
    except InputError as e:
        fail(str(e))
    return rest


def flag_error(e: Exception, argv: list[str]) -> str:
    """One line for a flag parsing error: the flag, the value and the nearest valid one."""
    text = str(e)
    override = _unknown_override(argv)
    if override:
        return override
    moved = re.search(r"Unknown command line flag '(\w+)'", text)
    if moved and moved.group(1) in MOVED_FLAGS:
        return f"--{moved.group(1)} is now a config field: {MOVED_FLAGS[moved.group(1)]}"
    if "No such file or directory" in text or "Failed loading config file" in text:
        path = _config_argument(argv).partition(":")[0]  # the flag may be unparsed here
        folder = os.path.dirname(os.path.abspath(path))
        names = os.listdir(folder) if os.path.isdir(folder) else []
        hint = _nearest(os.path.basename(path), names) if path else ""
        return f"--config {path}: no such file{hint}"
    last = [line.strip() for line in text.splitlines() if line.strip()][-1]
    return last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith("Error") else last


def _unknown_override(argv: list[str]) -> str | None:
    """The first `--config.a.b=v` of ``argv`` whose field does not exist, with the nearest one
    that does; None when every override names a field (or the config did not load)."""
    config = _preset(argv)
    if config is None:
        return None
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        path = arg[len("--config.") :].split("=", 1)[0].split(".")
        section, done = config, []
        for key in path:
            keys = list(section.keys()) if hasattr(section, "keys") else []
            if key not in keys:
                where = f"config.{'.'.join(done)}" if done else "the config"
                return f"{arg.split('=', 1)[0]}: {where} has no field {key!r}{_nearest(key, keys)}"
            section, done = section[key], [*done, key]
    return None


def _config_argument(argv: list[str]) -> str:
    """The last ``--config`` value of ``argv`` (``--config V`` or ``--config=V``), "" if none."""
    given = [a for i, a in enumerate(argv) if i and argv[i - 1] == "--config"]
    given += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    return given[-1] if given else ""


def _preset(argv: list[str]):
    """The config that ``--config`` in ``argv`` names, without the overrides; None if it does not
    load (the flag parser, which applies the overrides too, failed)."""
    import importlib.util

    given = _config_argument(argv)
    if not given:
        return None
    path, _, variant = given.partition(":")
    try:
        spec = importlib.util.spec_from_file_location("_preset", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config(variant) if variant else module.get_config()
    except Exception:  # noqa: BLE001 (the parser's own error is reported instead)
        return None


def fail(message: str, status: int = 2) -> None:
    """The one-line error, then exit."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def start_processes(command: str) -> None:
    """Join the other processes (jax.distributed) before anything touches JAX; see
    jovale_jax/distributed.py."""
    from jovale_jax import distributed

    names = DISTRIBUTED_FLAGS[:3]
    if command not in DISTRIBUTED_COMMANDS:
        return
    distributed.start(
        _config(), *(FLAGS[n].value for n in names), timeout_s=FLAGS.coordinator_timeout_s
    )


def raised_here(e: BaseException) -> bool:
    """Whether ``e`` was raised by this project's code (its innermost frame is in launch.py,
    configs/ or jovale_jax/), i.e. is a check of the user's input, not a bug or a library's
    error (a shape error inside jit keeps its traceback)."""
    import jovale_jax

    roots = (
        os.path.join(HERE, "configs") + os.sep,
        os.path.dirname(os.path.abspath(jovale_jax.__file__)) + os.sep,
    )
    tb, last = e.__traceback__, None
    while tb is not None:
        last, tb = os.path.abspath(tb.tb_frame.f_code.co_filename), tb.tb_next
    return last is not None and (last == os.path.abspath(__file__) or last.startswith(roots))


def main(argv):
    from jovale_jax import run_log

    runtime.configure_gc()  # first: the command's imports allocate too
    run_log.quiet_console()
    runtime.configure_jax()  # settings only: the backend is still untouched
    try:
        start_processes(argv[1])
        HANDLERS[argv[1]](argv)
    except InputError as e:
        fail(str(e))
    except (ValueError, OSError, FloatingPointError) as e:
        if not raised_here(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(app.run(main, flags_parser=parse_flags))
