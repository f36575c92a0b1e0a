"""`model.query_source`: the action queries from the detector's per-box features (the paper's Actor
Proposal Features) instead of RoIAlign on the video backbone.

The detector is a tiny random transformers DETR (ResNet backbone, no timm, no download): its
features are checked against its own forward's backbone map with scipy's bilinear sampling,
build-data stores them, and the model trains and evaluates on them (synthetic set and the AVA
fixture), in every row of Table 4, and in `detect`.
"""

import os
import pickle

import jax
import numpy as np
import pytest
from conftest import make_forward, random_batch
from hf_tiny import tiny_detr

from configs import synthetic
from jovale_jax import ablate, datasets
from jovale_jax.datasets import ava_fixture, common
from jovale_jax.datasets import synthetic as synthetic_data

F = 12  # the tiny detector's backbone channels


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> str:
    pytest.importorskip("transformers")
    return tiny_detr(tmp_path_factory.mktemp("detr"), channels=F)


def detector_config(detector: str, dataset: str = "synthetic"):
    """The synthetic `test` preset on one device, queries from `detector`'s features."""
    c = synthetic.get_config("test")
    c.dataset = dataset
    c.model.query_source = "detector"
    c.model.actor.detector_feature_dim = F
    c.detect.detector = detector
    c.mesh_shape = (1, 1)
    c.batch_size = c.eval_batch_size = 2
    c.num_train_steps = c.checkpoint_every_steps = 2
    c.log_every_steps = 1
    c.eval_every_steps = 0
    return c


def test_features_are_roialign_of_the_detectors_own_backbone_map(detector):
    """The features equal the average of 7 x 7 x 2 x 2 bilinear samples (scipy) of the map that
    DETR's own forward projects, with boxes placed on each image's part of the padded canvas."""
    import torch
    from PIL import Image
    from scipy import ndimage

    from jovale_jax.datasets.detector_features import DetectorFeatures

    features = DetectorFeatures.load(detector, feature_dim=F)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        for h, w in ((24, 32), (32, 24))
    ]
    boxes = [
        np.array([[0.1, 0.2, 0.6, 0.9]]),
        np.array([[0.0, 0.0, 1.0, 1.0], [0.3, 0.1, 0.9, 0.5]]),
    ]
    ours = features(images, boxes)

    captured = []
    projection = features.model.model.input_projection
    hook = projection.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    with torch.no_grad():
        features.model(**features.processor(images=images, return_tensors="pt"))
    hook.remove()
    maps = captured[0].numpy()  # (2, F, h, w)
    # The processor resizes the short side to 64 (24 x 32 -> 64 x 85, 32 x 24 -> 85 x 64) and pads
    # both to 85 x 85 at the bottom right: image 0 fills all columns, image 1 64 of 85.
    fills = [(1.0, 64 / 85), (64 / 85, 1.0)]  # (x, y) fraction of the canvas
    for fmap, (fx, fy), b, got in zip(maps, fills, boxes, ours):
        h, w = fmap.shape[1:]
        want = []
        for x1, y1, x2, y2 in b * [fx * w, fy * h, fx * w, fy * h] - 0.5:
            t = (np.arange(7)[:, None] + (np.arange(2) + 0.5)[None] / 2).ravel() / 7
            ys, xs = np.meshgrid(y1 + t * (y2 - y1), x1 + t * (x2 - x1), indexing="ij")
            want.append(
                [ndimage.map_coordinates(c, [ys, xs], order=1, mode="nearest").mean() for c in fmap]
            )
        assert got.shape == (len(b), F)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_detector_that_is_not_an_object_detector_is_a_one_line_error(detector, tmp_path):
    import transformers

    from jovale_jax.datasets.detector_features import DetectorFeatures

    not_detector = str(tmp_path / "vit")
    transformers.ViTConfig(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=2
    ).save_pretrained(not_detector)
    with pytest.raises(
        common.BadInputError,
        match=r"config.detect.detector .*vit.* is a 'vit' "
        r"model, not an object-detection model",
    ) as e:
        DetectorFeatures.load(not_detector)
    assert "\n" not in str(e.value)
    with pytest.raises(common.BadInputError, match="detector_feature_dim is 5 but .* 12-channel"):
        DetectorFeatures.load(detector, feature_dim=5)
    yolos = str(tmp_path / "yolos")  # an object detector without a convolutional backbone
    transformers.YolosForObjectDetection(
        transformers.YolosConfig(
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=8,
            image_size=[32, 32],
            num_detection_tokens=2,
        )
    ).save_pretrained(yolos)
    transformers.YolosImageProcessor().save_pretrained(yolos)
    with pytest.raises(common.BadInputError, match="YolosForObjectDetection has no convolutional"):
        DetectorFeatures.load(yolos)
    # build-data refuses before writing anything
    config = detector_config(not_detector)
    data_dir = tmp_path / "data"
    with pytest.raises(common.BadInputError, match="not an object-detection model"):
        datasets.build_dataset(
            "synthetic", config=config, raw_dir=str(tmp_path / "raw"), data_dir=str(data_dir)
        )
    assert not data_dir.exists() or not any(data_dir.iterdir())
    assert not (tmp_path / "raw").exists()


@pytest.fixture(scope="module")
def fixture_raw(tmp_path_factory) -> str:
    """The AVA fixture, tiny: one 7 s video (4 keyframes) at 64 x 112, 6 classes."""
    raw = str(tmp_path_factory.mktemp("ava_fixture"))
    ava_fixture.generate_raw(raw, num_videos=1, seconds=7, size=(64, 112), num_classes=6)
    return raw


def test_proposals_without_features_name_the_file_and_the_field(fixture_raw, tmp_path):
    """query_source 'detector' with no detector to compute them: the proposals file must carry
    the features; a dataset built without them is not read."""
    config = detector_config("", dataset="ava")
    pkl = os.path.join(fixture_raw, "ava_dense_proposals_train.FAIR.recall_93.9.pkl")
    with pytest.raises(common.BadInputError) as e:
        datasets.build_dataset(
            "ava", config=config, raw_dir=fixture_raw, data_dir=str(tmp_path), split="train"
        )
    message = str(e.value)
    assert pkl in message and "proposal_features" in message
    assert "model.actor.detector_feature_dim" in message and "\n" not in message
    with pytest.raises(FileNotFoundError, match="no complete ava dataset with proposal_features"):
        datasets.get_builder(config, str(tmp_path))
    csv = tmp_path / "boxes.csv"
    csv.write_text("v,0902,0.1,0.2,0.3,0.4,,0.9\n")
    with pytest.raises(common.BadInputError, match=f"{csv}: a CSV carries no detector features"):
        common.read_proposals(str(csv), feature_dim=F)
    # the features the file does carry are used
    with open(pkl, "rb") as f:
        rows = pickle.load(f)
    with_features = {k: np.concatenate([v, np.full((len(v), F), 0.5)], 1) for k, v in rows.items()}
    read = tmp_path / "with.pkl"
    with open(read, "wb") as f:
        pickle.dump(with_features, f)
    got = common.read_proposals(str(read), feature_dim=F)
    assert all(v.shape[1] == 5 + F for v in got.values())


def train_and_evaluate(config, data_dir: str, workdir: str) -> dict:
    from jovale_jax.evaluate import evaluate_checkpoint
    from jovale_jax.train import train

    run = train(config, workdir, data_dir=data_dir, devices=jax.devices()[:1])
    params = run["setup"].state["params"]["actor_features"]
    assert set(params) == {"detector_proj"}  # no RoIAlign projection, no box embedding
    result = evaluate_checkpoint(config, workdir, data_dir=data_dir, devices=jax.devices()[:1])
    assert np.isfinite(result["mAP"])
    assert os.path.exists(os.path.join(result["out_dir"], "results.json"))
    return result


@pytest.fixture(scope="module")
def synthetic_run(detector, tmp_path_factory):
    """The synthetic set (1 train, 1 val video) built with the detector's features, trained 2
    steps with detector queries and evaluated."""
    root = tmp_path_factory.mktemp("synthetic_detector")
    synthetic_data.generate_raw(str(root / "raw"), num_train_videos=1, num_val_videos=1)
    config = detector_config(detector)
    summary = datasets.build_dataset(
        "synthetic", config=config, raw_dir=str(root / "raw"), data_dir=str(root)
    )
    result = train_and_evaluate(config, str(root), str(root / "work"))
    return config, str(root), summary, result


def test_build_data_stores_the_detectors_features(synthetic_run):
    """The stored features are the detector's on the stored keyframe (the clip frame nearest the
    keyframe), at the stored proposals."""
    import io

    import tensorflow_datasets as tfds
    from PIL import Image

    from jovale_jax.datasets.detector_features import DetectorFeatures

    config, data_dir, summary, _ = synthetic_run
    assert summary["keyframes_lost"] == 0 and all(summary["examples"][s] for s in ("train", "val"))
    raw = datasets.get_builder(config, data_dir).as_dataset(
        split="train", decoders={"frames": tfds.decode.SkipDecoding()}
    )
    key = int(np.argmin(np.abs(common.clip_config(config).clip_offsets())))
    features = DetectorFeatures.load(config.detect.detector)
    for ex in raw.take(3).as_numpy_iterator():
        stored = ex["proposal_features"]
        assert stored.shape == (len(ex["proposals"]), F) and len(stored)
        image = Image.open(io.BytesIO(ex["frames"][key])).convert("RGB")
        np.testing.assert_allclose(stored, features([image], [ex["proposals"]])[0], atol=1e-5)
    # the backbone-source config reads another dataset (none here), never these features
    with pytest.raises(FileNotFoundError, match="no complete synthetic dataset for this config"):
        datasets.get_builder(synthetic.get_config("test"), data_dir)


def test_detector_queries_train_and_evaluate_on_synthetic(synthetic_run):
    _, _, _, result = synthetic_run
    assert 0.0 <= result["mAP"] <= 1.0


def test_detector_queries_train_and_evaluate_on_the_ava_fixture(detector, fixture_raw, tmp_path):
    config = detector_config(detector, dataset="ava")
    config.data.eval_split = "train"  # the fixture has one split
    summary = datasets.build_dataset(
        "ava", config=config, raw_dir=fixture_raw, data_dir=str(tmp_path), split="train"
    )
    assert summary["examples"] == {"train": 4}
    ex = next(datasets.load_split(config, "train", str(tmp_path))[0].as_numpy_iterator())
    assert ex["proposal_features"].shape == (len(ex["proposals"]), F)
    train_and_evaluate(config, str(tmp_path), str(tmp_path / "work"))


def test_every_table_4_row_takes_its_queries_from_the_detector(detector):
    """Whatever modalities a row keeps, its queries are the detector's features: changing actor
    0's features changes actor 0's logits in the audio-only and scene-only rows too."""
    from flax import nnx

    from jovale_jax.models.batch import model_spec
    from jovale_jax.models.jovale import JoVALE

    config = detector_config(detector)
    for row in ablate.TABLES["4"][1]:
        cfg = ablate.row_config(config, row)
        assert "proposal_features" in model_spec(cfg.model), row.name
        if row.name not in ("a", "s"):
            continue
        model = JoVALE(cfg.model, rngs=nnx.Rngs(0))
        # only the detector's projection: no RoIAlign projection, no box-coordinate embedding
        assert set(nnx.state(model.actor_features, nnx.Param).keys()) == {"detector_proj"}
        forward = make_forward(model)
        batch = random_batch(cfg.model)
        moved = {**batch, "proposal_features": batch["proposal_features"].copy()}
        moved["proposal_features"][:, 0] += 1.0
        before, after = forward(batch), forward(moved)
        assert not np.allclose(before[:, 0], after[:, 0]), row.name
    assert "detector's per-box features" in ablate.queries_line(config)
    assert "audio alone from the box coordinates" in ablate.queries_line(
        synthetic.get_config("test")
    )
    lines = ablate.table_markdown("4", [], "synthetic", queries=ablate.queries_line(config))
    assert ablate.queries_line(config) in lines


def test_query_source_is_checked_against_the_feature_width():
    from jovale_jax.models.inputs import query_source

    c = synthetic.get_config("test").model
    assert query_source(c) == "backbone"
    c.query_source = "detector"
    with pytest.raises(ValueError, match="detector_feature_dim is 0 but must be > 0"):
        query_source(c)
    c.query_source = "boxes"
    with pytest.raises(ValueError, match="model.query_source: expected one of"):
        query_source(c)


def test_detect_takes_the_features_from_the_same_detector(synthetic_run, tmp_path, monkeypatch):
    """Boxes and queries come from one detector, loaded once."""
    import transformers

    from jovale_jax.detect import detect

    loads = []
    load = transformers.AutoModelForObjectDetection.from_pretrained
    monkeypatch.setattr(
        transformers.AutoModelForObjectDetection,
        "from_pretrained",
        lambda *a, **k: loads.append(a[-1]) or load(*a, **k),
    )
    config, data_dir, _, _ = synthetic_run
    video = os.path.join(data_dir, "raw", "videos")
    video = os.path.join(video, min(os.listdir(video)))
    config.detect.keyframe_every = 0.5
    manifest = detect(
        config,
        video=video,
        out_dir=str(tmp_path / "out"),
        checkpoint=os.path.join(data_dir, "work"),
        devices=jax.devices()[:1],
    )
    assert manifest["proposals"] == "detector" and manifest["detection_rows"] > 0
    assert loads == [config.detect.detector]
    no_detector = config.copy_and_resolve_references()
    no_detector.detect.detector = ""
    with pytest.raises(ValueError, match="model.query_source is 'detector': detect needs config"):
        detect(no_detector, video=video, out_dir=str(tmp_path / "out2"))
    assert not (tmp_path / "out2").exists()
