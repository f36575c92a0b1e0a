"""models/batch.py's batch_spec is the one description of the batch: it matches data/SCHEMA.md's
table, every consumer derives its layout from it, and a new entry reaches them all."""

import jax
import numpy as np
import pytest
from conftest import random_batch as conftest_batch
from flax import nnx

from configs import synthetic
from jovale_jax import flops, input_pipeline
from jovale_jax.models import JoVALE, batch
from jovale_jax.models.batch import INPUT, OPTIONAL, STEP, Entry


def variant(name: str):
    """config.model of a synthetic test variant: the test preset, without audio, with the
    detector's queries, with the SlowFast video backbone."""
    config = synthetic.get_config("slowfast_test" if name == "slowfast" else "test")
    if name == "no_audio":
        config.model.modalities = ("video", "scene")
    if name == "detector":
        config.model.query_source = "detector"
        config.model.actor.detector_feature_dim = 5
    return config.model


VARIANTS = ("test", "no_audio", "detector", "slowfast")


def test_spec_is_the_schema_table():
    """The synthetic test preset's batch, written out by hand from data/SCHEMA.md."""
    m = variant("test")
    k, c = 4, 6
    expected = {
        "video": ((4, 32, 32, 3), np.uint8),
        "frame_extent": ((4,), np.float32),
        "scene": ((2, 32, 32, 3), np.uint8),
        "audio": ((101, 64), np.float32),
        "audio_mask": ((), np.bool_),
        "boxes": ((k, 4), np.float32),
        "box_mask": ((k,), np.bool_),
        "proposal_scores": ((k,), np.float32),
        "targets": ((k, c), np.float32),
        "example_mask": ((), np.bool_),
    }
    spec = batch.batch_spec(m)
    assert {key: (e.shape, e.dtype) for key, e in spec.items()} == expected
    evaluation = batch.batch_spec(m, training=False)
    assert list(evaluation) == list(expected) + ["video_id", "timestamp"]
    assert [key for key, e in spec.items() if e.use == INPUT] == [
        "video",
        "scene",
        "audio",
        "boxes",
        "box_mask",
    ]
    assert input_pipeline.read_features(synthetic.get_config("test")) == (
        "frames",
        "scene_frames",
        "waveform",
        "has_audio",
        "proposals",
        "proposal_scores",
        "targets",
        "video_id",
        "timestamp",
    )


@pytest.mark.parametrize("name", VARIANTS)
def test_every_consumer_agrees_with_the_spec(name):
    m = variant(name)
    spec = batch.batch_spec(m)
    layout = {key: ((3, *e.shape), np.dtype(e.dtype)) for key, e in spec.items()}
    abstract = flops.abstract_batch(m, 3)  # flops and the JoVALE trace
    assert {key: (s.shape, s.dtype) for key, s in abstract.items()} == {
        key: v for key, v in layout.items() if spec[key].use == INPUT
    }
    step = batch.random_batch(m, 3)  # bench step / forward, and memory's batch (abstract)
    assert {key: (v.shape, v.dtype) for key, v in step.items()} == {
        key: v for key, v in layout.items() if spec[key].use in STEP
    }
    assert set(batch.abstract_batch(m, 3, uses=STEP)) == set(step)
    assert set(batch.model_inputs(m, step)) == {
        key for key, e in spec.items() if e.use in (INPUT, OPTIONAL)
    }
    batch.check_batch(m, step)
    batch.check_batch(m, conftest_batch(m, 2))  # the tests' random batch
    assert ("proposal_features" in spec) == (name == "detector")
    assert ("audio" in spec) == (name != "no_audio")
    # the model takes the abstract batch: logits (B, K, C)
    model = nnx.eval_shape(lambda: JoVALE(m, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    logits = jax.eval_shape(lambda s, b: nnx.merge(graphdef, s)(b), state, abstract)
    assert logits.shape == (3, m.num_proposals, m.num_classes)


def test_check_batch_names_the_key_the_field_and_both_shapes():
    m = variant("detector")
    b = batch.random_batch(m, 2)
    b["proposal_features"] = b["proposal_features"][..., :3]
    with pytest.raises(ValueError) as e:
        batch.check_batch(m, b)
    message = str(e.value)
    for part in (
        "batch['proposal_features']",
        "model.num_proposals/actor.detector_feature_dim",
        "(B, 4, 5)",
        "(2, 4, 3)",
    ):
        assert part in message
    del b["proposal_features"]
    with pytest.raises(ValueError, match=r"lacks 'proposal_features'.*detector_feature_dim"):
        batch.check_batch(m, b)
    b = batch.random_batch(m, 2)
    b["frame_extent"] = b["frame_extent"][:, :2]  # an optional input that is there must fit
    with pytest.raises(ValueError, match=r"batch\['frame_extent'\].*\(B, 4\).*\(2, 2\)"):
        batch.check_batch(m, b)


def test_a_new_model_input_is_one_entry(monkeypatch):
    """An entry added to batch_spec alone is required by the model's check, made by the random
    batches (bench, tests), counted in the abstract ones (flops, memory), passed to the model and
    read from the stored examples."""
    m = variant("test")
    original = batch.batch_spec
    depth = Entry((m.num_proposals, 3), np.float32, "model.num_proposals", INPUT, ("depth",))

    def with_depth(cfg, training=True):
        return {**original(cfg, training), "depth": depth}

    monkeypatch.setattr(batch, "batch_spec", with_depth)
    b = batch.random_batch(m, 2)
    assert b["depth"].shape == (2, 4, 3)
    assert flops.abstract_batch(m, 2)["depth"].shape == (2, 4, 3)
    assert "depth" in batch.model_inputs(m, b)
    assert "depth" in input_pipeline.read_features(synthetic.get_config("test"))
    batch.check_batch(m, b)
    with pytest.raises(ValueError, match=r"batch lacks 'depth', required by config field model"):
        batch.check_batch(m, {k: v for k, v in b.items() if k != "depth"})
    monkeypatch.setattr(batch, "batch_spec", original)
    assert "depth" not in batch.random_batch(m, 2)
