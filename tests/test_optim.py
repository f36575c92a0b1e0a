"""jovale_jax/optim.py: which parameters of the tiny model get weight decay, and that AdamW applies
exactly that (issue 13: decided by what a parameter is, not by its rank)."""

import jax
import numpy as np
import pytest
from flax import nnx

from jovale_jax import optim, state
from jovale_jax.models.jovale import JoVALE

DECAYED_NAMES = {
    "kernel",
    "patch_kernel",
    "query_kernel",
    "key_kernel",
    "value_kernel",
    "out_kernel",
}
UNDECAYED_NAMES = {
    "bias",
    "patch_bias",
    "query_bias",
    "key_bias",
    "value_bias",
    "out_bias",
    "scale",
    "position_embedding",
    "query_time_embed/audio",
    "query_time_embed/scene",
    "query_time_embed/video",
}


def _trainable(config):
    model = nnx.eval_shape(lambda: JoVALE(config.model, rngs=nnx.Rngs(0)))
    _, params, _ = nnx.split(model, state.trainable_filter(config.model), ...)
    return nnx.to_pure_dict(params)


def _name(path) -> str:
    """The parameter's own name: its last key, with the parent for the embedding tables."""
    keys = [str(getattr(k, "key", k)) for k in path]
    return "/".join(keys[-2:]) if keys[-2] == "query_time_embed" else keys[-1]


def test_tiny_model_decay_list(tiny_config):
    params = _trainable(tiny_config)
    mask = optim.decay_mask(params)
    decayed, undecayed = set(), set()
    for (path, leaf), (_, decay) in zip(
        jax.tree_util.tree_flatten_with_path(params)[0],
        jax.tree_util.tree_flatten_with_path(mask)[0],
    ):
        (decayed if decay else undecayed).add((_name(path), leaf.ndim))
    assert {n for n, _ in decayed} == DECAYED_NAMES
    assert {n for n, _ in undecayed} == UNDECAYED_NAMES
    # The attention q/k/v biases are (heads, head_dim), stacked over the scanned layers (3-D), and
    # the tables 2- or 3-D: a rank rule would decay them.
    assert {("query_bias", 3), ("key_bias", 3), ("value_bias", 3)} <= undecayed
    assert ("position_embedding", 3) in undecayed and ("query_time_embed/audio", 2) in undecayed
    assert all(ndim >= 2 for _, ndim in decayed)


def test_adamw_decays_only_the_masked_parameters(tiny_config):
    """With zero gradients AdamW's update is -lr * wd * p on decayed leaves and 0 elsewhere."""
    c = tiny_config
    c.lr = 0.5
    c.warmup_steps, c.weight_decay, c.grad_clip_norm = 0, 0.1, 0.0
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), _trainable(c))
    tx = optim.make_optimizer(c, steps_per_epoch=10, params=params)
    zeros = jax.tree.map(np.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zeros, jax.jit(tx.init)(params), params)
    mask = optim.decay_mask(params)
    for p, u, decay in zip(*(jax.tree.leaves(t) for t in (params, updates, mask))):
        np.testing.assert_allclose(
            np.asarray(u), -0.05 * np.asarray(p) if decay else 0.0, rtol=1e-6, atol=1e-9
        )


def test_unclassified_parameter_is_an_error():
    with pytest.raises(ValueError, match="unclassified parameter amfn/gate"):
        optim.decays((jax.tree_util.DictKey("amfn"), jax.tree_util.DictKey("gate")))
    keys = [jax.tree_util.DictKey(k) for k in ("amfn", "messages", "audio")]  # cross-frame tokens
    assert optim.decays(tuple(keys)) is False
    assert (
        optim.decays((jax.tree_util.DictKey("blip"), jax.tree_util.DictKey("class_embedding")))
        is False
    )


def test_lr_and_wd_mults_give_a_stream_its_own_rate(tiny_config):
    """config.lr_mults / wd_mults (big_vision's pattern): the audio patch embedding at 0.1 x lr
    and the audio projection at 7 x (the first matching regex wins), the fusion stage (the model's
    ``fusion``) without weight decay, everything else at lr with decay. With zero gradients
    AdamW's first update is -lr_g * wd_g * p on decayed leaves."""
    c = tiny_config
    c.lr, c.weight_decay, c.warmup_steps, c.grad_clip_norm = 0.5, 0.1, 0, 0.0
    c.lr_mults = (("audio_embed/.*", 0.1), ("audio.*", 7.0))  # first match wins
    c.wd_mults = (("fusion/.*", 0.0),)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), _trainable(c))
    assert {"audio_embed", "audio_proj", "fusion", "video_encoder"} <= set(params)
    tx = optim.make_optimizer(c, steps_per_epoch=10, params=params)
    assert optim.groups(c, params) == ["x0.1", "x1", "x1_wd_x0", "x7"]
    zeros = jax.tree.map(np.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zeros, jax.jit(tx.init)(params), params)
    mask = optim.decay_mask(params)
    flat = jax.tree_util.tree_flatten_with_path
    for (path, p), u, decay in zip(flat(params)[0], *(jax.tree.leaves(t) for t in (updates, mask))):
        top = optim.path_name(path).split("/")[0]
        lr = {"audio_embed": 0.05, "audio_proj": 3.5}.get(top, 0.5)
        wd = 0.0 if top == "fusion" else 0.1
        want = -lr * wd * np.asarray(p) if decay else 0.0
        np.testing.assert_allclose(np.asarray(u), want, rtol=1e-6, atol=1e-9)
    c.lr_mults = (("video_encoder/(", 0.1),)
    with pytest.raises(ValueError, match=r"config.lr_mults: invalid regex 'video_encoder/\('"):
        optim.make_optimizer(c, steps_per_epoch=10, params=params)
