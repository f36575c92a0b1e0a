"""The ablation variants of issue 12 at tiny sizes: Table 7's fair uniform fusion."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jovale_jax.models import MFA
from jovale_jax.models.amfn import UNIFORM_WEIGHT

MODS = ("video", "audio", "scene")


def test_uniform_weight_matches_the_gate_scale(tiny_config):
    """The gate starts at ~0.5 on random inputs; `uniform` uses that constant, so that with equal
    modality embeddings a layer keeps the queries' scale (w = 1 doubled it)."""
    cfg = tiny_config.model.amfn
    d, k, t = 16, 3, 4
    rng = np.random.default_rng(0)
    a_hat = {m: jnp.asarray(rng.normal(size=(4, k, t, d)), jnp.float32) for m in MODS}
    present = {m: jnp.ones((4,), bool) for m in MODS}
    gate = []
    for seed in range(3):
        mfa = MFA(d, MODS, t, cfg, rngs=nnx.Rngs(seed))
        w = mfa.weights(a_hat, present)
        gate.append(np.mean([np.asarray(w[m]).mean() for m in MODS]))
    assert abs(np.mean(gate) - UNIFORM_WEIGHT) < 0.03, gate
    cfg.fusion = "uniform"
    mfa = MFA(d, MODS, t, cfg, rngs=nnx.Rngs(0))
    w = mfa.weights(a_hat, present)
    assert all(np.all(np.asarray(w[m]) == UNIFORM_WEIGHT) for m in MODS)
    same = {m: a_hat["video"] for m in MODS}
    nxt, fuse = mfa(same, present)
    np.testing.assert_allclose(fuse, UNIFORM_WEIGHT * np.asarray(a_hat["video"]), rtol=1e-6)
    for m in MODS:
        np.testing.assert_allclose(nxt[m], a_hat["video"], rtol=1e-5, atol=1e-6)
