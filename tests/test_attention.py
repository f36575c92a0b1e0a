"""Figure 6: the MFE's actor-to-context attention maps, their placement on the keyframe, and the
drawn figure of two checkpoints side by side."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_batch
from flax import nnx

from jovale_jax.models import JoVALE
from jovale_jax.models.layers import Attention
from jovale_jax.visualize import token_heatmap


def test_attention_weights_are_what_dot_product_attention_applies():
    """The module's output (head-major XLA attention) is jax.nn.dot_product_attention's on the
    same projections, and weights @ v, projected out, is that output; masked keys get no weight
    and every row sums to 1."""
    attn = Attention(16, 4, rngs=nnx.Rngs(0))
    for name in ("query_bias", "key_bias", "value_bias", "out_bias"):  # biases not zero
        b = getattr(attn, name)
        b[...] = jax.random.normal(jax.random.key(len(name)), b[...].shape)
    x = jax.random.normal(jax.random.key(1), (2, 3, 7, 16))
    mask = jnp.arange(7)[None, None, :] < jnp.array([[4, 7, 5], [7, 2, 6]])[..., None]
    q, k, v = (
        jnp.einsum("...nd,dhk->...nhk", x, kernel[...]) + bias[...]
        for kernel, bias in (
            (attn.query_kernel, attn.query_bias),
            (attn.key_kernel, attn.key_bias),
            (attn.value_kernel, attn.value_bias),
        )
    )
    flat = [t.reshape(6, 7, 4, 4) for t in (q, k, v)]
    reference = jax.nn.dot_product_attention(*flat, mask=mask.reshape(6, 1, 1, 7))
    reference = jnp.einsum("bqhd,hde->bqe", reference, attn.out_kernel[...]) + attn.out_bias[...]
    out = attn(x, mask)
    np.testing.assert_allclose(out, reference.reshape(2, 3, 7, 16), rtol=1e-5, atol=1e-5)
    w = attn.weights(x, mask)  # (2, 3, heads, 7, 7)
    assert w.shape == (2, 3, 4, 7, 7)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
    assert float(jnp.where(mask[:, :, None, None, :], 0.0, w).max()) == 0.0
    mixed = jnp.einsum("...hqk,...khd->...qhd", w, v)
    np.testing.assert_allclose(
        jnp.einsum("...qhd,hde->...qe", mixed, attn.out_kernel[...]) + attn.out_bias[...],
        out,
        atol=1e-5,
    )


def test_amfn_attention_maps_are_the_layers_softmax(tiny_config):
    """Per layer and modality: (L, B, T_m, K, N_m) maps, the logits of the plain forward pass,
    and the first layer's map equal to a numpy recomputation from that layer's parameters."""
    cfg = tiny_config.model
    model = JoVALE(cfg, rngs=nnx.Rngs(3))
    model.eval()
    batch = random_batch(cfg, batch_size=2, seed=5)
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, batch):
        m = nnx.merge(graphdef, state)
        queries, context, box_mask, _, _ = m.fusion_inputs(batch)
        first = {  # the first layer's MFE tokens [a_t, f_t, b_t] per modality
            k: nnx.merge(*_layer(m.fusion.layers.mfe[k], 0)).tokens(
                queries[k], context[k], box_mask
            )
            for k in queries
        }
        return m(batch), m.attention_maps(batch), context, first

    plain, (logits, maps), context, first = run(state, batch)
    np.testing.assert_allclose(logits, plain, atol=1e-5)
    k, heads, num_layers = cfg.num_proposals, cfg.amfn.num_heads, cfg.amfn.num_layers
    for m, got in maps.items():
        t, n = context[m].shape[1:3]
        assert got.shape == (num_layers, 2, t, k, n)
        total = np.asarray(got).sum(-1)
        assert (total > 0).all() and (total < 1).all()  # the rest goes to actors and b_t
        # Layer 0 by hand: LayerNorm, q/k projections, scaled dot products, masked softmax.
        mfe = nnx.merge(*_layer(model.fusion.layers.mfe[m], 0))
        tokens, key_mask = first[m]
        x = np.asarray(tokens, np.float64)
        ln = mfe.encoder.norm1
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + ln.epsilon)
        x = x * np.asarray(ln.scale[...]) + np.asarray(ln.bias[...])
        a = mfe.encoder.attn
        q = (
            np.einsum("btnd,dhk->bthnk", x, a.query_kernel[...])
            + np.asarray(a.query_bias[...])[:, None]
        )
        kk = (
            np.einsum("btnd,dhk->bthnk", x, a.key_kernel[...])
            + np.asarray(a.key_bias[...])[:, None]
        )
        s = np.einsum("bthqk,bthnk->bthqn", q, kk) / np.sqrt(q.shape[-1])
        s = np.where(np.asarray(key_mask)[:, :, None, None, :], s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        want = p[..., :k, k : k + n].mean(2)  # (B, T, K, N), averaged over the heads
        assert heads == p.shape[2]
        np.testing.assert_allclose(got[0], want, atol=2e-5)


def _layer(stacked, i):
    """Layer ``i`` of an nnx.vmap-stacked module, as (graphdef, state)."""
    graphdef, state = nnx.split(stacked)
    return graphdef, jax.tree.map(lambda v: v[i], state)


def test_token_heatmap_places_each_token_where_it_lies():
    """A hot token lands on the frame pixels its patch covers, also for a frame that fills only
    part of the canvas (fitted top-left, as the pipeline does); tokens off the frame vanish."""
    h, w = 6, 8  # token grid over the canvas
    frame = (60, 40)  # width, height of the keyframe
    extent = (0.0, 0.0, 0.5, 0.75)  # the frame covers the canvas's left half, top 3/4
    for i, j in [(0, 0), (2, 3), (4, 1)]:
        grid = np.zeros((h, w))
        grid[i, j] = 1.0
        heat = token_heatmap(grid, frame, extent)
        assert heat.shape == (40, 60)
        rows, cols = np.nonzero(heat)
        # canvas position of each hot pixel's centre falls inside token (i, j)
        cy = (rows + 0.5) / 40 * 0.75
        cx = (cols + 0.5) / 60 * 0.5
        assert (np.floor(cy * h) == i).all() and (np.floor(cx * w) == j).all()
        # and the token's whole patch is lit: 1/6 of the canvas height is 40 / 0.75 / 6 rows;
        # row 4 spans canvas heights 4/6-5/6, cut at the frame's bottom edge (0.75)
        want_rows = 40 / 0.75 / h if i < 4 else (0.75 - 4 / h) / 0.75 * 40
        assert abs(len(set(rows)) - want_rows) <= 1 and abs(len(set(cols)) - 60 / 0.5 / w) <= 1
    grid = np.zeros((h, w))
    grid[5, 7] = 1.0  # bottom-right of the canvas: padding, not the frame
    assert token_heatmap(grid, frame, extent).max() == 0.0
    grid[5, 7], grid[0, 0] = 0.0, 1.0  # a frame that fills its image: token (0, 0) is top-left
    heat = token_heatmap(grid, frame)
    assert heat[: 40 // h, : 60 // w].all() and heat.sum() == (40 // h + 1) * (60 // w)


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """Random-weight checkpoints of the tiny preset (video, audio, scene) and of a video-only
    one (as tests/test_detect.py saves one: the figure needs weights, not training)."""
    from configs import synthetic
    from jovale_jax import state
    from jovale_jax.checkpoint import Checkpointer
    from jovale_jax.sharding import make_mesh

    root = tmp_path_factory.mktemp("figure6")
    out = []
    for name, mods in (("full", ("video", "audio", "scene")), ("video", ("video",))):
        cfg = synthetic.get_config("test")
        cfg.model.modalities = mods
        cfg.mesh_shape, cfg.eval_batch_size = (1, 1), 8
        s = state.create(cfg, mesh=make_mesh((1, 1), jax.devices()[:1]), steps_per_epoch=1)
        ckpt = Checkpointer(str(root / name))
        ckpt.save(
            0,
            {"state": s.state, "frozen": s.frozen},
            {"input_state": {}, "config": cfg.to_json_best_effort()},
        )
        ckpt.close()
        out.append((cfg, str(root / name)))
    return out


def test_attention_figure_of_two_checkpoints(two_checkpoints, tiny_data, tmp_path, monkeypatch):
    from jovale_jax.attention import attention_figure

    monkeypatch.setattr(jax, "devices", lambda *a: jax.local_devices()[:1])
    (full, full_dir), (video, video_dir) = two_checkpoints
    out = tmp_path / "fig" / "attention.png"
    result = attention_figure(
        full,
        full_dir,
        str(out),
        compare=(video, video_dir),
        labels=("vas", "v"),
        data_dir=tiny_data,
    )
    assert out.stat().st_size > 5000
    from PIL import Image

    assert Image.open(out).size[0] > Image.open(out).size[1] / 4  # 4 columns of panels
    assert result["rows"], "no keyframe had a matched proposal"
    for row in result["rows"]:
        # columns: vas video, vas scene, v video; layers 1 and L (2 in the test preset)
        assert sorted(row["weights"]) == sorted(
            f"{m}/{layer}/{s}"
            for m, streams in (("vas", ("video", "scene")), ("v", ("video",)))
            for layer in (1, 2)
            for s in streams
        )
        assert all(0.0 < v < 1.0 for v in row["weights"].values())
    json.dumps(result)  # what launch.py writes beside the picture
    with pytest.raises(ValueError, match="unknown class 'walking'"):
        attention_figure(full, full_dir, str(out), classes=["walking"], data_dir=tiny_data)
