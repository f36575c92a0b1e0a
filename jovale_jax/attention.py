r"""The paper's Figure 6: each actor's attention over the video and scene context, on the keyframe.

    python launch.py attention --config configs/synthetic.py --checkpoint runs/demo \
        --compare_checkpoint runs/demo_v --compare_config configs/synthetic.py \
        "--compare_config.model.modalities=('video',)" --out runs/figure6

What is drawn: in every AMFN layer, the MFE runs one transformer layer per time step over
[actors, context tokens, bottleneck token]; the map of an actor is the softmax weight its query
gives each context token of a modality (:meth:`jovale_jax.models.AMFN.attention_maps`), averaged
over the heads and over the modality's T_m time steps, for the first and the last layer (the
paper's top and bottom rows). A video token is drawn where its patch lies on the keyframe (the
frame's place on the canvas, ``frame_extent``); a scene token where its patch of BLIP's S x S
resize of the frame lies; the scene's CLS token and the audio tokens have no place and are not
drawn. Each panel's colours run from 0 to its maximum, or to 3x its mean if that is larger (so a
flat map shows at a third of the scale, not as a hot one); its title gives the actor's total
weight on that modality's context tokens (the rest goes to the actors and the bottleneck token).

Keyframes: for each class, the eval split's first example with a proposal matched to a
ground-truth actor of that class (its training target); that proposal is the actor drawn, the same
one for both checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

UNIFORM_SHARE = 3.0  # a panel's colour scale reaches at least 3x its mean: a flat map is not red
SPATIAL = ("video", "scene")  # the modalities whose context tokens have a place on the keyframe


def token_grids(cfg) -> dict[str, tuple[int, int, int]]:
    """{m: (first patch token, h, w)} of the spatial modalities of a ``config.model``."""
    from jovale_jax.models.slowfast import is_slowfast, slowfast_grid
    from jovale_jax.models.vit import video_grid

    side = cfg.scene.image_size // cfg.scene.patch
    grid = slowfast_grid if is_slowfast(cfg.video) else video_grid
    return {"video": (0, *grid(cfg.video)[1:]), "scene": (1, side, side)}


def layer_maps(cfg, maps: dict[str, np.ndarray], layer: int) -> dict[str, np.ndarray]:
    """``maps`` {m: (L, B, T, K, N)} of one layer -> {m: (B, K, h, w)}, mean over time, for the
    spatial modalities present."""
    out = {}
    for m, (first, h, w) in token_grids(cfg).items():
        if m in maps:
            mean = np.asarray(maps[m][layer], np.float64).mean(1)  # (B, K, N)
            out[m] = mean[..., first:].reshape(mean.shape[:2] + (h, w))
    return out


def attention_function(s):
    """``(params, frozen, batch) -> (logits, maps)`` of ``JoVALE.attention_maps`` for a
    :class:`jovale_jax.state.ShardedModel`, jitted on its mesh."""
    from flax import nnx

    from jovale_jax import sharding
    from jovale_jax.models.batch import model_inputs

    def run(params, frozen, batch):
        model = nnx.merge(s.eval_graphdef, params, s.rng_template, frozen)
        return model.attention_maps(model_inputs(s.config.model, batch))

    jitted = jax.jit(run, in_shardings=(None, None, sharding.data_sharding(s.mesh)))
    return sharding.TracedInMesh(jitted, s.mesh, sharding.rules_from_config(s.config))


def pick_actors(config, split: str, classes: Sequence[int], data_dir: str | None):
    """For each class id, the first example of ``split`` with a proposal whose target has it:
    [(example index, proposal, class id)] (classes without one are left out)."""
    from jovale_jax.input_pipeline import create_eval_iterator

    it = create_eval_iterator(config, split, batch_size=config.eval_batch_size, data_dir=data_dir)
    todo, picked, used, offset = list(classes), [], set(), 0
    for batch in it:
        keep = batch["box_mask"] & batch["example_mask"][:, None]
        for c in list(todo):
            rows, ks = np.nonzero(keep & (batch["targets"][..., c - 1] > 0))
            for r, k in zip(rows, ks):
                if offset + r not in used:
                    picked.append((offset + int(r), int(k), c))
                    used.add(offset + r)
                    todo.remove(c)
                    break
        offset += len(batch["example_mask"])
        if not todo:
            break
    return picked


def gather_examples(config, split: str, indices: Sequence[int], data_dir: str | None, pad: int):
    """The eval batches' rows ``indices`` of ``split`` as one batch, repeated to a multiple of
    ``pad`` rows."""
    from jovale_jax.input_pipeline import create_eval_iterator

    it = create_eval_iterator(config, split, batch_size=config.eval_batch_size, data_dir=data_dir)
    rows: dict[int, dict[str, Any]] = {}
    offset = 0
    for batch in it:
        for i in indices:
            if offset <= i < offset + len(batch["example_mask"]):
                rows[i] = {k: v[i - offset] for k, v in batch.items()}
        offset += len(batch["example_mask"])
        if len(rows) == len(indices):
            break
    order = [rows[i] for i in indices]
    order += [order[-1]] * (-len(order) % pad)
    return {k: np.stack([r[k] for r in order]) for k in order[0]}


def model_maps(config, checkpoint: str, split: str, indices, data_dir: str | None):
    """(the examples' batch, logits (n, K, C), {m: (L, n, T, K, N)}) of a checkpoint."""
    from jovale_jax.sharding import global_batch, to_host
    from jovale_jax.state import load_trained

    s = load_trained(config, checkpoint)
    batch = gather_examples(config, split, indices, data_dir, pad=s.mesh.shape["data"])
    logits, maps = attention_function(s)(s.state["params"], s.frozen, global_batch(s.mesh, batch))
    n = len(indices)
    maps = {m: np.asarray(jax.device_get(v))[:, :n] for m, v in maps.items()}
    return batch, to_host(logits)[:n], maps


def keyframes(config, split: str, keys, data_dir: str | None) -> dict[tuple[str, int], np.ndarray]:
    """The stored keyframe (the clip's middle frame, at the stored resolution) of each
    (video id, timestamp) in ``keys``."""
    from jovale_jax.datasets import load_split

    ds, _ = load_split(config, split, data_dir=data_dir)
    want, found = set(keys), {}
    for ex in ds.as_numpy_iterator():
        key = (ex["video_id"].decode(), int(ex["timestamp"]))
        if key in want:
            found[key] = np.asarray(ex["frames"][len(ex["frames"]) // 2])
            if len(found) == len(want):
                break
    return found


def label_names(config, data_dir: str | None) -> dict[int, str]:
    from jovale_jax.datasets import eval_dir
    from jovale_jax.evaluation import ava

    return ava.read_labelmap(os.path.join(eval_dir(config, data_dir), "label_map.pbtxt"))


def attention_figure(
    config,
    checkpoint: str,
    out: str,
    *,
    compare: tuple[Any, str] | None = None,
    labels: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    data_dir: str | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    """Draw Figure 6 into ``out`` (a PNG path) for ``checkpoint`` (and beside it ``compare``'s
    (config, checkpoint), which must be of the same dataset). ``classes``: class names, one
    keyframe each (default: every class). Returns {"path", "rows": per keyframe the key, class,
    actor, and per model, layer and modality the actor's total weight on that context}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jovale_jax.visualize import token_heatmap

    split = split or config.data.eval_split
    names = label_names(config, data_dir)
    ids = {v: k for k, v in names.items()}
    unknown = [c for c in classes or () if c not in ids]
    if unknown:
        raise ValueError(f"--classes: unknown class {unknown[0]!r}; the classes: {list(ids)}")
    wanted = [ids[c] for c in classes] if classes else sorted(names)
    picked = pick_actors(config, split, wanted, data_dir)
    if not picked:
        raise ValueError(f"no proposal of split {split!r} is matched to a class of {wanted}")
    indices = [p[0] for p in picked]
    models = [(config, checkpoint)] + ([compare] if compare else [])
    labels = list(labels or [])
    labels += [os.path.basename(os.path.normpath(c)) for _, c in models[len(labels) :]]
    runs = [model_maps(c, w, split, indices, data_dir) for c, w in models]
    batch = runs[0][0]
    keys = [
        (v.decode() if isinstance(v, bytes) else str(v), int(t))
        for v, t in zip(batch["video_id"], batch["timestamp"])
    ]
    frames = keyframes(config, split, keys[: len(picked)], data_dir)
    columns = [
        (i, m) for i, (c, _) in enumerate(models) for m in SPATIAL if m in c.model.modalities
    ]
    num_layers = [c.model.amfn.num_layers for c, _ in models]
    fig, axes = plt.subplots(
        2 * len(picked),
        1 + len(columns),
        figsize=(1.9 * (1 + len(columns)), 3.0 * len(picked)),
        squeeze=False,
    )
    rows = []
    for r, (index, k, c) in enumerate(picked):
        frame = frames[keys[r]]
        height, width = frame.shape[:2]
        box = batch["boxes"][r, k] * np.array([width, height, width, height])
        row = {"key": list(keys[r]), "class": names[c], "actor": k, "weights": {}}
        for j, layer_pos in enumerate((0, -1)):
            ax_row = axes[2 * r + j]
            for ax in ax_row:
                ax.imshow(frame)
                ax.add_patch(
                    plt.Rectangle(box[:2], *(box[2:] - box[:2]), fill=False, ec="white", lw=1.2)
                )
                ax.set_xticks([])
                ax.set_yticks([])
            ax_row[0].set_ylabel(f"layer {1 if j == 0 else 'L'}", fontsize=8)
            if j == 0:
                ax_row[0].set_title(f"{names[c]}\n{keys[r][0]} @ {keys[r][1]}", fontsize=7)
            for ax, (i, m) in zip(ax_row[1:], columns):
                cfg = models[i][0]
                maps = runs[i][2]
                layer = layer_pos % num_layers[i]
                grid = layer_maps(cfg.model, maps, layer)[m][r, k]
                extent = batch["frame_extent"][r] if m == "video" else (0, 0, 1, 1)
                heat = token_heatmap(grid, (width, height), extent)
                vmax = max(heat.max(), UNIFORM_SHARE * heat.mean(), 1e-9)
                ax.imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=vmax)
                total = float(np.asarray(maps[m][layer, r], np.float64).mean(0)[k].sum())
                row["weights"][f"{labels[i]}/{layer + 1}/{m}"] = total
                ax.set_title(f"{labels[i]}: {m}, sum {total:.2f}", fontsize=7)
        rows.append(row)
    fig.tight_layout(pad=0.3)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return {"path": os.path.abspath(out), "rows": rows}
