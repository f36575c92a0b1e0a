"""The step, forward, memory and remat benches run on tiny configs and report sane numbers.

No timing assertions: only keys, units and relations that hold on any machine. Compiling is most
of the cost on a CPU, so one ShardedModel serves the step and forward benches of the `test`
variant, and the AMFN, memory and remat benches run on a one-stream, one-layer copy of it.
"""

import json

import pytest

from configs import synthetic
from jovale_jax import sharding, state
from jovale_jax.bench import profile
from jovale_jax.bench import step as bench

BATCH = 8
MATMUL = 256  # a small reference matmul: the tests check the plumbing, not the machine


@pytest.fixture(scope="module")
def prepared():
    config = synthetic.get_config("test")
    return state.create(config, mesh=sharding.make_mesh(config.mesh_shape), steps_per_epoch=1)


def check_bench(r, *, bench_name, component, batch=BATCH):
    assert r["bench"] == bench_name and r["component"] == component and r["batch_size"] == batch
    assert r["devices"] == 8 and r["seconds"] > 0 and len(r["times_s"]) == 1
    assert r["clips_per_s"] == pytest.approx(batch / r["seconds"])
    assert r["gmacs"] > 0 and r["gmacs_per_clip"] == pytest.approx(r["gmacs"] / batch)
    assert r["achieved_gflops_per_s"] == pytest.approx(2 * r["gmacs"] / r["seconds"])
    assert r["matmul_dtype"] == "float32" and r["matmul_size"] == MATMUL
    assert r["dtype"] == "float32"  # model.dtype "auto" resolved (no GPU here)
    assert r["matmul_ratio"] == pytest.approx(r["achieved_gflops_per_s"] / r["matmul_gflops_per_s"])
    assert 0 < r["matmul_ratio"] < 10
    assert r["peak_bytes_in_use"] is None  # CPUs report no device memory
    assert r["memory"]["temporaries"] >= 0 and r["memory"]["arguments"] > 0
    json.dumps(r)


def test_reference_matmul_reads_the_configs_dtype_names():
    """The presets' model.dtype "auto" (bfloat16 on a GPU, float32 here) names the matmul's dtype:
    a GPU run once failed with "data type 'auto' not understood"."""
    mesh = sharding.make_mesh(synthetic.get_config("test").mesh_shape)
    for name, want in (("auto", "float32"), ("bfloat16", "bfloat16")):
        call, info = bench._matmul(mesh, name, 64)
        assert info == {"matmul_size": 64, "matmul_dtype": want}
        product = call()
        assert product.dtype == want and float(product[0, 0]) == 0.5 * 0.25 * 64


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_model_step_and_forward(tiny_config, prepared, capsys):
    step = bench.run_bench(
        tiny_config, "step", batch_size=BATCH, repeats=1, matmul_size=MATMUL, prepared=prepared
    )
    check_bench(step, bench_name="step", component="model")
    assert last_json(capsys) == json.loads(json.dumps(step))
    assert int(prepared.state["step"]) == 0  # the step ran on a copy: prepared stays usable
    forward = bench.run_bench(
        tiny_config, "forward", batch_size=BATCH, repeats=1, matmul_size=MATMUL, prepared=prepared
    )
    check_bench(forward, bench_name="forward", component="model")
    # The step adds the backward pass: about twice the forward's matmuls again (the frozen BLIP
    # has none), and the forward's MACs are the flops command's count.
    assert 1.5 < step["gmacs"] / forward["gmacs"] < 3.0
    from jovale_jax.flops import component_costs

    total = component_costs(tiny_config.model, BATCH)["total"]["gmacs"]
    assert forward["gmacs"] == pytest.approx(total, rel=1e-6)


@pytest.fixture
def one_stream(tiny_config):
    """The tiny config with the video stream alone and one AMFN layer: quicker to compile."""
    tiny_config.model.modalities = ("video",)
    tiny_config.model.amfn.num_layers = 1
    return tiny_config


def test_amfn_step(one_stream):
    r = bench.run_bench(
        one_stream, "step", batch_size=BATCH, component="amfn", repeats=1, matmul_size=MATMUL
    )
    check_bench(r, bench_name="step", component="amfn")
    from jovale_jax.flops import component_costs

    costs = component_costs(one_stream.model, BATCH)
    forward = costs["amfn"]["gmacs"] + costs["heads"]["gmacs"]
    assert 2.5 < r["gmacs"] / forward < 3.5  # forward, and gradients w.r.t. weights and inputs


def test_profile_breakdown(one_stream):
    r = profile.profile_breakdown(one_stream, mode="forward", batch_size=BATCH, repeats=1)
    assert r["thunk_seconds"] > 0 and r["seconds"] > 0
    assert sum(k["share"] for k in r["kinds"].values()) == pytest.approx(1.0)
    assert set(r["kinds"]) <= {profile.ATTENTION_SCORES, profile.MATMULS, profile.OTHER}
    assert r["kinds"][profile.MATMULS]["seconds"] > 0 and len(r["top"]) == 10


def test_remat_bench(one_stream):
    r = bench.run_remat_bench(one_stream, batch_size=BATCH, repeats=1, matmul_size=MATMUL)
    off, on = r["runs"]["remat_false"], r["runs"]["remat_true"]
    assert not off["remat"] and on["remat"]
    assert r["gmacs_ratio"] > 1  # the recomputed forward
    assert r["time_ratio"] == pytest.approx(on["seconds"] / off["seconds"])
