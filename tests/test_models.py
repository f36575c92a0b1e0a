"""The Flax modules of SPEC.md section 1 at tiny sizes: shapes, masking, MFA equations, RoIAlign."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import check_masking_and_equivariance, make_forward, random_batch
from flax import nnx

from jovale_jax.models import (
    AMFN,
    MFA,
    MFE,
    ActionHead,
    AudioPatchEmbed,
    BlipVisionEncoder,
    JoVALE,
    VideoEncoder,
    resample_matrix,
    roi_align,
)
from jovale_jax.models.amfn import UNIFORM_WEIGHT
from jovale_jax.models.layers import resample_time


def test_encoder_shapes(tiny_config):
    m = tiny_config.model

    def shape(make, x):
        return nnx.eval_shape(lambda: make(nnx.Rngs(0))(x)).shape

    video = jnp.zeros((2, m.video.num_frames) + tuple(m.video.image_size) + (3,))
    h, w = m.video.image_size
    assert shape(lambda r: VideoEncoder(m.video, rngs=r), video) == (
        2,
        m.video.num_frames // 2,
        h // 16,
        w // 16,
        m.video.width,
    )
    scene = jnp.zeros((2, m.scene.num_frames, m.scene.image_size, m.scene.image_size, 3))
    n = (m.scene.image_size // 16) ** 2
    assert shape(lambda r: BlipVisionEncoder(m.scene, rngs=r), scene) == (
        2,
        m.scene.num_frames,
        1 + n,
        m.scene.width,
    )
    audio = jnp.zeros((2, m.audio.num_frames, m.audio.num_mel_bins))
    assert shape(lambda r: AudioPatchEmbed(m.audio, rngs=r), audio) == (2, 9, 5, m.audio.width)


def test_full_size_shapes_through_eval_shape():
    from configs import ava_vitb16
    from jovale_jax.flops import abstract_batch

    cfg = ava_vitb16.get_config().model
    model = nnx.eval_shape(lambda: JoVALE(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    batch = abstract_batch(cfg, 2)

    def run(s, b):
        model = nnx.merge(graphdef, s)
        return model.encode(b), model(b)

    (context, _, fmap), out = jax.eval_shape(run, state, batch)
    assert fmap.shape == (2, 8, 14, 25, 768)  # the 224 x 400 canvas
    assert context["video"].shape == (2, 8, 350, 256)
    assert context["audio"].shape == (2, 20, 12, 256)
    assert context["scene"].shape == (2, 4, 577, 256)
    assert out.shape == (2, 15, 60)


def test_amfn_mfe_head_shapes(tiny_config):
    cfg = tiny_config.model
    d, k = cfg.embed_dim, 3
    rngs = nnx.Rngs(0)
    actors = jnp.ones((2, k, 4, d))
    ctx = jnp.ones((2, 4, 7, d))
    mask = jnp.array([[1, 1, 0], [1, 0, 0]], bool)
    a_hat, f, extra = nnx.jit(lambda mod, *a: mod(*a))(
        MFE(d, cfg.amfn, rngs=rngs), actors, ctx, mask
    )
    assert a_hat.shape == actors.shape and f.shape == ctx.shape
    assert extra["tokens"].shape == (2, 4, k + 7 + 1, d)  # [a_t, f_t, b_t] per time step
    mods = ("video", "audio", "scene")
    queries = {"video": actors, "audio": jnp.ones((2, k, 9, d)), "scene": jnp.ones((2, k, 2, d))}
    context = {"video": ctx, "audio": jnp.ones((2, 9, 5, d)), "scene": jnp.ones((2, 2, 5, d))}
    present = {m: jnp.ones((2,), bool) for m in mods}
    amfn = AMFN(d, mods, 4, cfg.amfn, rngs=rngs)
    out, intermediates = nnx.jit(lambda mod, *a: mod(*a))(amfn, queries, context, mask, present)
    assert amfn.head_dims == {"fused": d} and out["fused"].shape == (2, k, 4, d)
    assert intermediates["gates"].shape == (2, k, 3)
    assert ActionHead(d, 6, rngs=rngs)(out["fused"]).shape == (2, k, 6)


SUBSETS = [s for r in (1, 2, 3) for s in itertools.combinations(("video", "audio", "scene"), r)]


@pytest.mark.parametrize("modalities", SUBSETS, ids=["+".join(s) for s in SUBSETS])
def test_full_model_every_modality_subset(tiny_config, modalities):
    cfg = tiny_config.model
    cfg.modalities = modalities
    batch = random_batch(cfg)
    logits = make_forward(JoVALE(cfg, rngs=nnx.Rngs(0)))(batch)
    assert logits.shape == (2, cfg.num_proposals, cfg.num_classes)
    assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize("fusion", ["gated", "uniform", "late"])
def test_masking_and_equivariance(tiny_config, fusion):
    """A padded proposal's box changes no real output; permuting real actors permutes outputs."""
    cfg = tiny_config.model
    cfg.amfn.fusion = fusion
    # moving actor 0's box changes actor 1's output: the checks are not vacuous
    check_masking_and_equivariance(cfg, seed=1, moved_actor_affects=1)


@pytest.mark.parametrize("fusion", ["gated", "uniform"])
def test_logits_and_gates_of_the_last_mfa(tiny_config, fusion):
    """The gates are the last layer's w_m, channel-averaged per actor; the logits are unchanged."""
    cfg = tiny_config.model
    cfg.amfn.fusion = fusion
    model = JoVALE(cfg, rngs=nnx.Rngs(2))
    model.eval()
    batch = random_batch(cfg, batch_size=2, seed=4)
    logits, gates = model.logits_and_gates(batch)
    assert gates.shape == (2, cfg.num_proposals, 3)
    np.testing.assert_allclose(logits, model(batch), atol=1e-6)
    assert not nnx.state(model, nnx.Intermediate)  # nothing left on the model
    if fusion != "gated":
        np.testing.assert_array_equal(gates, UNIFORM_WEIGHT)
        return
    assert 0 < gates.min() and gates.max() < 1
    # Saturating one layer's gate (fc2 bias of the stacked MFAs, layer axis first) moves the
    # reported gates to 1 only when that layer is the last one.
    bias = model.fusion.layers.mfa.fc2.bias
    original = np.asarray(bias[...])
    for layer, saturates in ((0, False), (-1, True)):
        bias[...] = jnp.asarray(original).at[layer].set(30.0)
        _, g = model.logits_and_gates(batch)
        assert np.allclose(g, 1.0, atol=1e-6) == saturates
    bias[...] = jnp.asarray(original)


def test_resample_hand_checked():
    x = np.arange(20, dtype=np.float32)
    # 20 -> 8: PyTorch adaptive pooling bins
    # [0,3) [2,5) [5,8) [7,10) [10,13) [12,15) [15,18) [17,20)
    want = [1.0, 3.0, 6.0, 8.0, 11.0, 13.0, 16.0, 18.0]
    np.testing.assert_allclose(resample_matrix(20, 8) @ x, want)
    # and back 8 -> 20: repetition of the nearest earlier step
    np.testing.assert_allclose(
        resample_matrix(8, 20) @ np.arange(8.0),
        [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    )
    # 4 -> 8 repeats each step twice; 8 -> 4 averages pairs; 8 -> 8 is the identity
    np.testing.assert_allclose(resample_matrix(4, 8) @ np.arange(4.0), [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_allclose(resample_matrix(8, 4) @ np.arange(8.0), [0.5, 2.5, 4.5, 6.5])
    np.testing.assert_allclose(resample_matrix(8, 8), np.eye(8))
    y = resample_time(jnp.asarray(np.arange(2 * 20 * 3.0).reshape(2, 20, 3)), 8, axis=1)
    assert y.shape == (2, 8, 3) and float(y[0, 0, 0]) == 3.0  # mean of rows 0..2 of channel 0


def test_mfa_matches_numpy_equations(tiny_config):
    """Eqs. 5-8 evaluated directly in numpy with the module's own weights."""
    cfg = tiny_config.model.amfn
    d, k = 8, 3
    mods = ("video", "audio", "scene")
    mfa = MFA(d, mods, 8, cfg, rngs=nnx.Rngs(2))
    rng = np.random.default_rng(0)
    steps = {"video": 8, "audio": 20, "scene": 4}
    a_hat = {m: rng.normal(size=(2, k, t, d)).astype(np.float32) for m, t in steps.items()}
    present = {
        "video": np.array([1, 1], bool),
        "audio": np.array([1, 0], bool),
        "scene": np.array([1, 1], bool),
    }
    nxt, fuse, _ = mfa({m: jnp.asarray(v) for m, v in a_hat.items()}, present)

    def align(x, t_out):  # independent: explicit loops of the pooling / repetition rules
        t_in = x.shape[2]
        out = []
        for i in range(t_out):
            if t_in >= t_out:
                lo, hi = int(np.floor(i * t_in / t_out)), int(np.ceil((i + 1) * t_in / t_out))
                out.append(x[:, :, lo:hi].mean(2))
            else:
                out.append(x[:, :, int(np.floor(i * t_in / t_out))])
        return np.stack(out, 2)

    aligned = {m: align(a_hat[m], 8) for m in mods}
    pooled = np.concatenate([aligned[m].mean(2) * present[m][:, None, None] for m in mods], -1)
    hidden = np.maximum(pooled @ np.asarray(mfa.fc1.kernel[...]) + np.asarray(mfa.fc1.bias[...]), 0)
    w = 1 / (
        1 + np.exp(-(hidden @ np.asarray(mfa.fc2.kernel[...]) + np.asarray(mfa.fc2.bias[...])))
    )
    w = dict(zip(mods, np.split(w, 3, -1)))
    count = sum(present[m].astype(np.float32) for m in mods)[:, None, None, None]
    want_fuse = (
        sum(present[m][:, None, None, None] * w[m][:, :, None] * aligned[m] for m in mods) / count
    )
    np.testing.assert_allclose(fuse, want_fuse, rtol=1e-5, atol=1e-5)
    for m in mods:
        want = align(want_fuse, steps[m]) + w[m][:, :, None] * a_hat[m]
        np.testing.assert_allclose(nxt[m], want, rtol=1e-5, atol=1e-5)


def roi_align_reference(feat, box, out, ratio):
    """torchvision's RoIAlign (aligned=True), one box on an (H, W, C) map, written as loops."""
    h, w, _ = feat.shape
    x1, y1, x2, y2 = np.asarray(box) * [w, h, w, h] - 0.5
    bh, bw = (y2 - y1) / out, (x2 - x1) / out

    def bilinear(y, x):
        if y < -1.0 or y > h or x < -1.0 or x > w:
            return np.zeros(feat.shape[-1])
        y, x = max(y, 0.0), max(x, 0.0)
        y0, x0 = int(y), int(x)
        if y0 >= h - 1:
            y0 = y1_ = h - 1
            y = float(y0)
        else:
            y1_ = y0 + 1
        if x0 >= w - 1:
            x0 = x1_ = w - 1
            x = float(x0)
        else:
            x1_ = x0 + 1
        ly, lx = y - y0, x - x0
        return (
            (1 - ly) * (1 - lx) * feat[y0, x0]
            + (1 - ly) * lx * feat[y0, x1_]
            + ly * (1 - lx) * feat[y1_, x0]
            + ly * lx * feat[y1_, x1_]
        )

    res = np.zeros((out, out, feat.shape[-1]))
    for py, px in itertools.product(range(out), range(out)):
        acc = 0
        for iy, ix in itertools.product(range(ratio), range(ratio)):
            acc = acc + bilinear(
                y1 + py * bh + (iy + 0.5) * bh / ratio, x1 + px * bw + (ix + 0.5) * bw / ratio
            )
        res[py, px] = acc / ratio**2
    return res


def test_roi_align_against_reference():
    rng = np.random.default_rng(0)
    feat = rng.normal(size=(2, 9, 11, 3)).astype(np.float32)
    boxes = np.array(
        [
            [0.1, 0.2, 0.7, 0.9],  # interior
            [0.0, 0.0, 1.0, 1.0],  # the whole map, samples at the borders
            [-0.05, 0.8, 0.3, 1.05],  # past the borders
            [0.5, 0.5, 0.51, 0.52],
        ],
        np.float32,
    )  # tiny
    got = np.asarray(roi_align(jnp.asarray(feat), jnp.asarray(boxes), 7, 2))
    assert got.shape == (4, 2, 7, 7, 3)
    for kk, t in itertools.product(range(4), range(2)):
        np.testing.assert_allclose(
            got[kk, t], roi_align_reference(feat[t], boxes[kk], 7, 2), atol=1e-5
        )


def test_roi_align_gradient_reaches_features():
    feat = jnp.ones((5, 5, 2))
    g = jax.grad(lambda f: roi_align(f, jnp.array([[0.2, 0.2, 0.6, 0.6]]), 3, 2).sum())(feat)
    assert float(g.sum()) == pytest.approx(18.0)  # 3 x 3 bins x 2 channels, weights sum to one


def test_uint8_frames_normalised_on_device_as_on_the_host(tiny_config):
    """The pipeline's uint8 frames, normalised inside the model, give the logits of the same
    frames normalised on the host in float32 (VideoMAE / BLIP statistics) within 1e-5."""
    from jovale_jax.models.inputs import BLIP_MEAN, BLIP_STD, VIDEOMAE_MEAN, VIDEOMAE_STD

    cfg = tiny_config.model
    forward = make_forward(JoVALE(cfg, rngs=nnx.Rngs(0)))
    batch = random_batch(cfg, 2)
    rng = np.random.default_rng(1)
    raw = {k: rng.integers(0, 256, batch[k].shape, dtype=np.uint8) for k in ("video", "scene")}
    host = {
        "video": ((raw["video"] / 255 - np.array(VIDEOMAE_MEAN)) / np.array(VIDEOMAE_STD)),
        "scene": ((raw["scene"] / 255 - np.array(BLIP_MEAN)) / np.array(BLIP_STD)),
    }
    on_device = forward(batch | raw)
    on_host = forward(batch | {k: v.astype(np.float32) for k, v in host.items()})
    np.testing.assert_allclose(on_device, on_host, atol=1e-5, rtol=0)
    assert np.abs(on_device - forward(batch)).max() > 1e-3  # the frames do matter


def test_frame_extent_places_frame_boxes_on_the_canvas(tiny_config):
    """Boxes normalised to the frame plus its ``frame_extent`` on the canvas give the logits of
    the same boxes mapped onto the canvas by hand."""
    cfg = tiny_config.model
    forward = make_forward(JoVALE(cfg, rngs=nnx.Rngs(0)))
    batch = random_batch(cfg, 2)
    extent = np.array([[0.0, 0.0, 1.0, 0.75], [0.25, 0.0, 1.0, 1.0]], np.float32)
    lo = np.tile(extent[:, None, :2], 2)
    size = np.tile(extent[:, None, 2:] - extent[:, None, :2], 2)
    mapped = forward(batch | {"boxes": lo + batch["boxes"] * size})
    np.testing.assert_allclose(forward(batch | {"frame_extent": extent}), mapped, atol=1e-6)
    assert np.abs(mapped - forward(batch)).max() > 1e-4
