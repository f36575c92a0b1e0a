"""SlowFast backbone: parity with pytorchvideo's SlowFast (R50 and R101, detection res5), the
PySlowFast / ACAR-Net / pytorchvideo key layouts, JoVALE with SlowFast (full-size shapes, every
modality subset with video, sharding, training) and the errors on bad input.

pytorchvideo's head imports ``torchvision.ops.RoIAlign`` and no torchvision wheel loads next to the
CPU torch here, so a stand-in ``torchvision.ops`` is in ``sys.modules`` while it is imported (the
backbone never touches it; ``jovale_jax.bench.peers.torchvision_ops_stand_in``).
"""

import functools
import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_batch
from flax import nnx

from configs import ava_sf_r50, ava_sf_r101, common, jhmdb21, synthetic, ucf24
from jovale_jax import sharding
from jovale_jax.bench.peers import torchvision_ops_stand_in
from jovale_jax.convert import ConversionError, convert_source, load_component
from jovale_jax.convert.slowfast import convert_slowfast
from jovale_jax.models import JoVALE, SlowFast, slowfast
from jovale_jax.models.slowfast import conv3d, conv3d_by_parts, slow_indices

torch = pytest.importorskip("torch")


def _pytorchvideo():
    """pytorchvideo's slowfast module, imported with the bench's torchvision stand-in (removed
    after: transformers, imported by later tests, looks for torchvision)."""
    with torchvision_ops_stand_in():
        from pytorchvideo.models import slowfast

    return slowfast


FRAMES, SIZE, ALPHA = 32, 64, 8  # 32 x 64 x 64 clip: Slow 4 frames, Fast 32, maps 4 x 4
# (depth, fusion kernel, fusion with BatchNorm + ReLU): the R50 of PySlowFast / pytorchvideo and
# the R101 of ACAR-Net's K700 checkpoint (lateral convolutions without BatchNorm).
VARIANTS = {50: (7, True), 101: (5, False)}


def video_config(depth: int, frames: int = FRAMES, size: int = SIZE, alpha: int = ALPHA):
    kernel, bn = VARIANTS[depth]
    cfg = common.base_config().model.video
    cfg.backbone = "slowfast"
    cfg.num_frames, cfg.image_size = frames, (size, size)
    cfg.slowfast.update(depth=depth, alpha=alpha, fusion_kernel=kernel, fusion_bn_relu=bn)
    return cfg


@functools.cache
def build_torch_slowfast(depth: int):
    """pytorchvideo's SlowFast-R{depth}, detection res5 (stride 1, dilation 2), random weights
    and BatchNorm statistics / affine parameters far from their defaults."""
    kernel, bn = VARIANTS[depth]
    pv = _pytorchvideo()
    dil = ((1, 1, 1),) * 3 + ((1, 2, 2),)
    fusion = pv.FastToSlowFusionBuilder(
        slowfast_channel_reduction_ratio=8,
        conv_fusion_channel_ratio=2,
        conv_kernel_size=(kernel, 1, 1),
        conv_stride=(ALPHA, 1, 1),
        norm=torch.nn.BatchNorm3d if bn else None,
        activation=torch.nn.ReLU if bn else None,
        max_stage_idx=3,
    ).create_module
    torch.manual_seed(depth)
    model = pv.create_slowfast(
        model_depth=depth,
        stage_spatial_strides=((1, 2, 2, 1),) * 2,
        stage_conv_b_dilations=(dil, dil),
        slowfast_fusion_conv_stride=(ALPHA, 1, 1),
        slowfast_fusion_conv_kernel_size=(kernel, 1, 1),
        fusion_builder=fusion,
        head_pool_kernel_sizes=(
            (FRAMES // ALPHA, SIZE // 16, SIZE // 16),
            (FRAMES, SIZE // 16, SIZE // 16),
        ),
    ).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm3d):
                n = mod.num_features
                mod.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                mod.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                mod.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                mod.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    return depth, model, state


@pytest.fixture(scope="module", params=[50, 101], ids=["R50", "R101"])
def torch_slowfast(request):
    return build_torch_slowfast(request.param)


def flax_slowfast(cfg, params) -> SlowFast:
    """A SlowFast filled with converted parameters (built abstractly: no random init)."""
    model = nnx.eval_shape(lambda: SlowFast(cfg, rngs=nnx.Rngs(0)))
    load_component(model, params)
    return model


def test_pathways_match_pytorchvideo(torch_slowfast):
    depth, model, state = torch_slowfast
    cfg = video_config(depth)
    converted = convert_slowfast(state, cfg, "pytorchvideo")
    assert all(
        k.startswith("blocks.6.") or k.endswith("num_batches_tracked")
        for k in converted.unused_keys
    )
    x = np.random.default_rng(0).normal(size=(1, FRAMES, SIZE, SIZE, 3)).astype(np.float32)
    with torch.no_grad():
        xt = torch.from_numpy(x).permute(0, 4, 1, 2, 3)
        want = [xt[:, :, slow_indices(FRAMES, ALPHA, "linspace")], xt]
        for block in model.blocks[:5]:  # stem + res2..res5 with their fusions; not the head
            want = block(want)
    encoder = flax_slowfast(cfg, converted.params)
    n_params = sum(v.size for v in jax.tree.leaves(nnx.state(encoder, nnx.Param)))
    assert n_params == sum(
        p.numel() for n, p in model.named_parameters() if not n.startswith("blocks.6.")
    )  # the same network, head aside
    graphdef, weights = nnx.split(encoder)  # one program: op by op, R50 took 6 s instead of 1.3
    slow, fast = jax.jit(lambda w, x: nnx.merge(graphdef, w).pathways(x))(weights, x)
    assert slow.shape == (1, FRAMES // ALPHA, SIZE // 16, SIZE // 16, 2048)
    assert fast.shape == (1, FRAMES, SIZE // 16, SIZE // 16, 256)
    for got, ref in ((slow, want[0]), (fast, want[1])):
        ref = ref.permute(0, 2, 3, 4, 1).numpy()
        assert np.abs(np.asarray(got) - ref).max() <= 1e-4 * np.abs(ref).max()


def test_mac_count_matches_fvcore():
    """`launch.py flops` counts SlowFast's convolutions as fvcore does on pytorchvideo's model."""
    from fvcore.nn import FlopCountAnalysis

    from jovale_jax.flops import count_macs

    _, model, state = build_torch_slowfast(50)
    cfg = video_config(50)
    x = torch.zeros(1, 3, FRAMES, SIZE, SIZE)

    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = model.blocks[:5]  # stem + res2..res5 with their fusions

        def forward(self, slow, fast):
            y = [slow, fast]
            for block in self.blocks:
                y = block(y)
            return y

    idx = torch.from_numpy(slow_indices(FRAMES, ALPHA, "linspace"))
    analysis = FlopCountAnalysis(Backbone(), (x[:, :, idx], x))
    analysis.unsupported_ops_warnings(False)
    want = analysis.by_operator()["conv"]
    encoder = flax_slowfast(cfg, convert_slowfast(state, cfg, "pytorchvideo").params)
    got = count_macs(
        lambda v: encoder.pathways(v), jax.ShapeDtypeStruct((1, FRAMES, SIZE, SIZE, 3), jnp.float32)
    )
    assert got == want


# PySlowFast and ACAR-Net names of the same tensors, from pytorchvideo's names. The test builds
# the state dicts with these tables, independently of the converter's layout functions.
PYSLOWFAST_NAMES = [
    (r"blocks\.0\.multipathway_blocks\.(\d)\.conv\.", r"s1.pathway\1_stem.conv."),
    (r"blocks\.0\.multipathway_blocks\.(\d)\.norm\.", r"s1.pathway\1_stem.bn."),
    (
        r"blocks\.(\d)\.multipathway_fusion\.conv_fast_to_slow\.",
        lambda m: f"s{int(m[1]) + 1}_fuse.conv_f2s.",
    ),
    (r"blocks\.(\d)\.multipathway_fusion\.norm\.", lambda m: f"s{int(m[1]) + 1}_fuse.bn."),
    (
        r"blocks\.(\d)\.multipathway_blocks\.(\d)\.res_blocks\.(\d+)\.branch1_conv\.",
        lambda m: f"s{int(m[1]) + 1}.pathway{m[2]}_res{m[3]}.branch1.",
    ),
    (
        r"blocks\.(\d)\.multipathway_blocks\.(\d)\.res_blocks\.(\d+)\.branch1_norm\.",
        lambda m: f"s{int(m[1]) + 1}.pathway{m[2]}_res{m[3]}.branch1_bn.",
    ),
    (
        r"blocks\.(\d)\.multipathway_blocks\.(\d)\.res_blocks\.(\d+)\.branch2\.conv_(\w)\.",
        lambda m: f"s{int(m[1]) + 1}.pathway{m[2]}_res{m[3]}.branch2.{m[4]}.",
    ),
    (
        r"blocks\.(\d)\.multipathway_blocks\.(\d)\.res_blocks\.(\d+)\.branch2\.norm_(\w)\.",
        lambda m: f"s{int(m[1]) + 1}.pathway{m[2]}_res{m[3]}.branch2.{m[4]}_bn.",
    ),
    (r"blocks\.6\.proj\.", "head.projection."),
]
ACAR_PATHWAY = {"0": "slow", "1": "fast"}
ACAR_NAMES = [
    (r"blocks\.0\.multipathway_blocks\.(\d)\.conv\.", lambda m: f"{ACAR_PATHWAY[m[1]]}_conv1."),
    (r"blocks\.0\.multipathway_blocks\.(\d)\.norm\.", lambda m: f"{ACAR_PATHWAY[m[1]]}_bn1."),
    (r"blocks\.(\d)\.multipathway_fusion\.conv_fast_to_slow\.", None),  # per fusion variant
    (r"blocks\.(\d)\.multipathway_fusion\.norm\.", lambda m: f"Tconv{int(m[1]) + 1}.1."),
    (
        r"blocks\.(\d)\.multipathway_blocks\.(\d)\.res_blocks\.(\d+)\.branch1_conv\.",
        lambda m: f"{ACAR_PATHWAY[m[2]]}_res{m[1]}.{m[3]}.downsample.0.",
    ),
    (
        r"blocks\.(\d)\.multipathway_blocks\.(\d)\.res_blocks\.(\d+)\.branch1_norm\.",
        lambda m: f"{ACAR_PATHWAY[m[2]]}_res{m[1]}.{m[3]}.downsample_bn.",
    ),
    (
        r"blocks\.(\d)\.multipathway_blocks\.(\d)\.res_blocks\.(\d+)\.branch2\.conv_(\w)\.",
        lambda m: f"{ACAR_PATHWAY[m[2]]}_res{m[1]}.{m[3]}.conv{'abc'.index(m[4]) + 1}.",
    ),
    (
        r"blocks\.(\d)\.multipathway_blocks\.(\d)\.res_blocks\.(\d+)\.branch2\.norm_(\w)\.",
        lambda m: f"{ACAR_PATHWAY[m[2]]}_res{m[1]}.{m[3]}.bn{'abc'.index(m[4]) + 1}.",
    ),
]
# A few of the exact names each layout must produce (PySlowFast's SLOWFAST_8x8_R50.pyth and
# ACAR-Net's SLOWFAST_R50_K400 / SLOWFAST_R101_K700.pth.tar use these).
EXPECTED_NAMES = {
    "pyslowfast": [
        "s1.pathway0_stem.conv.weight",
        "s1.pathway1_stem.bn.running_var",
        "s1_fuse.conv_f2s.weight",
        "s4_fuse.bn.weight",
        "s2.pathway0_res0.branch1.weight",
        "s2.pathway0_res0.branch1_bn.running_mean",
        "s3.pathway1_res3.branch2.a.weight",
        "s5.pathway0_res2.branch2.c_bn.bias",
        "head.projection.weight",
    ],
    "acar": [
        "slow_conv1.weight",
        "fast_bn1.running_mean",
        "slow_res1.0.downsample.0.weight",
        "slow_res1.0.downsample_bn.weight",
        "fast_res3.5.conv1.weight",
        "slow_res4.2.bn3.running_var",
    ],
}


def renamed(state, table, fusion_bn):
    out = {}
    for key, value in state.items():
        for pattern, repl in table:
            if repl is None:  # ACAR-Net's lateral conv: Tconv{i}.0 with BatchNorm, else Tconv{i}
                repl = (
                    (lambda m: f"Tconv{int(m[1]) + 1}.0.")
                    if fusion_bn
                    else (lambda m: f"Tconv{int(m[1]) + 1}.")
                )
            new = re.sub("^" + pattern, repl, key)
            if new != key:
                out[new] = value
                break
        else:
            if "blocks.6." not in key:  # ACAR-Net's backbone file has no classifier
                raise AssertionError(f"no renaming rule for {key}")
    return out


def test_pyslowfast_and_acar_layouts(torch_slowfast):
    depth, _, state = torch_slowfast
    cfg = video_config(depth)
    want = convert_slowfast(state, cfg, "pytorchvideo").params
    layouts = {"acar": renamed(state, ACAR_NAMES, VARIANTS[depth][1])}
    if depth == 50:  # PySlowFast's fusion always has BatchNorm + ReLU: the R50 variant
        layouts["pyslowfast"] = renamed(state, PYSLOWFAST_NAMES, True)
    for kind, sd in layouts.items():
        names = EXPECTED_NAMES[kind] + (
            ["Tconv2.1.running_mean"]
            if kind == "acar" and depth == 50
            else ["Tconv3.weight"]
            if kind == "acar"
            else []
        )
        assert set(names) <= set(sd), sorted(set(names) - set(sd))
        got = convert_slowfast(sd, cfg, kind)
        jax.tree.map(np.testing.assert_array_equal, got.params, want)
        assert len(got.used_keys) == len(sd) - len(got.unused_keys)


def test_acar_training_checkpoint(tmp_path):
    """ACAR-Net's own training checkpoints (weights under ``state_dict``, the backbone's keys
    ``module.backbone.module.*``, the head's ``module.head.*``) convert to the backbone's
    parameters."""
    _, _, state = build_torch_slowfast(101)
    backbone = renamed(state, ACAR_NAMES, VARIANTS[101][1])
    cfg = common.base_config().model
    cfg.video = video_config(101)
    weights = {f"module.backbone.module.{k}": torch.from_numpy(v) for k, v in backbone.items()}
    weights["module.head.fc2.weight"] = torch.zeros(60, 512)
    path = tmp_path / "ckpt_5.pth.tar"
    torch.save({"epoch": 5, "state_dict": weights, "optimizer": {}}, path)
    got = convert_source("acar", path, cfg)
    assert [k for k in got.unused_keys if "num_batches" not in k] == ["module.head.fc2.weight"]
    want = convert_slowfast(backbone, cfg.video, "acar").params
    jax.tree.map(np.testing.assert_array_equal, got.params, want)


def test_checkpoint_files_and_depth_mismatch(torch_slowfast, tmp_path):
    depth, _, state = torch_slowfast
    other = 101 if depth == 50 else 50
    pyth = tmp_path / "SLOWFAST.pyth"  # PySlowFast's file layout: weights under model_state
    torch.save(
        {
            "model_state": {k: torch.from_numpy(v) for k, v in state.items()},
            "epoch": 196,
            "cfg": "MODEL: ...",
        },
        pyth,
    )
    model_cfg = common.base_config().model
    model_cfg.video = video_config(depth)
    assert convert_source("pytorchvideo", pyth, model_cfg).component == "video_encoder"
    model_cfg.video = video_config(other)
    with pytest.raises(
        ConversionError,
        match=rf"model.video.slowfast.depth is {other} .* "
        rf"SlowFast-R{depth}",
    ):
        convert_source("pytorchvideo", pyth, model_cfg)
    bad = dict(state)
    key = "blocks.1.multipathway_blocks.1.res_blocks.0.branch2.conv_a.weight"  # Fast, 3 x 1 x 1
    bad[key] = bad[key][:, :, :1]
    bad.pop("blocks.2.multipathway_fusion.norm.running_var", None)
    bad["blocks.1.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ConversionError) as err:
        convert_slowfast(bad, video_config(depth), "pytorchvideo")
    text = str(err.value)
    assert f"{key!r} has shape (8, 8, 1, 1, 1), expected (8, 8, 3, 1, 1)" in text
    assert "unexpected key 'blocks.1.extra.weight'" in text
    if depth == 50:
        assert "missing key 'blocks.2.multipathway_fusion.norm.running_var'" in text


def _pyth(path, state, **recorded):
    """A PySlowFast-style .pyth of ``state`` (pyslowfast names) recording a yacs ``cfg``."""
    from yacs.config import CfgNode

    sections = {"SLOWFAST": {}, "DATA": {}}
    for key, value in recorded.items():
        section, name = key.split("__")
        sections[section][name] = value
    torch.save(
        {
            "model_state": {k: torch.from_numpy(v) for k, v in state.items()},
            "epoch": 196,
            "cfg": CfgNode(sections).dump(),  # as PySlowFast's save_checkpoint writes it
        },
        path,
    )
    return path


def test_pyth_recorded_cfg_must_match_the_config(tmp_path):
    """A .pyth whose recorded ALPHA / BETA_INV / FUSION_KERNEL_SZ / NUM_FRAMES differ from the
    config is refused in one line naming both values, and nothing is written."""
    from jovale_jax.convert import convert_main

    _, _, state = build_torch_slowfast(50)
    sd = renamed(state, PYSLOWFAST_NAMES, True)
    config = common.base_config()
    config.model.video = video_config(50)  # alpha 8, kernel 7, 32 frames: what `sd` is built at
    trained = {"SLOWFAST__BETA_INV": 8, "SLOWFAST__FUSION_KERNEL_SZ": 7, "DATA__NUM_FRAMES": 32}
    good = _pyth(tmp_path / "good.pyth", sd, SLOWFAST__ALPHA=ALPHA, **trained)
    assert convert_source("pyslowfast", good, config.model).component == "video_encoder"
    bad = _pyth(tmp_path / "bad.pyth", sd, SLOWFAST__ALPHA=4, **trained)
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as err:
        convert_main([("pyslowfast", str(bad))], out, config)
    assert str(err.value) == (
        "pyslowfast: the checkpoint was trained otherwise: its cfg SLOWFAST.ALPHA is 4, "
        "config field model.video.slowfast.alpha is 8"
    )
    assert not out.exists()
    config.model.video.update(num_frames=16)
    config.model.video.slowfast.fusion_kernel = 5
    with pytest.raises(ConversionError, match="FUSION_KERNEL_SZ is 7, .*fusion_kernel is 5; "):
        convert_source("pyslowfast", good, config.model)
    with pytest.raises(ConversionError, match=r"NUM_FRAMES is 32, .*model.video.num_frames is 16"):
        convert_source("pyslowfast", good, config.model)


# The checkpoint each SlowFast preset names, and how that checkpoint was trained (read in the
# reference code, 2026-12-03): PySlowFast configs/Kinetics/SLOWFAST_8x8_R50.yaml (ALPHA 4,
# FUSION_KERNEL_SZ 7) and ACAR-Net configs/AVA/SLOWFAST_R50_ACAR_HR2O.yaml (alpha 4,
# fuse_kernel_size 7, fuse_only_conv False, slow_full_span True); ACAR-Net
# configs/AVA/SLOWFAST_R101_ACAR_HR2O_DEPTH1.yaml (alpha 4; the defaults fuse_kernel_size 5,
# fuse_only_conv True, slow_full_span False). Slow frames: PySlowFast's pack_pathway_output and
# ACAR's slow_full_span take torch.linspace(0, T - 1, T // alpha).long(), ACAR's default
# input[:, :, ::alpha].
TRAINED_AS = {
    "R50 K400 (PySlowFast / ACAR-Net)": {"alpha": 4, "kernel": 7, "bn": True, "slow": "linspace"},
    "R101 K700 (ACAR-Net)": {"alpha": 4, "kernel": 5, "bn": False, "slow": "stride"},
}
PRESETS = [
    (ava_sf_r50, "R50 K400 (PySlowFast / ACAR-Net)"),
    (ava_sf_r101, "R101 K700 (ACAR-Net)"),
    (ucf24, "R101 K700 (ACAR-Net)"),
    (jhmdb21, "R101 K700 (ACAR-Net)"),
]


@pytest.mark.parametrize("preset,checkpoint", PRESETS, ids=[p.__name__ for p, _ in PRESETS])
def test_presets_use_their_checkpoints_temporal_geometry(preset, checkpoint):
    from jovale_jax.models.slowfast import slowfast_grid

    want = TRAINED_AS[checkpoint]
    video = preset.get_config().model.video
    sf = video.slowfast
    assert (sf.alpha, sf.fusion_kernel, sf.fusion_bn_relu) == (
        want["alpha"],
        want["kernel"],
        want["bn"],
    )
    assert sf.slow_sampling == want["slow"]
    t = torch.arange(video.num_frames)
    ref = (
        torch.linspace(0, video.num_frames - 1, video.num_frames // sf.alpha).long()
        if want["slow"] == "linspace"
        else t[:: sf.alpha]
    )
    got = slow_indices(video.num_frames, sf.alpha, sf.slow_sampling)
    np.testing.assert_array_equal(got, ref.numpy())
    assert len(got) == 8 and slowfast_grid(video)[0] == 4  # 8 Slow frames averaged to T_v = 4


@pytest.mark.parametrize(
    "kernel,stride,dilation",
    [
        ((1, 1, 1), (1, 1, 1), (1, 1, 1)),  # bottleneck
        ((1, 1, 1), (1, 2, 2), (1, 1, 1)),  # strided shortcut
        ((3, 1, 1), (1, 1, 1), (1, 1, 1)),  # temporal
        ((5, 1, 1), (2, 1, 1), (1, 1, 1)),  # lateral connection, alpha 2
        ((3, 1, 1), (1, 1, 1), (2, 1, 1)),  # dilated in time
        ((1, 3, 3), (1, 2, 2), (1, 1, 1)),  # spatial, strided
        ((1, 3, 3), (1, 1, 1), (1, 2, 2)),  # res5, dilated
        ((5, 7, 7), (1, 2, 2), (1, 1, 1)),  # Fast stem
        ((3, 3, 3), (2, 2, 1), (1, 2, 1)),  # none of SlowFast's: the general case
    ],
)
def test_conv3d_by_parts_matches_a_3d_convolution(kernel, stride, dilation):
    """The matrix-product / 2D forms give XLA's own 3D convolution (PyTorch padding), values
    and both gradients, on a clip whose sizes are odd and not square."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 9, 11, 10, 3)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(*kernel, 3, 4)), jnp.float32)
    padding = [(s // 2 * d,) * 2 for s, d in zip(kernel, dilation, strict=True)]

    def reference(x, k):
        return jax.lax.conv_general_dilated(
            x,
            k,
            stride,
            padding,
            rhs_dilation=dilation,
            dimension_numbers=("NTHWC", "THWIO", "NTHWC"),
        )

    def ours(x, k):
        return conv3d_by_parts(x, k, stride, dilation)

    want, got = reference(x, k), ours(x, k)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    cotangent = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
    for fn_want, fn_got in zip(
        jax.vjp(reference, x, k)[1](cotangent), jax.vjp(ours, x, k)[1](cotangent), strict=True
    ):
        np.testing.assert_allclose(fn_got, fn_want, rtol=1e-4, atol=1e-3)
    # The layers' conv3d: by parts here; on a GPU, one 3D convolution with the same padding.
    np.testing.assert_array_equal(conv3d(x, k, stride, dilation), got)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(slowfast.jax, "default_backend", lambda: "gpu")
        jaxpr = jax.make_jaxpr(lambda x, k: conv3d(x, k, stride, dilation))(x, k)
        np.testing.assert_allclose(conv3d(x, k, stride, dilation), want, rtol=1e-5, atol=1e-5)
    assert [e.primitive.name for e in jaxpr.eqns] == ["conv_general_dilated"]


def test_slow_map_averaged_to_t_v():
    """The encoder's map is the Slow map and the Fast map, each averaged in time to T_v = 4
    (here 8 and 16 steps), concatenated."""
    cfg = video_config(50, frames=16, size=16, alpha=2)  # Slow 8 steps, Fast 16, 1 x 1 maps
    cfg.slowfast.update(stage_blocks=(1, 1, 1, 1), width=8)
    model = SlowFast(cfg, rngs=nnx.Rngs(0))
    video = jnp.asarray(np.random.default_rng(0).normal(size=(1, 16, 16, 16, 3)), jnp.float32)
    graphdef, state = nnx.split(model)
    both = jax.jit(lambda s, v: (nnx.merge(graphdef, s).pathways(v), nnx.merge(graphdef, s)(v)))
    (slow, fast), out = both(state, video)
    assert slow.shape[1] == 8 and fast.shape[1] == 16
    pooled = [x.reshape(1, 4, x.shape[1] // 4, *x.shape[2:]).mean(2) for x in (slow, fast)]
    np.testing.assert_allclose(out, np.concatenate(pooled, -1), rtol=1e-5, atol=1e-6)


def test_bad_inputs_name_the_config_field():
    with pytest.raises(ValueError, match=r"model.video.num_frames: 30 frames .*slowfast.alpha = 8"):
        SlowFast(video_config(50, frames=30), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"slowfast.time_steps: 4 must be between 1 and .* 2 "):
        SlowFast(video_config(50, frames=16), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"model.video.image_size: \(8, 8\) .* stride 16"):
        nnx.eval_shape(lambda: SlowFast(video_config(50, size=8), rngs=nnx.Rngs(0)))
    cfg = video_config(50)
    cfg.slowfast.depth = 34
    with pytest.raises(
        ValueError, match=r"model.video.slowfast.depth: expected one of \[50, 101\], got 34"
    ):
        nnx.eval_shape(lambda: SlowFast(cfg, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize(
    "preset,depth", [(ava_sf_r50, 50), (ava_sf_r101, 101)], ids=["R50", "R101"]
)
def test_full_size_through_eval_shape(preset, depth):
    from jovale_jax.flops import abstract_batch

    cfg = preset.get_config().model
    cfg.modalities = ("video", "audio")  # BLIP's full size is test_models' (and slow to trace)
    model = nnx.eval_shape(lambda: JoVALE(cfg, rngs=nnx.Rngs(0)))
    blocks = [len(s) for s in model.video_encoder.slow_stages]
    assert blocks == {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    graphdef, state = nnx.split(model)

    def run(s, b):
        m = nnx.merge(graphdef, s)
        return m.encode(b), m(b)

    (context, _, fmap), out = jax.eval_shape(run, state, abstract_batch(cfg, 2))
    assert fmap.shape == (2, 4, 16, 29, 2048 + 256)  # T_v = 32 / 4 / 2, 256 x 464 canvas / 16
    assert context["video"].shape == (2, 4, 16 * 29, 256)
    assert out.shape == (2, 15, 60)


def test_presets_follow_supplementary_table_3():
    r50, r101 = ava_sf_r50.get_config(), ava_sf_r101.get_config()
    assert (r50.batch_size, r50.decay_epochs, r50.num_epochs) == (8, (5,), 6)
    assert (r101.batch_size, r101.decay_epochs, r101.num_epochs) == (16, (7,), 8)
    for preset in (ucf24, jhmdb21):
        c = preset.get_config()
        assert c.model.video.backbone == "slowfast" and c.model.video.slowfast.depth == 101
        assert c.model.modalities == ("video", "scene") and c.data.eval_short_side == 256
        assert preset.get_config("vitb").model.video.backbone == "vit"
    # Table 3: UCF101-24 trains at short side 224 and tests at 256; JHMDB51-21 256 for both
    assert (ucf24.get_config().data.short_side, jhmdb21.get_config().data.short_side) == (224, 256)
    for c in (r50, r101):
        assert c.data.short_side == c.data.eval_short_side == 256
        assert tuple(c.model.video.image_size) == (256, 464)  # a 16:9 frame at 256 is 455 wide
        assert (c.model.video.num_frames, c.data.frame_stride) == (32, 2)


VIDEO_SUBSETS = [("video",), ("video", "audio"), ("video", "scene"), ("video", "audio", "scene")]


@pytest.fixture(scope="module")
def slowfast_test_config():
    return synthetic.get_config("slowfast_test")


def test_context_grid_is_the_res5_grid():
    """`synthetic:slowfast` (48 x 64 canvas, ViT patch 8): the video context is SlowFast's 3 x 4
    res5 grid, not the 6 x 8 patch grid; the RoI rows run on it and the fusion stage's MAC count
    from the config equals the traced model's."""
    from jovale_jax.flops import abstract_batch, component_costs, fusion_gmacs
    from jovale_jax.models.jovale import context_grid

    cfg = synthetic.get_config("slowfast").model
    cfg.modalities = ("video", "scene")
    grid = context_grid(cfg)
    assert grid["video"] == (2, 3 * 4)
    for strategy in ("roi_feature_fusion", "roi_relation"):
        cfg.fusion_strategy = strategy
        graphdef, state = nnx.split(nnx.eval_shape(lambda: JoVALE(cfg, rngs=nnx.Rngs(0))))

        def run(s, b, graphdef=graphdef):
            m = nnx.merge(graphdef, s)
            return m.encode(b)[0], m(b)

        context, logits = jax.eval_shape(run, state, abstract_batch(cfg, 2))
        assert {m: c.shape[1:3] for m, c in context.items()} == {m: grid[m] for m in context}
        assert logits.shape == (2, cfg.num_proposals, cfg.num_classes)
    assert fusion_gmacs(cfg) == pytest.approx(component_costs(cfg)["amfn"]["gmacs"], rel=1e-9)


@pytest.mark.parametrize("modalities", VIDEO_SUBSETS, ids=["+".join(s) for s in VIDEO_SUBSETS])
def test_every_modality_subset_with_slowfast(slowfast_test_config, modalities):
    """Subsets without video have no video backbone; those are test_models' subset tests."""
    cfg = slowfast_test_config.model.copy_and_resolve_references()
    cfg.modalities = modalities
    model = JoVALE(cfg, rngs=nnx.Rngs(0))
    model.eval()
    graphdef, state = nnx.split(model)
    logits = jax.jit(lambda s, b: nnx.merge(graphdef, s)(b))(state, random_batch(cfg))
    assert logits.shape == (2, cfg.num_proposals, cfg.num_classes)
    assert np.isfinite(np.asarray(logits)).all()


def test_sharded_forward_equals_single_device(slowfast_test_config):
    config = slowfast_test_config.copy_and_resolve_references()
    config.fsdp = True
    cfg = config.model
    cfg.modalities = ("video",)  # the backbone's sharding; the other streams are test_sharding's
    batch = random_batch(cfg, batch_size=4, seed=1)

    def make():
        model = JoVALE(cfg, rngs=nnx.Rngs(0))
        model.eval()
        return model

    mesh = sharding.make_mesh((4, 2))
    model, shardings = sharding.create_sharded(make, mesh, sharding.rules_from_config(config))
    kernel = model.video_encoder.slow_stages[3][0].conv_c.kernel[...]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, None, None, "data")
    graphdef, state = nnx.split(model)
    single = jax.jit(lambda s, b: nnx.merge(graphdef, s)(b))(jax.device_get(state), batch)
    batch_sh = {k: sharding.batch_sharding(mesh, v.ndim) for k, v in batch.items()}
    fn = jax.jit(lambda s, b: nnx.merge(graphdef, s)(b), in_shardings=(shardings, batch_sh))
    got = fn(state, jax.device_put(batch, batch_sh))
    np.testing.assert_allclose(np.asarray(got), np.asarray(single), atol=1e-5)


def test_slowfast_trains_on_synthetic_with_frozen_statistics(
    slowfast_test_config, tiny_data, tmp_path
):
    from jovale_jax.train import train

    c = slowfast_test_config.copy_and_resolve_references()
    c.model.modalities = ("video",)  # the backbone under training; fewer streams to compile
    c.num_train_steps, c.log_every_steps, c.checkpoint_every_steps = 40, 10, 40
    c.eval_every_steps, c.mesh_shape = 0, (1, 1)
    c.lr = 3e-3
    c.warmup_steps = 5
    run = train(c, str(tmp_path / "w"), data_dir=tiny_data, devices=jax.devices()[:1])
    lines = (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines]
    assert np.mean(losses[-2:]) < 0.7 * losses[0], losses
    frozen = jax.tree_util.tree_flatten_with_path(run["setup"].frozen)[0]
    stats = {
        jax.tree_util.keystr(p): np.asarray(v)
        for p, v in frozen
        if "video_encoder" in jax.tree_util.keystr(p)
    }
    assert stats and all(k.endswith(("['mean']", "['var']")) for k in stats)
    means = [v for k, v in stats.items() if k.endswith("['mean']")]
    assert all(np.array_equal(v, np.zeros_like(v)) for v in means)  # untouched by training
    trained = jax.tree_util.tree_flatten_with_path(run["setup"].state["params"])[0]
    assert any(
        "video_encoder" in jax.tree_util.keystr(p) and "'bn'" in jax.tree_util.keystr(p)
        for p, _ in trained
    )  # BatchNorm affine trains (freeze_bn_affine=False)


def test_flops_command_covers_slowfast_presets():
    out = subprocess.run(
        [sys.executable, "launch.py", "flops", "--config", "configs/ava_sf_r50.py", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    visual = result["components"]["visual"]
    assert visual["params"] == pytest.approx(34.6e6, rel=0.02)  # SlowFast-R50 without its head
    assert 0 < visual["gmacs"] < result["total_gmacs"]


def test_convert_command_summary_and_overwrite(tmp_path):
    """`launch.py convert` with a SlowFast source: a short summary (the manifest goes to its file),
    a one-line error for an existing --out, and --overwrite."""
    torch.manual_seed(0)
    src = tmp_path / "slowfast_r50.pth"
    torch.save(_pytorchvideo().create_slowfast(model_depth=50).state_dict(), src)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "launch.py",
        "convert",
        "--config",
        "configs/ava_sf_r50.py",
        "--from",
        "pytorchvideo",
        "--src",
        str(src),
        "--out",
        str(out),
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, check=True)
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["components"]["video_encoder"]
    assert first.stdout.splitlines()[0] == (
        f"video_encoder <- pytorchvideo {src}: {entry['used_keys']} keys converted, "
        f"{len(entry['unused_keys'])} unused"
    )
    assert entry["used_keys"] == 550 and len(first.stdout.splitlines()) == 2
    again = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1] == (
        f"error: {out} is not empty: pass --overwrite to replace it"
    )
    subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True, check=True)


def test_readme_slowfast_module_example_runs(tmp_path, monkeypatch, capsys):
    """The README's "Use the modules" SlowFast block, as written, on a converted checkpoint."""
    import pathlib

    from jovale_jax.convert import convert_main

    _, _, state = build_torch_slowfast(50)
    src = tmp_path / "slowfast_r50.pth"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, src)
    convert_main(
        [("pytorchvideo", str(src))], tmp_path / "runs" / "pretrained", ava_sf_r50.get_config()
    )
    text = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    section = text.split("## Use the modules in your own JAX project", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, re.DOTALL)[1]
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).parent.parent))
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 (the README's own example)
    assert capsys.readouterr().out.strip().splitlines()[-2:] == [
        "(1, 4, 4, 4, 2048) (1, 16, 4, 4, 256)",  # alpha 4: 4 of 16 frames
        "(1, 4, 4, 4, 2304)",
    ]


def test_video_frames_normalised_with_the_checkpoints_statistics():
    """SlowFast presets normalise frames (on the device) as their checkpoints were trained, not
    with VideoMAE's statistics, and pad the canvas with their own mean colour."""
    import tensorflow as tf

    from jovale_jax import input_pipeline
    from jovale_jax.models.inputs import normalize_frames, video_statistics

    grey = tf.io.encode_jpeg(tf.fill((8, 16, 3), tf.constant(128, tf.uint8)), quality=100)
    for preset, mean, std in (
        (ava_sf_r50, 0.45, 0.225),
        (ava_sf_r101, 110.63666788 / 255, 38.7568578 / 255),
    ):
        config = preset.get_config()
        config.model.modalities = ("video",)
        config.model.video.num_frames, config.model.video.image_size = 2, (16, 16)
        config.data.eval_short_side = 8
        out = input_pipeline.decode_images({"frames": tf.stack([grey, grey])}, config)
        frames = out["video"].numpy()
        assert frames.dtype == np.uint8
        normalised = np.asarray(normalize_frames(frames, *video_statistics(config.model.video)))
        np.testing.assert_allclose(normalised[:, :8, :, 0], (128 / 255 - mean) / std, atol=0.02)
        # the padded lower half holds the checkpoint's mean colour: about 0 once normalised
        np.testing.assert_allclose(normalised[:, 8:], 0.0, atol=0.01)
