"""Evaluate a model on a whole eval split: detections CSV, frame mAP, per-class table and chart.

    python launch.py eval --config configs/synthetic.py --checkpoint runs/demo \
        [--config.data.eval_split=val]

Every example of the split is scored (the padded tail of the last batch is masked out), by the
protocol of the dataset's builder (its ``METRIC``): "ava" (AVA, the synthetic set, your own set in
the AVA layout) with the official AVA protocol (``evaluation/ava.py``), both with the official cap
of 50 detection rows per frame and without a cap, since published AVA numbers come from either;
"frame_map" (UCF101-24, JHMDB51-21) with VOC frame mAP (``evaluation/frame_map.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jovale_jax import distributed
from jovale_jax.evaluation import ava, frame_map
from jovale_jax.evaluation.detections_csv import write_detections_csv

VIDEO_ID_BYTES = 96


def _allgather(tree: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every process's arrays (equal shapes), concatenated in process order: one gather."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    distributed.sync("gather")
    return {
        k: np.asarray(v) for k, v in multihost_utils.process_allgather(tree, tiled=True).items()
    }


def _encode_ids(ids) -> np.ndarray:
    """Video ids -> (B, VIDEO_ID_BYTES) uint8 rows (numbers travel between processes)."""
    raw = [v if isinstance(v, bytes) else str(v).encode() for v in ids]
    too_long = [v for v in raw if len(v) > VIDEO_ID_BYTES]
    if too_long:
        raise ValueError(f"video id {too_long[0].decode()!r} is longer than {VIDEO_ID_BYTES} bytes")
    return np.asarray(raw, f"S{VIDEO_ID_BYTES}").view(np.uint8).reshape(len(raw), VIDEO_ID_BYTES)


def predict_split(s, config, split: str, *, data_dir: str | None = None) -> dict[str, np.ndarray]:
    """Scores of every real proposal of every example of ``split``.

    Every process scores its share of the split; the padded batches (the same shapes on every
    process) are gathered once, then the real proposals kept. Returns {"video_ids": (N,) str,
    "timestamps": (N,), "boxes": (N, 4), "scores": (N, C), "targets": (N, C) the proposals' 0/1
    training targets}, one row per real proposal, and "gates" (N, M), the last MFA's gates per
    modality, when the fusion stage is the AMFN (the same forward pass: ``programs.predict_batch``).
    """
    from tqdm import tqdm

    from jovale_jax.input_pipeline import create_eval_iterator
    from jovale_jax.programs import predict_batch
    from jovale_jax.sharding import global_batch

    per_process = max(1, config.eval_batch_size // jax.process_count())
    data = s.mesh.shape["data"] // jax.process_count() or 1
    per_process = -(-per_process // data) * data
    it = create_eval_iterator(config, split, batch_size=per_process, data_dir=data_dir)
    dense: dict[str, list] = {
        "video_ids": [],
        "timestamps": [],
        "boxes": [],
        "scores": [],
        "targets": [],
        "keep": [],
    }
    for batch in tqdm(it, total=len(it), desc=f"eval {split}", disable=jax.process_index() != 0):
        if not dense["scores"]:  # every process compiles before any runs (multi-process: gloo)
            s = s.replace(
                predict=distributed.compile_synced(
                    s.predict, s.state["params"], s.frozen, global_batch(s.mesh, batch)
                )
            )
        for key, value in predict_batch(s, batch).items():
            dense.setdefault(key, []).append(value)
        dense["targets"].append(np.asarray(batch["targets"]))
        dense["keep"].append(batch["box_mask"] & batch["example_mask"][:, None])
        dense["video_ids"].append(_encode_ids(batch["video_id"]))
        dense["timestamps"].append(np.asarray(batch["timestamp"]))
        dense["boxes"].append(np.asarray(batch["boxes"]))
    if not dense["scores"]:
        return {
            k: np.zeros((0,)) for k in ("video_ids", "timestamps", "boxes", "scores", "targets")
        }
    out = _allgather({k: np.concatenate(v) for k, v in dense.items()})
    ex, box = np.nonzero(out.pop("keep"))
    ids = out.pop("video_ids")[ex].view(f"S{VIDEO_ID_BYTES}").ravel()
    timestamps = out.pop("timestamps")[ex]
    return {
        "video_ids": np.asarray([v.decode() for v in ids]),
        "timestamps": timestamps,
        **{k: v[ex, box] for k, v in out.items()},  # boxes, scores, targets (and gates)
    }


def score(
    config,
    preds: Mapping[str, np.ndarray],
    split: str,
    *,
    data_dir: str | None = None,
    max_dets_per_frame: int | None = None,
) -> dict[str, Any]:
    """The dataset's metric for predictions of ``split`` (files from the built dataset's eval/)."""
    from jovale_jax.datasets import class_groups, eval_dir, metric

    folder = eval_dir(config, data_dir)
    names = ava.read_labelmap(os.path.join(folder, "label_map.pbtxt"))
    class_ids = np.asarray(sorted(names))
    gt_path = os.path.join(folder, f"{split}_groundtruth.csv")
    protocol = metric(config)
    if protocol == "ava":
        dets = ava.AvaDenseDetections(
            video_ids=preds["video_ids"],
            timestamps=preds["timestamps"],
            boxes=preds["boxes"],
            scores=preds["scores"],
            class_ids=class_ids,
        )
        excl = os.path.join(folder, f"{split}_excluded_timestamps.csv")
        excl = excl if os.path.exists(excl) else None
        cap = config.max_dets_per_frame if max_dets_per_frame is None else max_dets_per_frame
        groups = class_groups(config)
        result = ava.evaluate(gt_path, dets, names, excl, cap, groups)
        uncapped = ava.evaluate(gt_path, dets, names, excl, 0, groups)
        result["mAP_no_cap"] = uncapped["mAP"]
    else:
        gt = ava.read_csv(gt_path)
        videos = {v: i for i, v in enumerate(sorted(set(gt.video_ids) | set(preds["video_ids"])))}

        def frames(ids, ts):
            return np.asarray(
                [videos[v] for v in ids], np.int64
            ) * frame_map.FRAME_STRIDE + np.asarray(ts)

        result = frame_map.frame_map(
            frame_map.FrameBoxes(frames(gt.video_ids, gt.timestamps), gt.boxes, gt.labels),
            frame_map.DenseDetections(
                frames(preds["video_ids"], preds["timestamps"]),
                preds["boxes"],
                preds["scores"],
                class_ids,
            ),
            class_ids,
        )
    result["names"], result["metric"] = names, protocol
    return result


def plot_per_class(
    result: Mapping[str, Any], path: str, title: str, prior: Mapping[int, float] | None = None
) -> list[tuple[str, float, float]]:
    """Horizontal bar chart of per-class AP, with each class's prior AP (e.g. of
    :func:`class_prior_baseline`) as a grey bar under it when given. Returns the rows drawn:
    (label, AP, prior AP or NaN)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = result["names"]
    ids = list(result["per_class"])
    rows = [
        (
            f"{c} {names.get(c, '')}"[:40],
            _ap(result["per_class"][c]),
            _ap(prior.get(c)) if prior is not None else float("nan"),
        )
        for c in ids
    ]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(ids) * (2 if prior else 1) + 1.2))
    y = np.arange(len(rows))
    height = 0.4 if prior is not None else 0.8
    ax.barh(
        y - (height / 2 if prior is not None else 0),
        [r[1] for r in rows],
        height,
        color="tab:blue",
        label="AP",
    )
    if prior is not None:
        ax.barh(y + height / 2, [r[2] for r in rows], height, color="tab:gray", label="prior AP")
        ax.legend(loc="lower right")
    ax.set_yticks(y, [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("AP @ IoU 0.5")
    ax.set_title(f"{title}: mAP {result['mAP']:.4f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return rows


def plot_difference(
    a: Mapping[str, Any], b: Mapping[str, Any], path: str, labels=("A", "B")
) -> list[tuple[str, float]]:
    """Per-class AP of B minus A (the paper's visual-only vs multi-modal figure), in the class
    order of :func:`plot_per_class`, titled with both mAPs. Returns the rows drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = b.get("names", {})
    rows = [
        (f"{c} {names.get(c, '')}"[:40], _ap(b["per_class"][c]) - _ap(a["per_class"][c]))
        for c in b["per_class"]
        if c in a["per_class"]
    ]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1.4))
    ax.barh(
        [r[0] for r in rows],
        [r[1] for r in rows],
        color=["tab:red" if d < 0 else "tab:green" for _, d in rows],
    )
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"AP({labels[1]}) - AP({labels[0]})")
    ax.set_title(
        f"{labels[1]} (mAP {_ap(b['mAP']):.4f}) against {labels[0]} (mAP {_ap(a['mAP']):.4f})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return rows


def _ap(x) -> float:
    """An AP for arithmetic: NaN (a class without ground truth) and None count as 0."""
    return 0.0 if x is None or np.isnan(x) else float(x)


def periodic_evaluator(config, data_dir: str | None = None):
    """The training loop's evaluation hook: mAP of the current parameters on the eval split."""

    def run(s, step: int) -> dict[str, float]:
        result = score(
            config,
            predict_split(s, config, config.data.eval_split, data_dir=data_dir),
            config.data.eval_split,
            data_dir=data_dir,
        )
        return {"eval_mAP": float(result["mAP"])}

    return run


def results_payload(result: Mapping[str, Any], **extra) -> dict[str, Any]:
    """The JSON-serialisable summary written as results.json."""

    def num(x):
        return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)

    return {
        "mAP": num(result["mAP"]),
        "mAP_no_cap": num(result.get("mAP_no_cap")),
        "per_class": {str(c): num(v) for c, v in result["per_class"].items()},
        "groups": {k: num(v) for k, v in result.get("groups", {}).items()},
        "names": {str(c): n for c, n in result["names"].items()},
        **extra,
    }


def load_results(path: str) -> dict[str, Any]:
    """A results.json back as a result dict (int class ids, NaN for null); a one-line error
    naming the file and the field when it is not one."""
    try:
        with open(path) as f:
            r = json.load(f)
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read it ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg} at line {e.lineno}); expected a results.json")
    nan = float("nan")
    for field, kind in (("mAP", (int, float, type(None))), ("per_class", dict)):
        if not isinstance(r, dict) or field not in r or not isinstance(r[field], kind):
            raise ValueError(
                f"{path}: no {field!r} field of a results.json (written by launch.py eval)"
            )
    try:
        return {
            "mAP": r["mAP"] if r["mAP"] is not None else nan,
            "per_class": {int(c): (nan if v is None else v) for c, v in r["per_class"].items()},
            "names": {int(c): n for c, n in r.get("names", {}).items()},
        }
    except (TypeError, ValueError):
        raise ValueError(f"{path}: field 'per_class' is not {{class id: AP}}") from None


def evaluate_checkpoint(
    config,
    checkpoint: str,
    *,
    split: str | None = None,
    out_dir: str | None = None,
    data_dir: str | None = None,
    devices=None,
    compare_to: str | None = None,
) -> dict:
    """Run the model of ``checkpoint`` on ``split``; write detections.csv, results.json and
    charts. Returns the score (:func:`score`) with ``predictions``, :func:`predict_split`'s."""
    from jovale_jax.state import load_trained, resolve_checkpoint

    split = split or config.data.eval_split
    before = load_results(compare_to) if compare_to else None  # checked before evaluating
    workdir, step = resolve_checkpoint(checkpoint)
    out_dir = out_dir or os.path.join(workdir, f"eval_{split}_{step}")
    s = load_trained(config, os.path.join(workdir, "checkpoints", str(step)), devices=devices)
    preds = predict_split(s, config, split, data_dir=data_dir)
    result = score(config, preds, split, data_dir=data_dir)
    result["predictions"] = preds
    if jax.process_index() != 0:  # every process scored and gathered; process 0 writes
        return result
    os.makedirs(out_dir, exist_ok=True)
    class_ids = sorted(result["names"])
    n_rows = write_detections_csv(os.path.join(out_dir, "detections.csv"), preds, class_ids)
    if result["metric"] == "ava":
        print(ava.format_report(result, result["names"]).rsplit("\n", 1)[0])
        print(f"mAP without the per-frame cap: {result['mAP_no_cap']:.4f}")
    else:
        for c, ap in result["per_class"].items():
            print(f"{c:>3} {result['names'].get(c, ''):<30} {ap:.4f}")
        print(f"frame mAP @ 0.5: {result['mAP']:.4f}")
    payload = results_payload(
        result,
        split=split,
        step=step,
        checkpoint=os.path.abspath(checkpoint),
        detection_rows=n_rows,
    )
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(payload, f, indent=1)
    plot_per_class(
        result, os.path.join(out_dir, "per_class_ap.png"), f"{config.dataset} {split} step {step}"
    )
    diff_chart = os.path.join(out_dir, "per_class_ap_diff.png")
    if before is not None:
        label = os.path.basename(os.path.dirname(os.path.abspath(compare_to))) or "before"
        plot_difference(before, result, diff_chart, labels=(label, "this run"))
        print(
            f"compared with {compare_to}: mAP {_ap(before['mAP']):.4f} then, "
            f"{_ap(result['mAP']):.4f} now ({_ap(result['mAP']) - _ap(before['mAP']):+.4f}); "
            f"per class: {diff_chart}"
        )
    elif os.path.exists(diff_chart):  # an earlier run's comparison does not describe this one
        os.remove(diff_chart)
    print(json.dumps({k: payload[k] for k in ("mAP", "mAP_no_cap", "split", "step")}))
    print(f"wrote {out_dir}")
    result["out_dir"] = out_dir
    return result


def class_prior_baseline(config, split: str, *, data_dir: str | None = None) -> dict[str, Any]:
    """mAP of a model that ignores its input: every proposal of ``split`` scored by the training
    set's class frequencies (the floor any real model must beat)."""
    from jovale_jax.datasets import load_split

    ds, _ = load_split(config, config.data.train_split, data_dir=data_dir)
    counts = np.zeros(config.model.num_classes)
    for ex in ds.as_numpy_iterator():
        counts += np.asarray(ex["gt_labels"]).sum(0)
    prior = counts / max(counts.sum(), 1)
    ev, _ = load_split(config, split, data_dir=data_dir)
    rows: dict[str, list] = {"video_ids": [], "timestamps": [], "boxes": [], "scores": []}
    for ex in ev.as_numpy_iterator():
        props = np.asarray(ex["proposals"])[: config.model.num_proposals]
        for box in props:
            rows["video_ids"].append(ex["video_id"].decode())
            rows["timestamps"].append(int(ex["timestamp"]))
            rows["boxes"].append(box)
            rows["scores"].append(prior)
    preds = {
        "video_ids": np.asarray(rows["video_ids"]),
        "timestamps": np.asarray(rows["timestamps"]),
        "boxes": np.asarray(rows["boxes"]).reshape(-1, 4),
        "scores": np.asarray(rows["scores"]),
    }
    return score(config, preds, split, data_dir=data_dir)
