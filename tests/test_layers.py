"""Scanned layer stacks (against an unrolled loop over the same layers), remat policies,
stochastic depth, the attention implementations and the runtime defaults."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jovale_jax import runtime
from jovale_jax.models import AMFN, BlipVisionEncoder, JoVALE, VideoEncoder
from jovale_jax.models.jovale import time_steps
from jovale_jax.models.layers import (
    Attention,
    Encoder,
    attention_implementation,
    check_remat_policy,
    cudnn_mask,
    cudnn_takes,
    drop_path_rates,
    dtype_of,
)

TOL = 1e-5


def layer(stacked: nnx.Module, i: int) -> nnx.Module:
    """Layer ``i`` of a stacked (scanned) module as a module of its own."""
    graphdef, state = nnx.split(stacked)
    return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))


def unrolled_encoder(encoder: Encoder, x: jax.Array) -> jax.Array:
    """The reference: the encoder's blocks applied one after the other in a Python loop."""
    for i in range(len(encoder.drop_rates)):
        x = layer(encoder.layers, i)(x)
    return x


@pytest.mark.parametrize("policy", ["none", "full", "dots_saveable"])
def test_scanned_encoders_equal_unrolled(tiny_config, policy):
    m = tiny_config.model
    rng = np.random.default_rng(0)
    video = VideoEncoder(m.video, rngs=nnx.Rngs(0), remat_policy=policy)
    assert video.encoder.layers.attn.query_kernel.shape[0] == m.video.depth
    x = jnp.asarray(rng.normal(size=(2, 8, m.video.width)), jnp.float32)
    np.testing.assert_allclose(video.encoder(x), unrolled_encoder(video.encoder, x), atol=TOL)
    scene = BlipVisionEncoder(m.scene, rngs=nnx.Rngs(1), remat_policy=policy)
    x = jnp.asarray(rng.normal(size=(2, 5, m.scene.width)), jnp.float32)
    np.testing.assert_allclose(scene.encoder(x), unrolled_encoder(scene.encoder, x), atol=TOL)


def test_scanned_amfn_equals_unrolled(tiny_config):
    cfg = tiny_config.model
    cfg.amfn.num_layers = 3
    mods, steps, dim = ("video", "audio", "scene"), time_steps(cfg), cfg.embed_dim
    amfn = AMFN(dim, mods, steps["video"], cfg.amfn, rngs=nnx.Rngs(0), remat_policy="full")
    amfn.eval()
    rng = np.random.default_rng(1)
    b, k = 2, cfg.num_proposals
    queries = {m: jnp.asarray(rng.normal(size=(b, k, steps[m], dim)), jnp.float32) for m in mods}
    context = {m: jnp.asarray(rng.normal(size=(b, steps[m], 3, dim)), jnp.float32) for m in mods}
    mask = jnp.arange(k)[None] < jnp.array([[k], [2]])
    present = {m: jnp.array([True, m != "audio"]) for m in mods}
    out, intermediates = amfn(queries, context, mask, present)
    q, c = dict(queries), dict(context)
    for i in range(cfg.amfn.num_layers):
        q, c, want, inter = layer(amfn.layers, i)(q, c, mask, present)
        for m in mods:  # each layer's MFE tokens, stacked on the layer axis
            np.testing.assert_allclose(
                intermediates["layers"][m]["tokens"][i], inter["encoder"][m]["tokens"], atol=TOL
            )
    np.testing.assert_allclose(out["fused"], want, atol=TOL)
    np.testing.assert_allclose(intermediates["gates"], inter["gates"], atol=TOL)  # the last


def test_remat_policy_field_is_checked(tiny_config):
    assert check_remat_policy("dots_saveable") == "dots_saveable"
    tiny_config.model.remat_policy = "sometimes"
    with pytest.raises(ValueError, match="model.remat_policy: expected one of .* got 'sometimes'"):
        JoVALE(tiny_config.model, rngs=nnx.Rngs(0))


def test_drop_path_rates_rise_linearly():
    np.testing.assert_allclose(drop_path_rates(0.3, 4), [0.0, 0.1, 0.2, 0.3], atol=1e-7)
    with pytest.raises(ValueError, match="model.video.drop_path: .* got 1.0"):
        drop_path_rates(1.0, 4)


def test_drop_path_eval_unchanged_train_drops_whole_branches(tiny_config):
    cfg = tiny_config.model.video
    cfg.depth, cfg.drop_path = 2, 0.5  # rates 0 (block 0) and 0.5 (block 1)
    plain = Encoder(cfg, rngs=nnx.Rngs(0), qkv_bias=(True, False, True))  # drop_path 0
    model = Encoder(cfg, rngs=nnx.Rngs(0), qkv_bias=(True, False, True), drop_path=cfg.drop_path)
    nnx.update(model, nnx.state(plain, nnx.Param))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(64, 6, cfg.width)), jnp.float32)
    model.eval()
    np.testing.assert_allclose(model(x), plain(x), atol=TOL)

    model.train()
    got = np.asarray(model(x))
    h = layer(plain.layers, 0)(x)  # block 0 has rate 0: never dropped
    blk = layer(plain.layers, 1)
    keep = 0.5
    outcomes = []
    for attn_kept in (False, True):
        h1 = h + blk.attn(blk.norm1(h)) / keep if attn_kept else h
        for mlp_kept in (False, True):
            outcomes.append(np.asarray(h1 + blk.mlp(blk.norm2(h1)) / keep if mlp_kept else h1))
    # every example is one of the four (attention branch, MLP branch) kept/dropped outcomes
    which = np.array(
        [[np.abs(got[e] - o[e]).max() < 1e-4 for o in outcomes] for e in range(len(x))]
    )
    assert which.sum(1).tolist() == [1] * len(x)
    counts = which.sum(0)
    assert (counts > 0).all(), counts  # 64 examples: each outcome drawn (p of a miss ~ 4e-8)
    assert not np.allclose(np.asarray(model(x)), got)  # a new draw on the next call


def attention_reference(q, k, v, mask):
    """Softmax attention written out: (B, N, H, K) tensors, (B, N_k) key mask."""
    logits = jnp.einsum("bqhk,bnhk->bhqn", q, k) / np.sqrt(q.shape[-1])
    logits = jnp.where(mask[:, None, None, :], logits, -jnp.inf)
    return jnp.einsum("bhqn,bnhk->bqhk", jax.nn.softmax(logits, axis=-1), v)


def test_xla_attention_equals_written_out_softmax_with_padded_keys():
    att = Attention(32, 4, rngs=nnx.Rngs(0), implementation="xla")
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(3, 7, 32)), jnp.float32)
    mask = jnp.asarray(rng.uniform(size=(3, 7)) < 0.6).at[:, 0].set(True)  # padded actors
    got = att(x, mask)
    q, k, v = (
        jnp.einsum("bnd,dhk->bnhk", x, kern[...]) + bias[...]
        for kern, bias in (
            (att.query_kernel, att.query_bias),
            (att.key_kernel, att.key_bias),
            (att.value_kernel, att.value_bias),
        )
    )
    out = attention_reference(q, k, v, mask)
    want = jnp.einsum("bnhk,hkd->bnd", out, att.out_kernel[...]) + att.out_bias[...]
    np.testing.assert_allclose(got, want, atol=TOL)
    # a masked key changes nothing
    changed = x.at[:, 1:].add(jnp.where(mask[:, 1:, None], 0.0, 5.0))
    np.testing.assert_allclose(att(changed, mask)[:, 0], got[:, 0], atol=TOL)


def test_cudnn_attention_takes_even_token_counts_only():
    """jax 0.11's cuDNN attention fails once differentiated on an odd token count (BLIP's 577, the
    first GPU run of bench step): such a layer computes on the XLA path, with its result."""
    assert cudnn_takes("cudnn", 1568) and not cudnn_takes("cudnn", 577)
    assert not cudnn_takes("xla", 1568)
    fused, plain = (Attention(32, 4, rngs=nnx.Rngs(0), implementation=i) for i in ("cudnn", "xla"))
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 7, 32)), jnp.float32)
    loss = lambda att, x: att(x).sum()
    np.testing.assert_array_equal(
        nnx.grad(loss)(fused, x).query_kernel[...], nnx.grad(loss)(plain, x).query_kernel[...]
    )


def test_cudnn_mask_spans_queries_and_keys():
    """jax's cuDNN attention wants its mask as a bias over (queries, keys): the first GPU run
    stopped with "Bias must have same seq length as QKV, got 1 and 10"."""
    key_mask = jnp.asarray([[True, True, False], [True, False, False]])
    mask = cudnn_mask(key_mask)
    assert mask.shape == (2, 1, 3, 3)
    np.testing.assert_array_equal(mask[:, 0], np.repeat(key_mask[:, None], 3, axis=1))


def test_auto_settings_resolve_by_backend(tiny_config):
    on_gpu = jax.default_backend() == "gpu"
    assert dtype_of("auto") == (jnp.bfloat16 if on_gpu else jnp.float32)
    assert attention_implementation("auto", jnp.bfloat16) == "xla"  # cuDNN: opt-in for now
    assert attention_implementation("auto", jnp.float32) == "xla"
    assert attention_implementation("cudnn", jnp.bfloat16) == "cudnn"
    with pytest.raises(ValueError, match="'cudnn' needs model.dtype bfloat16 .* in float32"):
        attention_implementation("cudnn", jnp.float32)
    tiny_config.model.attention_impl = "flash"
    with pytest.raises(ValueError, match="model.attention_impl: expected one of .* got 'flash'"):
        JoVALE(tiny_config.model, rngs=nnx.Rngs(0))
    tiny_config.model.attention_impl = "auto"
    model = JoVALE(tiny_config.model, rngs=nnx.Rngs(0))
    assert model.fusion.layers.mfe["video"].encoder.attn.implementation == "xla"


def test_softmax_custom_jvp_on_in_tests():
    """tests/conftest.py calls jovale_jax.runtime.configure_jax(), as launch.py does."""
    assert jax.config.jax_softmax_custom_jvp
    jax.config.update("jax_softmax_custom_jvp", False)
    try:
        runtime.configure_jax()
        assert jax.config.jax_softmax_custom_jvp
    finally:
        jax.config.update("jax_softmax_custom_jvp", True)
