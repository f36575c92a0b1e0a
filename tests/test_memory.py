"""memory_report on a tiny one-stream config: the byte accounting and the remat MAC count."""

import math

import jax
from flax import nnx

from configs import synthetic
from jovale_jax.bench.memory import memory_report, print_memory
from jovale_jax.models import JoVALE


def test_memory_report_accounts_for_state_and_clips():
    config = synthetic.get_config("test")
    config.model.modalities = ("video",)
    config.model.amfn.num_layers = 1
    config.model.remat_policy = "full"
    r = memory_report(config, 2)
    model = nnx.eval_shape(lambda: JoVALE(config.model, rngs=nnx.Rngs(0)))
    state_bytes = sum(
        math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model, nnx.Param))
    )
    assert r["params"] == state_bytes and r["frozen"] > 0  # no BLIP: frozen = position table
    assert 2 * r["params"] <= r["opt_state"] <= 2 * r["params"] + 1024  # AdamW's two moments
    assert r["arguments"] >= r["params"] + r["opt_state"] + r["frozen"] + r["batch"]
    assert r["temporaries"] > 0 and r["per_clip"] == r["total"] / 2
    assert r["total"] == (
        r["arguments"] + r["outputs"] - r["aliased"] + r["temporaries"] + r["generated_code"]
    )
    assert r["remat_policy"] == "full" and r["dtype"] == "float32" and r["backend"] == "cpu"
    # forward + backward (the input video needs no gradient) + the recomputed forward of the
    # scanned layers: between 2 and 4 forwards' worth of MACs
    from jovale_jax.flops import component_costs

    forward = component_costs(config.model, 1)["total"]["gmacs"]
    assert 2.0 * forward < r["gmacs_per_clip"] < 4.0 * forward


def test_bench_memory_command_prints_the_report(capsys):
    """`launch.py bench memory` prints memory_report as a table (GB) and one JSON line."""
    import json

    config = synthetic.get_config("test")
    config.model.modalities = ("video",)
    config.model.amfn.num_layers = 1
    print_memory(config, 2)
    lines = capsys.readouterr().out.strip().splitlines()
    r = json.loads(lines[-1])
    assert r["bench"] == "memory" and r["batch_size"] == 2 and r["remat_policy"] == "none"
    assert f"  per_clip        {r['per_clip'] / 1e9:10.3f} GB" in lines
    assert r["per_clip"] == r["total"] / 2 > 0
