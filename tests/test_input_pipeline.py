"""jovale_jax/input_pipeline.py on tiny examples made here, with the synthetic `test` config.

Most tests feed the core functions a tf.data.Dataset of encoded examples (the SCHEMA.md features,
JPEGs undecoded, as TFDS yields them with SkipDecoding); the last ones build a tiny TFDS dataset
with three shards to go through the builder path and the split over processes. As SCHEMA.md says,
`proposal_features` exists only with `model.query_source` "detector" (F = `detector_feature_dim`).
"""

import io
import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import synthetic
from jovale_jax import audio_features, input_pipeline
from jovale_jax.models.batch import batch_spec

NUM_EXAMPLES = 13  # 3 batches of 4 per epoch, 1 example dropped
BATCH = 4
SOURCE_HW = (40, 48)  # native frame size, resized to the config's canvas


def _config(**model_updates):
    config = synthetic.get_config("test")
    config.batch_size = BATCH
    config.model.update(model_updates)
    return config


def _jpegs(images: np.ndarray) -> np.ndarray:
    return np.array([tf.io.encode_jpeg(image).numpy() for image in images], dtype=object)


def _make_example(i: int, config, *, rng, image=None) -> dict:
    """Example i: i % 7 proposals (0 to 6, K = 4), no audio when i % 5 == 3, varied lengths."""
    m, c = i % 7, config.model.num_classes
    if image is None:
        image = rng.integers(0, 256, (*SOURCE_HW, 3), dtype=np.uint8)
    has_audio = i % 5 != 3
    num_samples = (16000, 17600, 9000)[i % 3] if has_audio else 0
    corners = rng.uniform(0, 0.5, (m, 2))
    proposals = np.concatenate([corners, corners + rng.uniform(0.1, 0.5, (m, 2))], axis=1)
    example = {
        "video_id": f"video{i:03d}",
        "timestamp": np.int64(900 + i),
        "frames": _jpegs([image] * config.model.video.num_frames),
        "scene_frames": _jpegs([image] * config.model.scene.num_frames),
        "waveform": (rng.standard_normal(num_samples) * 3000).astype(np.int16),
        "has_audio": has_audio,
        "gt_boxes": proposals[:1].astype(np.float32),
        "gt_labels": rng.integers(0, 2, (1, c)).astype(np.int8),
        "proposals": proposals.astype(np.float32),
        "proposal_scores": np.sort(rng.uniform(size=m))[::-1].astype(np.float32),
        "targets": rng.integers(0, 2, (m, c)).astype(np.int8),
    }
    feature_dim = config.model.actor.detector_feature_dim
    if feature_dim > 0:
        example["proposal_features"] = rng.standard_normal((m, feature_dim)).astype(np.float32)
    return example


def _examples(config, n: int = NUM_EXAMPLES, **kwargs) -> list[dict]:
    rng = np.random.default_rng(0)
    return [_make_example(i, config, rng=rng, **kwargs) for i in range(n)]


def _dataset(examples: list[dict]) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensors(examples[0])
    for example in examples[1:]:
        ds = ds.concatenate(tf.data.Dataset.from_tensors(example))
    return ds


def _train_iterator(config, examples, *, seed: int = 0, state=None):
    ds = _dataset(examples)
    return input_pipeline.TrainIterator(
        lambda shuffle_seed: ds, config, batch_size=BATCH, seed=seed, state=state
    )


def _take(iterator, n: int) -> list[dict]:
    return [next(iterator) for _ in range(n)]


def _eval_dataset(config, examples) -> tf.data.Dataset:
    num_batches = -(-len(examples) // BATCH)
    return input_pipeline.eval_dataset(
        _dataset(examples), config, batch_size=BATCH, num_batches=num_batches
    )


def _eval_batches(config, examples) -> list[dict]:
    return list(_eval_dataset(config, examples).as_numpy_iterator())


def _assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.fixture(scope="module")
def config():
    return _config()


@pytest.fixture(scope="module")
def examples(config):
    return _examples(config)


def _expected_layout(config, batch: int, *, eval_keys: bool) -> dict:
    """{key: (shape, dtype)} of models/batch.py's batch_spec (test_batch_spec.py pins the spec)."""
    spec = batch_spec(config.model, training=not eval_keys)
    return {k: ((batch, *e.shape), e.dtype) for k, e in spec.items()}


def _assert_layout(batch: dict, layout: dict) -> None:
    assert set(batch) == set(layout)
    for key, (shape, dtype) in layout.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key


def test_train_batch_keys_shapes_dtypes(config, examples):
    batch = next(_train_iterator(config, examples))
    _assert_layout(batch, _expected_layout(config, BATCH, eval_keys=False))
    assert batch["example_mask"].all()


def test_pipelines_run_without_tf_data_autotuning(config, examples):
    """Train and eval datasets turn tf.data's autotuning off (input_pipeline.prefetched: its model
    thread held up each epoch's end), and the train iterator still crosses epochs: 3 batches of 4
    per epoch of 13 examples, so the 4th batch opens epoch 1."""
    train = input_pipeline.train_dataset(
        _dataset(examples), config, batch_size=BATCH, seed=0, epoch=0
    )
    for ds in (train, _eval_dataset(config, examples)):
        assert ds.options().autotune.enabled is False
    iterator = _train_iterator(config, examples)
    _take(iterator, len(examples) // BATCH + 1)
    assert iterator.get_state()["epoch"] == 1 and iterator.get_state()["batches_in_epoch"] == 1


def test_eval_batches_padded_masked_and_complete(config, examples):
    batches = _eval_batches(config, examples)
    assert len(batches) == 4
    for batch in batches:
        _assert_layout(batch, _expected_layout(config, BATCH, eval_keys=True))
    np.testing.assert_array_equal(batches[-1]["example_mask"], [True, False, False, False])
    mask = np.concatenate([b["example_mask"] for b in batches])
    ids = np.concatenate([b["video_id"] for b in batches])[mask]
    assert [i.decode() for i in ids] == [e["video_id"] for e in examples]  # each once, in order
    timestamps = np.concatenate([b["timestamp"] for b in batches])[mask]
    np.testing.assert_array_equal(timestamps, [e["timestamp"] for e in examples])
    last = batches[-1]
    for key, value in last.items():  # padding is all zero
        if key not in ("video_id", "example_mask"):
            assert not np.any(value[1:]), key
    assert list(last["video_id"][1:]) == [b""] * 3


def test_eval_audio_unaugmented_and_zero_without_audio(config, examples):
    batches = _eval_batches(config, examples)
    audio = np.concatenate([b["audio"] for b in batches])
    audio_mask = np.concatenate([b["audio_mask"] for b in batches])
    a = config.model.audio
    for i, example in enumerate(examples):
        if example["has_audio"]:
            assert audio_mask[i]
            expected = audio_features.audio_features_tf(
                tf.constant(example["waveform"]),
                num_frames=a.num_frames,
                num_mel_bins=a.num_mel_bins,
            )
            np.testing.assert_array_equal(audio[i], expected.numpy())
        else:
            assert not audio_mask[i] and not np.any(audio[i])


def test_proposals_padded_and_truncated_to_k(config, examples):
    batches = _eval_batches(config, examples)
    k = config.model.num_proposals
    fields = {
        key: np.concatenate([b[key] for b in batches])
        for key in ("boxes", "box_mask", "proposal_scores", "targets")
    }
    for i, example in enumerate(examples):
        n = min(len(example["proposals"]), k)
        np.testing.assert_array_equal(fields["box_mask"][i], np.arange(k) < n)
        for key, source in (
            ("boxes", "proposals"),
            ("proposal_scores", "proposal_scores"),
            ("targets", "targets"),
        ):
            np.testing.assert_array_equal(fields[key][i][:n], example[source][:n])
            assert not np.any(fields[key][i][n:]), key
    assert {len(e["proposals"]) for e in examples} >= {0, k, k + 2}  # covers empty, full, cut


def test_proposal_features_only_when_configured(config):
    with_features = _config()
    with_features.model.actor.detector_feature_dim = 3
    with_features.model.query_source = "detector"
    examples = _examples(with_features, n=BATCH)
    batch = _eval_batches(with_features, examples)[0]
    assert batch["proposal_features"].shape == (BATCH, config.model.num_proposals, 3)
    n = len(examples[2]["proposals"])
    np.testing.assert_array_equal(
        batch["proposal_features"][2][:n], examples[2]["proposal_features"]
    )
    assert "proposal_features" not in _eval_batches(config, examples)[0]


@pytest.mark.parametrize(
    "modalities, absent",
    [
        (("video", "scene"), {"audio", "audio_mask"}),
        (("audio",), {"video", "frame_extent", "scene"}),
        (("video",), {"scene", "audio", "audio_mask"}),
    ],
)
def test_modality_subsets_drop_keys(examples, modalities, absent):
    config = _config(modalities=modalities)
    train = next(_train_iterator(config, examples))
    evaluation = _eval_batches(config, examples[:BATCH])[0]
    for batch, eval_keys in ((train, False), (evaluation, True)):
        layout = _expected_layout(config, BATCH, eval_keys=eval_keys)
        assert not absent & set(layout)
        _assert_layout(batch, layout)


def _canvas_box(box: np.ndarray, extent: np.ndarray) -> np.ndarray:
    """A frame-normalised box on the canvas (normalised), by the batch's ``frame_extent``."""
    size = np.tile(extent[2:] - extent[:2], 2)
    return np.tile(extent[:2], 2) + box * size


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_flip_moves_boxes_with_frames(flip_prob):
    """A bright square on black at the one proposal: it stays inside the (flipped) box, which the
    (flipped) frame extent places on the video canvas."""
    config = _config()
    config.data.flip_prob = flip_prob
    box = np.array([0.125, 0.25, 0.5, 0.75], np.float32)  # x1, y1, x2, y2: left of centre
    h, w = SOURCE_HW
    image = np.zeros((h, w, 3), np.uint8)
    image[int(box[1] * h) : int(box[3] * h), int(box[0] * w) : int(box[2] * w)] = 255
    examples = _examples(config, n=BATCH, image=image)
    for e in examples:
        e["proposals"], e["proposal_scores"] = box[None], np.ones(1, np.float32)
        e["targets"] = np.ones((1, config.model.num_classes), np.int8)
    batch = next(_train_iterator(config, examples))
    expected = np.array([1 - box[2], box[1], 1 - box[0], box[3]]) if flip_prob else box
    np.testing.assert_allclose(batch["boxes"][:, 0], np.broadcast_to(expected, (BATCH, 4)))
    assert not np.any(batch["boxes"][:, 1:])  # padding is not flipped into a box
    # 40 x 48 frames at short side 24 are 24 x 29 on the 32 x 32 canvas, at the top left; the
    # flip moves them to the right.
    extent = np.array([3 / 32, 0, 1, 24 / 32] if flip_prob else [0, 0, 29 / 32, 24 / 32])
    np.testing.assert_allclose(batch["frame_extent"], np.broadcast_to(extent, (BATCH, 4)))
    for key, place in (("video", _canvas_box(expected, extent)), ("scene", expected)):
        grey = batch[key].mean(axis=-1) / 255  # (B, T, H, W)
        size_h, size_w = grey.shape[-2:]
        x1, y1, x2, y2 = np.round(place * [size_w, size_h, size_w, size_h]).astype(int)
        inside = np.zeros((size_h, size_w), bool)
        inside[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1] = True  # 1-pixel margin for resizing blur
        outside = np.ones((size_h, size_w), bool)
        outside[y1 - 1 : y2 + 1, x1 - 1 : x2 + 1] = False
        if key == "video":  # the padding is VIDEO_PAD_VALUE, not black
            ex1, _, ex2, ey2 = np.round(extent * [size_w, size_h, size_w, size_h]).astype(int)
            padding = np.ones((size_h, size_w), bool)
            padding[:ey2, ex1:ex2] = False
            np.testing.assert_array_equal(
                batch[key][..., padding, :],
                np.broadcast_to(input_pipeline.VIDEO_PAD_VALUE, batch[key][..., padding, :].shape),
            )
            outside &= ~padding
        assert grey[..., inside].min() > 0.8, key
        assert grey[..., outside].max() < 0.2, key


def test_same_seed_same_batches_different_seed_different(config, examples):
    run = _take(_train_iterator(config, examples, seed=0), 5)  # crosses an epoch boundary
    _assert_batches_equal(run, _take(_train_iterator(config, examples, seed=0), 5))
    other = _take(_train_iterator(config, examples, seed=1), 5)
    for key in ("video", "audio", "boxes"):
        assert not np.array_equal(
            np.stack([b[key] for b in run]), np.stack([b[key] for b in other])
        ), key
    # Each epoch is a new permutation: epoch 1 does not repeat epoch 0's first batch.
    assert not np.array_equal(run[0]["video"], run[3]["video"])


def test_restored_iterator_continues_exactly(config, examples):
    uninterrupted = _take(_train_iterator(config, examples, seed=3), 7)
    first = _train_iterator(config, examples, seed=3)
    _take(first, 4)
    state = json.loads(json.dumps(first.get_state()))
    assert (state["epoch"], state["batches_in_epoch"]) == (1, 1)
    resumed = _train_iterator(config, examples, seed=3, state=state)
    _assert_batches_equal(_take(resumed, 3), uninterrupted[4:])
    assert resumed.get_state()["epoch"] == 2 and resumed.get_state()["batches_in_epoch"] == 1
    with pytest.raises(ValueError, match="seed"):
        _train_iterator(config, examples, seed=4, state=state)


def test_spec_augment_in_training_only_masks_bands(config):
    """All examples share one waveform: training audio differs from it only in masked bands."""
    examples = [e for e in _examples(config, n=20) if e["has_audio"]][:12]
    for e in examples:
        e["waveform"] = examples[0]["waveform"]
    base = _eval_batches(config, examples[:1])[0]["audio"][0]
    audio = np.concatenate([b["audio"] for b in _take(_train_iterator(config, examples), 3)])
    widths = []
    padding = np.all(base == 0, axis=1)  # frames past the waveform: 0 like the masks
    assert padding.sum() == config.model.audio.num_frames - 98  # 1 s: 98 Kaldi frames
    for features in audio:
        time_masked = np.all(features == 0, axis=1) & ~padding
        freq_masked = np.all(features[~padding] == 0, axis=0)
        changed = features != base
        assert np.all(~changed | time_masked[:, None] | freq_masked[None, :])
        (t,), (f,) = np.nonzero(time_masked), np.nonzero(freq_masked)
        assert len(t) <= config.data.spec_time_mask and len(f) <= config.data.spec_freq_mask
        widths.append((len(t), len(f)))
    assert max(widths) > (0, 0)


# ------------------------------------------------------------------------------------------------
# Through a TFDS builder: shards split over processes.
# ------------------------------------------------------------------------------------------------


def _fixture_builder_class(config):
    c = config.model.num_classes
    image = tfds.features.Sequence(
        tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
    )
    features = tfds.features.FeaturesDict(
        {
            "video_id": tfds.features.Text(),
            "timestamp": np.int64,
            "frames": image,
            "scene_frames": image,
            "waveform": tfds.features.Tensor(shape=(None,), dtype=np.int16),
            "has_audio": np.bool_,
            "gt_boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
            "gt_labels": tfds.features.Tensor(shape=(None, c), dtype=np.int8),
            "proposals": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
            "proposal_scores": tfds.features.Tensor(shape=(None,), dtype=np.float32),
            "targets": tfds.features.Tensor(shape=(None, c), dtype=np.int8),
        }
    )

    class PipelineTestFixture(tfds.core.GeneratorBasedBuilder):
        """13 train and 7 val examples of the SCHEMA.md features."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples(0, NUM_EXAMPLES),
                "val": self._generate_examples(NUM_EXAMPLES, 7),
            }

        def _generate_examples(self, start, n):
            for example in _examples(config, n=start + n)[start:]:
                for key in ("frames", "scene_frames"):
                    example[key] = [io.BytesIO(jpeg) for jpeg in example[key]]
                yield example["video_id"], example

    return PipelineTestFixture


@pytest.fixture(scope="module")
def builder(config, tmp_path_factory):
    builder = _fixture_builder_class(config)(data_dir=str(tmp_path_factory.mktemp("tfds")))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=3))
    assert builder.info.splits["train"].num_shards == 3
    return builder


def test_builder_train_iterator_per_process(builder):
    config = _config()
    config.batch_size = 4  # 2 per process: 3 batches per epoch of the 6 examples of a process

    def iterator(process_index, state=None):
        return input_pipeline.create_train_iterator(
            config,
            seed=0,
            process_index=process_index,
            process_count=2,
            builder=builder,
            state=state,
        )

    runs = []
    for p in range(2):
        it = iterator(p)
        assert it.batches_per_epoch == (NUM_EXAMPLES // 2) // 2 == 3
        runs.append(_take(it, 2))
        _assert_layout(runs[p][0], _expected_layout(config, 2, eval_keys=False))
    assert not np.array_equal(runs[0][0]["video"], runs[1][0]["video"])
    resumed = iterator(1, state=it.get_state())
    again = iterator(1)
    _assert_batches_equal(_take(again, 2), runs[1])  # shuffled files, still deterministic
    _assert_batches_equal(_take(resumed, 1), _take(again, 1))


def test_builder_eval_iterator_covers_split_once_over_processes(config, builder):
    iterators = [
        input_pipeline.create_eval_iterator(
            config, "val", batch_size=3, process_index=p, process_count=2, builder=builder
        )
        for p in range(2)
    ]
    assert [it.num_examples for it in iterators] == [4, 3]
    assert [len(it) for it in iterators] == [2, 2]  # ceil(4 / 3) on both processes
    ids = []
    for it in iterators:
        for _ in range(2):  # re-iterable: the second pass is the same
            batches = list(it)
            assert len(batches) == len(it)
            mask = np.concatenate([b["example_mask"] for b in batches])
        ids += list(np.concatenate([b["video_id"] for b in batches])[mask])
    expected = [f"video{i:03d}".encode() for i in range(NUM_EXAMPLES, NUM_EXAMPLES + 7)]
    assert sorted(ids) == expected


def test_circle_stays_round_on_a_16_9_frame():
    """A circle on a 640 x 360 frame is still a circle on the video canvas (resized by its short
    side, padded, never stretched), and its box lands on it through ``frame_extent``; flipped
    too. The scene frames are squashed to S x S on purpose (BLIP's test transform)."""
    config = _config()
    config.model.video.image_size = (64, 128)  # 16:9 at short side 64 is 64 x 114
    config.data.short_side = config.data.eval_short_side = 64
    config.data.flip_prob = 1.0
    h, w, cx, cy, r = 360, 640, 420.0, 160.0, 90.0
    yy, xx = np.mgrid[:h, :w] + 0.5
    image = np.where(((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r)[..., None], 255, 0)
    box = np.array([(cx - r) / w, (cy - r) / h, (cx + r) / w, (cy + r) / h], np.float32)
    examples = _examples(config, n=BATCH, image=image.astype(np.uint8))
    for e in examples:
        e["proposals"], e["proposal_scores"] = box[None], np.ones(1, np.float32)
        e["targets"] = np.ones((1, config.model.num_classes), np.int8)
    flipped = np.array([1 - box[2], box[1], 1 - box[0], box[3]])
    for batch, expected in (
        (_eval_batches(config, examples)[0], box),
        (next(_train_iterator(config, examples)), flipped),
    ):
        np.testing.assert_allclose(batch["frame_extent"][0, 3] - batch["frame_extent"][0, 1], 1)
        np.testing.assert_allclose(
            batch["frame_extent"][0, 2] - batch["frame_extent"][0, 0], 114 / 128
        )
        disc = batch["video"][0, 0].mean(axis=-1) > 127  # (64, 128)
        rows, cols = np.flatnonzero(disc.any(axis=1)), np.flatnonzero(disc.any(axis=0))
        height, width = rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]
        assert abs(width - height) <= 1 and abs(height - 2 * r * 64 / h) <= 1.5, (width, height)
        assert abs(disc.sum() / (np.pi * (r * 64 / h) ** 2) - 1) < 0.08  # round, and full
        x1, y1, x2, y2 = _canvas_box(np.asarray(batch["boxes"][0, 0]), batch["frame_extent"][0])
        np.testing.assert_allclose(batch["boxes"][0, 0], expected, atol=1e-6)
        np.testing.assert_allclose(
            [x1 * 128, y1 * 64, x2 * 128, y2 * 64],
            [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1],
            atol=1.0,
        )


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A JPEG-decoded image with detail at every scale (smoothed noise, edges and grain)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3), np.float32)
    for cell in (64, 16, 4):
        coarse = rng.uniform(-60, 60, (h // cell + 2, w // cell + 2, 3)).astype(np.float32)
        image += tf.image.resize(coarse[None], (h + 2 * cell, w + 2 * cell))[
            0, cell:-cell, cell:-cell
        ]
    image = np.clip(image + 128 + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    return tf.io.decode_jpeg(tf.io.encode_jpeg(image, quality=90)).numpy()


def test_uint8_resizes_stay_close_to_float_references():
    """What the model sees against float reference resizes of the same decoded JPEG (bounds on
    grey levels, 0-255): the video's uint8 bilinear differs by rounding only; the scene's area
    downscale stays close to BLIP's own transform, PIL's bicubic resize (measured: 0.6 / 0.9 on
    average, 2 / 3 at the 99th percentile, for S = 384 / 192)."""
    from PIL import Image

    photo = _photo(384, 683)
    jpeg = tf.io.encode_jpeg(photo, quality=95)
    decoded = tf.io.decode_jpeg(jpeg).numpy()
    frames, extent = input_pipeline.decode_video(
        tf.stack([jpeg] * 2), num_frames=2, canvas=(224, 400), short_side=224
    )
    reference = tf.image.resize(decoded.astype(np.float32), (224, 398), method="bilinear").numpy()
    np.testing.assert_allclose(extent, [0, 0, 398 / 400, 1])
    assert np.abs(frames[1, :, :398].numpy() - reference).max() <= 0.5 + 1e-3
    for size, mean_bound, p99_bound in ((384, 1.5, 4.0), (192, 1.5, 4.0)):
        scene = input_pipeline.decode_scene(tf.stack([jpeg] * 2), num_frames=2, size=size)
        pil = np.asarray(Image.fromarray(decoded).resize((size, size), Image.BICUBIC), np.float32)
        diff = np.abs(scene[0].numpy().astype(np.float32) - pil)
        assert diff.mean() <= mean_bound and np.percentile(diff, 99) <= p99_bound, (
            size,
            diff.mean(),
            np.percentile(diff, 99),
        )
