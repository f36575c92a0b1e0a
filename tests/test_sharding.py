"""Sharded forward on 8 fake CPU devices equals the single-device forward; rules are applied."""

import jax
import numpy as np
import pytest
from conftest import random_batch
from flax import nnx
from jax.sharding import PartitionSpec as P

from jovale_jax import sharding
from jovale_jax.models import JoVALE


def test_mesh_shape_errors_name_the_numbers():
    assert sharding.mesh_shape_for((-1, 2), 8) == (4, 2)
    with pytest.raises(ValueError, match=r"\(3, 2\) needs 6 devices, but 8"):
        sharding.mesh_shape_for((3, 2), 8)
    with pytest.raises(ValueError, match="does not divide the 8 devices"):
        sharding.mesh_shape_for((-1, 3), 8)


def test_local_and_multi_process_initialisations_agree(tiny_config, monkeypatch):
    """A mesh of this process's devices is initialised op by op and then placed; a mesh over
    several processes by one program that makes each shard where it lives. The same shardings,
    RNG keys and values (to float32 rounding: XLA fuses the initialisers' arithmetic in the
    program)."""
    mesh = sharding.make_mesh((4, 2))
    rules = sharding.rules_from_config(tiny_config)
    assert sharding.is_local(mesh)

    def make():
        return JoVALE(tiny_config.model, rngs=nnx.Rngs(0))

    local, local_sh = sharding.create_sharded(make, mesh, rules)
    monkeypatch.setattr(sharding, "is_local", lambda mesh: False)
    program, program_sh = sharding.create_sharded(make, mesh, rules)
    assert local_sh == program_sh
    pairs = zip(
        jax.tree.leaves_with_path(nnx.state(program)),
        jax.tree.leaves(nnx.state(local)),
        strict=True,
    )
    for (path, want), got in pairs:
        assert got.sharding == want.sharding, path
        if jax.dtypes.issubdtype(want.dtype, jax.dtypes.prng_key):
            want, got = jax.random.key_data(want), jax.random.key_data(got)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8, err_msg=str(path))


@pytest.mark.parametrize("fsdp", [False, True], ids=["dp+tp", "fsdp"])
def test_sharded_forward_equals_single_device(tiny_config, fsdp):
    assert jax.device_count() == 8
    tiny_config.fsdp = fsdp
    cfg = tiny_config.model
    batch = random_batch(cfg, batch_size=4, seed=1)

    def make():
        model = JoVALE(cfg, rngs=nnx.Rngs(0))
        model.eval()
        return model

    single = make()
    gd, st = nnx.split(single)
    want = np.asarray(jax.jit(lambda s, b: nnx.merge(gd, s)(b))(st, batch))

    mesh = sharding.make_mesh((4, 2))
    model, shardings = sharding.create_sharded(make, mesh, sharding.rules_from_config(tiny_config))
    layer = model.video_encoder.encoder.layers  # stacked: the layer axis is replicated
    embed = "data" if fsdp else None
    assert layer.attn.query_kernel[...].sharding.spec == P(None, embed, "model", None)
    assert layer.mlp.fc1.kernel[...].sharding.spec == P(None, embed, "model")
    assert layer.mlp.fc2.kernel[...].sharding.spec == P(None, "model", embed)
    assert len(layer.mlp.fc1.kernel[...].addressable_shards) == 8
    assert layer.mlp.fc1.kernel[...].addressable_shards[0].data.shape[2] == cfg.video.mlp_dim // 2
    gd, st = nnx.split(model)
    batch_sh = {k: sharding.batch_sharding(mesh, v.ndim) for k, v in batch.items()}
    fn = jax.jit(lambda s, b: nnx.merge(gd, s)(b), in_shardings=(shardings, batch_sh))
    rules = sharding.rules_from_config(tiny_config)
    with sharding.activation_sharding(mesh, rules):  # the layers' batch constraints apply
        hlo = fn.lower(st, batch).compile().as_text()
        got = fn(st, jax.device_put(batch, batch_sh))
    assert got.sharding.spec[0] == "data"
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    # Every video block computes on its device's quarter of the batch: the (B, N, width) carry of
    # the scanned blocks is (1, N, width) per device, never the whole batch (which XLA chose for
    # fsdp before the constraints: every device computed every example).
    tokens = int(np.prod(model.video_encoder.pos_embed[...].shape[:-1]))
    assert f"f32[1,{tokens},{cfg.video.width}]" in hlo
    assert f"f32[4,{tokens},{cfg.video.width}]" not in hlo


def test_batch_and_replicated_shardings():
    mesh = sharding.make_mesh((4, 2))
    batch = jax.device_put(np.zeros((8, 3), np.float32), sharding.data_sharding(mesh))
    assert batch.addressable_shards[0].data.shape == (2, 3)  # 8 rows over 'data' of size 4
    assert sharding.batch_sharding(mesh, 3).spec == P("data", None, None)
    scalar = jax.device_put(np.float32(1), sharding.replicated(mesh))
    assert sharding.replicated(mesh).spec == P() and len(scalar.sharding.device_set) == 8


def test_mesh_axis_that_does_not_divide_a_parameter_is_an_error(tiny_config):
    """A 'model' axis of 4 over the tiny model's 2 attention heads: an error naming the parameter,
    the dimension and the axis, not a silently replicated (slow) run."""
    abstract = nnx.eval_shape(lambda: JoVALE(tiny_config.model, rngs=nnx.Rngs(0)))
    rules = sharding.rules_from_config(tiny_config)
    good = sharding.state_shardings(nnx.state(abstract), sharding.make_mesh((4, 2)), rules)
    assert len(jax.tree.leaves(good)) > 0
    with pytest.raises(
        ValueError,
        match=r"/key_bias: dimension 1 \('heads', size 2\) is not divisible by mesh axis 'model' "
        r"of size 4",
    ):
        sharding.state_shardings(nnx.state(abstract), sharding.make_mesh((2, 4)), rules)


def test_placeholders_match_the_created_model(tiny_config):
    """``create_sharded(placeholders=True)`` (the target a resumed run restores onto): every
    variable but the RNG keys is a ShapeDtypeStruct (no array) with the created model's shape,
    dtype and sharding; the keys are the created model's."""
    mesh = sharding.make_mesh((4, 2))
    rules = sharding.rules_from_config(tiny_config)
    make = lambda: JoVALE(tiny_config.model, rngs=nnx.Rngs(0))
    real, real_sh = sharding.create_sharded(make, mesh, rules)
    ph, ph_sh = sharding.create_sharded(make, mesh, rules, placeholders=True)
    assert jax.tree.structure(ph_sh) == jax.tree.structure(real_sh)
    real_rngs, real_rest = nnx.state(real, nnx.RngState, ...)
    ph_rngs, ph_rest = nnx.state(ph, nnx.RngState, ...)
    for a, b in zip(jax.tree.leaves(real_rest), jax.tree.leaves(ph_rest), strict=True):
        assert isinstance(b, jax.ShapeDtypeStruct) and not isinstance(b, jax.Array)
        assert (b.shape, b.dtype, b.sharding) == (a.shape, a.dtype, a.sharding)
    for a, b in zip(jax.tree.leaves(real_rngs), jax.tree.leaves(ph_rngs), strict=True):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(jax.tree.leaves(real_rest)) > 50 and len(jax.tree.leaves(real_rngs)) > 0
