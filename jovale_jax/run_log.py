"""What a run shows and where.

The console shows what the program prints (progress, results), the one-line errors and warnings:
this package's and those of Python's ``warnings`` raised from its code. Libraries' INFO lines
(orbax, absl, TFDS) and their deprecation notes stay off it. A run with a workdir (train,
ablate, demo) also writes ``log.txt`` there: the config and the versions, every line the program
prints (step lines, evaluation results), every warning, libraries' included, and libraries' INFO
and deprecation notes only when asked with ``--verbosity=0`` (absl's flag; 1 for DEBUG).
``metrics.jsonl`` (NaN written as null) and TensorBoard events hold the numbers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import sys
import time
import warnings
from importlib import metadata

import jax

LOG_FILE = "log.txt"
PACKAGE = "jovale_jax"
VERSIONS = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "tensorflow",
    "tensorflow-datasets",
)
NOISE = ("deprecat",)
"""Library warnings that are noise for a user (TFDS's and TensorFlow's notes on their own API)."""


def _ours(record: logging.LogRecord) -> bool:
    """A record of this package, or a Python warning raised from its code."""
    if record.name.startswith(PACKAGE):
        return True
    message = record.getMessage()
    return record.name == "py.warnings" and f"{os.sep}{PACKAGE}{os.sep}" in message


def _for_the_console(record: logging.LogRecord) -> bool:
    """Errors, this package's warnings; libraries' notes only go to the file."""
    return record.levelno >= logging.ERROR or (record.levelno >= logging.WARNING and _ours(record))


class _ForTheFile(logging.Filter):
    """This package's INFO and up, every other warning except deprecation notes; libraries' INFO
    (and deprecation notes) when ``verbosity`` >= 0, DEBUG when >= 1."""

    def __init__(self, verbosity: int):
        super().__init__()
        self.verbosity = verbosity

    def filter(self, record: logging.LogRecord) -> bool:
        if _ours(record) or self.verbosity >= 0:
            return True
        noise = any(n in record.getMessage().lower() for n in NOISE)
        return record.levelno >= logging.WARNING and not noise


class _FileOnly(logging.FileHandler):
    """The run's log file handler (a type of its own, so that a second call replaces it). A write
    the disk refuses (full, over quota) stops the log file with one warning on stderr; the run
    goes on, and its console keeps every line."""

    refused = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.refused:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            super().handleError(record)
            return
        self.refused = True
        print(
            f"warning: {self.baseFilename}: the disk refused a write ({error.strerror or error}); "
            "the log file stops here, the run goes on",
            file=sys.stderr,
            flush=True,
        )
        with contextlib.suppress(OSError):  # what is still buffered fails alike
            self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            super().close()


class _Tee:
    """sys.stdout that also sends each printed line to the log file (as the `jovale_jax.console`
    logger's INFO records, which the console handlers never see)."""

    def __init__(self, stream, logger: logging.Logger):
        self.stream, self.logger, self.pending = stream, logger, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.strip():
                self.logger.info(line)
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def quiet_console() -> None:
    """Filter the console: this package's warnings and every error; Python warnings go through
    logging (file and console filters alike). Call once, before the libraries log."""
    logging.captureWarnings(True)
    warnings.filterwarnings("default", module=PACKAGE)
    root = logging.getLogger()
    console = [h for h in root.handlers if not isinstance(h, _FileOnly)]
    if not console:  # without any handler Python prints warnings itself; keep that
        console = [logging.StreamHandler()]
        root.addHandler(console[0])
    for handler in console:
        handler.setLevel(logging.WARNING)
        if _for_the_console not in handler.filters:
            handler.addFilter(_for_the_console)
    root.setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.INFO)


def versions() -> str:
    """Python's and the main libraries' versions, one line."""
    found = [f"python {platform.python_version()}"]
    for name in VERSIONS:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def log_to_file(workdir: str, config=None, verbosity: int = -1) -> str | None:
    """Write ``workdir/log.txt`` (module docstring) from now on: the versions and ``config``
    first. Returns its path; None on processes other than 0, which write no log file (their
    console is filtered alike)."""
    quiet_console()
    root = logging.getLogger()
    echo = logging.getLogger(f"{PACKAGE}.console")
    for logger in (root, echo):
        for handler in list(logger.handlers):
            if isinstance(handler, _FileOnly):
                logger.removeHandler(handler)
                handler.close()
    if verbosity >= 1:
        root.setLevel(logging.DEBUG)
        logging.getLogger("absl").setLevel(logging.DEBUG)
    if jax.process_index() != 0:
        return None
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOG_FILE)
    to_file = _FileOnly(path)
    to_file.setLevel(logging.DEBUG)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_file.addFilter(_ForTheFile(verbosity))
    root.addHandler(to_file)
    echo.propagate = False  # printed lines reach the console by print itself
    echo.setLevel(logging.INFO)
    echo.addHandler(to_file)
    if not isinstance(sys.stdout, _Tee):
        sys.stdout = _Tee(sys.stdout, echo)
    own = logging.getLogger(PACKAGE)
    own.setLevel(logging.INFO)
    own.info("command: %s", " ".join(sys.argv))
    own.info("versions: %s", versions())
    if config is not None:
        own.info("config:\n%s", config)
    return path


def _finite(value: float) -> float | None:
    """A number for JSON: NaN and infinities become null."""
    return value if math.isfinite(value) else None


class MetricsWriter:
    """Console progress, ``metrics.jsonl`` and TensorBoard events; only process 0 writes.

    TensorBoard: ``tensorboard --logdir WORKDIR/tensorboard`` (the ``train`` extra installs it)
    shows every metric, the evaluation's ``eval_mAP`` and ``steps_per_s``."""

    def __init__(self, workdir: str, total_steps: int):
        self.enabled = jax.process_index() == 0
        self.total = total_steps
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            # closed in close(), like the TensorBoard writer
            self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
            # TensorFlow's writer: tf.data has imported TensorFlow already (tensorboardX imports
            # torch when it is installed: 3.5 s more for every run)
            import tensorflow as tf

            self.tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """One record; the console line shows steps/s and the ETA when ``metrics`` has
        ``steps_per_s`` (the trainer's window mean). Non-finite values are written as null, so
        that every line of ``metrics.jsonl`` is valid JSON."""
        if not self.enabled:
            return
        record = {"step": step, **{k: _finite(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self.jsonl.flush()
        import tensorflow as tf  # loaded already (__init__)

        with self.tb.as_default(step=step):
            for k, v in record.items():
                if k != "step" and v is not None:
                    tf.summary.scalar(k, v)
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
