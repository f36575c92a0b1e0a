"""`launch.py ablate` end to end on the tiny synthetic set: every table, at a tiny budget."""

import json

import jax
import numpy as np
import pytest

from jovale_jax import ablate


@pytest.fixture
def short(tiny_config, monkeypatch):
    monkeypatch.setattr(jax, "devices", lambda *a: jax.local_devices()[:1])
    tiny_config.num_train_steps = 2
    tiny_config.log_every_steps = 2
    tiny_config.checkpoint_every_steps = 2
    tiny_config.eval_every_steps = 0
    tiny_config.mesh_shape = (1, 1)
    tiny_config.eval_batch_size = 8
    return tiny_config


@pytest.fixture(scope="session")
def ablation_dir(tmp_path_factory):
    """One workdir for every table: rows that coincide across tables are trained once."""
    return tmp_path_factory.mktemp("ablate")


@pytest.mark.parametrize("table", list(ablate.TABLES))
def test_ablate_writes_the_table(short, tiny_data, ablation_dir, table):
    tmp_path = ablation_dir
    short.ablate.table = table
    records = ablate.ablate(short, str(tmp_path), data_dir=tiny_data)
    rows = ablate.TABLES[table][1]
    assert [r["row"] for r in records] == [r.name for r in rows]
    saved = json.loads((tmp_path / f"table_{table}.json").read_text())
    assert saved["dataset"] == "synthetic" and len(saved["rows"]) == len(rows)
    text = (tmp_path / f"table_{table}.md").read_text()
    for row, rec in zip(rows, saved["rows"], strict=True):
        assert (tmp_path / row.name / "row.json").exists()
        assert 0.0 <= rec["mAP"] <= 100.0 and rec["paper_mAP"] == row.paper_map
        assert set(rec["groups"]) == {"motion", "sound", "scene"}
        assert rec["gmacs"] > rec["fusion_gmacs"] > 0
        assert f"| {row.label} |" in text and f"{rec['mAP']:.1f}" in text
    for rec in records:  # a row reusing a twin's run (same config) has the twin's numbers
        if "same_as" in rec:
            twin = json.loads((tmp_path / rec["same_as"] / "row.json").read_text())
            assert rec["mAP"] == twin["mAP"] and rec["config_key"] == twin["config_key"]
    gmacs = {r["row"]: r["fusion_gmacs"] for r in records}
    if table == "6":  # the structures really differ in cost (the paper's order at AVA geometry
        # is tests/test_ablations.py's; at these few tokens joint attention is cheap)
        assert min(gmacs["joint"], gmacs["divided"]) > gmacs["mfe"] > gmacs["factorized"]
        assert gmacs["cross_frame"] == pytest.approx(gmacs["mfe"], rel=0.01)
    if table == "4":
        assert len(set(np.round(list(gmacs.values()), 9))) == len(rows)
    # The synthetic set's class-prior baseline is the last line, with its group mAPs.
    assert set(saved["prior"]["groups"]) == {"motion", "sound", "scene"}
    [prior] = [line for line in text.splitlines() if line.startswith("| class prior (ignores")]
    assert f" | {saved['prior']['mAP']:.1f} | - | " in prior  # its mAP; no paper number


def test_ablate_skips_finished_rows_and_resumes_an_interrupted_one(
    short, tiny_data, ablation_dir, capsys
):
    """In the shared workdir (after the tables above, table 7 is finished there)."""
    tmp_path = ablation_dir
    short.ablate.table = "7"
    ablate.ablate(short, str(tmp_path), data_dir=tiny_data)
    (tmp_path / "uniform" / "row.json").unlink()  # trained, but its record never written
    capsys.readouterr()
    records = ablate.ablate(short, str(tmp_path), data_dir=tiny_data)
    out = capsys.readouterr().out
    assert out.count("finished earlier") == 2
    assert "resumed from" in out and (tmp_path / "uniform" / "row.json").exists()
    assert [r["row"] for r in records] == ["late", "uniform", "gated"]


def test_ablate_bad_table_and_rows(short, tmp_path):
    short.ablate.table = "8"
    with pytest.raises(
        ValueError,
        match=r"config\.ablate\.table: expected one of \('4', '5', '6', '7', "
        r"'scene'\), got '8'",
    ):
        ablate.ablate(short, str(tmp_path))
    short.model.modalities = ("video", "audio")
    short.ablate.table = "scene"
    with pytest.raises(
        ValueError,
        match=r"row 'none' removes the scene stream, but config field "
        r"model\.modalities is \('video', 'audio'\)",
    ):
        ablate.ablate(short, str(tmp_path))


def test_launch_ablate_command_line(tmp_path, tiny_data):
    """`launch.py ablate --config C --config.ablate.table=7 --workdir W`: flags reach ablate();
    with every row of W finished (records as run_row writes them) it trains nothing and writes
    the table; the former --table flag is refused."""
    import subprocess
    import sys

    for i, row in enumerate(ablate.TABLES["7"][1]):
        (tmp_path / row.name).mkdir()
        record = {
            "row": row.name,
            "label": row.label,
            "fields": dict(row.fields),
            "mAP": 10.0 + i,
            "groups": {"motion": 1.0, "sound": 2.0, "scene": 3.0},
            "paper_mAP": row.paper_map,
            "paper_gflops": None,
            "gmacs": 1.5,
            "fusion_gmacs": 0.5,
            "steps": 2,
            "batch_size": 8,
            "config_key": row.name,
        }
        (tmp_path / row.name / "row.json").write_text(json.dumps(record))
    cmd = [
        sys.executable,
        "launch.py",
        "ablate",
        "--config",
        "configs/synthetic.py:test",
        "--config.ablate.table=7",
        "--workdir",
        str(tmp_path),
        "--data_dir",
        tiny_data,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert out.count("finished earlier") == 3
    text = (tmp_path / "table_7.md").read_text()
    assert "| Uniform weighted fusion | 1.5 | 0.5 | 11.0 | 31.9 | 1.0 | 2.0 | 3.0 |" in text
    bad = subprocess.run(
        cmd[:5] + ["--workdir", str(tmp_path)], check=False, capture_output=True, text=True
    )
    assert bad.returncode != 0 and "config.ablate.table is required" in bad.stderr
    old = subprocess.run(
        cmd[:5] + ["--table", "7", "--workdir", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert old.returncode == 2 and "--table does not apply to ablate" in old.stderr
