"""Evaluate a model on a whole eval split: detections CSV, frame mAP, per-class table and chart.

    python launch.py eval --config configs/synthetic.py --checkpoint runs/demo \
        [--config.eval.split=val]

Every example of the split is scored (the padded tail of the last batch is masked out). AVA-style
datasets (ava, synthetic) are scored with the official AVA protocol (``evaluation/ava.py``) both with
the official cap of 50 detection rows per frame and without a cap, since published AVA numbers come
from either; UCF101-24 and JHMDB51-21 with VOC frame mAP (``evaluation/frame_map.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jovale_jax.evaluation import ava, frame_map
from jovale_jax.evaluation.detections_csv import write_detections_csv

AVA_STYLE = ("ava", "synthetic")
VIDEO_ID_BYTES = 96


def _allgather(x: np.ndarray) -> np.ndarray:
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def predict_split(s, config, split: str, *, data_dir: str | None = None) -> dict[str, np.ndarray]:
    """Scores of every real proposal of every example of ``split``.

    Returns {"video_ids": (N,) str, "timestamps": (N,), "boxes": (N, 4), "scores": (N, C)}, one row
    per real proposal, gathered from all processes.
    """
    from tqdm import tqdm

    from jovale_jax.input_pipeline import create_eval_iterator
    from jovale_jax.state import predict_batch

    per_process = max(1, config.eval_batch_size // jax.process_count())
    data = s.mesh.shape["data"] // jax.process_count() or 1
    per_process = -(-per_process // data) * data
    it = create_eval_iterator(config, split, batch_size=per_process, data_dir=data_dir)
    rows: dict[str, list] = {"video_ids": [], "timestamps": [], "boxes": [], "scores": []}
    for batch in tqdm(it, total=len(it), desc=f"eval {split}", disable=jax.process_index() != 0):
        scores = predict_batch(s, batch)
        keep = batch["box_mask"] & batch["example_mask"][:, None]
        ex, box = np.nonzero(keep)
        ids = np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in batch["video_id"]])
        rows["video_ids"].append(ids[ex])
        rows["timestamps"].append(np.asarray(batch["timestamp"])[ex])
        rows["boxes"].append(batch["boxes"][ex, box])
        rows["scores"].append(scores[ex, box])
    out = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in rows.items()}
    if jax.process_count() > 1:
        encoded = np.zeros((len(out["video_ids"]), VIDEO_ID_BYTES), np.uint8)
        for i, v in enumerate(out["video_ids"]):
            b = v.encode()[:VIDEO_ID_BYTES]
            encoded[i, :len(b)] = np.frombuffer(b, np.uint8)
        encoded = _allgather(encoded)
        out = {k: _allgather(v) for k, v in out.items() if k != "video_ids"} | {
            "video_ids": np.asarray([bytes(r).rstrip(b"\0").decode() for r in encoded])}
    return out


def score(config, preds: Mapping[str, np.ndarray], split: str, *, data_dir: str | None = None,
          max_dets_per_frame: int | None = None) -> dict[str, Any]:
    """The dataset's metric for predictions of ``split`` (files from the built dataset's eval/)."""
    from jovale_jax.datasets import eval_dir

    folder = eval_dir(config, data_dir)
    names = ava.read_labelmap(os.path.join(folder, "label_map.pbtxt"))
    class_ids = np.asarray(sorted(names))
    gt_path = os.path.join(folder, f"{split}_groundtruth.csv")
    if config.dataset in AVA_STYLE:
        dets = ava.AvaDenseDetections(video_ids=preds["video_ids"], timestamps=preds["timestamps"],
                                      boxes=preds["boxes"], scores=preds["scores"], class_ids=class_ids)
        excl = os.path.join(folder, f"{split}_excluded_timestamps.csv")
        excl = excl if os.path.exists(excl) else None
        cap = config.max_dets_per_frame if max_dets_per_frame is None else max_dets_per_frame
        result = ava.evaluate(gt_path, dets, names, excl, cap)
        uncapped = ava.evaluate(gt_path, dets, names, excl, 0)
        result["mAP_no_cap"] = uncapped["mAP"]
    else:
        gt = ava.read_csv(gt_path)
        videos = {v: i for i, v in enumerate(sorted(set(gt.video_ids) | set(preds["video_ids"])))}

        def frames(ids, ts):
            return np.asarray([videos[v] for v in ids], np.int64) * frame_map.FRAME_STRIDE + np.asarray(ts)

        result = frame_map.frame_map(
            frame_map.FrameBoxes(frames(gt.video_ids, gt.timestamps), gt.boxes, gt.labels),
            frame_map.DenseDetections(frames(preds["video_ids"], preds["timestamps"]), preds["boxes"],
                                      preds["scores"], class_ids), class_ids)
    result["names"] = names
    return result


def plot_per_class(result: Mapping[str, Any], path: str, title: str) -> None:
    """Horizontal bar chart of per-class AP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = result["names"]
    ids = list(result["per_class"])
    aps = [0.0 if np.isnan(result["per_class"][c]) else result["per_class"][c] for c in ids]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(ids) + 1.2))
    ax.barh([f"{c} {names.get(c, '')}"[:40] for c in ids], aps, color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("AP @ IoU 0.5")
    ax.set_title(f"{title}: mAP {result['mAP']:.4f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_difference(a: Mapping[str, Any], b: Mapping[str, Any], path: str, labels=("A", "B")) -> None:
    """Per-class AP of B minus A, sorted (the paper's visual-only vs multi-modal figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    common = [c for c in a["per_class"] if c in b["per_class"]]
    diff = sorted(((b["per_class"][c] or 0.0) - (a["per_class"][c] or 0.0), c) for c in common)
    names = b.get("names", {})
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(diff) + 1.2))
    ax.barh([f"{c} {names.get(c, '')}"[:40] for _, c in diff], [d for d, _ in diff],
            color=["tab:red" if d < 0 else "tab:green" for d, _ in diff])
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"AP({labels[1]}) - AP({labels[0]})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def periodic_evaluator(config, data_dir: str | None = None):
    """The training loop's evaluation hook: mAP of the current parameters on the eval split."""
    def run(s, step: int) -> dict[str, float]:
        result = score(config, predict_split(s, config, config.data.eval_split, data_dir=data_dir),
                       config.data.eval_split, data_dir=data_dir)
        return {"eval_mAP": float(result["mAP"])}

    return run


def results_payload(result: Mapping[str, Any], **extra) -> dict[str, Any]:
    """The JSON-serialisable summary written as results.json."""
    def num(x):
        return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)

    return {"mAP": num(result["mAP"]), "mAP_no_cap": num(result.get("mAP_no_cap")),
            "per_class": {str(c): num(v) for c, v in result["per_class"].items()},
            "groups": {k: num(v) for k, v in result.get("groups", {}).items()},
            "names": {str(c): n for c, n in result["names"].items()}, **extra}


def load_results(path: str) -> dict[str, Any]:
    """A results.json back as a result dict (int class ids, NaN for null)."""
    with open(path) as f:
        r = json.load(f)
    nan = float("nan")
    return {"mAP": r["mAP"] if r["mAP"] is not None else nan,
            "per_class": {int(c): (nan if v is None else v) for c, v in r["per_class"].items()},
            "names": {int(c): n for c, n in r.get("names", {}).items()}}


def evaluate_checkpoint(config, checkpoint: str, *, split: str | None = None, out_dir: str | None = None,
                        data_dir: str | None = None, devices=None, compare_to: str | None = None) -> dict:
    """Run the model of ``checkpoint`` on ``split``; write detections.csv, results.json and charts."""
    from jovale_jax.state import load_trained, resolve_checkpoint

    split = split or config.data.eval_split
    workdir, step = resolve_checkpoint(checkpoint)
    out_dir = out_dir or os.path.join(workdir, f"eval_{split}_{step}")
    os.makedirs(out_dir, exist_ok=True)
    s = load_trained(config, checkpoint, devices=devices)
    preds = predict_split(s, config, split, data_dir=data_dir)
    result = score(config, preds, split, data_dir=data_dir)
    if jax.process_index() != 0:
        return result
    class_ids = sorted(result["names"])
    n_rows = write_detections_csv(os.path.join(out_dir, "detections.csv"), preds, class_ids)
    if config.dataset in AVA_STYLE:
        print(ava.format_report(result, result["names"]).rsplit("\n", 1)[0])
        print(f"mAP without the per-frame cap: {result['mAP_no_cap']:.4f}")
    else:
        for c, ap in result["per_class"].items():
            print(f"{c:>3} {result['names'].get(c, ''):<30} {ap:.4f}")
        print(f"frame mAP @ 0.5: {result['mAP']:.4f}")
    payload = results_payload(result, split=split, step=step, checkpoint=os.path.abspath(checkpoint),
                              detection_rows=n_rows)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(payload, f, indent=1)
    plot_per_class(result, os.path.join(out_dir, "per_class_ap.png"), f"{config.dataset} {split} step {step}")
    if compare_to:
        plot_difference(load_results(compare_to), result, os.path.join(out_dir, "per_class_ap_diff.png"),
                        labels=(os.path.basename(os.path.dirname(compare_to)) or "A", "this run"))
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
    preds = {"video_ids": np.asarray(rows["video_ids"]), "timestamps": np.asarray(rows["timestamps"]),
             "boxes": np.asarray(rows["boxes"]).reshape(-1, 4), "scores": np.asarray(rows["scores"])}
    return score(config, preds, split, data_dir=data_dir)
