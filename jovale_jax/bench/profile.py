"""``launch.py bench profile``: where a bench's compiled program spends its time
(``jax.profiler`` per-instruction events, grouped into attention scores, other matmuls, the rest).
"""

from __future__ import annotations

import collections
import gzip
import json
import pathlib
import re
import tempfile
import time
from typing import Any

import jax
import ml_collections

from jovale_jax.bench.step import build_program, caller, print_report, variant

ATTENTION_SCORES = "attention scores (N x N: QK^T, softmax, their gradients)"
MATMULS = "other matmuls (projections, MLP, attention x V)"
OTHER = "element-wise, reductions, copies"
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = \w+\[([\d,]*)\]\S* ")


def _instruction_kinds(hlo: str) -> dict[str, str]:
    """Each instruction of an optimised HLO module's text -> :data:`ATTENTION_SCORES` (its result
    ends in a square block of at least 4 x 4, rank >= 3), :data:`MATMULS` (it is or calls a dot or
    convolution) or :data:`OTHER`."""
    bodies = {block.split(" ", 1)[0].lstrip("%"): block for block in re.split(r"\n(?=\S)", hlo)}

    def has_product(name: str, seen: set[str]) -> bool:
        body = bodies.get(name, "")
        if " dot(" in body or " convolution(" in body:
            return True
        called = set(re.findall(r"calls=%?([\w.\-]+)", body)) - seen
        return any(has_product(c, seen | called) for c in called)

    kinds = {}
    for line in hlo.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        dims = [int(d) for d in match.group(2).split(",") if d]
        called = re.findall(r"calls=%?([\w.\-]+)", line)
        if len(dims) >= 3 and dims[-1] == dims[-2] >= 4:
            kinds[match.group(1)] = ATTENTION_SCORES
        elif (
            " dot(" in line
            or " convolution(" in line
            or any(has_product(c, set(called)) for c in called)
        ):
            kinds[match.group(1)] = MATMULS
        else:
            kinds[match.group(1)] = OTHER
    return kinds


def profile_breakdown(
    config: ml_collections.ConfigDict,
    *,
    mode: str = "step",
    component: str = "amfn",
    batch_size: int | None = None,
    repeats: int = 2,
) -> dict[str, Any]:
    """Where a bench's compiled program spends its time, from ``jax.profiler``'s per-instruction
    events (the XLA runtime's ``hlo_op``), summed over threads and grouped by
    :func:`_instruction_kinds`; ``top`` lists the ten costliest instructions. Prints a table and
    a JSON line."""
    config = variant(config, batch_size=batch_size or config.batch_size)
    _, program = build_program(config, mode, component, None)
    compiled = program.fn.trace(*program.args).lower().compile()
    call = caller(program, compiled)
    jax.block_until_ready(call())
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            start = time.perf_counter()
            for _ in range(repeats):
                jax.block_until_ready(call())
            seconds = (time.perf_counter() - start) / repeats
        path = next(pathlib.Path(folder).rglob("*.trace.json.gz"))
        events = json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]
    per_op: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and "hlo_op" in e.get("args", {}):
            per_op[e["args"]["hlo_op"]] += e["dur"] / 1e6 / repeats
    kinds = _instruction_kinds(compiled.as_text())
    by_kind: collections.Counter[str] = collections.Counter()
    for op, op_seconds in per_op.items():
        by_kind[kinds.get(op, OTHER)] += op_seconds
    total = sum(per_op.values())
    result = {
        "bench": "profile",
        "mode": mode,
        "component": component,
        "batch_size": config.batch_size,
        "seconds": seconds,
        "thunk_seconds": total,
        "kinds": {k: {"seconds": v, "share": v / total} for k, v in by_kind.most_common()},
        "top": [
            {"op": op, "seconds": v, "kind": kinds.get(op, OTHER)}
            for op, v in per_op.most_common(10)
        ],
    }
    table = [("wall per call", f"{seconds:.3f} s"), ("instruction time", f"{total:.3f} s")]
    table += [(k, f"{v['seconds']:.3f} s  {v['share']:.1%}") for k, v in result["kinds"].items()]
    table += [(t["op"], f"{t['seconds'] * 1e3:.1f} ms  {t['kind']}") for t in result["top"]]
    print_report(f"profile of {mode} ({component}) at batch {config.batch_size}", table, result)
    return result
