"""Downloaded files that could run code when opened (issue 23 item 5): annotation and proposal
pickles go through the restricted unpickler, `.pth` files through torch's weights-only loader."""

import os
import pickle

import numpy as np
import pytest

from jovale_jax.datasets import common, safe_pickle


class RunsCode:
    """Unpickling this calls os.system, as a crafted download would."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_annotation_pickle_contents_load(tmp_path):
    # What UCF101v2-GT.pkl / JHMDB-GT.pkl hold: labels, gttubes {video: {label: [array]}},
    # nframes, splits, resolution; numpy arrays and scalars, a set, in protocols 2 and 5.
    content = {
        "labels": ["Basketball", "Biking"],
        "gttubes": {"Biking/v_1": {1: [np.arange(15, dtype=np.float32).reshape(3, 5)]}},
        "nframes": {"Biking/v_1": np.int64(120)},
        "train_videos": [["Biking/v_1"]],
        "test_videos": [[]],
        "resolution": {"Biking/v_1": (240, 320)},
        "tags": {"a", "b"},
        "raw": b"\x00\xff",
    }
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"gt{protocol}.pkl"
        path.write_bytes(pickle.dumps(content, protocol=protocol))
        got = safe_pickle.load(str(path))
        assert got.keys() == content.keys() and got["tags"] == {"a", "b"}
        assert got["raw"] == b"\x00\xff" and got["nframes"]["Biking/v_1"] == 120
        np.testing.assert_array_equal(
            got["gttubes"]["Biking/v_1"][1][0], content["gttubes"]["Biking/v_1"][1][0]
        )


def test_crafted_pickle_is_refused_before_running(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "UCF101v2-GT.pkl"
    path.write_bytes(pickle.dumps({"labels": [RunsCode(marker)]}, protocol=2))
    with pytest.raises(
        safe_pickle.UnsafePickleError,
        match=rf"^{path}: refused to load the global posix\.system: annotation and proposal "
        r"pickles hold only builtin containers and numpy arrays",
    ):
        safe_pickle.load(str(path))
    # the dense-proposals reader goes through the same door
    with pytest.raises(safe_pickle.UnsafePickleError, match="posix.system"):
        common.read_proposals(str(path), feature_dim=0)
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the plain unpickler would have run it
    assert marker.exists()


def test_pth_with_code_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    from jovale_jax.convert.io import read_state_dict

    marker = tmp_path / "ran"
    path = tmp_path / "model.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": RunsCode(marker)}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        read_state_dict(path)
    assert not marker.exists()
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.ones(2)}}, good)
    np.testing.assert_array_equal(read_state_dict(good)[0]["w"], np.ones(2))
