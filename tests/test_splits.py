"""jovale_jax/evaluation/splits.py: the three-split average of JHMDB51-21 results, and the README's
command as written."""

import json
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

from jovale_jax.evaluate import results_payload
from jovale_jax.evaluation import splits

ROOT = pathlib.Path(__file__).parent.parent
NAMES = {1: "brush_hair", 2: "catch", 3: "clap"}
# (per-class AP of split 1..3; class 3 has no ground truth in split 2)
PER_CLASS = [{1: 0.9, 2: 0.6, 3: 0.3}, {1: 0.8, 2: 0.5, 3: math.nan}, {1: 0.7, 2: 0.4, 3: 0.6}]


def _write_runs(root: pathlib.Path, pattern: str = "runs/jhmdb{}/eval_test_500") -> list[str]:
    """Three results.json as `launch.py eval` writes them (evaluate.results_payload)."""
    paths = []
    for i, per_class in enumerate(PER_CLASS, 1):
        folder = root / pattern.format(i)
        folder.mkdir(parents=True)
        ap = [v for v in per_class.values() if not math.isnan(v)]
        result = {"mAP": sum(ap) / len(ap), "per_class": per_class, "names": NAMES}
        payload = results_payload(
            result, split="test", step=500, checkpoint=str(root / f"runs/jhmdb{i}")
        )
        (folder / "results.json").write_text(json.dumps(payload))
        paths.append(str(folder / "results.json"))
    return paths


def test_average_of_three_splits(tmp_path, capsys):
    paths = _write_runs(tmp_path)
    out = tmp_path / "avg.json"
    assert splits.main(["--results", *paths, "--out", str(out)]) == 0
    avg = json.loads(out.read_text())
    split_maps = [0.6, 0.65, (0.7 + 0.4 + 0.6) / 3]
    assert avg["mAP_per_run"] == pytest.approx(split_maps)
    assert avg["mAP"] == pytest.approx(sum(split_maps) / 3)
    assert avg["per_class"] == pytest.approx({"1": 0.8, "2": 0.5, "3": 0.45})  # 3: splits 1, 3
    assert avg["names"]["2"] == "catch" and len(avg["runs"]) == 3
    printed = capsys.readouterr().out
    assert "  2 catch" in printed and "   n/a" in printed and f"{avg['mAP']:.4f}" in printed


def test_bad_inputs_are_named(tmp_path, capsys):
    paths = _write_runs(tmp_path)
    out = str(tmp_path / "avg.json")
    assert splits.main(["--results", paths[0], paths[0], "--out", out]) == 2
    assert "the same run as" in capsys.readouterr().err
    other = json.loads(pathlib.Path(paths[2]).read_text())
    other["per_class"]["4"] = 0.5
    pathlib.Path(paths[2]).write_text(json.dumps(other))
    assert splits.main(["--results", *paths, "--out", out]) == 2
    assert f"{paths[2]}: classes" in capsys.readouterr().err
    assert splits.main(["--results", paths[0], "--out", out]) == 2
    assert "at least two" in capsys.readouterr().err
    missing = str(tmp_path / "nope.json")
    assert splits.main(["--results", paths[0], missing, "--out", out]) == 2
    assert f"{missing}: not a readable results.json" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_readme_command_runs_as_written(tmp_path):
    """The README's JHMDB three-split command, run verbatim in a folder holding three runs."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
    [command] = [b for b in blocks if "jovale_jax.evaluation.splits" in b]
    _write_runs(tmp_path)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python").symlink_to(sys.executable)
    env = dict(os.environ, PATH=f"{shim}:{os.environ['PATH']}", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        ["bash", "-ec", command],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = re.search(r"--out (\S+)", command).group(1)
    avg = json.loads((tmp_path / out).read_text())
    assert len(avg["runs"]) == 3 and avg["mAP"] == pytest.approx((0.6 + 0.65 + 1.7 / 3) / 3)
