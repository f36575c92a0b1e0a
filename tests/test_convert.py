"""Pretrained-weight conversion: parity with transformers models, full-size key coverage, bad input.

Parity models are transformers PyTorch models built from tiny random configs (no download) with
every parameter randomised (their init leaves biases at zero, which would hide layout errors).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from hf_tiny import (
    BLIP_TEXT,
    DEPTH,
    HEADS,
    MLP,
    TOL,
    VISION,
    W,
    max_diff,
    numpy_state,
    randomise,
    save_random,
    tiny_config,
)

from configs import ava_vitb16
from jovale_jax.convert import (
    ConversionError,
    convert_hf_ast,
    convert_hf_blip,
    convert_hf_videomae,
    convert_main,
    convert_videomae_v2,
    interpolation_matrix,
    load_component,
    load_pretrained,
    read_checkpoint,
    read_state_dict,
    resize_grid,
)
from jovale_jax.convert.common import component_shapes, flatten
from jovale_jax.models import AudioPatchEmbed, BlipVisionEncoder, JoVALE, VideoEncoder
from jovale_jax.models.vit import sincos_table
from jovale_jax.sharding import create_sharded, make_mesh, rules_from_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
F = torch.nn.functional


def hf_videomae(num_frames=4, image_size=(32, 48)):
    cfg = transformers.VideoMAEConfig(
        hidden_size=W,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        intermediate_size=MLP,
        image_size=image_size,
        patch_size=16,
        num_frames=num_frames,
        tubelet_size=2,
        use_mean_pooling=True,
        layer_norm_eps=1e-6,
    )
    return randomise(transformers.VideoMAEModel(cfg))


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    """A tiny BlipForConditionalGeneration saved as a transformers directory (safetensors)."""
    cfg = transformers.BlipConfig(vision_config=VISION, text_config=BLIP_TEXT)
    model = transformers.BlipForConditionalGeneration(cfg)
    return save_random(model, 1, tmp_path_factory.mktemp("blip"))


@pytest.fixture(scope="module")
def ast_dir(tmp_path_factory):
    """A tiny ASTModel (5 x 4 patch grid) saved as a transformers directory."""
    cfg = transformers.ASTConfig(
        hidden_size=W,
        num_hidden_layers=1,
        num_attention_heads=HEADS,
        intermediate_size=MLP,
        patch_size=16,
        frequency_stride=10,
        time_stride=10,
        num_mel_bins=48,
        max_length=64,
    )
    return save_random(transformers.ASTModel(cfg), 2, tmp_path_factory.mktemp("ast"))


def to_videomae_v2(sd: dict[str, np.ndarray], depth: int, num_classes: int = 710) -> dict:
    """transformers VideoMAE names -> the VideoMAE v2 repository's ``modeling_finetune`` names."""
    out = {
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
    }
    parts = {
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "attn.proj": "attention.output.dense",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }
    for i in range(depth):
        hf, v2 = f"encoder.layer.{i}.", f"blocks.{i}."
        a = hf + "attention.attention."
        out[v2 + "attn.qkv.weight"] = np.concatenate(
            [sd[a + n + ".weight"] for n in ("query", "key", "value")]
        )
        out[v2 + "attn.q_bias"], out[v2 + "attn.v_bias"] = (
            sd[a + "query.bias"],
            sd[a + "value.bias"],
        )
        for ours, theirs in parts.items():
            for leaf in ("weight", "bias"):
                out[f"{v2}{ours}.{leaf}"] = sd[f"{hf}{theirs}.{leaf}"]
    width = out["patch_embed.proj.bias"].shape[0]
    out.update(
        {
            "fc_norm.weight": np.ones(width, np.float32),
            "fc_norm.bias": np.zeros(width, np.float32),
            "head.weight": np.zeros((num_classes, width), np.float32),
            "head.bias": np.zeros(num_classes, np.float32),
        }
    )
    return out


# ----------------------------------------------------------------------------- interpolation


@pytest.mark.parametrize("method", ["cubic", "linear", "crop"])
def test_resize_identity(method):
    table = np.random.default_rng(0).normal(size=(5, 7, 3)).astype(np.float32)
    np.testing.assert_array_equal(resize_grid(table, (5, 7), (method, method)), table)


@pytest.mark.parametrize(
    "size_in,size_out",
    [
        ((24, 24), (12, 12)),
        ((24, 24), (18, 18)),
        ((14, 14), (14, 18)),
        ((4, 4), (3, 3)),
        ((5, 4), (9, 7)),
    ],
)
@pytest.mark.parametrize("method,mode", [("cubic", "bicubic"), ("linear", "bilinear")])
def test_resize_matches_torch(size_in, size_out, method, mode):
    table = np.random.default_rng(1).normal(size=size_in + (6,)).astype(np.float32)
    want = (
        F.interpolate(
            torch.from_numpy(table).permute(2, 0, 1)[None],
            size=size_out,
            mode=mode,
            align_corners=False,
        )[0]
        .permute(1, 2, 0)
        .numpy()
    )
    got = resize_grid(table, size_out, (method, method))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_resize_known_cases():
    np.testing.assert_allclose(
        interpolation_matrix(2, 4, "linear") @ [0.0, 1.0], [0, 0.25, 0.75, 1]
    )
    np.testing.assert_allclose(interpolation_matrix(7, 3, "cubic").sum(1), 1.0)  # keeps constants
    # AST's crop of its 101 time positions to 20: `50 - int(20 / 2)` onwards.
    np.testing.assert_array_equal(
        interpolation_matrix(101, 20, "crop") @ np.arange(101), np.arange(40, 60)
    )


# ----------------------------------------------------------------------------- parity


def test_hf_videomae_parity(tmp_path):
    tm = hf_videomae()
    assert tm.layernorm is None  # use_mean_pooling: last_hidden_state has no final norm
    tm.save_pretrained(tmp_path)
    sd, hf_config = read_state_dict(tmp_path)
    assert any(k.endswith(".q_bias") for k in sd)  # the on-disk names
    cfg = tiny_config().model.video
    converted = convert_hf_videomae(sd, cfg, hf_config)
    in_memory = convert_hf_videomae(numpy_state(tm), cfg, source_grid=(2, 2, 3))  # query.bias
    with pytest.raises(ConversionError, match="no config.json beside the weights"):
        convert_hf_videomae(numpy_state(tm), cfg)  # the grid cannot be known
    with pytest.raises(ConversionError, match=r"\(8, 14, 14\) differs from the grid \(2, 2, 3\)"):
        convert_hf_videomae(sd, cfg, hf_config, source_grid=(8, 14, 14))
    for path, value in flatten(converted.params).items():
        np.testing.assert_array_equal(value, flatten(in_memory.params)[path])
    model = VideoEncoder(cfg, rngs=nnx.Rngs(0))
    load_component(model, converted.params)

    video = np.random.default_rng(0).normal(size=(2, 4, 32, 48, 3)).astype(np.float32)
    with torch.no_grad():
        want = tm(torch.from_numpy(video).permute(0, 1, 4, 2, 3)).last_hidden_state
    diff = max_diff(model(video).reshape(2, -1, W), want)
    print(f"hf_videomae max abs diff {diff:.2e}")
    assert diff <= TOL
    # Checked directly: a key bias or an epsilon would hide in the outputs.
    layers = model.encoder.layers  # stacked: layer 1 is index 1 of the leading axis
    assert layers.attn.key_bias is None and layers.norm1.epsilon == tm.config.layer_norm_eps
    ref = tm.encoder.layer[1].attention.attention
    np.testing.assert_array_equal(
        np.asarray(layers.attn.key_kernel[...][1]).reshape(W, W).T, ref.key.weight.detach().numpy()
    )
    np.testing.assert_array_equal(
        np.asarray(layers.attn.value_bias[...][1]).ravel(), ref.value.bias.detach().numpy()
    )


def test_videomae_v2_pth_parity_through_convert_main(tmp_path):
    tm = hf_videomae(num_frames=16, image_size=224)  # VideoMAE v2's 8 x 14 x 14 token grid
    pth = tmp_path / "vit_b_k710_dl_from_giant.pth"
    v2 = to_videomae_v2(numpy_state(tm), DEPTH)
    torch.save({"module": {k: torch.from_numpy(v) for k, v in v2.items()}}, pth)
    config = tiny_config(num_frames=16, image_size=(224, 224))
    config.model.modalities = ("video",)
    with pytest.raises(ConversionError, match="--source_grid T,H,W"):
        convert_main([("videomae_v2", str(pth))], tmp_path / "out", config)
    manifest = convert_main(
        [("videomae_v2", str(pth))], tmp_path / "out", config, source_grid=(8, 14, 14)
    )
    entry = manifest["components"]["video_encoder"]
    assert entry["used_keys"] + len(entry["unused_keys"]) == len(v2)
    assert sorted(entry["unused_keys"]) == [
        "fc_norm.bias",
        "fc_norm.weight",
        "head.bias",
        "head.weight",
    ]
    model = JoVALE(config.model, rngs=nnx.Rngs(0))
    report = load_pretrained(model, tmp_path / "out")
    assert report["filled"] == ["video_encoder"] and report["not_in_model"] == []

    video = np.random.default_rng(1).normal(size=(1, 16, 224, 224, 3)).astype(np.float32)
    with torch.no_grad():
        want = tm(torch.from_numpy(video).permute(0, 1, 4, 2, 3)).last_hidden_state
    diff = max_diff(model.video_encoder(video).reshape(1, -1, W), want)
    print(f"videomae_v2 max abs diff {diff:.2e}")
    assert diff <= TOL
    np.testing.assert_array_equal(model.video_encoder.pos_embed[...], sincos_table(1568, W))


def test_videomae_v2_table_resized_like_videomae_v2_finetuning():
    """At 224 x 288 the table is VideoMAE v2's fine-tuning recipe (bicubic per frame), widened."""
    cfg = tiny_config(num_frames=16, image_size=(224, 288)).model.video
    sd = to_videomae_v2(numpy_state(hf_videomae(num_frames=16, image_size=224)), DEPTH)
    converted = convert_videomae_v2(sd, cfg, (8, 14, 14))
    table = torch.from_numpy(sincos_table(1568, W)).reshape(8, 14, 14, W).permute(0, 3, 1, 2)
    want = F.interpolate(table, size=(14, 18), mode="bicubic", align_corners=False)
    want = want.permute(0, 2, 3, 1).reshape(-1, W).numpy()
    np.testing.assert_allclose(converted.params["pos_embed"], want, atol=1e-6)
    load_component(VideoEncoder(cfg, rngs=nnx.Rngs(0)), converted.params)
    # Linear in time when the clip length changes (8 -> 4 tubelets).
    cfg.num_frames = 8
    short = convert_videomae_v2(sd, cfg, (8, 14, 14)).params["pos_embed"].reshape(4, 14, 18, W)
    np.testing.assert_allclose(
        short,
        resize_grid(want.reshape(8, 14, 18, W), (4, 14, 18), ("linear", "cubic", "cubic")),
        atol=1e-6,
    )


@pytest.mark.parametrize("image_size", [64, 48])
def test_hf_blip_parity(blip_dir, image_size):
    tm = transformers.BlipForConditionalGeneration.from_pretrained(blip_dir).eval()
    sd, hf_config = read_state_dict(blip_dir)
    cfg = tiny_config().model.scene
    cfg.image_size = image_size  # 48: the 4 x 4 table resized to 3 x 3 (JoVALE@288/@192 style)
    converted = convert_hf_blip(sd, cfg, hf_config)
    assert converted.unused_keys and all(
        k.startswith("text_decoder.") for k in converted.unused_keys
    )
    assert len(converted.used_keys) + len(converted.unused_keys) == len(sd)
    model = BlipVisionEncoder(cfg, rngs=nnx.Rngs(0))
    load_component(model, converted.params)

    frames = np.random.default_rng(2).normal(size=(2, 2, image_size, image_size, 3))
    frames = frames.astype(np.float32)
    with torch.no_grad():
        pixels = torch.from_numpy(frames).reshape(4, image_size, image_size, 3).permute(0, 3, 1, 2)
        want = tm.vision_model(pixels, interpolate_pos_encoding=image_size != 64).last_hidden_state
    diff = max_diff(model(frames).reshape(4, -1, W), want)  # last_hidden_state: post_layernorm'd
    print(f"hf_blip@{image_size} max abs diff {diff:.2e}")
    assert diff <= TOL
    assert model.post_layernorm.epsilon == hf_config["vision_config"]["layer_norm_eps"]
    np.testing.assert_array_equal(
        np.asarray(model.encoder.layers.attn.key_bias[...][0]).ravel(),
        sd["vision_model.encoder.layers.0.self_attn.qkv.bias"][W : 2 * W],
    )


def test_load_keeps_sharding(blip_dir):
    """Loading into a model sharded over the 8 fake devices keeps every variable's sharding."""
    config = tiny_config()
    mesh = make_mesh((2, 4))
    model, _ = create_sharded(
        lambda: BlipVisionEncoder(config.model.scene, rngs=nnx.Rngs(0)),
        mesh,
        rules_from_config(config),
    )
    kernel = model.encoder.layers.attn.query_kernel  # (layers, width, heads, head_dim)
    sharding = kernel[...].sharding
    assert sharding.spec[:3] == (None, None, "model")  # heads over 'model'
    sd, hf_config = read_state_dict(blip_dir)
    converted = convert_hf_blip(sd, config.model.scene, hf_config)
    load_component(model, converted.params)
    kernel = model.encoder.layers.attn.query_kernel[...]
    assert kernel.sharding == sharding
    np.testing.assert_array_equal(
        kernel, converted.params["encoder"]["layers"]["attn"]["query_kernel"]
    )


def test_hf_blip_config_mismatch_is_named(blip_dir):
    sd, hf_config = read_state_dict(blip_dir)
    cfg = tiny_config().model.scene
    cfg.num_heads = 2  # invisible in the shapes
    with pytest.raises(ConversionError, match="num_attention_heads = 4, the config needs 2"):
        convert_hf_blip(sd, cfg, hf_config)


def test_config_json_sizes_are_read_and_differences_named(blip_dir, tmp_path):
    """A checkpoint of another size converts in one command: the sizes come from config.json,
    and the manifest / summary name the overrides that build the matching model."""
    from jovale_jax.convert.io import summary

    config = tiny_config()
    config.model.scene.update(width=64, depth=3, num_heads=2, mlp_dim=128)  # not the checkpoint's
    manifest = convert_main([("hf_blip", str(blip_dir))], tmp_path / "out", config)
    assert manifest["components"]["scene_encoder"]["differs_from_preset"] == {
        "model.scene.width": [64, W],
        "model.scene.depth": [3, DEPTH],
        "model.scene.num_heads": [2, HEADS],
        "model.scene.mlp_dim": [128, MLP],
    }
    assert (
        f"train with --config.model.scene.width={W} --config.model.scene.depth={DEPTH} "
        f"--config.model.scene.num_heads={HEADS} --config.model.scene.mlp_dim={MLP}"
    ) in summary(manifest, tmp_path / "out")
    config.model.scene.update(width=W, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP)
    encoder = nnx.eval_shape(lambda: BlipVisionEncoder(config.model.scene, rngs=nnx.Rngs(0)))
    load_component(encoder, read_checkpoint(tmp_path / "out")["scene_encoder"])


def test_hf_ast_parity(ast_dir):
    tm = transformers.ASTModel.from_pretrained(ast_dir).eval()
    sd, hf_config = read_state_dict(ast_dir)
    cfg = tiny_config().model.audio  # 64 frames x 48 mel: AST's own 5 x 4 grid
    converted = convert_hf_ast(sd, cfg, hf_config)
    model = AudioPatchEmbed(cfg, rngs=nnx.Rngs(0))
    load_component(model, converted.params)
    spec = np.random.default_rng(3).normal(size=(2, 64, 48)).astype(np.float32)
    with torch.no_grad():
        tokens = tm.embeddings(torch.from_numpy(spec))[:, 2:]  # patches + position, no CLS/dist
    want = tokens.reshape(2, 4, 5, W).permute(0, 2, 1, 3)  # frequency-major -> (time, freq)
    diff = max_diff(model(spec), want)
    print(f"hf_ast max abs diff {diff:.2e}")
    assert diff <= TOL

    table = tm.embeddings.position_embeddings.detach()[0, 2:].reshape(4, 5, W)  # (freq, time)
    shorter, longer = cfg.copy_and_resolve_references(), cfg.copy_and_resolve_references()
    shorter.num_frames, longer.num_frames = 44, 104  # 3 and 9 time patches
    got = convert_hf_ast(sd, shorter, hf_config).params["position_embedding"]
    assert got.shape == (3, 4, W)  # AST's crop: centre time positions 5 // 2 - 3 // 2 = 1 ..
    np.testing.assert_array_equal(got, table[:, 1:4].permute(1, 0, 2).numpy())
    got = convert_hf_ast(sd, longer, hf_config).params["position_embedding"]
    grown = (
        F.interpolate(
            table.permute(2, 0, 1)[None], size=(4, 9), mode="bilinear", align_corners=False
        )[0]
        .permute(2, 1, 0)
        .numpy()
    )
    np.testing.assert_allclose(got, grown, atol=1e-6)  # AST's growth: bilinear


def test_hf_ast_separate_time_and_frequency_strides():
    """AST's tstride and fstride may differ: model.audio.time_stride / freq_stride."""
    hf = transformers.ASTConfig(
        hidden_size=W,
        num_hidden_layers=1,
        num_attention_heads=HEADS,
        intermediate_size=MLP,
        patch_size=16,
        frequency_stride=8,
        time_stride=12,
        num_mel_bins=48,
        max_length=64,
    )
    tm = randomise(transformers.ASTModel(hf), 3)
    cfg = tiny_config().model.audio
    cfg.update(time_stride=12, freq_stride=8)  # (64 - 16) // 12 + 1 = 5 x (48 - 16) // 8 + 1 = 5
    model = AudioPatchEmbed(cfg, rngs=nnx.Rngs(0))
    load_component(model, convert_hf_ast(numpy_state(tm), cfg, hf.to_dict()).params)
    spec = np.random.default_rng(4).normal(size=(2, 64, 48)).astype(np.float32)
    with torch.no_grad():
        tokens = tm.embeddings(torch.from_numpy(spec))[:, 2:]
    want = tokens.reshape(2, 5, 5, W).permute(0, 2, 1, 3)  # (freq, time) -> (time, freq)
    assert max_diff(model(spec), want) <= TOL
    cfg.update(time_stride=8, freq_stride=12)  # swapped: refused, naming both fields
    with pytest.raises(ConversionError, match="time_stride = 12, the config needs 8"):
        convert_hf_ast(numpy_state(tm), cfg, hf.to_dict())


# ----------------------------------------------------------------------------- full size


def videomae_v2_vit_b() -> dict[str, np.ndarray]:
    """Key names and shapes of VideoMAE v2's ``vit_base_patch16_224`` with a K710 head."""
    sd = {
        "patch_embed.proj.weight": (768, 3, 2, 16, 16),
        "patch_embed.proj.bias": (768,),
        "fc_norm.weight": (768,),
        "fc_norm.bias": (768,),
        "head.weight": (710, 768),
        "head.bias": (710,),
    }
    for i in range(12):
        b = f"blocks.{i}."
        sd.update(
            {
                b + "attn.qkv.weight": (2304, 768),
                b + "attn.q_bias": (768,),
                b + "attn.v_bias": (768,),
                b + "attn.proj.weight": (768, 768),
                b + "attn.proj.bias": (768,),
                b + "mlp.fc1.weight": (3072, 768),
                b + "mlp.fc1.bias": (3072,),
                b + "mlp.fc2.weight": (768, 3072),
                b + "mlp.fc2.bias": (768,),
            }
        )
        sd.update(
            {f"{b}{n}.{leaf}": (768,) for n in ("norm1", "norm2") for leaf in ("weight", "bias")}
        )
    return {k: np.zeros(s, np.float32) for k, s in sd.items()}


def meta_state_dict(model_cls, config) -> dict[str, np.ndarray]:
    """Real key names and shapes of a transformers model, built on the meta device (no memory);
    the zeros are only touched where a converter reads them."""
    with torch.device("meta"):
        model = model_cls(config)
    return {k: np.zeros(tuple(v.shape), np.float32) for k, v in model.state_dict().items()}


def test_full_size_coverage():
    cfg = ava_vitb16.get_config().model  # video 16 x 224 x 400, BLIP 384, audio 214 x 128
    sources = {  # JoVALE's attribute: (converter, state dict, config section, module)
        "video_encoder": (convert_videomae_v2, videomae_v2_vit_b(), cfg.video, VideoEncoder),
        "scene_encoder": (
            convert_hf_blip,
            meta_state_dict(transformers.BlipForConditionalGeneration, transformers.BlipConfig()),
            cfg.scene,
            BlipVisionEncoder,
        ),
        "audio_embed": (
            convert_hf_ast,
            meta_state_dict(transformers.ASTForAudioClassification, transformers.ASTConfig()),
            cfg.audio,
            AudioPatchEmbed,
        ),
    }
    unused_prefixes = {
        "video_encoder": ("fc_norm.", "head."),
        "scene_encoder": ("text_decoder.",),
        "audio_embed": (
            "audio_spectrogram_transformer.embeddings.cls_token",
            "audio_spectrogram_transformer.embeddings.distillation",
            "audio_spectrogram_transformer.layers.",
            "audio_spectrogram_transformer.layernorm.",
            "classifier.",
        ),
    }
    for component, (convert, sd, section, module_cls) in sources.items():
        grid = {"source_grid": (8, 14, 14)} if component == "video_encoder" else {}
        converted = convert(sd, section, **grid)
        assert converted.component == component
        used, unused = set(converted.used_keys), set(converted.unused_keys)
        assert not used & unused and used | unused == set(sd), component
        assert all(k.startswith(unused_prefixes[component]) for k in unused), component
        got = {p: v.shape for p, v in flatten(converted.params).items()}
        assert got == component_shapes(module_cls, section), component
        print(
            f"{component}: {len(used)} keys used, {len(unused)} unused, {len(got)} parameters, "
            f"{sum(math.prod(s) for s in got.values()) / 1e6:.1f}M values"
        )
    assert (
        len(
            sources["audio_embed"][1][
                "audio_spectrogram_transformer.embeddings.position_embeddings"
            ][0]
        )
        == 2 + 1212
    )
    blip192 = ava_vitb16.get_config("blip192").model.scene
    table = convert_hf_blip(sources["scene_encoder"][1], blip192).params["position_embedding"]
    assert table.shape == (1 + 12 * 12, 768)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "fault,message",
    [
        ("missing", r"missing key 'blocks\.1\.mlp\.fc2\.bias' \(expected shape \(32,\)\)"),
        ("extra", r"unexpected key 'blocks\.0\.gamma_1' with shape \(32,\)"),
        ("shape", r"key 'blocks\.0\.attn\.q_bias' has shape \(31,\), expected \(32,\)"),
    ],
)
def test_bad_checkpoint_fails_before_writing(tmp_path, ast_dir, fault, message):
    from safetensors.numpy import save_file

    sd = to_videomae_v2(numpy_state(hf_videomae()), DEPTH)
    if fault == "missing":
        del sd["blocks.1.mlp.fc2.bias"]
    elif fault == "extra":
        sd["blocks.0.gamma_1"] = np.ones(W, np.float32)
    else:
        sd["blocks.0.attn.q_bias"] = np.zeros(W - 1, np.float32)
    save_file(sd, tmp_path / "v2.safetensors")
    out = tmp_path / "out"
    sources = [("hf_ast", str(ast_dir)), ("videomae_v2", str(tmp_path / "v2.safetensors"))]
    with pytest.raises(ConversionError, match=message):
        convert_main(sources, out, tiny_config(), source_grid=(2, 2, 3))
    assert not out.exists()


def test_combined_sources_load_partially(tmp_path, blip_dir, ast_dir):
    config = tiny_config()
    out = tmp_path / "out"
    manifest = convert_main([("hf_blip", str(blip_dir)), ("hf_ast", str(ast_dir))], out, config)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["components"]["scene_encoder"]["position_table"]["methods"] == "identity"
    with pytest.raises(ValueError, match="both convert scene_encoder"):
        convert_main([("hf_blip", str(blip_dir))] * 2, tmp_path / "twice", config)
    with pytest.raises(FileExistsError, match="not empty: pass --overwrite"):
        convert_main([("hf_ast", str(ast_dir))], out, config)
    with pytest.raises(FileExistsError, match="not a converted checkpoint"):
        convert_main([("hf_ast", str(ast_dir))], tmp_path, config, overwrite=True)
    replaced = convert_main([("hf_ast", str(ast_dir))], tmp_path / "again", config)
    assert (
        convert_main([("hf_ast", str(ast_dir))], tmp_path / "again", config, overwrite=True)
        == replaced
    )

    config.model.modalities = ("video", "scene")  # no audio stream in this model
    model = JoVALE(config.model, rngs=nnx.Rngs(0))
    before = np.asarray(model.video_encoder.patch_kernel[...]).copy()
    report = load_pretrained(model, out)
    assert report == {
        "filled": ["scene_encoder"],
        "not_in_model": ["audio_embed"],
        "not_in_checkpoint": ["video_encoder"],
    }
    np.testing.assert_array_equal(model.video_encoder.patch_kernel[...], before)
    saved = read_checkpoint(out)["scene_encoder"]
    np.testing.assert_array_equal(
        model.scene_encoder.position_embedding[...], saved["position_embedding"]
    )


def test_safetensors_directory_needs_no_torch(tmp_path, blip_dir, ast_dir):
    code = (
        "import sys\n"
        "from configs import synthetic\n"
        "from jovale_jax.convert import convert_main\n"
        "c = synthetic.get_config('test')\n"
        f"c.model.scene.update(width={W}, depth={DEPTH}, num_heads={HEADS}, mlp_dim={MLP}, "
        "image_size=64)\n"
        f"c.model.audio.update(width={W}, num_frames=64, num_mel_bins=48)\n"
        f"convert_main([('hf_blip', {str(blip_dir)!r}), ('hf_ast', {str(ast_dir)!r})], "
        f"{str(tmp_path / 'out')!r}, c)\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "torch imported: False"


def test_relative_out_and_weights_of_other_sizes_name_the_fields(blip_dir, tmp_path, monkeypatch):
    """Issue 25 items 1 and 8: a relative output folder converts (orbax takes absolute paths
    only); a failed write leaves no half-written folder; loading into a model of another width
    or layer_norm_eps names the config fields and the overrides to train with."""
    import orbax.checkpoint as ocp

    monkeypatch.chdir(tmp_path)
    config = tiny_config()
    convert_main([("hf_blip", str(blip_dir))], "runs/pretrained", config)
    assert sorted(p.name for p in (tmp_path / "runs" / "pretrained").iterdir()) == [
        "manifest.json",
        "params",
    ]
    config.model.scene.update(width=2 * W, layer_norm_eps=1e-12)
    model = nnx.eval_shape(lambda: JoVALE(config.model, rngs=nnx.Rngs(0)))
    eps = transformers.BlipVisionConfig().layer_norm_eps
    with pytest.raises(ConversionError) as error:
        load_pretrained(model, "runs/pretrained")
    assert str(error.value) == (
        f"runs/pretrained's scene_encoder was converted for model.scene.layer_norm_eps {eps} "
        f"(this config: 1e-12), model.scene.width {W} (this config: {2 * W}): train with "
        f"--config.model.scene.layer_norm_eps={eps} --config.model.scene.width={W}"
    )

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ocp.PyTreeCheckpointer, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        convert_main([("hf_blip", str(blip_dir))], "runs/again", tiny_config())
    assert not (tmp_path / "runs" / "again").exists()
