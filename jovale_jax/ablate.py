"""The paper's ablation tables on any dataset (``launch.py ablate``).

    python launch.py ablate --config configs/synthetic.py --config.ablate.table=6 --workdir runs/a6

``config.ablate.table`` names the table. Every row of a table is the config with a few
``config.model`` fields changed (:data:`TABLES`):

* ``4`` -- modality subsets (``model.modalities``; paper Table 4); every row keeps the config's
  ``model.query_source``, so with "detector" (the paper's) all rows start from the same queries;
* ``5`` -- fusion strategies, video + scene (``model.fusion_strategy``; Table 5);
* ``6`` -- MFE structures (``model.amfn.encoder``; Table 6, with the paper's GFLOPs);
* ``7`` -- MFA fusions (``model.amfn.fusion``; Table 7);
* ``scene`` -- scene encoders (``model.scene.encoder``, and no scene stream; supplementary
  Table 4).

Each row trains in ``W/<row>/`` (``train.train``, so an interrupted row resumes from its newest
checkpoint) and the trained model is evaluated on the config's eval split; ``W/<row>/row.json``
marks it finished, and a finished row is skipped on the next run. A row whose whole config equals a
finished row's in another folder of the same parent (the paper's default model is a row of Tables
4, 6, 7 and of the scene table) reuses its numbers instead of training it again. The table is
written as ``W/table_<N>.md`` and ``W/table_<N>.json`` with, per row, the GMACs of one forward pass
(batch 1) and of its fusion stage, the mAP (in %, as the paper) beside the paper's, and the mAP of
each class group where the dataset defines groups (AVA's pose / object / person-interaction, the
synthetic set's motion / sound / scene); on the synthetic set a last line gives the class-prior
baseline's mAPs (a model that ignores its input).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping
from typing import Any

ALL = ("video", "audio", "scene")
SHORT = {"video": "v", "audio": "a", "scene": "s"}
NO_SCENE = "-scene"  # a modalities value: the config's modalities without the scene stream


@dataclasses.dataclass(frozen=True)
class Row:
    """One row: sub-folder name, the paper's label, ``config.model`` fields (dotted) and the
    paper's numbers (AVA v2.2, SlowFast-R50 ablation setting)."""

    name: str
    label: str
    fields: Mapping[str, Any]
    paper_map: float
    paper_gflops: float | None = None


def _subset_row(mods: tuple[str, ...], paper: float) -> Row:
    name = "+".join(SHORT[m] for m in mods)
    return Row(name, name, {"modalities": mods}, paper)


VS = {"modalities": ("video", "scene")}
TABLES: dict[str, tuple[str, tuple[Row, ...]]] = {
    "4": (
        "Table 4: modalities",
        tuple(
            _subset_row(m, p)
            for m, p in (
                (("video",), 28.0),
                (("audio",), 11.5),
                (("scene",), 26.9),
                (("video", "audio"), 28.6),
                (("video", "scene"), 32.7),
                (("audio", "scene"), 27.8),
                (ALL, 34.0),
            )
        ),
    ),
    "5": (
        "Table 5: multi-modal fusion strategies (video + scene)",
        (
            Row(
                "roi_feature_fusion",
                "RoI feature fusion",
                {**VS, "fusion_strategy": "roi_feature_fusion"},
                29.1,
            ),
            Row(
                "roi_relation",
                "RoI relation modeling",
                {**VS, "fusion_strategy": "roi_relation"},
                30.4,
            ),
            Row(
                "global_relation",
                "Global relation modeling",
                {**VS, "fusion_strategy": "global_relation"},
                32.1,
            ),
            Row("amfn", "JoVALE", {**VS, "fusion_strategy": "amfn"}, 32.7),
        ),
    ),
    "6": (
        "Table 6: spatio-temporal encoders (MFE structures)",
        (
            Row(
                "joint",
                "Joint space-time attention (baseline)",
                {"amfn.encoder": "joint"},
                33.8,
                41.7,
            ),
            Row("factorized", "Factorized encoder", {"amfn.encoder": "factorized"}, 30.6, 23.0),
            Row("divided", "Divided space-time attention", {"amfn.encoder": "divided"}, 33.1, 31.2),
            Row(
                "cross_frame", "Cross-frame attention", {"amfn.encoder": "cross_frame"}, 32.4, 24.4
            ),
            Row("mfe", "MFE", {"amfn.encoder": "mfe"}, 34.0, 25.4),
        ),
    ),
    "7": (
        "Table 7: fusion in the MFA",
        (
            Row("late", "Late score fusion", {"amfn.fusion": "late"}, 29.4),
            Row("uniform", "Uniform weighted fusion", {"amfn.fusion": "uniform"}, 31.9),
            Row("gated", "Adaptive Gated Fusion", {"amfn.fusion": "gated"}, 34.0),
        ),
    ),
    "scene": (
        "Supplementary Table 4: scene-descriptive source",
        (
            Row("none", "None", {"modalities": NO_SCENE}, 28.6),
            Row("clip", "CLIP", {"scene.encoder": "clip"}, 32.0),
            Row("blip", "BLIP", {"scene.encoder": "blip"}, 32.6),
            Row("blip_captioner", "BLIP captioner", {"scene.encoder": "blip_captioner"}, 34.0),
        ),
    ),
}


def check_table(table: str, where: str = "flag --table") -> str:
    """``table`` if it names one of TABLES, else a ValueError naming ``where`` it came from."""
    if table not in TABLES:
        raise ValueError(f"{where}: expected one of {tuple(TABLES)}, got {table!r}")
    return table


def row_config(config, row: Row):
    """A copy of ``config`` with the row's ``config.model`` fields set."""
    cfg = copy.deepcopy(config)
    for path, value in row.fields.items():
        if path == "modalities" and value == NO_SCENE:
            value = tuple(m for m in cfg.model.modalities if m != "scene")
            if not value or "scene" not in config.model.modalities:
                raise ValueError(
                    f"table row {row.name!r} removes the scene stream, but config "
                    f"field model.modalities is {tuple(config.model.modalities)}"
                )
        *parents, leaf = path.split(".")
        section = cfg.model
        for p in parents:
            section = section[p]
        section[leaf] = value
    return cfg


def row_costs(cfg) -> dict[str, float]:
    """GMACs of one forward pass (batch 1) and of its fusion stage."""
    from flax import nnx

    from jovale_jax.flops import abstract_batch, count_macs, fusion_gmacs
    from jovale_jax.models.jovale import JoVALE

    graphdef, state = nnx.split(nnx.eval_shape(lambda: JoVALE(cfg.model, rngs=nnx.Rngs(0))))
    total = count_macs(lambda s, b: nnx.merge(graphdef, s)(b), state, abstract_batch(cfg.model))
    return {"gmacs": total / 1e9, "fusion_gmacs": fusion_gmacs(cfg.model)}


def config_key(cfg) -> str:
    """What identifies a row's run: its whole config but the ``ablate`` section (rows of different
    tables may coincide, as the paper's default row does)."""
    bare = copy.deepcopy(cfg)
    with bare.unlocked():
        if "ablate" in bare:
            del bare["ablate"]
    return hashlib.sha256(bare.to_json_best_effort(sort_keys=True).encode()).hexdigest()[:16]


def finished_twin(workdir: str, key: str) -> dict | None:
    """The record of a finished row with the same config in a sibling folder of ``workdir``."""
    parent = os.path.dirname(os.path.abspath(workdir))
    for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else ():
        path = os.path.join(parent, name, "row.json")
        if os.path.exists(path):
            with open(path) as f:
                record = json.load(f)
            if record.get("config_key") == key:
                return record
    return None


def run_row(config, row: Row, workdir: str, data_dir: str, init_from: str | None) -> dict | None:
    """Train and evaluate one row in ``workdir``; a finished row is read back, and a row whose
    config equals a finished sibling's reuses its numbers. None if training was stopped
    (SIGTERM) before the end."""
    from jovale_jax.evaluate import predict_split, score
    from jovale_jax.train import train

    done = os.path.join(workdir, "row.json")
    if os.path.exists(done):
        with open(done) as f:
            print(f"=== {row.name}: finished earlier ({done}) ===", flush=True)
            return json.load(f)
    cfg = row_config(config, row)
    key = config_key(cfg)
    twin = finished_twin(workdir, key)
    if twin is not None:
        print(
            f"=== {row.name}: same config as row {twin['row']!r}, its numbers reused ===",
            flush=True,
        )
        record = {**twin, "same_as": twin.get("same_as", twin["row"])}
    else:
        print(f"=== {row.name}: {dict(row.fields)} ===", flush=True)
        trained = train(cfg, workdir, init_from=init_from, data_dir=data_dir)
        if trained["status"] != "done":
            print(
                f"=== {row.name}: training {trained['status']}; run ablate again to resume ===",
                flush=True,
            )
            return None
        split = cfg.data.eval_split
        result = score(
            cfg,
            predict_split(trained["setup"], cfg, split, data_dir=data_dir),
            split,
            data_dir=data_dir,
        )
        record = {
            "mAP": 100 * result["mAP"],
            "groups": {k: 100 * v for k, v in result.get("groups", {}).items()},
            "per_class": {str(c): 100 * v for c, v in result["per_class"].items()},
            "split": split,
            **row_costs(cfg),
            "steps": trained["step"],
            "batch_size": cfg.batch_size,
            "config_key": key,
        }
    record.update(
        row=row.name,
        label=row.label,
        fields=dict(row.fields),
        paper_mAP=row.paper_map,
        paper_gflops=row.paper_gflops,
    )
    os.makedirs(workdir, exist_ok=True)
    tmp = done + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, default=list)
    os.replace(tmp, done)  # the row counts as finished only once its record is complete
    return record


def _num(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def prior_record(config, data_dir: str) -> dict[str, Any]:
    """The class-prior baseline (``evaluate.class_prior_baseline``) on the eval split, in %,
    with its group mAPs: the floor each row's numbers stand on."""
    from jovale_jax.evaluate import class_prior_baseline

    prior = class_prior_baseline(config, config.data.eval_split, data_dir=data_dir)
    return {
        "mAP": 100 * prior["mAP"],
        "groups": {k: 100 * v for k, v in prior.get("groups", {}).items()},
    }


def queries_line(config) -> str:
    """Where every row's action queries come from (``model.query_source``, which no row changes)."""
    from jovale_jax.models.inputs import query_source

    if query_source(config.model) == "detector":
        return (
            "Action queries in every row: the detector's per-box features (model.query_source "
            f"'detector', {config.model.actor.detector_feature_dim} wide), as in the paper."
        )
    return (
        "Action queries: RoIAlign on the video backbone (model.query_source 'backbone'); rows "
        "without video take them from the scene grid, audio alone from the box coordinates. The "
        "paper's rows all start from the detector's features: model.query_source 'detector'."
    )


def table_markdown(
    table: str,
    records: list[dict],
    dataset: str,
    prior: dict | None = None,
    queries: str = "",
) -> str:
    """The table beside the paper's numbers, as Markdown; ``prior`` (:func:`prior_record`) adds
    the class-prior baseline as the last line, ``queries`` (:func:`queries_line`) a note under
    the title."""
    title, rows = TABLES[table]
    groups = list(records[0]["groups"]) if records else []
    gflops = any(r.paper_gflops is not None for r in rows)
    head = ["row", "GMACs", "fusion GMACs"] + (["paper GFLOPs"] if gflops else [])
    head += [f"mAP ({dataset})", "paper mAP (AVA)"] + [f"{g} mAP" for g in groups]
    lines = [
        f"{title}; {dataset}, {records[0]['steps']} steps at batch {records[0]['batch_size']} "
        f"per row."
        if records
        else title,
        *([queries] if queries else []),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in records:
        cells = [r["label"], _num(r["gmacs"], ".4g"), _num(r["fusion_gmacs"], ".4g")]
        cells += [_num(r["paper_gflops"])] if gflops else []
        cells += [_num(r["mAP"]), _num(r["paper_mAP"])] + [_num(r["groups"][g]) for g in groups]
        lines.append("| " + " | ".join(cells) + " |")
    if prior is not None:
        cells = ["class prior (ignores the input)", "-", "-"] + (["-"] if gflops else [])
        cells += [_num(prior["mAP"]), "-"] + [_num(prior["groups"][g]) for g in groups]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ablate(
    config, workdir: str, *, data_dir: str | None = None, init_from: str | None = None
) -> list[dict] | None:
    """Train and evaluate every row of table ``config.ablate.table``; write ``table_<N>.md`` /
    ``.json`` in ``workdir``. Returns the rows' records, or None when a row was interrupted."""
    from jovale_jax.datasets import build_or_reuse, builder_class

    table = check_table(config.ablate.table, "config.ablate.table")
    rows = TABLES[table][1]
    for row in rows:  # every row's config is checked before anything trains
        validate_row(config, row)
    data_dir = build_or_reuse(config, data_dir)
    records = []
    for row in rows:
        record = run_row(config, row, os.path.join(workdir, row.name), data_dir, init_from)
        if record is None:
            return None
        records.append(record)
    # A set small enough scores its class prior (the synthetic set; AVA's train split is not).
    prior = prior_record(config, data_dir) if builder_class(config).PRIOR_BASELINE else None
    queries = queries_line(config)
    text = table_markdown(table, records, config.dataset, prior, queries)
    with open(os.path.join(workdir, f"table_{table}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(workdir, f"table_{table}.json"), "w") as f:
        json.dump(
            {
                "table": table,
                "title": TABLES[table][0],
                "dataset": config.dataset,
                "queries": queries,
                "rows": records,
                "prior": prior,
            },
            f,
            indent=1,
            default=list,
        )
    print(text)
    return records


def validate_row(config, row: Row) -> None:
    """Fail before training when a row's config is invalid (unknown value, missing modality)."""
    from flax import nnx

    from jovale_jax.models.jovale import JoVALE

    cfg = row_config(config, row)
    nnx.eval_shape(lambda: JoVALE(cfg.model, rngs=nnx.Rngs(0)))


def fusion_cost_table(config, table: str) -> tuple[str, list[dict]]:
    """GMACs of the fusion stage (the AMFN for Tables 6 and 7) for every row of ``table``, and
    the ratio to the paper's default row (the last), beside the paper's GFLOPs where it gives
    them (``launch.py flops --table 6``). Returns (Markdown, rows)."""
    from jovale_jax.flops import fusion_gmacs

    title, rows = TABLES[check_table(table)]
    records = [
        {
            "row": r.name,
            "label": r.label,
            "fusion_gmacs": fusion_gmacs(row_config(config, r).model),
            "paper_gflops": r.paper_gflops,
        }
        for r in rows
    ]
    ref, paper_ref = records[-1]["fusion_gmacs"], rows[-1].paper_gflops
    for r in records:
        r["ratio"] = r["fusion_gmacs"] / ref
        r["paper_ratio"] = (
            None
            if paper_ref is None or r["paper_gflops"] is None
            else (r["paper_gflops"] / paper_ref)
        )
    lines = [
        f"{title}: fusion-stage GMACs, batch 1",
        "",
        "| row | GMACs | ratio | paper GFLOPs | paper ratio |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['label']} | {r['fusion_gmacs']:.2f} | {r['ratio']:.2f} | "
        f"{_num(r['paper_gflops'])} | {_num(r['paper_ratio'], '.2f')} |"
        for r in records
    ]
    return "\n".join(lines), records
