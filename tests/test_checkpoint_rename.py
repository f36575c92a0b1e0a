"""A checkpoint written before the fusion stage's module was renamed (``amfn`` -> ``fusion``,
issue 22) restores under the new name with a one-line warning, for resuming training and for
evaluation; one in the new layout restores without it."""

import jax
import numpy as np

from configs import synthetic
from jovale_jax import checkpoint, state
from jovale_jax.checkpoint import Checkpointer
from jovale_jax.sharding import make_mesh

WARNING = "names the module 'amfn', now 'fusion'"


def flat(tree):
    return {
        jax.tree_util.keystr(p): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def test_old_module_name_restores_under_the_new_one(tmp_path, capsys):
    cfg = synthetic.get_config("test")
    cfg.mesh_shape = (1, 1)
    mesh = make_mesh((1, 1), jax.devices()[:1])
    saved = state.create(cfg, mesh=mesh, steps_per_epoch=1)
    items = {"state": saved.state, "frozen": saved.frozen}
    meta = {"input_state": {}, "config": cfg.to_json_best_effort()}
    old = checkpoint.rename_module(items, "fusion", "amfn")  # the layout before issue 22
    assert "amfn" in old["state"]["params"] and "fusion" not in old["state"]["params"]
    moments = [k for k in flat(old["state"]["opt_state"]) if "'amfn'" in k]
    assert moments and not [k for k in flat(old["state"]["opt_state"]) if "'fusion'" in k]
    for name, tree in (("old", old), ("new", items)):
        ckpt = Checkpointer(str(tmp_path / name), async_save=False)
        ckpt.save(7, tree, meta)
        ckpt.close()

    cfg.seed += 1  # other initial weights: the restored ones must be the saved ones
    for name in ("old", "new"):
        capsys.readouterr()
        fresh = state.create(cfg, mesh=mesh, steps_per_epoch=1)
        assert not np.array_equal(
            *(
                flat(s.state["params"]["fusion"])["['layers']['mfa']['fc1']['kernel']"]
                for s in (fresh, saved)
            )
        )
        ckpt = Checkpointer(str(tmp_path / name))
        restored, step, _ = state.restore_newest(fresh, ckpt)
        ckpt.close()
        assert step == 7
        got, want = flat(restored.state), flat(saved.state)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        trained = state.load_trained(cfg, str(tmp_path / name), devices=jax.devices()[:1])
        got = flat(trained.state["params"])
        assert got.keys() == flat(saved.state["params"]).keys()
        for k, v in flat(saved.state["params"]).items():
            np.testing.assert_array_equal(got[k], v, err_msg=k)
        err = capsys.readouterr().err
        assert (WARNING in err) == (name == "old"), err
