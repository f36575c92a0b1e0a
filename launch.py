"""The one command line of jovale-jax.

    python launch.py COMMAND --config configs/NAME.py[:variant] [--config.field=value ...] [flags]

Commands:
  train       train (resumes from the newest checkpoint in --workdir)
  eval        evaluate a checkpoint on the eval split (mAP, CSV, per-class chart)
  detect      run a trained model on any video file
  convert     import pretrained VideoMAE v2 / BLIP / AST weights (--from KIND --src PATH, repeatable)
  flops       parameters and multiply-accumulates per component (no execution)
  bench       step | forward | input | eval timings
  build-data  write the TFRecord shards of a dataset
  ablate      train and evaluate every modality subset (Table 4)
  demo        build the synthetic set, train, evaluate and write a report (what `make demo` runs)
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Config preset: configs/NAME.py[:variant].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run folder: checkpoints, logs, results.")
flags.DEFINE_bool("json", False, "flops: end with one JSON line.")
flags.DEFINE_string("data_dir", None, "Where the TFRecord shards are (default config.data.data_dir).")
flags.DEFINE_string("raw_dir", None, "build-data: the raw dataset folder.")
flags.DEFINE_string("dataset", None, "build-data: synthetic | ava | ucf24 | jhmdb21.")
flags.DEFINE_bool("strict", False, "build-data: a corrupt video is an error instead of skipped.")
flags.DEFINE_multi_string("from", [], "convert: source kind, repeat with --src.")
flags.DEFINE_multi_string("src", [], "convert: source path, one per --from.")
flags.DEFINE_string("out", None, "convert / detect: output folder.")
flags.DEFINE_string("init_from", None, "train: converted pretrained weights (launch.py convert).")
flags.DEFINE_string("checkpoint", None, "eval / detect: a workdir or workdir/checkpoints/STEP.")
flags.DEFINE_string("split", None, "eval: split (default config.data.eval_split).")
flags.DEFINE_integer("batch_size", None, "bench: batch size (default config.batch_size).")
flags.DEFINE_string("component", "model", "bench step/forward: model | amfn.")
flags.DEFINE_integer("num_batches", 20, "bench input: batches to time.")

FLAGS = flags.FLAGS
COMMANDS = ("train", "eval", "detect", "convert", "flops", "bench", "build-data", "ablate", "demo")


def _config():
    if FLAGS.config is None:
        raise app.UsageError("--config is required, e.g. --config configs/synthetic.py")
    return FLAGS.config


def cmd_flops(args):
    """Print parameters and GMACs per component for one forward pass at batch 1."""
    from jovale_jax.flops import component_costs

    costs = component_costs(_config().model)
    print(f"{'component':<10} {'params (M)':>12} {'GMACs':>10}")
    for name, c in costs.items():
        print(f"{name:<10} {c['params'] / 1e6:>12.2f} {c['gmacs']:>10.1f}")
    if FLAGS.json:
        out = {"total_gmacs": costs["total"]["gmacs"], "params": costs["total"]["params"],
               "components": costs}
        print(json.dumps(out))


HANDLERS = {"flops": cmd_flops}


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"expected one command of {COMMANDS}, got {argv[1:]}")
    handler = HANDLERS.get(argv[1])
    if handler is None:
        raise app.UsageError(f"command {argv[1]!r} is not available yet")
    handler(argv)


if __name__ == "__main__":
    sys.exit(app.run(main))
