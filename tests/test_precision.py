"""bfloat16 compute against float32, float32 parameters, BLIP under stop_gradient, and remat.

One float32 model is initialised; the bfloat16 and the remat variants are built abstractly and
take its parameters, so every comparison is between the same weights.

bfloat16 runs are compiled with ``xla_allow_excess_precision=False``: by default XLA on the CPU
evaluates bfloat16 element-wise work in float32 and drops the round trips, which hides the
rounding a GPU does. The tolerance: the largest |bf16 logit - f32 logit| at most 10% of the
float32 logits' standard deviation over the batch (the spread that ranks the classes; measured
1.5%), the mean at most 2% (measured 0.6%). With the classifier in bfloat16, as it was before
``ActionHead`` kept it in float32, it was 33% (mean 16%).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_batch
from flax import nnx

from jovale_jax.losses import sigmoid_focal_loss
from jovale_jax.models.jovale import JoVALE

MAX_DIFF = 0.10  # x the float32 logits' standard deviation
MEAN_DIFF = 0.02


@pytest.fixture(scope="module")
def tiny():
    """(model config, float32 model's graphdef and state, batch) of the `test` variant."""
    from configs import synthetic

    cfg = synthetic.get_config("test").model
    cfg.amfn.num_layers = 1  # every stream, one fusion layer: quicker to compile
    graphdef, state = nnx.split(JoVALE(cfg, rngs=nnx.Rngs(0)))
    return cfg, graphdef, state, random_batch(cfg, 4, seed=1)


def graphdef_of(cfg, **fields):
    """The graphdef of a JoVALE with ``fields`` of ``cfg`` changed (no parameters created)."""
    cfg = cfg.copy_and_resolve_references()
    cfg.update(fields)
    return nnx.graphdef(nnx.eval_shape(lambda: JoVALE(cfg, rngs=nnx.Rngs(0))))


def forward_fn(graphdef):
    """Eval-mode logits of a model given its state."""

    def fn(state, batch):
        model = nnx.merge(graphdef, state)
        model.eval()
        return model(batch)

    return fn


def test_bfloat16_logits_close_to_float32(tiny):
    cfg, graphdef, state, batch = tiny
    ref = np.asarray(jax.jit(forward_fn(graphdef))(state, batch))
    bf16 = forward_fn(graphdef_of(cfg, dtype="bfloat16"))
    compiled = (
        jax.jit(bf16)
        .lower(state, batch)
        .compile(compiler_options={"xla_allow_excess_precision": False})
    )
    got = np.asarray(compiled(state, batch))
    assert got.dtype == np.float32 and got.shape == ref.shape
    diff = np.abs(got - ref) / ref.std()
    assert diff.max() < MAX_DIFF and diff.mean() < MEAN_DIFF, (diff.max(), diff.mean())

    # bfloat16 all the way through: every matmul and convolution takes bfloat16 operands but the
    # classifier's (float32 on purpose, see ActionHead), while the parameters stay float32.
    jaxpr = jax.make_jaxpr(bf16)(state, batch)
    float32_products = [
        eqn.outvars[0].aval.shape
        for eqn in equations(jaxpr)
        if eqn.primitive.name in PRODUCTS
        and any(v.aval.dtype != jnp.bfloat16 for v in eqn.invars[:2])
    ]
    assert float32_products == [(batch["boxes"].shape[0], cfg.num_proposals, cfg.num_classes)]
    model = nnx.merge(graphdef_of(cfg, dtype="bfloat16"), state)
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}


PRODUCTS = ("dot_general", "conv_general_dilated")


def equations(jaxpr):
    """Every equation of a (closed) jaxpr, those of its sub-jaxprs included."""
    for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
                    yield from equations(sub)


def loss_and_grads(cfg, graphdef, state, batch):
    """(loss, gradients w.r.t. every nnx.Param, the names of the primitives in the traced step)."""
    graphdef, params, rest = nnx.split(nnx.merge(graphdef, state), nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)  # no Variables across traces
    shape = batch["boxes"].shape[:2] + (cfg.num_classes,)
    targets = np.random.default_rng(2).uniform(size=shape) < 0.3

    def loss(p):
        logits = nnx.merge(graphdef, p, rest)(batch)
        return sigmoid_focal_loss(logits, targets.astype(np.float32), batch["box_mask"])

    step = jax.value_and_grad(loss)
    names = {eqn.primitive.name for eqn in equations(jax.make_jaxpr(step)(params))}
    value, grads = jax.jit(step)(params)
    return float(value), grads, names


@pytest.fixture(scope="module")
def plain_grads(tiny):
    return loss_and_grads(*tiny)


def test_remat_gives_the_same_loss_and_gradients(tiny, plain_grads):
    cfg, _, state, batch = tiny
    loss, grads, names = plain_grads
    remat_loss, remat_grads, remat_names = loss_and_grads(
        cfg, graphdef_of(cfg, remat_policy="full"), state, batch
    )
    remat = jax.make_jaxpr(jax.checkpoint(jnp.sin))(1.0).eqns[0].primitive.name  # the primitive
    assert remat in remat_names and remat not in names
    assert remat_loss == pytest.approx(loss, rel=1e-6)
    flat, remat_flat = (
        dict(jax.tree_util.tree_flatten_with_path(g)[0]) for g in (grads, remat_grads)
    )
    assert flat.keys() == remat_flat.keys()
    scale = max(float(np.abs(g).max()) for g in flat.values())
    for path, g in flat.items():  # atol for gradients that are zero but for rounding (key biases)
        np.testing.assert_allclose(
            remat_flat[path], g, rtol=1e-5, atol=1e-6 * scale, err_msg=jax.tree_util.keystr(path)
        )


def test_blip_gets_no_gradient_when_frozen(tiny, plain_grads):
    from jovale_jax.state import trainable_filter

    cfg, graphdef, state, _ = tiny
    assert cfg.scene.frozen
    _, grads, _ = plain_grads
    blip = jax.tree.leaves(grads["scene_encoder"])
    assert blip and all(not np.any(np.asarray(g)) for g in blip)  # exactly zero: stop_gradient
    assert np.any(np.asarray(grads["scene_proj"]["kernel"]))  # the scene stream does reach the loss
    trainable = nnx.state(nnx.merge(graphdef, state), trainable_filter(cfg))
    assert "scene_encoder" not in trainable and "scene_proj" in trainable  # and no optimizer state
