"""Checkpoints in a workdir: orbax CheckpointManager with the train state and a JSON side item.

``state`` holds the trainable parameters, the frozen ones, the optimizer state and the step;
``meta`` holds the input pipeline's position and the config. Saves are asynchronous; a save that a
crash interrupts stays an ``*.orbax-checkpoint-tmp`` folder that the manager ignores, so the last
complete checkpoint is always the one restored (and the tmp folder is removed at the next save).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


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

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )

    def check_compatible(self, step: int, abstract_state: Any) -> None:
        """Fail with the names of parameters whose shapes differ from ``abstract_state``."""
        stored = self.manager.item_metadata(step)["state"]
        flat_stored = dict(_flat(stored))
        problems = []
        for key, want in _flat(abstract_state):
            got = flat_stored.pop(key, None)
            if got is None:
                problems.append(
                    f"{key}: missing in the checkpoint (expected shape {tuple(want.shape)})"
                )
            elif tuple(got.shape) != tuple(want.shape):
                problems.append(
                    f"{key}: checkpoint shape {tuple(got.shape)}, model shape {tuple(want.shape)}"
                )
        problems += [f"{key}: in the checkpoint but not in the model" for key in flat_stored]
        problems.sort(key=lambda p: "/params/" not in p)  # parameters first, optimizer state after
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise ValueError(
                f"checkpoint {self.directory}/{step} does not fit this config "
                f"({len(problems)} mismatched entries):\n  {shown}{more}"
            )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restore onto the shardings of ``abstract_state`` (ShapeDtypeStructs with .sharding)."""
        self.check_compatible(step, abstract_state)
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        return out["state"], out["meta"]

    def read(self, step: int) -> tuple[Any, dict[str, Any]]:
        """Restore as saved, without a target (inspection, tests)."""
        out = self.manager.restore(step)
        return out["state"], out["meta"]

    def read_meta(self, step: int) -> dict[str, Any]:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"
        ]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


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
