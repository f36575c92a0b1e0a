"""What a run shows and where: the progress line on the console, ``metrics.jsonl`` and
TensorBoard events in the workdir, and library INFO logs (TFDS, absl) in the workdir's ``log.txt``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import jax

LOG_FILE = "log.txt"


class _FileOnly(logging.FileHandler):
    """The run's log file handler (a type of its own, so that a second call replaces it)."""


def _for_the_console(record: logging.LogRecord) -> bool:
    """Errors, and this package's warnings; libraries' notes (TFDS's "Load dataset info",
    TensorFlow's deprecations of its own internals) only go to the file."""
    return record.levelno >= logging.ERROR or (
        record.levelno >= logging.WARNING and record.name.startswith("jovale_jax")
    )


def log_to_file(workdir: str) -> str | None:
    """Log records go to ``workdir/log.txt`` (INFO and above); the console keeps errors and this
    package's warnings, besides what the program prints (progress, results) and Python's
    ``warnings``. Returns the log file's path; None on processes other than 0, which write no log
    file (their console is filtered alike)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _FileOnly):
            root.removeHandler(handler)
            handler.close()
    console = [h for h in root.handlers]
    if not console:  # without any handler Python prints warnings itself; keep that
        console = [logging.StreamHandler()]
        root.addHandler(console[0])
    for handler in console:
        handler.setLevel(logging.WARNING)
        if _for_the_console not in handler.filters:
            handler.addFilter(_for_the_console)
    if jax.process_index() != 0:
        return None
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOG_FILE)
    to_file = _FileOnly(path)
    to_file.setLevel(logging.INFO)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(to_file)
    root.setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.INFO)
    return path


class MetricsWriter:
    """Console progress, ``metrics.jsonl`` and TensorBoard events; only process 0 writes."""

    def __init__(self, workdir: str, total_steps: int):
        self.enabled = jax.process_index() == 0
        self.total = total_steps
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            # closed in close(), like the TensorBoard writer
            self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """One record; the console line shows steps/s and the ETA when ``metrics`` has
        ``steps_per_s`` (the trainer's window mean). Non-finite values are written as null, so
        that every line of ``metrics.jsonl`` is valid JSON."""
        if not self.enabled:
            return
        record = {
            "step": step,
            **{k: v if math.isfinite(v) else None for k, v in metrics.items()},
        }
        self.jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self.jsonl.flush()
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)
        self.tb.flush()
        shown = {k: v for k, v in metrics.items() if k != "steps_per_s"}
        line = f"step {step}/{self.total} " + " ".join(f"{k} {v:.4g}" for k, v in shown.items())
        rate = metrics.get("steps_per_s", 0.0)
        if rate > 0:
            eta = time.strftime("%H:%M:%S", time.gmtime((self.total - step) / rate))
            line += f" | {rate:.2f} steps/s | ETA {eta}"
        print(line, flush=True)

    def close(self):
        if self.enabled:
            self.jsonl.close()
            self.tb.close()
