"""Supplementary Table 4's scene encoders: `hf_blip_itm` and `hf_clip` against transformers."""

import numpy as np
import pytest
from flax import nnx
from hf_tiny import BLIP_TEXT, TEXT, TOL, VISION, W, max_diff, save_random, tiny_config

from jovale_jax.convert import ConversionError, convert_main, load_component, load_pretrained
from jovale_jax.convert.io import convert_source, read_state_dict
from jovale_jax.models import JoVALE
from jovale_jax.models.blip import BlipVisionEncoder
from jovale_jax.models.clip import ClipVisionEncoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def blip_itm_dir(tmp_path_factory):
    """A tiny BlipForImageTextRetrieval saved as a transformers directory."""
    cfg = transformers.BlipConfig(
        vision_config=VISION, image_text_hidden_size=16, text_config=BLIP_TEXT
    )
    model = transformers.BlipForImageTextRetrieval(cfg)
    return save_random(model, 3, tmp_path_factory.mktemp("blip_itm"))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny CLIPModel (vision tower at 64 x 64, 16 x 16 patches) saved as a directory."""
    cfg = transformers.CLIPConfig(
        vision_config={**VISION, "hidden_act": "quick_gelu"}, projection_dim=16, text_config=TEXT
    )
    return save_random(transformers.CLIPModel(cfg), 4, tmp_path_factory.mktemp("clip"))


def scene_config(encoder: str, image_size: int):
    c = tiny_config()
    c.model.scene.update(encoder=encoder, image_size=image_size)
    return c


def converted_encoder(source: str, path, encoder: str, image_size: int):
    """(the conversion, (state dict, HF config), our scene encoder loaded with it); every key of
    the checkpoint is used or reported unused."""
    c = scene_config(encoder, image_size)
    converted = convert_source(source, path, c.model)
    sd, hf_config = read_state_dict(path)
    assert len(converted.used_keys) + len(converted.unused_keys) == len(sd)
    cls = {"blip": BlipVisionEncoder, "clip": ClipVisionEncoder}[encoder]
    model = cls(c.model.scene, rngs=nnx.Rngs(0))
    load_component(model, converted.params)
    return converted, (sd, hf_config), model


def frames_and_pixels(image_size: int):
    frames = np.random.default_rng(2).normal(size=(2, 2, image_size, image_size, 3))
    frames = frames.astype(np.float32)
    pixels = torch.from_numpy(frames).reshape(4, image_size, image_size, 3).permute(0, 3, 1, 2)
    return frames, pixels


@pytest.mark.parametrize("image_size", [64, 48])
def test_hf_blip_itm_parity(blip_itm_dir, image_size):
    tm = transformers.BlipForImageTextRetrieval.from_pretrained(blip_itm_dir).eval()
    converted, _, model = converted_encoder("hf_blip_itm", blip_itm_dir, "blip", image_size)
    assert converted.source == "hf_blip_itm" and converted.unused_keys
    assert all(
        k.split(".")[0] in ("text_encoder", "vision_proj", "text_proj", "itm_head")
        for k in converted.unused_keys
    )
    frames, pixels = frames_and_pixels(image_size)
    with torch.no_grad():
        want = tm.vision_model(pixels, interpolate_pos_encoding=image_size != 64).last_hidden_state
    diff = max_diff(model(frames).reshape(4, -1, W), want)
    print(f"hf_blip_itm@{image_size} max abs diff {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize("image_size", [64, 48])
def test_hf_clip_parity(clip_dir, image_size):
    """Every token equals transformers' last_hidden_state through its own post_layernorm."""
    tm = transformers.CLIPModel.from_pretrained(clip_dir).eval()
    converted, (sd, hf_config), model = converted_encoder("hf_clip", clip_dir, "clip", image_size)
    assert all(
        k.split(".")[0] in ("text_model", "visual_projection", "text_projection", "logit_scale")
        for k in converted.unused_keys
    )
    frames, pixels = frames_and_pixels(image_size)
    with torch.no_grad():
        vision = tm.vision_model
        out = vision(pixels, interpolate_pos_encoding=image_size != 64)
        want = vision.post_layernorm(out.last_hidden_state)
        assert torch.allclose(want[:, 0], out.pooler_output)  # HF's pooled token: the same norm
    diff = max_diff(model(frames).reshape(4, -1, W), want)
    print(f"hf_clip@{image_size} max abs diff {diff:.2e}")
    assert diff <= TOL
    np.testing.assert_array_equal(  # the q/k/v projections land where they belong
        np.asarray(model.encoder.layers.attn.key_bias[...][1]).ravel(),
        sd["vision_model.encoder.layers.1.self_attn.k_proj.bias"],
    )
    assert hf_config["vision_config"]["hidden_act"] == "quick_gelu"


def test_scene_checkpoint_of_the_wrong_kind(tmp_path, clip_dir, blip_itm_dir):
    """At conversion and at loading, the error names model.scene.encoder, its allowed values and
    the configured one."""
    c = scene_config("blip_captioner", 64)
    with pytest.raises(
        ConversionError,
        match=r"'hf_clip' scene encoder, which config field "
        r"model\.scene\.encoder = 'clip' takes; the config "
        r"has 'blip_captioner' \(allowed values "
        r"\('blip_captioner', 'blip', 'clip'\)",
    ):
        convert_source("hf_clip", clip_dir, c.model)
    out = tmp_path / "itm"
    convert_main([("hf_blip_itm", str(blip_itm_dir))], out, scene_config("blip", 64))
    c.model.modalities = ("scene",)
    model = JoVALE(c.model, rngs=nnx.Rngs(0))
    with pytest.raises(
        ConversionError,
        match=r"'hf_blip_itm' scene encoder, which config field "
        r"model\.scene\.encoder = 'blip' takes; the config "
        r"has 'blip_captioner'",
    ):
        load_pretrained(model, out)
    c.model.scene.encoder = "blip"
    report = load_pretrained(JoVALE(c.model, rngs=nnx.Rngs(0)), out)
    assert report["filled"] == ["scene_encoder"]
    c.model.scene.encoder = "vit"
    with pytest.raises(
        ValueError,
        match=r"model\.scene\.encoder: expected one of \("
        r"'blip_captioner', 'blip', 'clip'\), got 'vit'",
    ):
        JoVALE(c.model, rngs=nnx.Rngs(0))
