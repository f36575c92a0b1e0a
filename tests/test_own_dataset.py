"""Your own dataset in the AVA layout with no code: data/README.md's preset, as written, names its
raw folder, its label map and its groups; the set builds, trains, evaluates and detects.

The raw set is the real-video AVA fixture (`datasets/ava_fixture.py`: H.264 + AAC videos, moving
figures) made tiny (3 videos of 6 s at 64 x 48, 3 keyframes each) with 5 classes, laid out as a
user would: `my_actions.pbtxt`, `train.csv` / `val.csv` (videos 0-1 / 2), `proposals_train.csv` /
`proposals_val.csv`, `videos/`. The model is the synthetic `test` size.
"""

import csv
import json
import os
import pathlib
import pickle
import re

import jax
import numpy as np

from configs import synthetic
from jovale_jax import datasets
from jovale_jax.datasets import ava_fixture, common
from jovale_jax.detect import detect
from jovale_jax.evaluate import evaluate_checkpoint
from jovale_jax.train import train

CLASSES = {1: "dribble", 2: "shoot", 3: "hammer", 4: "saw", 5: "drill"}

DATASET_FIELDS = ("layout", "raw_dir", "label_map", "class_groups", "data_dir")


def readme_preset(raw: str, data: str):
    """The preset of data/README.md as written, with its folders here: (its config, the tiny
    test model's config with the preset's dataset fields)."""
    text = (pathlib.Path(__file__).parent.parent / "data" / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text.split("## Your own dataset")[1], re.DOTALL)[1]
    code = code.replace('"/data/my_set_tfds"', repr(data)).replace('"/data/my_set"', repr(raw))
    namespace: dict = {}
    exec(compile(code, "data/README.md", "exec"), namespace)  # noqa: S102 (the doc's preset)
    preset = namespace["get_config"]()
    config = synthetic.get_config("test")  # the model at test size
    config.dataset, config.model.num_classes = preset.dataset, preset.model.num_classes
    config.data.update({k: preset.data[k] for k in DATASET_FIELDS})
    return preset, config


def make_raw(raw: str) -> None:
    """The fixture rewritten into the custom layout (own file names, proposals as CSVs)."""
    ava_fixture.generate_raw(
        raw, num_videos=3, seconds=6, size=(48, 64), num_classes=5, label_map="my_actions.pbtxt"
    )
    common.write_label_map(os.path.join(raw, "my_actions.pbtxt"), CLASSES)
    split_of = {"fixture00": "train", "fixture01": "train", "fixture02": "val"}
    with open(os.path.join(raw, "ava_train_v2.2.csv")) as f:
        rows = list(csv.reader(f))
    proposals_file = os.path.join(raw, "ava_dense_proposals_train.FAIR.recall_93.9.pkl")
    with open(proposals_file, "rb") as f:
        proposals = pickle.load(f)
    for split in ("train", "val"):
        with open(os.path.join(raw, f"{split}.csv"), "w", newline="") as f:
            csv.writer(f).writerows(r for r in rows if split_of[r[0]] == split)
        with open(os.path.join(raw, f"proposals_{split}.csv"), "w") as f:
            for key, boxes in proposals.items():
                if split_of[key.split(",")[0]] == split:
                    f.writelines(f"{key},{x1},{y1},{x2},{y2},,{s}\n" for x1, y1, x2, y2, s in boxes)
    for name in ("ava_train_v2.2.csv", "ava_train_excluded_timestamps_v2.2.csv", proposals_file):
        os.remove(os.path.join(raw, name))


def test_own_ava_layout_set_builds_trains_evaluates_and_detects(tmp_path):
    raw, data, workdir = (str(tmp_path / name) for name in ("raw", "data", "run"))
    make_raw(raw)
    preset, config = readme_preset(raw, data)
    assert preset.data.raw_dir == raw and preset.model.num_classes == 5
    config.update(batch_size=2, eval_batch_size=2, num_train_steps=2, mesh_shape=(1, 1))
    config.update(log_every_steps=1, checkpoint_every_steps=2, eval_every_steps=0)
    devices = jax.devices()[:1]

    # build: no --raw_dir (the preset's), the folder named after the set
    summary = datasets.build_dataset("my_set", config=config, raw_dir=None, data_dir=data)
    assert summary["examples"] == {"train": 6, "val": 3} and summary["keyframes_lost"] == 0
    builder = datasets.get_builder(config)
    assert builder.builder_config.name.startswith("my_set_f4x2_")  # not AVA's folder
    assert datasets.label_map(config)[0] == CLASSES

    assert train(config, workdir, devices=devices)["step"] == 2

    # eval: the AVA protocol (the builder's metric), the preset's groups
    result = evaluate_checkpoint(config, workdir, devices=devices)
    with open(os.path.join(result["out_dir"], "results.json")) as f:
        written = json.load(f)
    assert set(written["per_class"]) == {"1", "2", "3", "4", "5"}
    assert set(written["groups"]) == {"sport", "tools"} and written["names"]["4"] == "saw"
    assert written["mAP_no_cap"] is not None and 0.0 <= written["mAP"] <= 1.0
    assert len(result["predictions"]["scores"]) == 9  # 3 val keyframes x 3 proposals

    # detect: the set's classes on one of its videos
    out = str(tmp_path / "detect")
    video = os.path.join(raw, "videos", "fixture02.mp4")
    manifest = detect(config, video=video, out_dir=out, checkpoint=workdir, devices=devices)
    assert manifest["keyframes"] == 6  # every second of the 6 s video
    with open(manifest["detections_csv"]) as f:
        ids = [int(row[6]) for row in csv.reader(f)]
    assert ids == list(CLASSES) * 6  # one whole-frame box per keyframe, the 5 classes
    scores = np.asarray(result["predictions"]["scores"])
    assert scores.shape == (9, 5) and np.isfinite(scores).all()
