"""`detect` (launch.py detect) on videos written here with PyAV, and the drawing of detections.

The model is the synthetic `test` config with random weights, saved as a checkpoint at the start;
one test loads it through `checkpoint=` (as the command line does), the others share the loaded
`ShardedModel` (`model_state=`) so that the forward pass compiles once. Videos: 97 x 61 at 12 fps
for 1 s with a 44.1 kHz stereo AAC track, the same frames without audio, 64 x 48 at 5 fps for 20 s
without audio (Matroska), 40 x 30 for 0.5 s (shorter than the model's 1 s window). The person
detector is a randomly initialised tiny DETR saved to a folder, biased towards its 'person' class.
"""

import csv
import fractions
import itertools
import json
import os

import av
import jax
import numpy as np
import pytest
import tensorflow as tf
from hf_tiny import tiny_detr
from PIL import Image

from configs import synthetic
from jovale_jax import input_pipeline, programs, state, visualize
from jovale_jax.checkpoint import Checkpointer
from jovale_jax.datasets import common
from jovale_jax.datasets import video as video_io
from jovale_jax.datasets.synthetic import CLASSES
from jovale_jax.detect import detect, driver, outputs, proposals
from jovale_jax.sharding import make_mesh

DEVICES = jax.devices()[:1]
CLASS_IDS = list(CLASSES)


def write_video(
    path: str,
    *,
    seconds: float,
    size: tuple[int, int],
    fps: int,
    audio: bool,
    container_format: str | None = None,
    start_frame: int = 0,
) -> str:
    """A bright bar sliding over a colour ramp (H.264 4:4:4, so odd sizes work), with a 440 Hz
    tone as 44.1 kHz stereo AAC when `audio`; the first frame's timestamp is `start_frame`."""
    width, height = size
    with av.open(path, "w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
        sound = container.add_stream("aac", rate=44100, layout="stereo") if audio else None
        for n in range(round(seconds * fps)):
            image = np.zeros((height, width, 3), np.uint8)
            image[..., 0] = np.linspace(0, 255, width).astype(np.uint8)
            x = (3 * n) % width
            image[height // 4 : 3 * height // 4, x : x + width // 5] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = start_frame + n, fractions.Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if sound is not None:
            t = np.arange(round(seconds * 44100)) / 44100
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, len(samples), 1024):
                chunk = samples[start : start + 1024]
                frame = av.AudioFrame.from_ndarray(
                    np.stack([chunk, chunk]), format="fltp", layout="stereo"
                )
                frame.sample_rate, frame.pts = 44100, start
                container.mux(sound.encode(frame))
            container.mux(sound.encode())
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("videos")
    return {
        "odd": write_video(str(folder / "odd.mp4"), seconds=1, size=(97, 61), fps=12, audio=True),
        "silent": write_video(
            str(folder / "silent.mp4"), seconds=1, size=(97, 61), fps=12, audio=False
        ),
        "long": write_video(
            str(folder / "long.mkv"), seconds=20, size=(64, 48), fps=5, audio=False
        ),
        "short": write_video(
            str(folder / "short.mp4"), seconds=0.5, size=(40, 30), fps=8, audio=True
        ),
    }


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """XLA's persistent cache for this module, so that `load_trained` compiles nothing that the
    `trained` fixture's `state.create` already compiled (the same model, the same shapes); the
    process's
    settings are restored afterwards."""
    from jax.experimental.compilation_cache import compilation_cache as cache

    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    saved = {name: getattr(jax.config, name) for name in names}
    cache.reset_cache()
    jax.config.update(names[0], str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update(names[1], 0)
    jax.config.update(names[2], 0)
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    cache.reset_cache()


@pytest.fixture(scope="module")
def config():
    config = synthetic.get_config("test")
    config.mesh_shape = (1, 1)
    config.detect.batch_size = 4
    return config


def with_detect(config, **options):
    """A copy of `config` with other `config.detect` options."""
    config = config.copy_and_resolve_references()
    config.detect.update(options)
    return config


@pytest.fixture(scope="module")
def trained(config, tmp_path_factory) -> tuple[str, state.ShardedModel]:
    """(workdir of a saved random-weight checkpoint, the ShardedModel it was saved from)."""
    workdir = str(tmp_path_factory.mktemp("run"))
    s = state.create(config, mesh=make_mesh((1, 1), DEVICES), steps_per_epoch=1)
    ckpt = Checkpointer(workdir)
    ckpt.save(
        0,
        {"state": s.state, "frozen": s.frozen},
        {"input_state": {}, "config": config.to_json_best_effort()},
    )
    ckpt.close()
    return workdir, s


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory) -> str:
    """A random DETR whose class head favours 'person' (`hf_tiny.tiny_detr`)."""
    pytest.importorskip("transformers")
    return tiny_detr(tmp_path_factory.mktemp("detr"))


def read_rows(out_dir: str) -> list[list[str]]:
    with open(os.path.join(out_dir, "detections.csv")) as f:
        return list(csv.reader(f))


def scores_by_box(rows: list[list[str]]) -> dict[tuple, list[float]]:
    """{(timestamp, x1, y1, x2, y2): scores in action-id order} of detection rows."""
    out: dict[tuple, list[float]] = {}
    for _, ts, *box, action, score in rows:
        out.setdefault((ts, *map(float, box)), []).append((int(action), float(score)))
    return {k: [s for _, s in sorted(v)] for k, v in out.items()}


def assert_no_partial(parent) -> None:
    """No temporary folder of `detect` left beside its output."""
    assert not [p for p in os.listdir(parent) if ".partial-" in p or ".old-" in p]


def test_keyframe_inputs_are_the_input_pipelines(config, videos):
    """A keyframe's model inputs are exactly what the eval pipeline makes of the same clip in a
    built dataset, and only the entries the model reads."""
    spec = common.clip_config(config)
    with video_io.open_video(videos["odd"]) as container:
        [(_, clip)] = list(video_io.read_clips(container, [0.5], spec, "odd"))
    boxes = np.array([[0.1, 0.2, 0.5, 0.9]], np.float32)
    ours = driver.example_inputs(config, clip, boxes)
    example = {
        "frames": tf.constant(clip.frames),
        "scene_frames": tf.constant(clip.scene_frames),
        "waveform": tf.constant(clip.waveform),
        "has_audio": tf.constant(True),
        "proposals": tf.constant(boxes),
        "proposal_scores": tf.constant([1.0]),
        "targets": tf.zeros((1, config.model.num_classes), tf.int8),
    }
    reference = input_pipeline.decode_example(example, config)
    assert set(ours) == {
        "video",
        "frame_extent",
        "scene",
        "audio",
        "audio_mask",
        "boxes",
        "box_mask",
    }
    for key, value in ours.items():
        np.testing.assert_array_equal(value, reference[key].numpy(), err_msg=key)
    assert np.abs(ours["audio"]).max() > 0.5  # the tone is there


def test_boxes_csv_on_an_odd_sized_video_with_audio(config, trained, videos, tmp_path, capsys):
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(
        "odd,0,0.1,0.2,0.5,0.9,0.8\n"
        "odd,0.0,-0.1,0.3,0.6,1.2\n"  # no score (1.0): first; clipped to the frame
        "other,0,0.1,0.1,0.2,0.2,0.9\n"  # another video: ignored
        "odd,7,0.1,0.1,0.2,0.2,0.9\n"
    )  # no keyframe at 7 s: counted, unused
    out = tmp_path / "out"
    result = detect(
        config, video=videos["odd"], out_dir=str(out), boxes_csv=str(boxes), model_state=trained[1]
    )
    assert result["keyframes"] == 1 and result["keyframes_skipped"] == 0
    assert result["has_audio"] and not result["audio_masked"]
    assert result["proposals"] == "boxes_csv" and result["boxes_rows_unused"] == 1
    rows = read_rows(str(out))
    assert len(rows) == result["detection_rows"] == 2 * 6
    assert {r[0] for r in rows} == {"odd"} and {r[1] for r in rows} == {"0"}
    assert [int(r[6]) for r in rows] == CLASS_IDS * 2
    by_box = scores_by_box(rows)
    assert list(by_box) == [("0", 0.0, 0.3, 0.6, 1.0), ("0", 0.1, 0.2, 0.5, 0.9)]
    assert all(0 < s < 1 for scores in by_box.values() for s in scores)
    assert os.listdir(out / "keyframes") == ["00000_0s.png"]
    assert min(Image.open(out / "keyframes" / "00000_0s.png").size) == 256
    assert json.loads((out / "detect.json").read_text()) == result
    assert_no_partial(tmp_path)
    assert "proposals: boxes_csv" in capsys.readouterr().out


def test_without_an_audio_track_the_audio_is_masked(config, trained, videos, tmp_path, capsys):
    """The same frames without audio: masked audio (the note is printed), and the scores are
    those of the model with `audio_mask` false; with the track they differ."""
    s = trained[1]
    silent = detect(config, video=videos["silent"], out_dir=str(tmp_path / "silent"), model_state=s)
    assert silent["audio_masked"] and not silent["has_audio"]
    assert "no audio track" in capsys.readouterr().out
    assert any("masked" in note for note in silent["notes"])
    with_audio = detect(config, video=videos["odd"], out_dir=str(tmp_path / "odd"), model_state=s)
    assert not with_audio["audio_masked"]
    masked = scores_by_box(read_rows(str(tmp_path / "silent")))[("0", 0.0, 0.0, 1.0, 1.0)]
    heard = scores_by_box(read_rows(str(tmp_path / "odd")))[("0", 0.0, 0.0, 1.0, 1.0)]
    assert not np.allclose(masked, heard, atol=1e-5)

    with video_io.open_video(videos["odd"]) as container:
        [(_, clip)] = list(video_io.read_clips(container, [0.0], common.clip_config(config), "x"))
    inputs = driver.example_inputs(config, clip, proposals.WHOLE_FRAME[:, :4])
    inputs["audio"][:] = 0
    inputs["audio_mask"] = np.asarray(False)
    expected = programs.predict_batch(s, driver.stack_padded([inputs], 4))["scores"]
    np.testing.assert_allclose(masked, expected[0, 0], atol=2e-6)


def test_long_video_from_the_checkpoint_with_fallback_box_and_video_out(
    config, trained, videos, tmp_path, capsys
):
    """20 s without audio through `checkpoint=` (5 batches of 4)."""
    annotated = tmp_path / "annotated.mp4"
    result = detect(
        config,
        video=videos["long"],
        out_dir=str(tmp_path / "out"),
        checkpoint=trained[0],
        devices=DEVICES,
        video_out=str(annotated),
    )
    assert result["keyframes"] == 20 and result["audio_masked"]
    assert result["proposals"] == "whole_frame"
    rows = read_rows(str(tmp_path / "out"))
    assert len(rows) == 20 * 6
    assert [r[1] for r in rows[::6]] == [str(t) for t in range(20)]
    assert {tuple(map(float, r[2:6])) for r in rows} == {(0.0, 0.0, 1.0, 1.0)}
    assert len(os.listdir(tmp_path / "out" / "keyframes")) == 20
    with av.open(str(annotated)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == result["video_out_frames"] == 100
    assert frames[0].shape[0] == 256 and frames[0].shape[1] % 2 == 0
    captured = capsys.readouterr()
    assert "the audio modality is masked" in captured.out
    assert "20/20" in captured.err  # the progress bar


def test_detector_on_a_video_shorter_than_the_window(
    config, trained, videos, tiny_detector, tmp_path
):
    result = detect(
        with_detect(config, detector=tiny_detector, keyframe_every=0.25),
        video=videos["short"],
        out_dir=str(tmp_path / "out"),
        model_state=trained[1],
    )
    assert result["proposals"] == "detector" and result["keyframes"] == 2
    rows = read_rows(str(tmp_path / "out"))
    per_box = config.model.num_proposals * len(CLASSES)  # 10 confident persons: the top K kept
    assert [r[1] for r in rows] == ["0"] * per_box + ["0.25"] * per_box
    assert all(
        0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1
        for x1, y1, x2, y2 in (map(float, r[2:6]) for r in rows)
    )
    assert sorted(os.listdir(tmp_path / "out" / "keyframes")) == ["00000_0s.png", "00001_0.25s.png"]


@pytest.mark.parametrize(
    "container_format",
    [
        "h264",  # a raw stream: no duration, no timestamps (FFmpeg reads it at 25 fps)
        "mpegts",  # its first frame at 3 s: keyframe times count from there
    ],
)
def test_streams_without_duration_or_starting_late(config, trained, tmp_path, container_format):
    path = write_video(
        str(tmp_path / f"clip.{container_format}"),
        seconds=2.4,
        size=(32, 24),
        fps=25,
        audio=False,
        container_format=container_format,
        start_frame=75,
    )
    result = detect(config, video=path, out_dir=str(tmp_path / "out"), model_state=trained[1])
    assert result["keyframes"] == 3 and result["keyframes_skipped"] == 0
    assert [r[1] for r in read_rows(str(tmp_path / "out"))[::6]] == ["0", "1", "2"]


def bad_inputs(tmp_path, videos) -> dict[str, tuple[dict, type, str]]:
    """Name -> (detect keywords, error type, the path the message must name)."""
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    other = tmp_path / "other.csv"
    other.write_text("clip_a,0,0.1,0.1,0.5,0.5,0.9\nclip_b,1,0.1,0.1,0.5,0.5,0.9\n")
    late = tmp_path / "late.csv"
    late.write_text("odd,7,0.1,0.1,0.5,0.5,0.9\n")
    audio_only = tmp_path / "sound.m4a"
    with av.open(str(audio_only), "w") as container:
        stream = container.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate, frame.pts = 16000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep me")
    missing = str(tmp_path / "missing.mp4")
    return {
        "not_a_video": ({"video": str(text)}, common.BadInputError, str(text)),
        "missing": ({"video": missing}, FileNotFoundError, missing),
        "audio_only": ({"video": str(audio_only)}, common.BadInputError, str(audio_only)),
        "csv_of_other_videos": (
            {"video": videos["odd"], "boxes_csv": str(other)},
            common.BadInputError,
            str(other),
        ),
        "csv_at_no_keyframe": (
            {"video": videos["odd"], "boxes_csv": str(late)},
            common.BadInputError,
            str(late),
        ),
        "foreign_out_dir": (
            {"video": videos["odd"], "out_dir": str(taken)},
            common.BadInputError,
            str(taken),
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "not_a_video",
        "missing",
        "audio_only",
        "csv_of_other_videos",
        "csv_at_no_keyframe",
        "foreign_out_dir",
    ],
)
def test_bad_input_is_a_one_line_error_and_writes_nothing(config, videos, tmp_path, case):
    kwargs, error, path = bad_inputs(tmp_path, videos)[case]
    out = str(tmp_path / "out")
    kwargs = {"out_dir": out, "checkpoint": str(tmp_path / "no_checkpoint"), **kwargs}
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(error) as info:
        detect(config, **kwargs)
    message = str(info.value)
    assert path in message and "\n" not in message, message
    assert sorted(os.listdir(tmp_path)) == before  # nothing written, nothing removed
    if case == "csv_of_other_videos":
        assert "clip_a, clip_b" in message
    if case == "foreign_out_dir":
        assert os.listdir(kwargs["out_dir"]) == ["mine.txt"]


def test_without_a_checkpoint_it_says_to_run_the_demo(config, videos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="make demo"):
        detect(config, video=videos["odd"], out_dir="out")
    assert os.listdir(tmp_path) == []


def test_a_failure_midway_leaves_no_output_and_keeps_the_previous_one(
    config, trained, videos, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    run = {"video": videos["odd"], "out_dir": str(out), "model_state": trained[1]}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(outputs, "draw_detections", broken)
        with pytest.raises(RuntimeError):
            detect(config, **run)
    assert os.listdir(tmp_path) == []
    first = detect(config, **run)
    with monkeypatch.context() as patch:
        patch.setattr(outputs, "draw_detections", broken)
        with pytest.raises(RuntimeError):
            detect(with_detect(config, keyframe_every=0.5), **run)
    assert json.loads((out / "detect.json").read_text()) == first
    assert_no_partial(tmp_path)
    assert os.listdir(tmp_path) == ["out"]


def test_draw_detections_and_top_labels():
    image = np.zeros((61, 97, 3), np.uint8)
    labels = visualize.top_labels(np.array([[0.1, 0.9, 0.5, 0.2]]), ["a", "b", "c", "d"])
    assert labels == [[("b", 0.9), ("c", 0.5), ("d", 0.2)]]
    drawn = visualize.draw_detections(
        image, np.array([[0.5, 0.5, 0.9, 0.9]]), labels, title="t = 0 s"
    )
    assert drawn.size == (round(97 * 256 / 61), 256)
    pixels = np.asarray(drawn)
    colored = (pixels == visualize.PALETTE[0]).all(-1)
    y1, y2 = round(0.5 * drawn.height), round(0.9 * drawn.height)
    assert colored[y2 - 1 : y2 + 2, drawn.width * 3 // 4].any()  # the box's bottom edge
    assert not colored[: y1 - 1].any() and not colored[y2 + 2 :].any()  # nothing outside it
    assert pixels[: drawn.height // 3, : drawn.width // 2].any()  # the title
    with pytest.raises(ValueError, match="1 boxes but 0 label lists"):
        visualize.draw_detections(image, np.array([[0.5, 0.5, 0.9, 0.9]]), [])


def test_label_blocks_of_close_actors_do_not_overlap():
    # Three actors side by side, boxes overlapping (the demo's keyframes at 341 x 256).
    boxes = np.array([[0.40, 0.30, 0.48, 0.70], [0.43, 0.32, 0.51, 0.72], [0.45, 0.29, 0.53, 0.69]])
    labels = [[("walk", 0.9), ("tiled_room", 0.8), ("near_ball", 0.1)]] * 3
    drawn = visualize.draw_detections(
        np.zeros((96, 128, 3), np.uint8), boxes, labels, title="video @ 3 s"
    )
    pixels = np.asarray(drawn)
    for i in range(3):  # every block's colour is visible: none is painted over by another
        assert (pixels == visualize.PALETTE[i]).all(-1).sum() > 1200
    sizes = np.array([[60.0, 36.0]] * 3)
    corners = visualize.place_labels(
        boxes[:, :2] * [341, 256], sizes, (341, 256), taken=[(0, 0, 80, 12)]
    )
    rects = [(x, y, x + w, y + h) for (x, y), (w, h) in zip(corners, sizes)]
    assert corners[0] == (0.40 * 341, 0.30 * 256)  # a free anchor keeps its place
    for a, b in itertools.combinations(rects + [(0, 0, 80, 12)], 2):
        assert not visualize._overlaps(a, b), (a, b)
    assert all(0 <= r[0] and r[2] <= 341 and 0 <= r[1] and r[3] <= 256 for r in rects)
    # Out of room below: the next block moves right of the one it hits, still inside the image.
    corners = visualize.place_labels(
        np.array([[10.0, 50.0], [12.0, 52.0]]), np.array([[30.0, 40.0], [30.0, 40.0]]), (100, 80)
    )
    assert corners == [(10.0, 40.0), (40.0, 40.0)]
    corners = visualize.place_labels(
        np.array([[40.0, 50.0], [42.0, 52.0]]), np.array([[30.0, 40.0], [30.0, 40.0]]), (80, 80)
    )
    assert corners == [(40.0, 40.0), (10.0, 40.0)]  # no room on the right either: on the left


def test_label_blocks_of_a_crowded_frame_never_overlap():
    """Sixteen blocks anchored at two points of a 341 x 256 frame: each is placed without overlap
    (or left out when no room is left), inside the image."""
    anchors = np.array([[100.0, 80.0]] * 12 + [[300.0, 10.0]] * 4)
    sizes = np.array([[100.0, 36.0]] * 16)
    corners = visualize.place_labels(anchors, sizes, (341, 256), taken=[(0, 0, 80, 12)])
    rects = [(x, y, x + w, y + h) for c, (w, h) in zip(corners, sizes) if c for x, y in [c]]
    assert len(rects) >= 15  # 3 columns x 7 rows fit; the title takes part of one
    for a, b in itertools.combinations(rects + [(0, 0, 80, 12)], 2):
        assert not visualize._overlaps(a, b), (a, b)
    assert all(0 <= r[0] and r[2] <= 341 and 0 <= r[1] and r[3] <= 256 for r in rects)
    full = visualize.place_labels(
        np.array([[0.0, 0.0]] * 3), np.array([[60.0, 50.0]] * 3), (60, 100)
    )
    assert full == [(0.0, 0.0), (0.0, 50.0), None]  # no room for the third: left out


def test_boxes_csv_takes_6_7_and_avas_8_column_rows(tmp_path):
    """Rows with no score (1), a score, and AVA's *_predicted_boxes.csv layout (an action id
    column, often empty, before the score) are read alike; a bad score is named."""
    path = tmp_path / "boxes.csv"
    path.write_text(
        "clip,0,0.1,0.2,0.3,0.4\n"
        "clip,1,0.1,0.2,0.3,0.4,0.7\n"
        "clip,1,0.2,0.2,0.5,0.6,,0.9\n"
        "clip,2,0.3,0.2,0.5,0.6,80,0.25\n"
        "other,0,0,0,1,1,,0.5\n"
    )
    rows, unused = proposals.read_boxes_csv(str(path), "clip", np.array([0.0, 1.0, 2.0]))
    assert unused == 0
    np.testing.assert_allclose(rows[0], [[0.1, 0.2, 0.3, 0.4, 1.0]])
    np.testing.assert_allclose(rows[1], [[0.1, 0.2, 0.3, 0.4, 0.7], [0.2, 0.2, 0.5, 0.6, 0.9]])
    np.testing.assert_allclose(rows[2], [[0.3, 0.2, 0.5, 0.6, 0.25]])
    path.write_text("clip,0,0.1,0.2,0.3,0.4,high\n")
    with pytest.raises(common.BadInputError, match="cannot parse score 'high'"):
        proposals.read_boxes_csv(str(path), "clip", np.array([0.0]))


def test_a_detector_that_cannot_load_fails_at_once_offline(monkeypatch, tmp_path):
    """A missing local folder, and a hub id while the hub is unreachable, fail with one line and
    without hub requests (local_files_only: no retries)."""
    pytest.importorskip("transformers")
    with pytest.raises(FileNotFoundError, match="detector folder ./no/detr: no such folder"):
        proposals.PersonDetector("./no/detr", threshold=0.5)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert not proposals.hub_reachable()
    monkeypatch.setenv("HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match="hub is unreachable"):
        proposals.PersonDetector("facebook/detr-resnet-50", threshold=0.5)


def test_zero_detections_say_why(tiny_detector):
    """A threshold above every person score leaves the keyframe without proposals, and the note
    names the threshold and the best score."""
    image = Image.fromarray(np.full((30, 40, 3), 128, np.uint8))
    detector = proposals.PersonDetector(tiny_detector, threshold=1.01)
    (rows,) = detector([image])
    assert rows.shape == (0, 5) and len(detector.misses) == 1 and detector.misses[0] < 1.01
    note = proposals.miss_note(detector.misses, 1.01)
    assert "config.detect.detector_threshold 1.01" in note and "1 keyframe(s)" in note
    assert "no query whose top class is 'person'" in proposals.miss_note([None, 0.2], 0.5)
    assert proposals.miss_note([], 0.5) is None


def test_video_out_keeps_the_audio_track(tmp_path):
    """The annotated video carries the source's audio (re-encoded as AAC): same length, same
    440 Hz tone."""
    src, rate = str(tmp_path / "tone.mkv"), 16000
    wave = (np.sin(2 * np.pi * 440 * np.arange(2 * rate) / rate) * 10000).astype(np.int16)
    with av.open(src, "w") as c:
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream("pcm_s16le", rate=rate, layout="mono")
        for i in range(50):
            image = np.full((48, 64, 3), i * 4, np.uint8)
            c.mux(v.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        for j in range(0, len(wave), 1600):
            frame = av.AudioFrame.from_ndarray(
                wave[None, j : j + 1600], format="s16", layout="mono"
            )
            frame.rate = rate
            c.mux(a.encode(frame))
        c.mux(v.encode())
        c.mux(a.encode())
    out = str(tmp_path / "annotated.mp4")
    shown = [(0.0, np.array([[0.1, 0.1, 0.5, 0.9]]), [[("walk", 0.9)]])]
    assert outputs.write_annotated_video(src, out, 0.0, shown, 1.0, 25.0) == 50
    with av.open(out) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
        got = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
        assert abs(len(got) / c.streams.audio[0].rate - 2.0) < 0.15  # AAC adds priming samples
    spectrum = np.abs(np.fft.rfft(got[: 2 * rate]))
    assert abs(np.argmax(spectrum) * rate / (2 * rate) - 440) < 2


def test_keyframe_pngs_are_at_the_videos_resolution(config, trained, tmp_path):
    """A video larger than the model's clip frames (short side 256) gets keyframe PNGs at its
    own size, drawn on its own frames."""
    video = write_video(str(tmp_path / "big.mp4"), seconds=1, size=(400, 288), fps=6, audio=False)
    out = tmp_path / "out"
    detect(config, video=video, out_dir=str(out), model_state=trained[1])
    (png,) = os.listdir(out / "keyframes")
    assert Image.open(out / "keyframes" / png).size == (400, 288)
