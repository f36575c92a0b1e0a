"""The average over dataset splits of evaluation results (JHMDB51-21 is reported over its three).

    python -m jovale_jax.evaluation.splits --results S1/results.json S2/results.json \\
        S3/results.json --out average.json

Each ``results.json`` is what ``launch.py eval`` writes for one split's run. The average:

* ``mAP``: the mean of the runs' mAPs (the paper: "the average performance across the three
  standard splits"); ``mAP_per_run`` lists them.
* ``per_class``: each class's mean AP over the runs where it has ground truth (null in none).
  When every class has ground truth in every run (JHMDB's splits: all 21 classes in each test
  list), the mean of these equals ``mAP``.

The runs must cover the same classes (the same label map) and be distinct runs (their
``checkpoint`` fields differ). Plain Python: no numpy, no JAX.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any


def read_results(path: str) -> dict[str, Any]:
    """One run's results.json, checked for the fields the average needs."""
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable results.json ({e})") from None
    for field in ("mAP", "per_class"):
        if field not in result:
            raise ValueError(f"{path}: no '{field}' field (not a results.json of launch.py eval)")
    if result["mAP"] is None:
        raise ValueError(f"{path}: mAP is null (no class has ground truth)")
    return result


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return sum(present) / len(present) if present else None


def average_results(results: Sequence[dict[str, Any]], paths: Sequence[str]) -> dict[str, Any]:
    """The average of several runs' results (module docstring); ``paths`` name them in errors."""
    if len(results) < 2:
        raise ValueError(f"--results: give at least two runs' results.json, got {len(results)}")
    classes = list(results[0]["per_class"])
    for result, path in zip(results[1:], paths[1:]):
        if set(result["per_class"]) != set(classes):
            raise ValueError(
                f"{path}: classes {sorted(result['per_class'])} differ from "
                f"{paths[0]}'s {sorted(classes)}"
            )
    seen: dict[str, str] = {}
    for result, path in zip(results, paths):
        key = result.get("checkpoint") or path
        if key in seen:
            raise ValueError(f"{path}: the same run as {seen[key]} ({key})")
        seen[key] = path
    return {
        "mAP": _mean([r["mAP"] for r in results]),
        "mAP_per_run": [r["mAP"] for r in results],
        "per_class": {c: _mean([r["per_class"][c] for r in results]) for c in classes},
        "names": results[0].get("names", {}),
        "runs": [
            {
                "path": p,
                "split": r.get("split"),
                "step": r.get("step"),
                "checkpoint": r.get("checkpoint"),
            }
            for r, p in zip(results, paths)
        ],
    }


def format_table(average: dict[str, Any], results: Sequence[dict[str, Any]]) -> str:
    """Per-class AP of each run and their mean, then the mAPs."""

    def cell(v):
        return "   n/a" if v is None else f"{v:.4f}"

    names = average["names"]
    runs = "  ".join(f" run{i + 1}" for i in range(len(results)))
    lines = [f"{'class':<34}{runs}    mean"]
    for c, mean in average["per_class"].items():
        row = "  ".join(cell(r["per_class"][c]) for r in results)
        lines.append(f"{c:>3} {names.get(c, '')[:30]:<30}{row}  {cell(mean)}")
    lines.append(
        f"{'mAP':<34}"
        + "  ".join(cell(m) for m in average["mAP_per_run"])
        + f"  {cell(average['mAP'])}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--results",
        nargs="+",
        required=True,
        help="results.json of each split's run (launch.py eval)",
    )
    parser.add_argument("--out", required=True, help="where to write the average (JSON)")
    args = parser.parse_args(argv)
    try:
        results = [read_results(p) for p in args.results]
        average = average_results(results, args.results)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(average, results))
    with open(args.out, "w") as f:
        json.dump(average, f, indent=1)
    print(json.dumps({"mAP": average["mAP"], "runs": len(results)}))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
