"""`launch.py bench peers` at a tiny geometry: every pair times ours against each peer, and a peer
that cannot be imported gets a row that says so. No timing assertions: keys and relations only.

The official ActivityNet evaluator is not a package (the bench runs it from a checkout): here a
module with its interface stands in for it, so the test checks the bench's plumbing (import path,
numpy aliases, captured metrics), not the official numbers.
"""

import json
import sys

import numpy as np
import pytest

from configs import synthetic
from jovale_jax.bench import peers
from jovale_jax.datasets import ava_fixture

OFFICIAL_STAND_IN = """
import pprint
import numpy as np
from ava import standard_fields  # the official module imports its ava package like this


def run_evaluation(labelmap, groundtruth, detections):
    assert np.float is float  # the alias the official code needs
    from jovale_jax.evaluation import ava
    pprint.pprint({"PascalBoxes_Precision/mAP@0.5IOU": ava.evaluate(
        groundtruth.name, detections.name, labelmap.name)["mAP"]})
"""


def tiny(**bench):
    c = synthetic.get_config("test")
    c.bench.update(
        slowfast_input=(8, 32, 32),
        vit_input=(4, 32, 32),
        vit_depth=1,
        blip_size=32,
        rounds=1,
        eval_frames=20,
        torch_compile=False,
    )
    c.bench.update(bench)
    return c


def official_stand_in(tmp_path) -> str:
    (tmp_path / "ava").mkdir()
    (tmp_path / "ava" / "standard_fields.py").write_text("")
    (tmp_path / "get_ava_performance.py").write_text(OFFICIAL_STAND_IN)
    return str(tmp_path)


def rows_by_pair(result):
    return {(r["pair"], r["mode"]): r for r in result["rows"]}


def test_every_peer_present(tmp_path, capsys, monkeypatch):
    """...and the evaluator pair's CSV files are removed afterwards."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(peers.tempfile, "tempdir", str(scratch))
    config = tiny(
        peers=("slowfast18", "videomae", "blip", "evaluator"),
        activitynet_dir=official_stand_in(tmp_path),
    )
    r = peers.run_peers_bench(config)
    rows = rows_by_pair(r)
    assert set(rows) == {
        ("SlowFast-R18 res5", "forward"),
        ("SlowFast-R18 res5", "forward+backward"),
        ("ViT-B video encoder", "forward"),
        ("ViT-B video encoder", "forward+backward"),
        ("BLIP vision at 32", "forward"),
        ("AVA evaluator", "20 keyframes, CSV to mAP"),
    }
    for row in r["rows"]:
        assert row["ours"]["seconds"] > 0 and row["ours"]["compile_s"] >= 0
        assert row["peers"] and all("missing" not in p for p in row["peers"].values()), row
        for p in row["peers"].values():
            want = p["seconds"] / row["ours"]["seconds"]
            assert p["ratio"] == pytest.approx(want, rel=1e-2, abs=1e-3)  # rounded to 3 places
    evaluator = rows[("AVA evaluator", "20 keyframes, CSV to mAP")]
    assert evaluator["mAP"]["official"] == evaluator["mAP"]["ours"]  # the stand-in is ours
    assert not hasattr(np, "float")  # the alias is gone again
    assert rows[("SlowFast-R18 res5", "forward")]["geometry"] == [1, 8, 32, 32]
    assert len(r["ratios"]) == 6 and r["float32_math"] == "float32"  # XLA:CPU: no TF32
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1])["ratios"] == r["ratios"]
    assert "not available" not in out
    assert not list(scratch.glob("bench_peers_eval_*"))


def test_torch_matches_jax_tf32_on_a_gpu(monkeypatch):
    """On a GPU JAX's float32 products use TF32: torch is switched to TF32 too, unless JAX is
    asked for full float32."""
    import torch

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(peers.jax, "default_backend", lambda: "gpu")
    before = torch.get_float32_matmul_precision()
    try:
        with peers.jax.default_matmul_precision("highest"):
            assert peers.match_float32_math() == "float32"
        assert torch.get_float32_matmul_precision() == "highest"
        assert peers.match_float32_math() == "tf32"
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before)


def test_missing_peers_are_named(monkeypatch, capsys):
    """...and a run on a machine busier than its cores says its ratios are not to be trusted."""
    monkeypatch.setattr(peers.os, "getloadavg", lambda: (99.0, 99.0, 99.0))
    roots = ("pytorchvideo", "transformers")
    for name in [*roots, *(m for m in sys.modules if m.split(".")[0] in roots)]:
        monkeypatch.setitem(sys.modules, name, None)  # import fails, even of loaded submodules
    r = peers.run_peers_bench(tiny(peers=("slowfast18", "blip", "evaluator")))
    assert len(r["rows"]) == 4
    for row in r["rows"]:
        assert row["ours"]["seconds"] > 0
        (missing,) = row["peers"].values()
        assert "missing" in missing and "ratio" not in missing
    named = [next(iter(row["peers"].values()))["missing"] for row in r["rows"]]
    assert "pytorchvideo" in named[0] and "transformers" in named[2]
    assert "config.bench.activitynet_dir" in named[3]
    assert r["ratios"] == dict.fromkeys(r["ratios"])  # no ratio without a peer
    out = capsys.readouterr().out
    assert out.count("not available") == 4
    assert r["loaded"] and "warning: load average [99.0, 99.0] above the" in out


def test_input_pair_on_the_fixture(tmp_path):
    """Ours and the PySlowFast-style loader on the same tiny AVA-layout fixture."""
    config = tiny(peers=("input",), input_dir=str(tmp_path), input_clips=3)
    config.dataset = "ava"
    ava_fixture.generate_raw(
        str(tmp_path / "raw"),
        num_videos=1,
        seconds=6,
        size=(72, 128),
        num_classes=config.model.num_classes,
    )
    (row,) = peers.run_peers_bench(config)["rows"]
    theirs = row["peers"]["PySlowFast-style AVA loader"]
    assert row["ours"]["clips_per_cpu_s"] > 0 and row["ours"]["build_s"] > 0
    assert theirs["extract_s"] > 0 and theirs["backend"] in ("cv2", "pillow")
    assert theirs["ratio_clips_per_cpu_s"] == pytest.approx(
        row["ours"]["clips_per_cpu_s"] / theirs["clips_per_cpu_s"], rel=0.02, abs=1e-3
    )
    assert len(list((tmp_path / "frames" / "fixture00").iterdir())) == 6 * 30
