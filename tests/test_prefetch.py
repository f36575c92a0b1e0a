"""The train loop's input feeding: batches prefetched to the devices change nothing in the
result, the step runs under a transfer guard, and the logged metrics are window means."""

import json

import jax
import numpy as np
import pytest
from test_train import flat_params, small

from jovale_jax import train as train_module
from jovale_jax.train import train


def run(config, workdir, data_dir):
    return train(config, str(workdir), data_dir=data_dir, devices=jax.devices()[:1])


def test_prefetch_is_bit_identical_to_synchronous(tiny_config, tiny_data, tmp_path):
    """4 steps fed synchronously (logged every step) and with 2 batches in flight (logged every 2
    steps) end with the same bits; each window's loss is the mean of its steps' losses, and every
    line is valid JSON with steps/s and the input wait."""
    params, lines = {}, {}
    for ahead, every in ((0, 1), (2, 2)):
        c = small(tiny_config.copy_and_resolve_references(), 4, mesh_shape=(1, 1))
        c.device_prefetch, c.log_every_steps = ahead, every
        params[ahead] = flat_params(run(c, tmp_path / str(ahead), tiny_data)["setup"].state)
        text = (tmp_path / str(ahead) / "metrics.jsonl").read_text()
        lines[ahead] = [json.loads(line) for line in text.splitlines()]
    assert params[0].keys() == params[2].keys()
    for k in params[0]:
        np.testing.assert_array_equal(params[0][k], params[2][k], err_msg=k)
    assert [r["step"] for r in lines[0]] == [1, 2, 3, 4]
    assert [r["step"] for r in lines[2]] == [2, 4]
    for r in lines[0] + lines[2]:
        assert r["steps_per_s"] > 0 and 0 <= r["input_wait"] < 1, r
    losses = [r["loss"] for r in lines[0]]
    want = [np.mean(losses[:2]), np.mean(losses[2:])]
    assert [r["loss"] for r in lines[2]] == pytest.approx(want, rel=1e-6)


def test_transfer_guard_catches_a_host_batch(tiny_config, tiny_data, tmp_path, monkeypatch):
    """A batch left on the host would be copied inside the step: the guard makes that an error."""
    on_devices = train_module.global_batch

    def on_host(mesh, local):
        return {k: np.asarray(v) for k, v in on_devices(mesh, local).items()}

    monkeypatch.setattr(train_module, "global_batch", on_host)
    c = small(tiny_config, 1, mesh_shape=(1, 1))
    with pytest.raises(Exception, match="Disallowed host-to-device transfer"):
        run(c, tmp_path / "w", tiny_data)
