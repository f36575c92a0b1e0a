"""AVA evaluator: hand-computed protocol cases, the loop baseline (tests/ava_reference.py), bad
input, CLI, no jax."""

import csv
import json
import math
import os
import subprocess
import sys

import ava_reference as reference
import numpy as np
import pytest

from jovale_jax.bench import eval as bench
from jovale_jax.evaluation import ava

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = {1: "bend/bow", 2: "crouch/kneel", 3: "dance", 5: "fall down"}  # 5: never in the truth
LABELMAP = """item {
  name: "bend/bow"
  id: 1
}
item {
  name: "crouch/kneel"
  id: 2
}
label {
  name: "dance"
  label_id: 3
  label_type: PERSON_MOVEMENT
}
item { name: "fall down" id: 5 }
"""
A = (0.1, 0.1, 0.5, 0.5)
B = (0.6, 0.6, 0.9, 0.9)


def rows(*entries) -> ava.AvaBoxes:
    """AvaBoxes from (video, second, box, label[, score]) tuples."""
    scored = len(entries[0]) == 5
    columns = list(zip(*entries))
    return ava.AvaBoxes(
        np.array(columns[0]),
        np.array(columns[1]),
        np.array(columns[2], dtype=float).reshape(-1, 4),
        np.array(columns[3]),
        np.array(columns[4], dtype=float) if scored else None,
    )


def write_file(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def csv_text(*entries) -> str:
    return "".join(
        ",".join(map(str, (v, f"{t:04d}", *box, *rest))) + "\n" for v, t, box, *rest in entries
    )


def test_hand_computed_ap():
    gt = rows(("v", 902, A, 1), ("v", 903, B, 1))
    det = rows(("v", 902, A, 1, 0.9), ("v", 902, B, 1, 0.8), ("v", 903, B, 1, 0.7))
    result = ava.evaluate(gt, det, NAMES)
    # TP, FP, TP over 2 boxes: recall 1/2 at precision 1, then 1 at precision 2/3.
    assert result["per_class"][1] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert result["mAP"] == pytest.approx(5 / 6)
    assert all(math.isnan(result["per_class"][c]) for c in (2, 3, 5))
    assert result["num_groundtruth"] == {1: 2, 2: 0, 3: 0, 5: 0}


def test_score_ties_across_frames_rank_the_later_frame_first(tmp_path):
    gt = rows(("v", 902, A, 1))
    tp, fp = ("v", 902, A, 1, 0.5), ("v", 903, A, 1, 0.5)  # the same score; 903 has no truth
    # Frames in order of first appearance; among equal scores the later one ranks first.
    assert ava.evaluate(gt, rows(tp, fp), NAMES)["mAP"] == pytest.approx(0.5)
    assert ava.evaluate(gt, rows(fp, tp), NAMES)["mAP"] == pytest.approx(1.0)
    labelmap = write_file(tmp_path, "labelmap.pbtxt", LABELMAP)
    truth = write_file(tmp_path, "gt.csv", csv_text(("v", 902, A, 1)))
    for order, expected in (((tp, fp), 0.5), ((fp, tp), 1.0)):
        det = write_file(tmp_path, "det.csv", csv_text(*order))
        assert reference.reference_evaluate(labelmap, truth, det)["mAP"] == pytest.approx(expected)


def test_several_labels_on_one_box():
    gt = rows(("v", 902, A, 1), ("v", 902, A, 2), ("v", 903, B, 3))
    det = rows(("v", 902, A, 1, 0.9), ("v", 902, A, 2, 0.3), ("v", 902, A, 3, 0.8))
    result = ava.evaluate(gt, det, NAMES)
    assert result["per_class"][1] == 1.0
    assert result["per_class"][2] == 1.0
    assert result["per_class"][3] == 0.0  # its box is on another frame
    assert result["mAP"] == pytest.approx(2 / 3)


def test_class_without_ground_truth_is_nan_and_left_out_of_the_mean():
    gt = rows(("v", 902, A, 1))
    det = rows(("v", 902, A, 1, 0.9), ("v", 902, A, 5, 0.8), ("v", 902, A, 4, 0.7))
    result = ava.evaluate(gt, det, NAMES)
    assert math.isnan(result["per_class"][5])
    assert result["mAP"] == 1.0
    assert result["num_detections"][5] == 1
    assert result["ignored"]["unknown_class"] == 1  # id 4 is not in the label map
    summary = json.loads(ava.result_json(result))
    assert summary["per_class"]["5"] is None and summary["mAP"] == 1.0


def test_excluded_timestamps(tmp_path):
    gt = rows(("v", 902, A, 1), ("v", 903, B, 1))
    det = rows(("v", 902, A, 1, 0.9), ("v", 903, A, 1, 0.95))
    # FP (0.95) then TP (0.9) over 2 boxes: precision 1/2 at recall 1/2.
    assert ava.evaluate(gt, det, NAMES)["mAP"] == pytest.approx(0.25)
    result = ava.evaluate(gt, det, NAMES, exclusions=[("v", 903)])
    assert result["mAP"] == 1.0
    assert result["num_groundtruth"][1] == 1 and result["ignored"]["excluded"] == 1
    path = write_file(tmp_path, "excluded.csv", "v,0903\n")
    assert ava.evaluate(gt, det, NAMES, exclusions=path)["mAP"] == 1.0


def test_per_frame_cap():
    gt = rows(("v", 902, A, 1))
    det = rows(
        ("v", 902, A, 4, 0.99),  # not in the label map: filtered before the cap
        ("v", 902, B, 1, 0.9),
        ("v", 902, B, 2, 0.8),
        ("v", 902, A, 1, 0.7),  # the true positive, third in its frame
    )
    assert ava.DEFAULT_MAX_DETS_PER_FRAME == 50
    assert ava.evaluate(gt, det, NAMES)["mAP"] == pytest.approx(0.5)
    assert ava.evaluate(gt, det, NAMES, max_dets_per_frame=0)["mAP"] == pytest.approx(0.5)
    assert ava.evaluate(gt, det, NAMES, max_dets_per_frame=3)["mAP"] == pytest.approx(0.5)
    capped = ava.evaluate(gt, det, NAMES, max_dets_per_frame=2)
    assert capped["mAP"] == 0.0 and capped["ignored"]["over_cap"] == 1
    # An invalid box still takes a place under the cap.
    det = rows(
        ("v", 902, (0.5, 0.1, 0.5, 0.4), 1, 0.99), ("v", 902, B, 1, 0.9), ("v", 902, A, 1, 0.7)
    )
    capped = ava.evaluate(gt, det, NAMES, max_dets_per_frame=2)
    assert capped["mAP"] == 0.0 and capped["ignored"]["invalid_box"] == 1


def test_box_overlapping_two_ground_truths():
    g1, g2 = (0.1, 0.1, 0.5, 0.5), (0.2, 0.1, 0.6, 0.5)
    gt = rows(("v", 902, g1, 1), ("v", 902, g2, 1))
    near_g1 = (0.12, 0.1, 0.52, 0.5)  # IoU 0.90 with g1, 0.67 with g2
    near_g2 = (0.18, 0.1, 0.58, 0.5)  # IoU 0.67 with g1, 0.90 with g2
    # The second detection's best box is g1, already taken: a false positive, even though it
    # overlaps the free g2 by more than 0.5 (no fallback to the second best).
    det = rows(("v", 902, g1, 1, 0.9), ("v", 902, near_g1, 1, 0.8))
    assert ava.evaluate(gt, det, NAMES)["mAP"] == pytest.approx(0.5)
    det = rows(("v", 902, g1, 1, 0.9), ("v", 902, near_g2, 1, 0.8))
    assert ava.evaluate(gt, det, NAMES)["mAP"] == 1.0
    # The higher score matches first, whatever the input order.
    det = rows(("v", 902, near_g1, 1, 0.8), ("v", 902, g1, 1, 0.9))
    assert ava.evaluate(gt, det, NAMES)["mAP"] == pytest.approx(0.5)


def test_equal_iou_with_two_ground_truths_takes_the_first():
    g1, g2 = (0.125, 0.125, 0.625, 0.625), (0.25, 0.125, 0.75, 0.625)
    middle = (0.1875, 0.125, 0.6875, 0.625)  # exactly the same IoU (7/9) with both
    det = rows(("v", 902, middle, 1, 0.9), ("v", 902, g2, 1, 0.8))
    first_g1 = rows(("v", 902, g1, 1), ("v", 902, g2, 1))
    first_g2 = rows(("v", 902, g2, 1), ("v", 902, g1, 1))
    assert ava.evaluate(first_g1, det, NAMES)["mAP"] == 1.0  # middle takes g1, g2 is free
    assert ava.evaluate(first_g2, det, NAMES)["mAP"] == pytest.approx(0.5)  # middle takes g2


def test_unknown_video_is_ignored_and_counted():
    gt = rows(("v", 902, A, 1))
    det = rows(("v", 902, A, 1, 0.5), ("other", 902, A, 1, 0.9), ("other", 903, B, 2, 0.8))
    with pytest.warns(UserWarning, match="2 detection rows"):
        result = ava.evaluate(gt, det, NAMES)
    assert result["mAP"] == 1.0
    assert result["ignored"]["unknown_video"] == 2


def test_empty_detections_give_zero_with_a_warning(tmp_path):
    truth = write_file(tmp_path, "gt.csv", csv_text(("v", 902, A, 1), ("v", 903, B, 3)))
    empty = write_file(tmp_path, "det.csv", "")
    with pytest.warns(UserWarning, match="empty"):
        result = ava.evaluate(truth, empty, NAMES)
    assert result["mAP"] == 0.0
    assert result["per_class"][1] == 0.0 and result["per_class"][3] == 0.0


@pytest.mark.parametrize(
    "line, message",
    [
        ("v,0903,0.1,0.2,abc,0.4,1,0.5", "x2 is not a number: 'abc'"),
        ("v,0903,0.1,0.2", "expected 7 or 8 columns, got 4"),
        ("v,903.5,0.1,0.2,0.3,0.4,1,0.5", "timestamp is not an integer: '903.5'"),
        ("v,0903,0.1,0.2,0.3,0.4,1,nan", "score is NaN"),
        ("", "expected 7 or 8 columns, got 0"),
    ],
)
def test_bad_csv_row_names_file_line_and_value(tmp_path, line, message):
    good = "v,0902,0.1,0.2,0.3,0.4,1,0.5\n"
    path = write_file(tmp_path, "det.csv", good + good + line + "\n" + good)
    with pytest.raises(ValueError) as error:
        ava.read_csv(path)
    assert f"{path}:3: " in str(error.value) and message in str(error.value)


def test_bad_label_map_names_the_line(tmp_path):
    path = write_file(tmp_path, "bad.pbtxt", 'item {\n  name: "a"\n  id: one\n}\n')
    with pytest.raises(ValueError, match=f"{path}:3: "):
        ava.read_labelmap(path)
    path = write_file(tmp_path, "bad2.pbtxt", 'item {\n  name: "a" "b"\n}\n')
    with pytest.raises(ValueError, match=f"{path}:2: "):
        ava.read_labelmap(path)


def test_label_map_formats(tmp_path):
    assert ava.read_labelmap(write_file(tmp_path, "l.pbtxt", LABELMAP)) == NAMES


def test_mixed_seven_and_eight_columns_read_alike(tmp_path):
    text = "v,0902,0.1,0.2,0.3,0.4,1,0.5\nv,0903,0.1,0.2,0.3,0.4,3\n"
    boxes = ava.read_csv(write_file(tmp_path, "mixed.csv", text))
    np.testing.assert_array_equal(boxes.scores, [0.5, 1.0])
    np.testing.assert_array_equal(boxes.timestamps, [902, 903])
    np.testing.assert_array_equal(boxes.labels, [1, 3])
    assert list(boxes.video_ids) == ["v", "v"]


def test_group_maps():
    groups = ava.group_maps({1: 0.5, 3: 1.0, 20: 0.2, 64: 0.4, 70: math.nan})
    assert groups == {"pose": 0.75, "object": pytest.approx(0.2), "interaction": 0.4}
    mine = ava.group_maps({1: 0.5, 2: math.nan, 3: 1.0}, {"a": [1, 2], "b": [3, 4], "c": [5]})
    assert mine["a"] == 0.5 and mine["b"] == 1.0 and math.isnan(mine["c"])


def test_evaluate_averages_the_groups_it_is_given(tmp_path):
    """Another dataset's groups (the synthetic set's) replace AVA's in the result and report."""
    gt = write_file(tmp_path, "gt.csv", "v,0902,0.1,0.1,0.5,0.5,1\nv,0902,0.1,0.1,0.5,0.5,3\n")
    det = write_file(tmp_path, "det.csv", "v,0902,0.1,0.1,0.5,0.5,1,0.9\n")
    result = ava.evaluate(gt, det, NAMES, groups={"motion": [1, 2], "sound": [3]})
    assert result["groups"] == {"motion": 1.0, "sound": 0.0}
    report = ava.format_report(result, NAMES)
    assert "group mAP  motion" in report and "person pose" not in report
    assert set(ava.evaluate(gt, det, NAMES)["groups"]) == {"pose", "object", "interaction"}
    from configs import synthetic, ucf24
    from jovale_jax.datasets import class_groups

    config = synthetic.get_config("test")
    assert class_groups(config) == {"motion": [1, 2], "sound": [3, 4], "scene": [5, 6]}
    config.dataset = "ava"
    assert class_groups(config)["pose"] == list(range(1, 15))
    assert class_groups(ucf24.get_config()) == {}
    config.data.layout = "ava"  # your own set in the AVA layout: its groups, not AVA's
    assert class_groups(config) == {}
    config.data.class_groups = (("ball", (1, 2)), ("people", (5,)))
    assert class_groups(config) == {"ball": [1, 2], "people": [5]}


def random_case(rng, num_frames: int = 40) -> tuple[str, str, list[tuple[str, int]]]:
    """Random ground truth and detections as CSV text, with distinct scores, plus exclusions."""
    frames = [(f"vid{i % 3}", 902 + i) for i in range(num_frames)]
    truth, det = [], []
    for video, t in frames:
        for _ in range(rng.integers(0, 4)):
            corner = rng.uniform(0, 0.6, 2)
            box = np.r_[corner, corner + rng.uniform(0.2, 0.4, 2)]
            for label in rng.choice([1, 2, 3, 4], rng.integers(1, 3), replace=False):
                truth.append((video, t, box, label))
            for _ in range(rng.integers(0, 3)):  # detections near this person
                near = box + rng.normal(0, 0.05, 4)
                det += [(video, t, near, label) for label in rng.choice([1, 2, 3, 4, 5], 3)]
        for _ in range(rng.integers(0, 3)):  # stray detections, some with invalid boxes
            det.append((video, t, rng.uniform(0, 1, 4), rng.choice([1, 2, 3])))
    det += [("unknown", 902, rng.uniform(0, 1, 4), 1)]
    scores = ((rng.permutation(len(det)) + rng.uniform(0.05, 0.95, len(det))) / len(det)).tolist()
    order = rng.permutation(len(det))
    truth_text = "".join(f"{v},{t},{','.join(map(repr, b.tolist()))},{a}\n" for v, t, b, a in truth)
    det_text = "".join(
        f"{det[i][0]},{det[i][1]},{','.join(map(repr, det[i][2].tolist()))},"
        f"{det[i][3]},{scores[i]!r}\n"
        for i in order
    )
    excluded = [frames[i] for i in rng.choice(num_frames, 3, replace=False)]
    return truth_text, det_text, excluded


@pytest.mark.parametrize("seed", range(4))
def test_fast_equals_loop_baseline_on_random_input(tmp_path, seed):
    truth_text, det_text, excluded = random_case(np.random.default_rng(seed))
    labelmap = write_file(tmp_path, "labelmap.pbtxt", LABELMAP)
    truth = write_file(tmp_path, "gt.csv", truth_text)
    det = write_file(tmp_path, "det.csv", det_text)
    exclusions = write_file(tmp_path, "excluded.csv", "".join(f"{v},{t}\n" for v, t in excluded))
    for cap in (0, 4, 50):
        with pytest.warns(UserWarning, match="absent from the ground truth"):
            fast = ava.evaluate(truth, det, labelmap, exclusions, cap)
        loop = reference.reference_evaluate(labelmap, truth, det, exclusions, cap)
        assert fast["mAP"] == pytest.approx(loop["mAP"], abs=1e-6)
        for c in NAMES:
            assert fast["per_class"][c] == pytest.approx(
                loop["per_class"][c], abs=1e-6, nan_ok=True
            )
        assert 0 < fast["mAP"] < 1


@pytest.mark.parametrize("cap", [0, 7, 50])
def test_dense_input_equals_its_rows(cap):
    gt, dense = bench.make_ava_like(40, boxes_per_frame=4, num_videos=3, seed=1)
    as_rows = bench.dense_to_rows(dense, boxes_per_frame=4)
    names = {c: str(c) for c in bench.AVA_60_IDS}
    # The quantised scores tie often: the tie rules must agree too.
    np.testing.assert_equal(  # exact, NaN equal to NaN
        ava.evaluate(gt, dense, names, max_dets_per_frame=cap),
        ava.evaluate(gt, as_rows, names, max_dets_per_frame=cap),
    )


def test_command_line_prints_json_last(tmp_path):
    labelmap = write_file(tmp_path, "labelmap.pbtxt", LABELMAP)
    truth = write_file(tmp_path, "gt.csv", csv_text(("v", 902, A, 1), ("v", 903, B, 1)))
    det = write_file(
        tmp_path,
        "det.csv",
        csv_text(("v", 902, A, 1, 0.9), ("v", 902, B, 1, 0.8), ("v", 903, B, 1, 0.7)),
    )
    command = [sys.executable, "-m", "jovale_jax.evaluation.ava", "--labelmap", labelmap]
    command += ["--groundtruth", truth, "--detections", det, "--groups", "ava"]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["mAP"] == pytest.approx(5 / 6)
    assert summary["per_class"] == {"1": pytest.approx(5 / 6), "2": None, "3": None, "5": None}
    assert "bend/bow" in out and "person pose / movement" in out
    bad = write_file(tmp_path, "bad.csv", "v,0902,0.1,0.2,0.3,x,1,0.5\n")
    command[command.index(det)] = bad
    failed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    assert failed.returncode == 2 and f"{bad}:1: y2 is not a number: 'x'" in failed.stderr


def test_command_line_groups_only_for_an_ava_label_map(tmp_path, capsys):
    """AVA's group mAPs are printed for a label map of AVA's ids, not for another (ids 1-6 of
    the synthetic set), unless asked with --groups ava."""
    truth = write_file(tmp_path, "gt.csv", csv_text(("v", 902, A, 1), ("v", 903, A, 3)))
    det = write_file(tmp_path, "det.csv", csv_text(("v", 902, A, 1, 0.9), ("v", 903, A, 3, 0.7)))
    items = "".join(f'item {{\n  name: "c{c}"\n  id: {c}\n}}\n' for c in range(1, 7))
    other = write_file(tmp_path, "synthetic.pbtxt", items)
    ava_ids = write_file(tmp_path, "ava.pbtxt", items.replace("id: 2\n", "id: 7\n"))
    printed = {}
    for name, labelmap, extra in (
        ("other", other, []),
        ("other, asked", other, ["--groups", "ava"]),
        ("ava ids", ava_ids, []),
    ):
        argv = ["--labelmap", labelmap, "--groundtruth", truth, "--detections", det, *extra]
        assert ava.main(argv) == 0
        printed[name] = capsys.readouterr().out
    assert "group mAP" not in printed["other"] and '"mAP": 1.0' in printed["other"]
    assert "group mAP  person pose / movement" in printed["other, asked"]
    assert "group mAP  person pose / movement" in printed["ava ids"]


def test_does_not_import_jax_or_tensorflow():
    code = (
        "import sys, jovale_jax.evaluation.ava, jovale_jax.evaluation.frame_map, "
        "jovale_jax.bench.eval; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('jax', 'jaxlib', 'flax', 'tensorflow')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def loop_rows(preds, class_ids, min_score=0.0):
    """The writer as it was: a Python loop over boxes x classes (the reference)."""
    for vid, ts, box, scores in zip(
        preds["video_ids"], preds["timestamps"], preds["boxes"], preds["scores"], strict=True
    ):
        for cid, sc in zip(class_ids, scores, strict=True):
            if sc >= min_score:
                yield [
                    vid,
                    f"{float(ts):.3f}".rstrip("0").rstrip("."),
                    *(f"{v:.4f}" for v in box),
                    str(int(cid)),
                    f"{sc:.6f}",
                ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bulk_detections_csv_equals_the_loop(tmp_path, dtype):
    from jovale_jax.evaluation.detections_csv import CHUNK_BOXES, write_detections_csv

    rng = np.random.default_rng(0)
    n, ids = CHUNK_BOXES + 37, [1, 2, 9, 10, 64, 80, 12]  # two chunks; ids of 1 and 2 digits
    preds = {
        "video_ids": np.array([f"vid{i % 13}" + "x" * (i % 3) for i in range(n)]),
        "timestamps": np.where(np.arange(n) % 5, rng.integers(902, 1799, n), 2.25),
        "boxes": rng.uniform(-0.1, 1.1, (n, 4)).astype(np.float32),
        "scores": rng.uniform(0, 1, (n, len(ids))).astype(dtype),
    }
    # exact ties of the 6th decimal (1/128 = 0.0078125), the ends, values that round up to 1
    preds["scores"][0] = [0, 1, 1 / 128, 0.5, 0.9999996, 1e-7, 3 / 128]
    for min_score in (0.0, 0.4):
        path = str(tmp_path / "det.csv")
        count = write_detections_csv(path, preds, ids, min_score)
        want = list(loop_rows(preds, ids, min_score))
        with open(path, newline="") as f:
            got = list(csv.reader(f))
        assert count == len(want) == len(got) and got == want
