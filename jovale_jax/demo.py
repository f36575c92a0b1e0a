"""The main job on the embedded synthetic set (`make demo`).

``demo``: generate and build the synthetic audio-visual set, train the ``synthetic`` preset,
evaluate the final checkpoint, and write ``<workdir>/report/`` (report.md, loss curve, per-class
AP chart, keyframes with predicted boxes and top labels). Beside the model's mAP the report gives
the mAP of a baseline that ignores the input (class priors) on the same eval split.

The paper's ablation tables live in :mod:`jovale_jax.ablate`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from jovale_jax.ablate import SHORT
from jovale_jax.datasets import build_or_reuse
from jovale_jax.datasets import synthetic as synthetic_data


def default_config():
    from jovale_jax.configs import synthetic

    return synthetic.get_config()


def train_and_evaluate(config, workdir: str, data_dir: str) -> dict[str, Any]:
    """Train in ``workdir`` (resuming if possible) and evaluate the final checkpoint."""
    from jovale_jax.evaluate import evaluate_checkpoint
    from jovale_jax.train import train

    start, logged = time.time(), logged_steps(workdir)
    train(config, workdir, data_dir=data_dir)
    if logged_steps(workdir) != logged:  # it trained (a finished run resumes to no step)
        add_training_time(workdir, time.time() - start)
    return evaluate_checkpoint(
        config, workdir, data_dir=data_dir, out_dir=os.path.join(workdir, "eval")
    )


TRAINING_TIME = "training_time.json"  # in the workdir: the demo runs' time spent training


def logged_steps(workdir: str) -> int:
    """The number of training log lines in ``<workdir>/metrics.jsonl`` (0 before any)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        return sum('"loss"' in line for line in f)


def add_training_time(workdir: str, seconds: float) -> dict[str, float]:
    """Add one run's training wall time to ``<workdir>/training_time.json`` ({"seconds": total,
    "runs": count}), so that a resumed demo reports the whole training's time; returns it."""
    path = os.path.join(workdir, TRAINING_TIME)
    total = {"seconds": 0.0, "runs": 0}
    if os.path.isfile(path):
        with open(path) as f:
            total = json.load(f)
    total = {"seconds": total["seconds"] + seconds, "runs": total["runs"] + 1}
    with open(path + ".tmp", "w") as f:
        json.dump(total, f)
    os.replace(path + ".tmp", path)
    return total


def plot_loss(workdir: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = [], []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r:
                steps.append(r["step"])
                losses.append(r["loss"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("focal loss (train)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


LABEL_THRESHOLD = 0.3  # the demo's keyframes list a predicted label only from this score up
# Measured spread of the demo's numbers (README, "Measured"), stated in every report.
RUN_TO_RUN = (
    "Run-to-run spread: two fresh runs of this demo on one machine (seed 0, the same set, "
    "2026-12-03) gave bit-identical results (mAP 0.5729, the same per-class APs and gates, as "
    "the README's run of 2026-12-01). On another machine (a fresh clone, issue 25) it gave mAP "
    "0.5675 and near_ball's w_s 0.458 against 0.499 here: the numbers move by about 0.005 mAP "
    "with the machine (CPU kernels, thread count), and the gates by a few hundredths. Another "
    "seed moves them more (the frozen-scene preset: mAP 0.533 with seed 0, 0.523 with seed 1)."
)


def draw_keyframes(config, workdir: str, data_dir: str, out_dir: str, count: int = 4) -> list[str]:
    """Keyframes of the eval split: the ground truth (left) beside the model's detections (right,
    each proposal's labels scored at least :data:`LABEL_THRESHOLD`, at most 3)."""
    import csv

    from PIL import Image

    from jovale_jax.datasets import eval_dir, load_split
    from jovale_jax.evaluation import ava
    from jovale_jax.visualize import draw_detections

    names = synthetic_data.CLASSES
    by_frame: dict[tuple[str, int], dict] = {}
    with open(os.path.join(workdir, "eval", "detections.csv")) as f:
        for vid, ts, x1, y1, x2, y2, action, sc in csv.reader(f):
            if float(sc) >= LABEL_THRESHOLD:
                boxes = by_frame.setdefault((vid, int(ts)), {})
                box = (float(x1), float(y1), float(x2), float(y2))
                boxes.setdefault(box, []).append((names.get(int(action), action), float(sc)))
    split = config.data.eval_split
    gt = ava.read_csv(os.path.join(eval_dir(config, data_dir), f"{split}_groundtruth.csv"))
    truth: dict[tuple[str, int], dict] = {}
    for vid, ts, box, label in zip(gt.video_ids, gt.timestamps, gt.boxes, gt.labels):
        truth.setdefault((vid, int(ts)), {}).setdefault(tuple(box), []).append(
            (names.get(int(label), str(label)), None)
        )
    ds, _ = load_split(config, split, data_dir=data_dir)
    paths = []
    for ex in ds.take(count).as_numpy_iterator():
        key = (ex["video_id"].decode(), int(ex["timestamp"]))
        frames = ex["frames"]
        image = Image.fromarray(np.asarray(frames[len(frames) // 2]))
        panels = []
        for title, found in (
            ("ground truth", truth.get(key, {})),
            (f"predicted, score >= {LABEL_THRESHOLD}", by_frame.get(key, {})),
        ):
            top = {b: sorted(v, key=lambda t: -(t[1] or 0))[:3] for b, v in found.items()}
            panels.append(draw_detections(image, list(top), list(top.values()), title=title))
        both = Image.new("RGB", (panels[0].width * 2 + 8, panels[0].height), "white")
        both.paste(panels[0], (0, 0))
        both.paste(panels[1], (panels[0].width + 8, 0))
        path = os.path.join(out_dir, f"keyframe_{key[0]}_{key[1]}.png")
        both.save(path)
        paths.append(path)
    return paths


KEYFRAME_CAPTION = (
    "Keyframes of the eval split (the clip's middle frame). Left: the ground-truth actors and "
    "their classes. Right: the model's detections on the same frame: each proposal box (the "
    "proposals are the set's person boxes) with its classes scored at least {threshold} "
    "(sigmoid scores of the focal loss, not calibrated probabilities; at most 3 per box, best "
    "first); proposals with no class at that score are not drawn. A box and its label block share "
    "a colour, which only tells the boxes apart (colours do not mean classes); a label block sits "
    "at its box's top-left corner or, when that place is taken, at the nearest free place, and is "
    "left out when none is free."
)


def gates_by_class(
    scores: np.ndarray, gates: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean MFA gate per modality over the actors predicted as each class.

    Args:
      scores: (N, C) per-proposal class scores; gates: (N, M) per-proposal gate (channel mean of
        each w_m); targets: (N, C) the proposals' 0/1 training targets.
    Returns:
      (C, M) mean gates and (C,) actor counts. The actors "predicted as class c" are the R_c
      proposals scored highest for c, R_c = the number of proposals whose target has c (a
      threshold-free choice: sigmoid scores under the focal loss are not calibrated); a class
      without positives gets NaN gates.
    """
    scores, gates, targets = (np.asarray(x, np.float64) for x in (scores, gates, targets))
    counts = targets.sum(0).astype(int)
    means = np.full((scores.shape[1], gates.shape[1]), np.nan)
    for c, r in enumerate(counts):
        if r:
            means[c] = gates[np.argsort(-scores[:, c], kind="stable")[:r]].mean(0)
    return means, counts


def ablation_section(ablation_dir: str | None) -> list[str]:
    """The report's lines on the modality ablation: ``<ablation_dir>/table_4.md`` (written by
    ``launch.py ablate --config.ablate.table=4``) when it exists, else how to make it (the demo
    trains none)."""
    path = os.path.join(ablation_dir, "table_4.md") if ablation_dir else None
    lines = ["## Modality ablation (the paper's Table 4)", ""]
    if path and os.path.isfile(path):
        with open(path) as f:
            return lines + [f"From `{path}`:", "", f.read().rstrip()]
    return lines + [
        'Not run here (README.md, "Measured", holds a run). Make it with',
        (
            "`python launch.py ablate --config configs/synthetic.py --config.ablate.table=4 "
            "--workdir runs/ablate4`;"
        ),
        "the next `launch.py demo` (which reads `runs/ablate4` unless `--ablation_dir` names",
        "another folder) puts it in this report.",
    ]


def demo(
    config, workdir: str, *, data_dir: str | None = None, ablation_dir: str | None = None
) -> dict[str, Any]:
    """The whole system on the synthetic set; returns the report's numbers. The report includes
    the Table 4 ablation found in ``ablation_dir`` (:func:`ablation_section`)."""
    from jovale_jax.evaluate import class_prior_baseline, plot_per_class

    start = time.time()
    config = config or default_config()
    data_dir = build_or_reuse(config, data_dir)
    result = train_and_evaluate(config, workdir, data_dir)
    baseline = class_prior_baseline(config, config.data.eval_split, data_dir=data_dir)
    report = os.path.join(workdir, "report")
    os.makedirs(report, exist_ok=True)
    plot_loss(workdir, os.path.join(report, "loss.png"))
    plot_per_class(
        result,
        os.path.join(report, "per_class_ap.png"),
        f"{config.dataset} {config.data.eval_split}",
        prior=baseline["per_class"],
    )
    keyframes = draw_keyframes(config, workdir, data_dir, report)
    groups, prior_groups = result["groups"], baseline["groups"]  # the set's motion/sound/scene
    predicted = result["predictions"]  # the evaluation's forward pass also gave the gates
    gates, counts = gates_by_class(*(predicted[k] for k in ("scores", "gates", "targets")))
    mods = [SHORT[m] for m in config.model.modalities]
    lines = [
        "# JoVALE demo on the synthetic audio-visual set",
        "",
        f"Eval split `{config.data.eval_split}`; frame mAP @ IoU 0.5 with the AVA protocol.",
        "",
        "| | mAP |",
        "|---|---|",
        f"| JoVALE ({'+'.join(config.model.modalities)}) | {result['mAP']:.4f} |",
        f"| class-prior baseline (ignores the input) | {baseline['mAP']:.4f} |",
        "",
        (
            "Per class: AP, the class-prior AP, and the last AMFN layer's MFA gate per modality "
            "(the channel mean of w_m) averaged over the actors predicted as the class (its "
            "`actors` proposals scored highest for it, as many as it has positives)."
        ),
        "",
        "| id | class | group | AP | prior AP | "
        + " | ".join(f"w_{m}" for m in mods)
        + " | actors |",
        "|---" * (6 + len(mods)) + "|",
    ]
    group_of = {c: g for g, ids in synthetic_data.CLASS_GROUPS.items() for c in ids}
    for i, (c, ap) in enumerate(result["per_class"].items()):
        lines.append(
            f"| {c} | {result['names'].get(c, '')} | {group_of.get(c, '')} | {ap:.4f} | "
            f"{baseline['per_class'].get(c, float('nan')):.4f} | "
            + " | ".join(f"{g:.3f}" for g in gates[i])
            + f" | {counts[i]} |"
        )
    lines += ["", "| group | mAP | prior mAP | gain |", "|---|---|---|---|"]
    lines += [
        f"| {g} | {v:.4f} | {prior_groups[g]:.4f} | {v - prior_groups[g]:+.4f} |"
        for g, v in groups.items()
    ]
    lines += [""] + ablation_section(ablation_dir)
    lines += ["", "![loss](loss.png)", "", "![per-class AP](per_class_ap.png)", ""]
    lines += ["", KEYFRAME_CAPTION.format(threshold=LABEL_THRESHOLD), ""]
    lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in keyframes]
    minutes = (time.time() - start) / 60
    trained = {"seconds": float("nan"), "runs": 0}  # a workdir trained before it was recorded
    if os.path.isfile(os.path.join(workdir, TRAINING_TIME)):
        with open(os.path.join(workdir, TRAINING_TIME)) as f:
            trained = json.load(f)
    lines += [
        "",
        RUN_TO_RUN,
        "",
        (
            f"Training wall time: {trained['seconds'] / 60:.1f} min, over {trained['runs']} "
            "`launch.py demo` run(s) that trained in this workdir (a resumed run adds its own "
            "part; nan: trained before the time was recorded). Wall time of this run (data, "
            f"training, evaluation, report): {minutes:.1f} min."
        ),
    ]
    with open(os.path.join(report, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    summary = {
        "mAP": result["mAP"],
        "prior_mAP": baseline["mAP"],
        "groups": groups,
        "prior_groups": prior_groups,
        "gates": {
            str(c): dict(zip(mods, map(float, g))) for c, g in zip(result["per_class"], gates)
        },
        "minutes": minutes,
        "training_minutes": trained["seconds"] / 60,
        "report": os.path.abspath(report),
    }
    with open(os.path.join(report, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(
        f"mAP {result['mAP']:.4f} (class-prior baseline {baseline['mAP']:.4f}) in {minutes:.1f} min"
    )
    print(f"report: {os.path.abspath(os.path.join(report, 'report.md'))}")
    return summary
