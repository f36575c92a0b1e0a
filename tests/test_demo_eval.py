"""The demo's path in short (train, evaluate, report) on the tiny synthetic set (the ablation
tables: tests/test_ablate.py)."""

import csv
import json
import os

import jax
import numpy as np
import pytest

from jovale_jax import demo, evaluate


@pytest.fixture
def short(tiny_config):
    tiny_config.num_train_steps = 6
    tiny_config.log_every_steps = 2
    tiny_config.checkpoint_every_steps = 6
    tiny_config.eval_every_steps = 0
    tiny_config.mesh_shape = (1, 1)
    tiny_config.eval_batch_size = 8
    return tiny_config


def test_demo_report_and_eval_outputs(short, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "devices", lambda *a: jax.local_devices()[:1])
    summary = demo.demo(short, str(tmp_path / "demo"), data_dir=tiny_data)
    report = tmp_path / "demo" / "report"
    text = (report / "report.md").read_text()
    assert "class-prior baseline" in text and f"{summary['prior_mAP']:.4f}" in text
    for name in ("loss.png", "per_class_ap.png"):
        assert (report / name).stat().st_size > 1000
    assert len(list(report.glob("keyframe_*.png"))) >= 1
    assert 0.0 <= summary["mAP"] <= 1.0 and 0.0 <= summary["prior_mAP"] <= 1.0
    # The per-class table lists the MFA gates of the three modalities, each in (0, 1).
    assert "| id | class | group | AP | prior AP | w_v | w_a | w_s | actors |" in text
    assert set(summary["gates"]) == {"1", "2", "3", "4", "5", "6"}
    gates = [g for row in summary["gates"].values() for g in row.values() if not np.isnan(g)]
    assert gates and all(0.0 < g < 1.0 for g in gates)
    assert set(summary["prior_groups"]) == {"motion", "sound", "scene"}
    assert (
        "## Modality ablation" in text and "--config.ablate.table=4 --workdir runs/ablate4" in text
    )

    # The evaluation wrote every real proposal of every val example, scored for every class.
    eval_dir = tmp_path / "demo" / "eval"
    results = json.loads((eval_dir / "results.json").read_text())
    assert set(results["per_class"]) == {"1", "2", "3", "4", "5", "6"}
    assert set(results["groups"]) == {"motion", "sound", "scene"}  # the set's groups, not AVA's
    from jovale_jax.datasets import load_split

    ds, n = load_split(short, "val", data_dir=tiny_data)
    want = {
        (ex["video_id"].decode(), int(ex["timestamp"])): min(len(ex["proposals"]), 4)
        for ex in ds.as_numpy_iterator()
    }
    assert len(want) == n
    rows = list(csv.reader((eval_dir / "detections.csv").read_text().splitlines()))
    got: dict = {}
    for r in rows:
        got.setdefault((r[0], int(r[1])), set()).add(tuple(r[2:6]))
    assert {k: v for k, v in want.items() if v} == {k: len(v) for k, v in got.items()}
    assert len(rows) == 6 * sum(want.values())
    # mAP recomputed from the written CSV with the standalone evaluator agrees.
    from jovale_jax.datasets import eval_dir as data_eval_dir
    from jovale_jax.evaluation import ava

    folder = data_eval_dir(short, tiny_data)
    again = ava.evaluate(
        os.path.join(folder, "val_groundtruth.csv"),
        str(eval_dir / "detections.csv"),
        os.path.join(folder, "label_map.pbtxt"),
        os.path.join(folder, "val_excluded_timestamps.csv"),
    )
    assert again["mAP"] == pytest.approx(results["mAP"], abs=1e-3)  # CSV rounds scores to 1e-6

    # The report explains itself: the keyframes' caption (with the label threshold), ground truth
    # beside predictions, the run-to-run spread, and the training's wall time; a resumed demo adds
    # its own training call to the first run's time instead of reporting only its own.
    caption = demo.KEYFRAME_CAPTION.format(threshold=demo.LABEL_THRESHOLD)
    assert caption in text and "at least 0.3 " in caption
    assert "Run-to-run spread" in text and "Training wall time" in text and "over 1 " in text
    from PIL import Image

    with Image.open(next(report.glob("keyframe_*.png"))) as im:  # two frames side by side
        assert im.width > 2 * im.height
    first = json.loads((tmp_path / "demo" / demo.TRAINING_TIME).read_text())
    short.num_train_steps = 8  # resumed for 2 more steps: their time is added
    again_summary = demo.demo(short, str(tmp_path / "demo"), data_dir=tiny_data)
    total = json.loads((tmp_path / "demo" / demo.TRAINING_TIME).read_text())
    assert total["runs"] == 2 and total["seconds"] > first["seconds"]
    assert again_summary["training_minutes"] == pytest.approx(total["seconds"] / 60)
    assert "over 2 " in (report / "report.md").read_text()
    demo.demo(short, str(tmp_path / "demo"), data_dir=tiny_data)  # finished: nothing to add
    assert json.loads((tmp_path / "demo" / demo.TRAINING_TIME).read_text()) == total


def test_report_shows_the_table_4_run_it_finds(tmp_path):
    (tmp_path / "table_4.md").write_text("Table 4: modalities\n\n| row | mAP |\n| v | 33.3 |\n")
    text = "\n".join(demo.ablation_section(str(tmp_path)))
    assert "\n| v | 33.3 |" in text and str(tmp_path / "table_4.md") in text
    for missing in (str(tmp_path / "none"), None):  # no table: how to make one
        text = "\n".join(demo.ablation_section(missing))
        assert "| v |" not in text and "launch.py ablate" in text


def test_difference_chart_and_results_roundtrip(tmp_path):
    a = {"mAP": 0.5, "per_class": {1: 0.2, 2: 0.8}, "names": {1: "x", 2: "y"}}
    b = {"mAP": 0.6, "per_class": {1: 0.5, 2: 0.7}, "names": {1: "x", 2: "y"}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(evaluate.results_payload(a)))
    back = evaluate.load_results(str(path))
    assert back["per_class"] == a["per_class"]
    evaluate.plot_difference(back, b, str(tmp_path / "diff.png"))
    assert (tmp_path / "diff.png").stat().st_size > 1000


def test_gates_by_class_and_prior_chart(tmp_path):
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.1, 0.9], [0.2, 0.3]])
    gates = np.array([[0.9, 0.1, 0.2], [0.7, 0.3, 0.4], [0.1, 0.8, 0.5], [0.5, 0.5, 0.5]])
    targets = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])
    means, counts = demo.gates_by_class(scores, gates, targets)
    assert counts.tolist() == [2, 1]
    np.testing.assert_allclose(means, [[0.8, 0.2, 0.3], [0.1, 0.8, 0.5]])
    means, counts = demo.gates_by_class(scores, gates, np.zeros((4, 2)))
    assert counts.tolist() == [0, 0] and np.isnan(means).all()

    result = {"mAP": 0.5, "per_class": {1: 0.6, 2: float("nan")}, "names": {1: "walk", 2: "jump"}}
    rows = evaluate.plot_per_class(result, str(tmp_path / "c.png"), "t", prior={1: 0.3, 2: 0.2})
    assert rows == [("1 walk", 0.6, 0.3), ("2 jump", 0.0, 0.2)]
    assert (tmp_path / "c.png").stat().st_size > 1000
    rows = evaluate.plot_per_class(result, str(tmp_path / "d.png"), "t")
    assert all(np.isnan(r[2]) for r in rows)
