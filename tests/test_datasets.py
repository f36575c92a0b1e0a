"""jovale_jax/datasets: the builders on tiny raw data made here (videos written with PyAV, CSVs,
pickles, frame folders), every field read back, each bad input of issue 4, and interrupted builds.

Videos are 32 x 24 grey frames at 8 fps, frame n at grey level 8 + 5 n (lossless FFV1), with a
440 Hz tone as 16 kHz PCM, so that the frames and the waveform of a keyframe are known exactly. The
clip geometry is the synthetic `test` config's: 4 frames 2 apart (times t - 0.5, t - 0.25, t,
t + 0.25 at 8 fps), scene frames at t - 0.25 and t + 0.25, K = 4.
"""

import functools
import io
import os
import pickle
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import jhmdb21 as jhmdb_preset
from configs import synthetic as synthetic_preset
from configs import ucf24 as ucf_preset
from jovale_jax import assignment, datasets
from jovale_jax.datasets import common, synthetic, video
from jovale_jax.evaluation.ava import read_labelmap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FPS, HEIGHT, WIDTH, RATE = 8, 24, 32, 16000
LABEL_IDS = {1: "alpha", 4: "beta", 7: "gamma"}  # AVA-style ids, not contiguous


def level(n: int) -> int:
    """The grey level of frame n."""
    return 8 + 5 * n


def tone(num_samples: int) -> np.ndarray:
    return (8000 * np.sin(2 * np.pi * 440 * np.arange(num_samples) / RATE)).astype(np.int16)


def write_video(path: str, seconds: float, *, audio: bool = True) -> None:
    with av.open(path, "w") as container:
        stream = container.add_stream("ffv1", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "bgr0"
        sound = container.add_stream("pcm_s16le", rate=RATE, layout="mono") if audio else None
        for n in range(int(seconds * FPS)):
            image = np.full((HEIGHT, WIDTH, 3), level(n), np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
        if sound is not None:
            samples = tone(int(seconds * RATE))
            for start in range(0, len(samples), 1024):
                frame = av.AudioFrame.from_ndarray(
                    samples[None, start : start + 1024], format="s16", layout="mono"
                )
                frame.sample_rate, frame.pts = RATE, start
                container.mux(sound.encode(frame))
            container.mux(sound.encode())


def write_lines(path: str, lines: list[str]) -> str:
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def ava_config(num_classes: int = 3):
    config = synthetic_preset.get_config("test")
    config.dataset = "ava"
    config.model.num_classes = num_classes
    return config


def read_all(config, split: str, data_dir: str) -> dict[tuple[str, int], dict]:
    ds, n = datasets.load_split(config, split, data_dir)
    examples = {(ex["video_id"].decode(), int(ex["timestamp"])): ex for ex in tfds.as_numpy(ds)}
    assert len(examples) == n
    return examples


def assert_levels(frames: np.ndarray, frame_numbers: list[int], size=(HEIGHT, WIDTH)) -> None:
    assert frames.shape == (len(frame_numbers), *size, 3)
    np.testing.assert_allclose(
        frames.reshape(len(frames), -1).mean(1), [level(n) for n in frame_numbers], atol=2
    )


# ----------------------------------------------------------------------------- AVA layout

AVA_ROWS = [
    "vidA,0902,0.1,0.2,0.4,0.9,1,0",
    "vidA,0902,0.1,0.2,0.4,0.9,7,0",  # the same actor, a second action
    "vidA,0902,0.5,0.1,1.2,0.8,4,1",  # x2 > 1: clipped
    "vidA,0902,0.5,0.1,0.7,0.8,2,2",  # action 2 is not in the label map: dropped
    "vidA,0903,0.2,0.2,0.5,0.9,4,0",  # an excluded timestamp: dropped
    "vidA,0904,0.2,0.2,0.5,0.9,4,0",
    "vidA,1800,0.2,0.2,0.5,0.9,4,0",  # outside 902-1798: dropped
    "vidB,0902,0.3,0.3,0.6,0.9,1,0",
    "vidB,0902,0.7,0.3,0.9,0.9,4",  # no person_id column
    "vidB,0903,0.3,0.3,0.6,0.9,1,0",  # no proposals, window past the video's end
    "vidC,0902,0.3,0.3,0.6,0.9,1,0",
    "vidC,0905,0.3,0.3,0.6,0.9,1,0",  # past the end of the truncated file
    "vidD,0902,0.3,0.3,0.6,0.9,1,0",  # a corrupt file
    "vidE,0902,0.3,0.3,0.6,0.9,1,0",  # no file at all
]
VIDA_902_PROPOSALS = np.array(
    [
        [0.5, 0.1, 0.95, 0.8, 0.70],
        [0.0, 0.0, 0.1, 0.1, 0.05],
        [0.11, -0.1, 0.41, 0.9, 0.95],  # y1 < 0: clipped
        [0.6, 0.6, 0.7, 0.7, 0.20],
        [0.3, 0.3, 0.5, 0.5, 0.10],  # 5th by score: not among the top K = 4
        [0.2, 0.2, 0.3, 0.3, 0.30],
    ],
    np.float32,
)


@pytest.fixture(scope="module")
def ava_raw(tmp_path_factory) -> str:
    raw = tmp_path_factory.mktemp("ava_raw")
    videos = raw / "videos"
    videos.mkdir()
    common.write_label_map(str(raw / "ava_action_list_v2.2_for_activitynet_2019.pbtxt"), LABEL_IDS)
    write_lines(str(raw / "ava_train_v2.2.csv"), AVA_ROWS)
    write_lines(str(raw / "ava_train_excluded_timestamps_v2.2.csv"), ["vidA,0903"])
    write_video(str(videos / "vidA.mkv"), 5)
    write_video(str(videos / "vidB.mkv"), 3, audio=False)
    write_video(str(videos / "vidC.mkv"), 6)
    data = (videos / "vidC.mkv").read_bytes()
    (videos / "vidC.mkv").write_bytes(data[: int(len(data) * 0.6)])
    (videos / "vidD.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    proposals = {
        "vidA,0902": VIDA_902_PROPOSALS,
        "vidA,0904": np.array([[0.2, 0.2, 0.5, 0.9, 0.9]], np.float32),
        "vidB,0902": np.array([[0.3, 0.3, 0.6, 0.9, 0.8]], np.float32),
        "vidC,0902": np.array([[0.3, 0.3, 0.6, 0.9, 0.8]], np.float32),
    }
    with open(raw / "proposals_train.pkl", "wb") as f:
        pickle.dump(proposals, f, protocol=2)
    return str(raw)


@pytest.fixture(scope="module")
def ava_build(ava_raw, tmp_path_factory) -> tuple[dict, str]:
    data_dir = str(tmp_path_factory.mktemp("ava_data"))
    summary = datasets.build_dataset(
        "ava", config=ava_config(), raw_dir=ava_raw, data_dir=data_dir, split="train"
    )
    return summary, data_dir


def test_ava_summary_counts_every_loss(ava_build):
    summary, _ = ava_build
    assert summary["examples"] == {"train": 5}  # vidA 902, 904; vidB 902, 903; vidC 902
    assert sorted(summary["skipped_video_ids"]) == ["vidD", "vidE"]
    assert summary["truncated_video_ids"] == ["vidC"]
    assert summary["videos_skipped"] == 2 and summary["videos_truncated"] == 1
    assert summary["keyframes_lost"] == 3
    assert summary["rows_dropped"] == {
        "action_not_in_label_map": 1,
        "excluded_timestamp": 1,
        "timestamp_outside_902_1798": 1,
    }
    assert summary["boxes_clipped"] == {"gt": 1, "proposals": 1}
    assert not summary["reused"]


def test_ava_fields_round_trip(ava_build):
    config = ava_config()
    examples = read_all(config, "train", ava_build[1])
    assert sorted(examples) == [
        ("vidA", 902),
        ("vidA", 904),
        ("vidB", 902),
        ("vidB", 903),
        ("vidC", 902),
    ]
    ex = examples["vidA", 902]
    assert_levels(ex["frames"], [12, 14, 16, 18])  # 1.5, 1.75, 2.0, 2.25 s
    assert_levels(ex["scene_frames"], [14, 18], size=(32, 32))  # BLIP's S x S (test config)
    assert ex["has_audio"]
    np.testing.assert_array_equal(ex["waveform"], tone(5 * RATE)[int(1.5 * RATE) : int(2.5 * RATE)])
    np.testing.assert_allclose(ex["gt_boxes"], [[0.1, 0.2, 0.4, 0.9], [0.5, 0.1, 1.0, 0.8]])
    np.testing.assert_array_equal(ex["gt_labels"], [[1, 0, 1], [0, 1, 0]])
    top = VIDA_902_PROPOSALS[[2, 0, 5, 3]]  # by score, the first K
    np.testing.assert_allclose(ex["proposal_scores"], top[:, 4])
    np.testing.assert_allclose(ex["proposals"], np.clip(top[:, :4], 0, 1))
    np.testing.assert_array_equal(
        ex["targets"],
        assignment.assign_targets(
            ex["proposals"],
            ex["proposal_scores"],
            ex["gt_boxes"],
            ex["gt_labels"],
            **assignment.assignment_kwargs(config),
        ),
    )
    np.testing.assert_array_equal(ex["targets"][:2], [[1, 0, 1], [0, 1, 0]])
    assert "proposal_features" not in ex  # F = 0


def test_ava_video_without_audio_and_window_past_the_end(ava_build):
    examples = read_all(ava_config(), "train", ava_build[1])
    ex = examples["vidB", 903]  # the last frame of vidB is 23 (2.875 s)
    assert_levels(ex["frames"], [20, 22, 23, 23])
    assert not ex["has_audio"] and ex["waveform"].shape == (0,)
    assert ex["proposals"].shape == (0, 4) and ex["targets"].shape == (0, 3)  # kept, no proposals
    np.testing.assert_array_equal(examples["vidB", 902]["gt_labels"], [[1, 0, 0], [0, 1, 0]])


def test_ava_eval_folder(ava_build):
    folder = datasets.eval_dir(ava_config(), ava_build[1])
    assert read_labelmap(os.path.join(folder, "label_map.pbtxt")) == LABEL_IDS
    with open(os.path.join(folder, "train_groundtruth.csv")) as f:
        rows = [line.split(",") for line in f.read().splitlines()]
    assert len(rows) == 11  # 14 rows - 3 dropped
    assert ["vidA", "0902", "0.500000", "0.100000", "1.000000", "0.800000", "4", "1"] in rows
    assert ["vidB", "0902", "0.700000", "0.300000", "0.900000", "0.900000", "4", "-1"] in rows
    with open(os.path.join(folder, "train_excluded_timestamps.csv")) as f:
        assert f.read() == "vidA,0903\n"


def test_only_the_requested_split_is_built(ava_build):
    with pytest.raises(ValueError, match="not 'val'"):
        datasets.load_split(ava_config(), "val", ava_build[1])


def test_a_built_dataset_is_reused(ava_raw, ava_build):
    summary = datasets.build_dataset(
        "ava", config=ava_config(), raw_dir=ava_raw, data_dir=ava_build[1], split="train"
    )
    assert summary["reused"] and summary["examples"] == {"train": 5}


def test_strict_build_fails_and_leaves_no_dataset(ava_raw, tmp_path):
    with pytest.raises(common.BadInputError, match="vid[CDE]"):
        datasets.build_dataset(
            "ava",
            config=ava_config(),
            raw_dir=ava_raw,
            data_dir=str(tmp_path),
            split="train",
            strict=True,
        )
    with pytest.raises(FileNotFoundError, match="no complete ava dataset"):
        datasets.get_builder(ava_config(), str(tmp_path))


def test_bad_csv_value_names_file_and_line(tmp_path):
    (tmp_path / "videos").mkdir()
    common.write_label_map(
        str(tmp_path / "ava_action_list_v2.2_for_activitynet_2019.pbtxt"), LABEL_IDS
    )
    path = write_lines(
        str(tmp_path / "ava_train_v2.2.csv"), [AVA_ROWS[0], "vidA,09x2,0.1,0.2,0.4,0.9,1,0"]
    )
    with pytest.raises(common.BadInputError, match=f"{path}:2: cannot parse timestamp '09x2'"):
        datasets.build_dataset(
            "ava",
            config=ava_config(),
            raw_dir=str(tmp_path),
            data_dir=str(tmp_path / "out"),
            split="train",
        )
    write_lines(path, ["vidA,0902,0.1,0.2,0.4"])
    with pytest.raises(common.BadInputError, match=f"{path}:1: expected 7 to 8 columns, got 5"):
        datasets.build_dataset(
            "ava",
            config=ava_config(),
            raw_dir=str(tmp_path),
            data_dir=str(tmp_path / "out"),
            split="train",
        )


def test_label_map_must_match_the_config(ava_raw, tmp_path):
    with pytest.raises(common.BadInputError, match="lists 3 classes but .* is 60"):
        datasets.build_dataset(
            "ava", config=ava_config(60), raw_dir=ava_raw, data_dir=str(tmp_path), split="train"
        )


def test_read_clips_start_edge_and_nearest_frames(ava_raw):
    spec = common.clip_config(ava_config())
    with video.open_video(os.path.join(ava_raw, "videos", "vidA.mkv")) as container:
        clips = dict(video.read_clips(container, [1.03, 0.0], spec, "vidA"))

    def decode(jpegs: list[bytes]) -> np.ndarray:
        return np.stack([np.asarray(Image.open(io.BytesIO(jpeg))) for jpeg in jpegs])

    assert_levels(decode(clips[1].frames), [0, 0, 0, 2])  # -0.5 and -0.25 s take frame 0
    assert_levels(decode(clips[0].frames), [4, 6, 8, 10])  # 0.53 s is nearest to frame 4
    np.testing.assert_array_equal(clips[1].waveform[:8000], 0)  # before the track: silence
    np.testing.assert_array_equal(clips[1].waveform[8000:], tone(8000))


def test_read_proposals_csv_and_bad_pickle(tmp_path):
    path = write_lines(
        str(tmp_path / "boxes.csv"),
        ["vidA,0902,0.1,0.2,0.3,0.4,,0.9", "vidA,0902,0.2,0.2,0.3,0.4,,0.5"],
    )
    proposals = common.read_proposals(path, feature_dim=0)
    np.testing.assert_allclose(
        proposals["vidA", 902], [[0.1, 0.2, 0.3, 0.4, 0.9], [0.2, 0.2, 0.3, 0.4, 0.5]]
    )
    with open(tmp_path / "bad.pkl", "wb") as f:
        pickle.dump({"vidA,0902": np.zeros((2, 4))}, f)
    with pytest.raises(common.BadInputError, match="rows of 5 values"):
        common.read_proposals(str(tmp_path / "bad.pkl"), feature_dim=0)


# ----------------------------------------------------------------------------- UCF / JHMDB layout

FRAME_VIDEOS = {"ClassA/v1": 10, "ClassB/v2": 6}  # frames on disk


@pytest.fixture(scope="module")
def frames_raw(tmp_path_factory) -> str:
    raw = tmp_path_factory.mktemp("ucf_raw")
    for name, count in FRAME_VIDEOS.items():
        folder = raw / "rgb-images" / name
        folder.mkdir(parents=True)
        for n in range(1, count + 1):
            Image.fromarray(np.full((HEIGHT, WIDTH, 3), level(n), np.uint8)).save(
                folder / f"{n:05d}.jpg", quality=90
            )
    tube_a = np.array([[f, 4, 2, 20, 22] for f in range(3, 9)], np.float32)  # pixels
    tube_b = np.array([[f, 8, 4, 36, 20] for f in range(2, 5)], np.float32)  # x2 > width
    annotations = {
        "labels": ["ClassA", "ClassB"],
        "gttubes": {
            "ClassA/v1": {0: [tube_a]},
            "ClassB/v2": {1: [tube_b]},
            "ClassA/v3": {0: [tube_a[:2]]},
        },
        "nframes": {"ClassA/v1": 10, "ClassB/v2": 6, "ClassA/v3": 5},
        "resolution": {name: (HEIGHT, WIDTH) for name in ("ClassA/v1", "ClassB/v2", "ClassA/v3")},
    }
    ucf = dict(annotations, train_videos=[["ClassA/v1", "ClassA/v3"]], test_videos=[["ClassB/v2"]])
    jhmdb = dict(
        annotations,
        train_videos=[["ClassB/v2"], ["ClassA/v1"], []],
        test_videos=[["ClassA/v1"], ["ClassB/v2"], []],
    )
    for name, content in (("UCF101v2-GT.pkl", ucf), ("JHMDB-GT.pkl", jhmdb)):
        with open(raw / name, "wb") as f:
            pickle.dump(content, f, protocol=2)
    features = np.arange(6, dtype=np.float32).reshape(2, 3)
    proposals = {
        "ClassA/v1,00003": np.concatenate(
            [[[0.1, 0.1, 0.6, 0.9, 0.9], [0.5, 0.5, 0.6, 0.6, 0.2]], features], axis=1
        )
    }
    with open(raw / "proposals.pkl", "wb") as f:
        pickle.dump(proposals, f, protocol=2)
    return str(raw)


def frames_config(preset, **data):
    config = preset.get_config()
    config.model.num_classes = 2
    config.model.video.num_frames = 4
    config.model.scene.num_frames = 2
    config.model.num_proposals = 4
    config.model.actor.detector_feature_dim = 3
    config.model.query_source = "detector"  # features from the proposals pickle (no detector)
    config.data.frame_stride = 2
    config.data.update(data)
    return config


def test_ucf_layout_builds(frames_raw, tmp_path):
    config = frames_config(ucf_preset)
    summary = datasets.build_dataset(
        "ucf24", config=config, raw_dir=frames_raw, data_dir=str(tmp_path)
    )
    assert summary["examples"] == {"train": 6, "test": 6}
    assert summary["skipped_video_ids"] == ["ClassA/v3"]  # no frame folder
    assert summary["keyframes_lost"] == 2
    assert summary["boxes_clipped"] == {"gt": 3, "proposals": 0}  # tube_b's box in 3 frames
    train = read_all(config, "train", str(tmp_path))
    assert sorted(train) == [("ClassA/v1", f) for f in range(3, 9)]  # the frames of the tube
    ex = train["ClassA/v1", 3]
    assert_levels(ex["frames"], [1, 1, 3, 5])  # frame 3 + (-4, -2, 0, 2), clamped to 1
    assert_levels(ex["scene_frames"], [1, 5])
    with open(os.path.join(frames_raw, "rgb-images", "ClassA", "v1", "00005.jpg"), "rb") as f:
        np.testing.assert_allclose(ex["frames"][3], np.asarray(Image.open(f)), atol=1)
    np.testing.assert_allclose(ex["gt_boxes"], [[4 / 32, 2 / 24, 20 / 32, 22 / 24]])
    np.testing.assert_array_equal(ex["gt_labels"], [[1, 0]])
    np.testing.assert_array_equal(ex["proposal_features"], np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(ex["targets"], [[1, 0], [0, 0]])
    assert not ex["has_audio"] and ex["waveform"].shape == (0,)
    assert_levels(train["ClassA/v1", 8]["frames"], [4, 6, 8, 10])

    test = read_all(config, "test", str(tmp_path))
    assert sorted(test) == [("ClassB/v2", f) for f in range(1, 7)]  # every frame
    assert test["ClassB/v2", 1]["gt_boxes"].shape == (0, 4)
    np.testing.assert_allclose(test["ClassB/v2", 2]["gt_boxes"], [[0.25, 4 / 24, 1.0, 20 / 24]])
    assert_levels(test["ClassB/v2", 6]["frames"], [2, 4, 6, 6])  # clamped to the last frame
    folder = datasets.eval_dir(config, str(tmp_path))
    assert read_labelmap(os.path.join(folder, "label_map.pbtxt")) == {1: "ClassA", 2: "ClassB"}
    with open(os.path.join(folder, "test_groundtruth.csv")) as f:
        assert f.read().splitlines()[0] == "ClassB/v2,0002,0.250000,0.166667,1.000000,0.833333,2,0"


def test_jhmdb_split_index_selects_the_split(frames_raw, tmp_path):
    config = frames_config(jhmdb_preset, split_index=2)
    summary = datasets.build_dataset(
        "jhmdb21", config=config, raw_dir=frames_raw, data_dir=str(tmp_path)
    )
    assert summary["examples"] == {"train": 6, "test": 6}
    assert datasets.get_builder(config, str(tmp_path)).builder_config.name.startswith("split2_")
    assert {vid for vid, _ in read_all(config, "test", str(tmp_path))} == {"ClassB/v2"}
    config.data.split_index = 1  # another split: another folder, not built
    with pytest.raises(FileNotFoundError):
        datasets.get_builder(config, str(tmp_path))


# ----------------------------------------------------------------------------- synthetic


@pytest.fixture(scope="module")
def synthetic_raw(tmp_path_factory) -> str:
    raw = str(tmp_path_factory.mktemp("synthetic_raw"))
    synthetic.generate_raw(raw, num_train_videos=4, num_val_videos=1)
    return raw


def test_synthetic_generation_is_deterministic(synthetic_raw, tmp_path):
    synthetic.generate_raw(str(tmp_path), num_train_videos=4, num_val_videos=1)
    for name in (
        "ava_train_v2.2.csv",
        "ava_val_v2.2.csv",
        "ava_dense_proposals_train.FAIR.recall_93.9.pkl",
    ):
        with open(os.path.join(synthetic_raw, name), "rb") as a, open(tmp_path / name, "rb") as b:
            assert a.read() == b.read(), name


def test_synthetic_builds_with_every_class_group(tmp_path, monkeypatch):
    monkeypatch.setattr(
        synthetic,
        "generate_raw",
        functools.partial(synthetic.generate_raw, num_train_videos=4, num_val_videos=1),
    )
    config = synthetic_preset.get_config("test")
    summary = datasets.build_dataset(
        "synthetic", config=config, raw_dir=None, data_dir=str(tmp_path)
    )
    assert os.path.isdir(tmp_path / "raw" / "videos")  # generated there
    assert summary["examples"]["train"] > 30 and summary["examples"]["val"] > 5
    assert summary["videos_skipped"] == summary["videos_truncated"] == 0
    train = read_all(config, "train", str(tmp_path))
    positives = sum(ex["gt_labels"].sum(0) for ex in train.values())
    for group, ids in synthetic.CLASS_GROUPS.items():
        assert all(positives[i - 1] > 0 for i in ids), (group, positives)
    ex = next(iter(train.values()))
    assert ex["frames"].shape == (4, 24, 32, 3)  # 128 x 96 stored at the short side 24
    assert ex["scene_frames"].shape == (2, 32, 32, 3)  # BLIP's S x S
    assert ex["has_audio"] and ex["waveform"].shape == (RATE,)  # the 1 s window
    assert sorted(i for ids in synthetic.CLASS_GROUPS.values() for i in ids) == list(
        synthetic.CLASSES
    )


def test_synthetic_scene_cues_need_the_full_size_keyframe(tmp_path):
    """The 1 px tiles and ball stripes survive H.264 at full size (the scene stream's keyframe)
    and average away at half size (the video stream's 64 x 48 clip, the builder's scaler)."""
    raw = {
        (tiled, ball): synthetic._background(np.random.default_rng(5), tiled=tiled, ball=ball)[0]
        for tiled in (False, True)
        for ball in (False, True)
    }  # one seed: the same wall colour and disc in all four
    images = [np.clip(image, 0, 255).astype(np.uint8) for image in raw.values()]
    path = str(tmp_path / "walls.mp4")
    synthetic.write_mp4(path, images, np.zeros(synthetic.SAMPLE_RATE, np.int16), synthetic.FPS)
    with av.open(path) as container:
        decoded = list(container.decode(video=0))
    scaler = av.video.reformatter.VideoReformatter()
    full = {k: f.to_ndarray(format="rgb24").mean(-1) for k, f in zip(raw, decoded)}
    half = {
        k: scaler.reformat(f, format="rgb24", width=64, height=48).to_ndarray().mean(-1)
        for k, f in zip(raw, decoded)
    }

    def columns(image):  # brightness difference between neighbouring columns
        return np.abs(image[:, 0::2] - image[:, 1::2]).mean()

    assert columns(full[True, False]) > 30 and columns(full[False, False]) < 12
    assert abs(columns(half[True, False]) - columns(half[False, False])) < 2
    disc = np.abs(raw[False, True] - raw[False, False]).max(-1) > 0
    assert 30 < disc.sum() < 200  # the disc: the ball and the decoy at the same place
    rows, cols = np.nonzero(disc)
    box = np.s_[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert columns(full[False, True][box]) > 30 and columns(full[False, False][box]) < 12
    inner = np.s_[rows.min() // 2 + 1 : rows.max() // 2, cols.min() // 2 + 1 : cols.max() // 2]
    assert np.abs(half[False, True][inner] - half[False, False][inner]).mean() < 4


_HANG_AT_FIRST_EXAMPLE = """
import sys, time
from jovale_jax.datasets import common
def hang(*args, **kwargs):
    open(sys.argv[3], "w").close()
    time.sleep(600)
common.make_example = hang
from configs import synthetic
from jovale_jax import datasets
datasets.build_dataset("synthetic", config=synthetic.get_config("test"), raw_dir=sys.argv[1],
                       data_dir=sys.argv[2])
"""


def test_killed_build_is_not_taken_for_complete(synthetic_raw, tmp_path):
    config = synthetic_preset.get_config("test")
    data_dir, marker = str(tmp_path / "data"), str(tmp_path / "started")
    env = dict(os.environ, PYTHONPATH=REPO)
    process = subprocess.Popen(
        [sys.executable, "-c", _HANG_AT_FIRST_EXAMPLE, synthetic_raw, data_dir, marker],
        cwd=REPO,
        env=env,
    )
    try:
        deadline = time.time() + 120
        while not os.path.exists(marker):
            assert process.poll() is None and time.time() < deadline, "the build did not start"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    builder_dir = os.path.join(data_dir, "jovale_synthetic", common.clip_config(config).name)
    assert [name for name in os.listdir(builder_dir) if name.startswith("incomplete.")]
    with pytest.raises(FileNotFoundError, match="no complete synthetic dataset"):
        datasets.load_split(config, "train", data_dir)

    summary = datasets.build_dataset(
        "synthetic", config=config, raw_dir=synthetic_raw, data_dir=data_dir
    )
    assert os.listdir(builder_dir) == ["1.0.0"]  # the leftover is gone
    assert datasets.load_split(config, "train", data_dir)[1] == summary["examples"]["train"]


@pytest.mark.parametrize("dataset", ["ucf24", "ava"])
def test_a_missing_or_empty_raw_dir_is_a_one_line_error(dataset, tmp_path):
    config = {"ucf24": ucf_preset, "ava": None}[dataset]
    config = config.get_config() if config else synthetic_preset.get_config()
    config.dataset = dataset
    empty = tmp_path / "empty"
    empty.mkdir()
    for raw, says in ((tmp_path / "missing", "no such folder"), (empty, "is empty")):
        with pytest.raises(FileNotFoundError) as info:
            datasets.build_dataset(
                dataset, config=config, raw_dir=str(raw), data_dir=str(tmp_path / "out")
            )
        message = str(info.value)
        assert str(raw) in message and says in message and "\n" not in message
        assert datasets.BUILDERS[dataset].RAW_FILES in message  # the files expected there


def test_build_data_from_the_command_line_picks_the_preset_and_checks_raw_dir(tmp_path):
    """`build-data --dataset ucf24` without --config: the ucf24 preset, and a missing raw folder
    is one line on stderr."""
    missing = tmp_path / "no_such_raw"
    out = subprocess.run(
        [
            sys.executable,
            "launch.py",
            "build-data",
            "--dataset",
            "ucf24",
            "--raw_dir",
            str(missing),
            "--data_dir",
            str(tmp_path / "data"),
        ],
        cwd=os.path.dirname(os.path.dirname(__file__)),
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    want = (
        f"error: raw_dir {missing}: no such folder; ucf24 expects "
        f"{datasets.BUILDERS['ucf24'].RAW_FILES} there (data/ucf24/README.md)"
    )
    assert errors == [want]


def test_synthetic_generates_its_raw_set_in_a_given_raw_dir(tmp_path, monkeypatch):
    calls = []

    def generate(raw_dir, **kwargs):
        calls.append(raw_dir)
        raise KeyboardInterrupt  # stop here: the build itself is tested above

    monkeypatch.setattr(synthetic, "generate_raw", generate)
    with pytest.raises(KeyboardInterrupt):
        datasets.build_dataset(
            "synthetic",
            config=synthetic_preset.get_config("test"),
            raw_dir=str(tmp_path / "mine"),
            data_dir=str(tmp_path / "data"),
        )
    assert calls == [str(tmp_path / "mine")]


def test_the_builder_of_a_config_and_its_facts():
    """`config.dataset` picks a built-in builder, `config.data.layout` your own set's; their
    facts come from the builder class (evaluation protocol, fixed classes, preset)."""
    config = synthetic_preset.get_config("test")
    assert datasets.builder_class(config) is datasets.SyntheticBuilder
    assert datasets.label_map(config)[0] == synthetic.CLASSES  # no built data needed
    assert datasets.metric(config) == "ava" and datasets.metric(ucf_preset.get_config()) == (
        "frame_map"
    )
    config.data.layout = "kinetics"
    with pytest.raises(ValueError, match="unknown config.data.layout 'kinetics'; expected one"):
        datasets.builder_class(config)
    config.data.layout, config.dataset = "ava", "My Set"
    with pytest.raises(ValueError, match="config.dataset 'My Set': your own set's name"):
        datasets.builder_class(config)
    config.dataset = "my_set"
    assert datasets.builder_class(config) is datasets.AvaBuilder
    config.data.layout, config.dataset = "", "my_set"
    with pytest.raises(ValueError, match=r"unknown dataset 'my_set'.*config.data.layout"):
        datasets.builder_class(config)
    assert {name: b.PRESET for name, b in datasets.BUILDERS.items()} == {
        "synthetic": "synthetic",
        "ava": "ava_vitb16",
        "ucf24": "ucf24",
        "jhmdb21": "jhmdb21",
    }
