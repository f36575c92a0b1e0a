"""Parameter and multiply-accumulate counts per component, without running the model.

MACs are counted the way fvcore counts the paper's "GFLOPs": one per multiply-accumulate of every
matrix product and convolution (``dot_general`` and ``conv_general_dilated`` in the traced jaxpr,
sub-jaxprs included); element-wise work (norms, softmax, GELU) is not counted. Tracing uses abstract
shapes only, so full-size models cost seconds and no memory.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jovale_jax.models.batch import abstract_batch, modalities_of
from jovale_jax.models.jovale import (
    JoVALE,
    build_fusion,
    context_grid,
    modality_boxes,
    time_steps,
)
from jovale_jax.models.layers import dtype_of, resample_time

# "amfn" is the model's fusion stage, of any model.fusion_strategy (the paper's name for JoVALE's).
COMPONENTS = ("visual", "scene", "audio", "actor", "amfn", "heads")


def _eqn_macs(eqn) -> int:
    prim = eqn.primitive.name
    if prim == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
    if prim == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        dn = eqn.params["dimension_numbers"]
        out_channels = rhs[dn.rhs_spec[0]]
        per_output = math.prod(rhs) // out_channels  # in_channels / groups x kernel volume
        return math.prod(eqn.outvars[0].aval.shape) * per_output
    return 0


def jaxpr_macs(jaxpr) -> int:
    """Multiply-accumulates of a (closed) jaxpr, recursing into sub-jaxprs (scan bodies x
    length)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        total += _eqn_macs(eqn)
        repeat = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for value in eqn.params.values():
            subs = value if isinstance(value, (tuple, list)) else (value,)
            for sub in subs:
                if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
                    total += repeat * jaxpr_macs(sub)
    return total


def count_macs(fn, *args) -> int:
    """MACs of ``fn(*args)``; args may be ``jax.ShapeDtypeStruct``."""
    return jaxpr_macs(jax.make_jaxpr(fn)(*args))


def _params(module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def component_costs(cfg, batch_size: int = 1) -> dict[str, dict[str, float]]:
    """{component: {"params": int, "gmacs": float}} plus "total" for one forward pass.

    Components: visual (video ViT + projection), scene (BLIP + projection), audio (patch embedding +
    projection), actor (RoIAlign + projections + query embeddings), amfn (the model's ``fusion``
    module, of ``model.fusion_strategy``: the AMFN by default), heads. A component that the
    config's modalities leave out is absent.
    """
    model = nnx.eval_shape(lambda: JoVALE(cfg, rngs=nnx.Rngs(0)))
    model.eval()
    graphdef, state = nnx.split(model)
    batch = abstract_batch(cfg, batch_size)

    def run(part):
        def fn(state, inputs):
            return part(nnx.merge(graphdef, state), inputs)

        return fn

    def encode(m, b):
        return m.encode(b)

    context, present, feature_map = jax.eval_shape(run(encode), state, batch)
    results: dict[str, dict[str, float]] = {}

    def add(name, modules, part, inputs):
        results[name] = {
            "params": sum(_params(mod) for mod in modules),
            "gmacs": count_macs(run(part), state, inputs) / 1e9,
        }

    if "video" in model.modalities:
        add(
            "visual",
            [model.video_encoder, model.video_norm, model.video_proj],
            lambda m, v: m.video_proj(m.video_norm(m.video_encoder(v))),
            batch["video"],
        )
    if "scene" in model.modalities:
        add(
            "scene",
            [model.scene_encoder, model.scene_proj],
            lambda m, s: m.scene_proj(m.scene_encoder(s)),
            batch["scene"],
        )
    if "audio" in model.modalities:
        add(
            "audio",
            [model.audio_embed, model.audio_proj],
            lambda m, a: m.audio_proj(m.audio_embed(a)),
            batch["audio"],
        )

    def actor(m, inputs):
        fmap, b = inputs
        a = m.actor_features(fmap, b["boxes"], b.get("proposal_features"))
        return {
            k: resample_time(a, m.query_time_embed[k].shape[0], 2) + m.query_time_embed[k][...]
            for k in m.modalities
        }

    add("actor", [model.actor_features, model.query_time_embed], actor, (feature_map, batch))
    queries = jax.eval_shape(run(actor), state, (feature_map, batch))
    boxes = modality_boxes(batch, model.modalities)
    fuse_inputs = (queries, context, batch["box_mask"], present, boxes)
    add("amfn", [model.fusion], lambda m, x: m.fusion(*x), fuse_inputs)
    head_inputs, _ = jax.eval_shape(run(lambda m, x: m.fusion(*x)), state, fuse_inputs)
    add("heads", [model.heads], lambda m, x: {k: m.heads[k](v) for k, v in x.items()}, head_inputs)

    total_macs = count_macs(run(lambda m, b: m(b)), state, batch) / 1e9
    results["total"] = {"params": _params(model), "gmacs": total_macs}
    return results


def fusion_gmacs(cfg, batch_size: int = 1) -> float:
    """GMACs of the fusion stage alone (the ``amfn`` component of :func:`component_costs`), from
    the input shapes the config implies: no stream is traced, so a full-size config costs a
    second. What Table 6 of the paper compares across MFE structures."""
    mods = modalities_of(cfg)
    dtype = dtype_of(cfg.dtype)
    fusion = nnx.eval_shape(lambda: build_fusion(cfg, mods, rngs=nnx.Rngs(0), dtype=dtype))
    fusion.eval()
    graphdef, state = nnx.split(fusion)
    b, k, d = batch_size, cfg.num_proposals, cfg.embed_dim
    steps, grid = time_steps(cfg), context_grid(cfg)

    def spec(*shape, dtype=dtype):
        return jax.ShapeDtypeStruct(shape, dtype)

    inputs = (
        {m: spec(b, k, steps[m], d) for m in mods},
        {m: spec(b, *grid[m], d) for m in mods},
        spec(b, k, dtype=jnp.bool_),
        {m: spec(b, dtype=jnp.bool_) for m in mods},
        modality_boxes({"boxes": spec(b, k, 4, dtype=jnp.float32)}, mods),
    )
    return count_macs(lambda s, x: nnx.merge(graphdef, s)(*x), state, inputs) / 1e9


def significant(x: float, digits: int = 4) -> str:
    """``x`` with ``digits`` significant digits, without an exponent: 644.8, 0.002131."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}"


def format_costs(costs: dict[str, dict[str, float]]) -> str:
    """:func:`component_costs` as a table: parameters in millions, GMACs to 4 significant digits
    (the tiny presets' components cost thousandths of a GMAC)."""
    lines = [f"{'component':<10} {'params (M)':>12} {'GMACs':>10}"]
    for name, c in costs.items():
        lines.append(
            f"{name:<10} {significant(c['params'] / 1e6):>12} {significant(c['gmacs']):>10}"
        )
    return "\n".join(lines)
