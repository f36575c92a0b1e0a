"""The ablation variants at tiny sizes: Table 7's fair uniform fusion, Table 5's fusion strategies,
Table 6's MFE structures, supplementary Table 4's scene encoders."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import check_masking_and_equivariance, make_forward, random_batch
from flax import nnx

from jovale_jax.models import MFA, JoVALE
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
    nxt, fuse, gates = mfa(same, present)
    np.testing.assert_array_equal(gates, UNIFORM_WEIGHT)
    np.testing.assert_allclose(fuse, UNIFORM_WEIGHT * np.asarray(a_hat["video"]), rtol=1e-6)
    for m in MODS:
        np.testing.assert_allclose(nxt[m], a_hat["video"], rtol=1e-5, atol=1e-6)


STRATEGIES = ("roi_feature_fusion", "roi_relation", "global_relation")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fusion_strategy_masking_and_equivariance(tiny_config, strategy):
    cfg = tiny_config.model
    cfg.modalities = ("video", "scene")
    cfg.fusion_strategy = strategy
    check_masking_and_equivariance(cfg)


def test_roi_relation_is_not_roi_feature_fusion(tiny_config):
    """The relation layers change what the head sees (a real actor's box moves the others)."""
    cfg = tiny_config.model
    cfg.modalities = ("video", "scene")
    cfg.fusion_strategy = "roi_relation"
    forward = make_forward(JoVALE(cfg, rngs=nnx.Rngs(0)))
    batch = random_batch(cfg, batch_size=2, seed=3)
    batch["box_mask"][:] = True
    changed = dict(batch, boxes=batch["boxes"].copy())
    changed["boxes"][:, 0] = [0.0, 0.0, 1.0, 1.0]
    assert np.abs(forward(changed)[:, 1] - forward(batch)[:, 1]).max() > 1e-6


ENCODERS = ("joint", "factorized", "divided", "cross_frame")


@pytest.mark.parametrize("encoder", ENCODERS)
def test_mfe_structure_masking_and_equivariance(tiny_config, encoder):
    cfg = tiny_config.model
    cfg.amfn.encoder = encoder
    check_masking_and_equivariance(cfg)


def test_mfe_structure_layers(tiny_config):
    """Each encoder's AMFN holds the layers its definition says (factorized: L - L_t spatial +
    L_t temporal; cross-frame: one message token per time step and modality)."""
    from jovale_jax.models.amfn import AMFN
    from jovale_jax.models.mfe_variants import SpatialEncoder, TemporalEncoder

    cfg = tiny_config.model.amfn
    cfg.num_layers, cfg.temporal_layers, cfg.encoder = 3, 1, "factorized"
    mods, steps = ("video", "audio"), {"video": 4, "audio": 9}
    amfn = AMFN(16, mods, 4, cfg, rngs=nnx.Rngs(0), time_steps=steps)
    assert isinstance(amfn.layers.mfe["video"], SpatialEncoder)
    assert isinstance(amfn.temporal_layers.mfe["audio"], TemporalEncoder)
    # stacked for nnx.scan: a leading layer axis of L - L_t and L_t
    assert amfn.layers.mfe["video"].encoder.attn.query_kernel.shape[0] == 2
    assert amfn.temporal_layers.mfe["audio"].encoder.attn.query_kernel.shape[0] == 1
    cfg.encoder = "cross_frame"
    amfn = AMFN(16, mods, 4, cfg, rngs=nnx.Rngs(0), time_steps=steps)
    assert {m: amfn.messages[m].shape for m in mods} == {"video": (4, 16), "audio": (9, 16)}
    queries = {m: jnp.ones((2, 3, t, 16)) for m, t in steps.items()}
    context = {"video": jnp.ones((2, 4, 5, 16)), "audio": jnp.ones((2, 9, 2, 16))}
    out, _ = nnx.jit(lambda mod, *a: mod(*a))(
        amfn, queries, context, jnp.ones((2, 3), bool), {m: jnp.ones((2,), bool) for m in mods}
    )
    assert out["fused"].shape == (2, 3, 4, 16)
    cfg.fusion = "late"  # one embedding per modality: its last action embeddings
    amfn = AMFN(16, mods, 4, cfg, rngs=nnx.Rngs(0), time_steps=steps)
    out, _ = nnx.jit(lambda mod, *a: mod(*a))(
        amfn, queries, context, jnp.ones((2, 3), bool), {m: jnp.ones((2,), bool) for m in mods}
    )
    assert {m: v.shape for m, v in out.items()} == {m: v.shape for m, v in queries.items()}
    assert amfn.head_dims == {m: 16 for m in mods}


@pytest.mark.parametrize("strategy", ("amfn", "global_relation"))
def test_fusion_gmacs_equals_the_component_count(tiny_config, strategy):
    from jovale_jax.flops import component_costs, fusion_gmacs

    cfg = tiny_config.model
    cfg.fusion_strategy = strategy
    assert fusion_gmacs(cfg) == pytest.approx(component_costs(cfg)["amfn"]["gmacs"], rel=1e-9)


# The AMFN's input geometry of the paper's SlowFast-R50 ablations: T_v = 4 and a 16 x 16 grid.
TABLE6_COMMAND = (
    "launch.py flops --config configs/ava_vitb16.py --table 6 --json "
    "--config.model.video.num_frames=8 --config.model.video.image_size=(256,256)"
)


def test_table6_flops_ratios_match_the_paper():
    """`launch.py flops --table 6` (the README's command): each MFE structure's AMFN GMACs over
    the MFE's lands within 15% of the paper's GFLOPs ratio."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, *TABLE6_COMMAND.split()], capture_output=True, text=True, check=True
    )
    rows = {r["row"]: r for r in json.loads(out.stdout.strip().splitlines()[-1])}
    assert set(rows) == {"joint", "factorized", "divided", "cross_frame", "mfe"}
    for name, r in rows.items():
        assert abs(r["ratio"] / r["paper_ratio"] - 1) < 0.15, (name, r)
    assert rows["mfe"]["fusion_gmacs"] == pytest.approx(25.4, rel=0.1)  # the paper's MFE row
    assert rows["joint"]["ratio"] > rows["divided"]["ratio"] > 1 > rows["factorized"]["ratio"]


VARIANTS = [("amfn.encoder", e) for e in ENCODERS] + [("fusion_strategy", s) for s in STRATEGIES]


def fusion_inputs(cfg, field: str, value: str, b: int):
    """``cfg`` (a ``config.model``) set to the variant ``field = value`` (video + scene for a
    fusion strategy), and random inputs of its fusion stage (the arguments of the fusion
    interface, :mod:`jovale_jax.models.fusion`)."""
    from jovale_jax.models.jovale import context_grid, modality_boxes, time_steps

    section, leaf = (cfg.amfn, "encoder") if field == "amfn.encoder" else (cfg, field)
    section[leaf] = value
    if field == "fusion_strategy":
        cfg.modalities = ("video", "scene")
    mods, k, d = tuple(cfg.modalities), cfg.num_proposals, cfg.embed_dim
    rng = np.random.default_rng(0)
    steps, grid = time_steps(cfg), context_grid(cfg)
    boxes = random_batch(cfg, batch_size=b, seed=1)
    return (
        {m: rng.normal(size=(b, k, steps[m], d)).astype(np.float32) for m in mods},
        {m: rng.normal(size=(b, *grid[m], d)).astype(np.float32) for m in mods},
        boxes["box_mask"],
        {m: np.ones((b,), bool) for m in mods},
        modality_boxes(boxes, mods),
    )


@pytest.mark.parametrize("field,value", VARIANTS, ids=[v for _, v in VARIANTS])
def test_variant_sharded_forward_equals_single_device(tiny_config, field, value):
    """On the (4, 2) mesh (batch over 'data', heads and MLP over 'model') every variant's fusion
    stage (where the variants differ; tests/test_sharding.py runs the whole model) computes what
    it computes on one device."""
    from jovale_jax import sharding
    from jovale_jax.models.jovale import build_fusion

    cfg = tiny_config.model
    inputs = fusion_inputs(cfg, field, value, b=4)
    mods = tuple(cfg.modalities)

    def make():
        module = build_fusion(cfg, mods, rngs=nnx.Rngs(0))
        module.eval()
        return module

    def forward(gd, st, x):
        return jax.tree.map(np.asarray, jax.jit(lambda s, x: nnx.merge(gd, s)(*x)[0])(st, x))

    want = forward(*nnx.split(make()), inputs)
    mesh = sharding.make_mesh((4, 2))
    rules = sharding.rules_from_config(tiny_config)
    module, shardings = sharding.create_sharded(make, mesh, rules)
    gd, st = nnx.split(module)
    placed = jax.tree.map(
        lambda v: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)), inputs
    )
    fn = jax.jit(lambda s, x: nnx.merge(gd, s)(*x)[0], in_shardings=(shardings, None))
    with sharding.activation_sharding(mesh, rules):
        got = fn(st, placed)
    assert len(jax.tree.leaves(got)[0].sharding.device_set) == 8
    jax.tree.map(lambda g, w: np.testing.assert_allclose(np.asarray(g), w, atol=1e-5), got, want)


def test_bad_variant_names_and_missing_modalities(tiny_config):
    """Each error names the field, the allowed values and the given one."""
    cfg = tiny_config.model
    cfg.amfn.encoder = "spacetime"
    with pytest.raises(
        ValueError,
        match=r"model\.amfn\.encoder: expected one of \('mfe', 'joint', "
        r"'factorized', 'divided', 'cross_frame'\), got 'spacetime'",
    ):
        nnx.eval_shape(lambda: JoVALE(cfg, rngs=nnx.Rngs(0)))
    cfg.amfn.encoder, cfg.amfn.temporal_layers = "factorized", 2  # L = 2: no spatial layer left
    with pytest.raises(
        ValueError, match=r"model\.amfn\.temporal_layers: .*< num_layers \(2\), got 2"
    ):
        nnx.eval_shape(lambda: JoVALE(cfg, rngs=nnx.Rngs(0)))
    cfg.amfn.encoder = "mfe"
    cfg.fusion_strategy = "late_fusion"
    with pytest.raises(
        ValueError,
        match=r"model\.fusion_strategy: expected one of \('amfn', "
        r"'roi_feature_fusion', 'roi_relation', 'global_relation'"
        r"\), got 'late_fusion'",
    ):
        nnx.eval_shape(lambda: JoVALE(cfg, rngs=nnx.Rngs(0)))
    for strategy, mods in (
        ("roi_relation", ("video",)),
        ("roi_feature_fusion", ("video", "audio")),
    ):
        cfg.fusion_strategy, cfg.modalities = strategy, mods
        with pytest.raises(
            ValueError,
            match=rf"model\.fusion_strategy '{strategy}' .* "
            rf"model\.modalities must be \('video', 'scene'\), "
            rf"got {re.escape(str(mods))}",
        ):
            nnx.eval_shape(lambda: JoVALE(cfg, rngs=nnx.Rngs(0)))


def test_readme_shows_the_table6_command():
    import pathlib
    import shlex

    text = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    shown = [shlex.split(line) for line in text.splitlines() if "--table 6 --json" in line]
    assert ["python", *TABLE6_COMMAND.split()] in shown  # as bash reads the README's quoting


@pytest.mark.parametrize(
    "field,value",
    [("amfn.encoder", "joint"), ("amfn.encoder", "divided")]
    + [("fusion_strategy", "global_relation")],
)
def test_context_tokens_carry_their_time_step(tiny_config, field, value):
    """Where context tokens attend across time (joint, divided, global relation), reversing the
    time order of the queries and the context does not just reverse the output: the context
    tokens carry a time embedding, as the actor queries do (without one the encoders are
    equivariant to it)."""
    from jovale_jax.models.jovale import build_fusion, time_steps

    cfg = tiny_config.model
    cfg.modalities = ("video", "scene")  # T_v = T_s = 2: no resampling between them
    queries, context, mask, present, boxes = fusion_inputs(cfg, field, value, b=2)
    assert {time_steps(cfg)[m] for m in cfg.modalities} == {2}
    fusion = build_fusion(cfg, cfg.modalities, rngs=nnx.Rngs(0))
    fusion.eval()

    def fused(q, c):
        embeddings, _ = fusion(q, c, mask, present, boxes)
        return np.asarray(embeddings["fused"])

    base = fused(queries, context)
    reversed_ = fused(
        {m: np.flip(q, 2) for m, q in queries.items()},
        {m: np.flip(c, 1) for m, c in context.items()},
    )
    assert np.abs(reversed_ - np.flip(base, 2)).max() > 1e-4


def test_late_fusion_averages_scores_over_present_modalities():
    """Late score fusion (Table 7): the sigmoid of the returned logits is the mean of the
    per-modality heads' sigmoids over the modalities present (audio missing in example 1),
    finite for saturated logits too."""
    from jovale_jax.models.fusion import head_logits
    from jovale_jax.models.heads import ActionHead

    d, c, rng = 8, 3, np.random.default_rng(0)
    heads = nnx.Dict({m: ActionHead(d, c, rngs=nnx.Rngs(i)) for i, m in enumerate(MODS)})
    a_last = {m: jnp.asarray(rng.normal(size=(2, 4, 2, d)), jnp.float32) for m in MODS}
    present = {m: jnp.asarray([True, m != "audio"]) for m in MODS}
    got = head_logits(heads, a_last, present)
    scores = {m: 1 / (1 + np.exp(-np.asarray(heads[m](a_last[m]), np.float64))) for m in MODS}
    want = [np.mean([scores[m][i] for m in MODS if present[m][i]], 0) for i in range(2)]
    np.testing.assert_allclose(jax.nn.sigmoid(got), np.stack(want), rtol=1e-5)
    for m in MODS:  # saturated heads: one at +40, the others at -40 -> mean score 1/3 or 1/2
        heads[m].classifier.bias[...] = jnp.full((c,), 40.0 if m == "video" else -40.0)
    got = np.asarray(jax.nn.sigmoid(head_logits(heads, a_last, present)))
    np.testing.assert_allclose(got[0], 1 / 3, rtol=1e-4)
    np.testing.assert_allclose(got[1], 1 / 2, rtol=1e-4)
