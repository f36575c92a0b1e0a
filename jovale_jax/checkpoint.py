"""Checkpoints in a workdir: orbax CheckpointManager with the train state and a JSON side item.

``state`` holds the trainable parameters, the frozen ones, the optimizer state and the step;
``meta`` holds the input pipeline's position and the config.

When a step counts as written (orbax's protocol, checked in orbax 0.12): every process writes its
shards into ``<step>.orbax-checkpoint-tmp``; in the background each waits at a barrier of all
processes (``async_write_complete``), and only then does process 0 rename the folder to ``<step>``
(``async_commit_complete`` releases the others). So a folder named by a bare step number was
committed by every process; a save that a crash interrupts stays a tmp folder that the manager
ignores (and removes at the next save).

Faults handled here: a committed step that does not restore any more (truncated or corrupted
files) is skipped by ``restore_newest`` and renamed ``<step>.broken`` (kept, not deleted); a save
that the filesystem refuses (disk full, quota, file size limit) stops with
:class:`CheckpointWriteError` naming the folder and the bytes needed, and leaves the earlier steps
as they were.

A checkpoint written before a model module was renamed (:data:`RENAMED_MODULES`) restores under the
new name, with a one-line warning.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

BROKEN = ".broken"  # suffix of a step set aside; orbax lists bare step numbers only
# The filesystem refused bytes: no space, quota exceeded, file size limit (tensorstore's text).
_NO_SPACE = {
    errno.ENOSPC: "no space left",
    errno.EDQUOT: "quota exceeded",
    errno.EFBIG: "file too large",
}


# Model modules renamed since checkpoints were written, (old name, new name): issue 22 made the
# fusion stage of every model.fusion_strategy the model's `fusion` (the AMFN's was `amfn`).
RENAMED_MODULES = (("amfn", "fusion"),)


class MismatchError(ValueError):
    """The checkpoint is readable but was written by another model configuration."""


class BrokenCheckpointError(ValueError):
    """A committed step that does not restore (its files were truncated or corrupted)."""


class CheckpointWriteError(ValueError):
    """The filesystem refused a save (disk full, quota, file size limit)."""


def steps_in(directory: str) -> list[int]:
    """The committed steps under ``directory`` (folders named by a bare number), ascending."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def why(error: BaseException) -> str:
    """The innermost message of an exception chain, on one line (it names the file)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 400 else text[:400] + " ..."


def chain_text(error: BaseException) -> str:
    """Every message of an exception chain, whole (``why`` shortens long ones; tensorstore puts
    the OS error code at the end of a message that names long paths)."""
    texts = []
    while error is not None:
        texts.append(str(error))
        error = error.__cause__ or error.__context__
    return " ".join(texts)


class Checkpointer:
    """Save and restore ``(state, meta)`` pairs under ``<workdir>/checkpoints/<step>``."""

    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )
        self._saving: tuple[int, int] | None = None  # (step, bytes) of the save in flight

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Start an asynchronous save (it waits for the previous one first); a save the
        filesystem refused raises :class:`CheckpointWriteError`, here or at :meth:`wait`."""
        with self._write_errors():
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
            )
        self._saving = (step, sum(x.nbytes for x in jax.tree.leaves(state)))

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restore onto the shardings of ``abstract_state`` (ShapeDtypeStructs with .sharding);
        a :class:`MismatchError` names the entries whose shapes differ from the stored ones."""
        stored = self.manager.item_metadata(step)["state"]
        target, renames = as_stored(stored, abstract_state, f"{self.directory}/{step}")
        problems = mismatches(stored, target)
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise MismatchError(
                f"checkpoint {self.directory}/{step} does not fit this config "
                f"({len(problems)} mismatched entries):\n  {shown}{more}"
            )
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        return renamed(out["state"], renames), out["meta"]

    def restore_newest(
        self, abstract_state: Any, agree: Callable[[bool], bool] = lambda ok: ok
    ) -> tuple[int, Any, dict[str, Any]] | None:
        """The newest step that restores completely, as ``(step, state, meta)``; None when there
        is no step. Each newer step that fails is named in a one-line warning and renamed
        ``<step>.broken``. ``agree(ok)`` makes all processes take the same decision (True only
        when every process restored). A step of another config raises :class:`MismatchError`;
        when no step restores, :class:`BrokenCheckpointError` lists why for each."""
        failed: list[tuple[int, str]] = []
        for step in reversed(self.manager.all_steps()):
            try:
                state, meta = self.restore(step, abstract_state)
                reason = None
            except Exception as e:
                if isinstance(e, MismatchError) or not _read_failure(e):
                    raise
                reason = why(e)
            if agree(reason is None):
                for bad, bad_reason in failed:
                    self.set_aside(bad, bad_reason)
                return step, state, meta
            failed.append((step, reason or "another process could not read it"))
        if failed:
            raise BrokenCheckpointError(
                f"no checkpoint in {self.directory} restores: "
                + "; ".join(f"step {s}: {r}" for s, r in failed)
            )
        return None

    def set_aside(self, step: int, reason: str) -> None:
        """Rename a broken step ``<step>.broken`` (process 0; the others see it once it is done)
        and warn on one line."""
        path = os.path.join(self.directory, str(step))
        aside = path + BROKEN
        n = 1
        while os.path.exists(aside):
            n += 1
            aside = f"{path}{BROKEN}{n}"
        if jax.process_index() == 0:
            os.rename(path, aside)
            print(
                f"warning: skipped checkpoint step {step} ({reason}); kept as {aside}",
                file=sys.stderr,
                flush=True,
            )
        self.manager.reload()

    def read(self, step: int) -> tuple[Any, dict[str, Any]]:
        """Restore as saved, without a target (inspection, tests)."""
        out = self.manager.restore(step)
        return out["state"], out["meta"]

    def read_meta(self, step: int) -> dict[str, Any]:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"
        ]

    def wait(self) -> None:
        with self._write_errors():
            self.manager.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.manager.close()

    @contextlib.contextmanager
    def _write_errors(self):
        """Turn a save that the filesystem refused into one :class:`CheckpointWriteError` line
        and remove that step's tmp folder; the earlier steps stay as they were."""
        try:
            yield
        except Exception as e:
            code = re.search(r"os_error_code='?(\d+)", chain_text(e))
            found = getattr(e, "errno", None) or (int(code.group(1)) if code else None)
            if found not in _NO_SPACE or self._saving is None:
                raise
            step, needed = self._saving
            self._saving = None
            if jax.process_index() == 0:
                for name in os.listdir(self.directory):
                    if name.startswith(f"{step}.orbax-checkpoint-tmp"):
                        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
            free = shutil.disk_usage(self.directory).free
            raise CheckpointWriteError(
                f"could not save checkpoint step {step} in {self.directory}: {_NO_SPACE[found]} "
                f"(it needs about {needed} bytes, {free} bytes free there); the steps saved "
                f"before, {steps_in(self.directory) or 'none'}, are intact: free space and run "
                f"the same command to resume"
            ) from None


def resolve(path: str) -> tuple[str, int]:
    """``W`` (its newest step) or ``W/checkpoints/STEP`` -> (checkpoints folder, step). Reads
    folder names only and creates nothing; a missing folder or step is a FileNotFoundError."""
    path = os.path.abspath(path)
    parent, last = os.path.split(path)
    if last.isdigit() and os.path.basename(parent) == "checkpoints":
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"no checkpoint {path} (steps in {parent}: {steps_in(parent) or 'none'})"
            )
        return parent, int(last)
    directory = os.path.join(path, "checkpoints")
    steps = steps_in(directory)
    if not steps:
        raise FileNotFoundError(
            f"no checkpoint in {directory} (train first: "
            f"python launch.py train --config ... --workdir {path})"
        )
    return directory, steps[-1]


def read_step_meta(directory: str, step: int) -> dict[str, Any]:
    """The ``meta`` entry (input position, config) of step ``step``; opens no manager."""
    return ocp.JsonCheckpointHandler().restore(epath.Path(directory) / str(step) / "meta")


def read_items(directory: str, step: int, target: Any) -> Any:
    """The entries of ``target`` (a sub-tree of the saved state: ShapeDtypeStructs with
    .sharding) from step ``step``; other entries (the optimizer state) are not read. Opens no
    manager and writes nothing. A step that does not restore is a
    :class:`BrokenCheckpointError` naming it, the file, and the steps that do restore."""
    try:
        return _read_items(directory, step, target)
    except Exception as e:
        if isinstance(e, MismatchError) or not _read_failure(e):
            raise
        reason = why(e)
    good = [s for s in steps_in(directory) if s != step and _restores(directory, s, target)]
    hint = f" (pass --checkpoint {directory}/{good[-1]})" if good else ""
    raise BrokenCheckpointError(
        f"checkpoint step {step} in {directory} does not restore: {reason}; steps that "
        f"restore: {', '.join(map(str, good)) or 'none'}{hint}"
    )


def _read_items(directory: str, step: int, target: Any) -> Any:
    path = epath.Path(directory) / str(step) / "state"
    handler = ocp.PyTreeCheckpointHandler()
    try:
        stored = handler.metadata(path).tree
        target, renames = as_stored(stored, target, f"{directory}/{step}")
        problems = mismatches(stored, target, partial=True)
        if problems:
            raise MismatchError(
                f"checkpoint {directory}/{step} does not fit this config "
                f"({len(problems)} mismatched entries):\n  " + "\n  ".join(problems[:20])
            )
        restored = handler.restore(
            path,
            args=ocp.args.PyTreeRestore(
                item=target,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True,
            ),
        )
        return renamed(restored, renames)
    finally:
        handler.close()


def _read_failure(error: Exception) -> bool:
    """Whether ``error`` is how orbax and tensorstore report files they cannot read (truncated,
    corrupted, missing), as opposed to a bug."""
    return type(error) is Exception or isinstance(error, (ValueError, OSError, EOFError, KeyError))


def _restores(directory: str, step: int, target: Any) -> bool:
    try:
        _read_items(directory, step, target)
        return True
    except Exception as e:
        if _read_failure(e):
            return False
        raise


def rename_module(tree: Any, old: str, new: str) -> Any:
    """``tree`` with the model's module ``old`` named ``new``: in every dict that also holds the
    model's ``heads`` (the parameters, and their mirrors in the optimizer state)."""
    if isinstance(tree, dict):
        out = {k: rename_module(v, old, new) for k, v in tree.items()}
        if old in out and "heads" in out:
            out[new] = out.pop(old)
        return out
    if isinstance(tree, (list, tuple)):
        items = [rename_module(v, old, new) for v in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)
    return tree


def as_stored(stored: Any, wanted: Any, name: str | None) -> tuple[Any, list[tuple[str, str]]]:
    """``wanted`` (a restore target) with the modules that ``stored`` (a checkpoint's metadata
    tree) holds under an old name (:data:`RENAMED_MODULES`) called that, and those (old, new)
    renames. ``name``: the checkpoint, warned about on one line when a rename applies."""
    keys = {key for key, _ in _flat(stored)}
    renames = []
    for old, new in RENAMED_MODULES:
        legacy = rename_module(wanted, new, old)
        moved = [k for k, _ in _flat(legacy) if f"/{old}/" in f"/{k}/"]
        if moved and all(k in keys for k in moved):
            wanted = legacy
            renames.append((old, new))
            if name is not None and jax.process_index() == 0:
                print(
                    f"warning: checkpoint {name} names the module {old!r}, now {new!r}: "
                    f"read as {new!r} (it is saved so at the next checkpoint)",
                    file=sys.stderr,
                    flush=True,
                )
    return wanted, renames


def renamed(tree: Any, renames: list[tuple[str, str]]) -> Any:
    """A tree restored with :func:`as_stored`'s ``renames`` -> under the new names."""
    for old, new in renames:
        tree = rename_module(tree, old, new)
    return tree


def mismatches(stored: Any, wanted: Any, *, partial: bool = False) -> list[str]:
    """Entries whose shapes differ between a checkpoint's metadata and ``wanted``, parameters
    first; with ``partial``, stored entries that ``wanted`` lacks are fine."""
    flat_stored = dict(_flat(stored))
    problems = []
    for key, want in _flat(wanted):
        got = flat_stored.pop(key, None)
        if got is None:
            problems.append(
                f"{key}: missing in the checkpoint (expected shape {tuple(want.shape)})"
            )
        elif tuple(got.shape) != tuple(want.shape):
            problems.append(
                f"{key}: checkpoint shape {tuple(got.shape)}, model shape {tuple(want.shape)}"
            )
    if not partial:
        problems += [f"{key}: in the checkpoint but not in the model" for key in flat_stored]
    problems.sort(key=lambda p: "/params/" not in p)  # parameters first, optimizer state after
    return problems


def _flat(tree: Any):
    leaves = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, dict)
    )[0]
    for path, leaf in leaves:
        if hasattr(leaf, "shape") or isinstance(leaf, np.ndarray):
            yield jax.tree_util.keystr(path, simple=True, separator="/"), leaf


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of ``tree`` carrying ``shardings`` (a restore target)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
