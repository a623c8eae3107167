"""Writing (possibly broken) trace directories with pyarrow, independently of tracesim's own
writer, so that tests can feed readers input that tracesim would never write."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_TRACES = REPO_ROOT / "traces"

# Canonical column types, transcribed from DESIGN.md §2 (not imported from tracesim.format, so a
# wrong schema in the product cannot hide behind the tests).
OPS_TYPES: dict[str, pa.DataType] = {
    "op_id": pa.uint64(),
    "rank": pa.uint32(),
    "stream": pa.uint32(),
    "name": pa.string(),
    "kind": pa.string(),
    "category": pa.string(),
    "dtype": pa.string(),
    "flops": pa.float64(),
    "bytes_read": pa.uint64(),
    "bytes_written": pa.uint64(),
    "duration_ns": pa.int64(),
    "start_ns": pa.int64(),
    "deps": pa.list_(pa.uint64()),
    "coll": pa.string(),
    "group_id": pa.uint32(),
    "coll_seq": pa.uint64(),
    "comm_bytes": pa.uint64(),
    "peer": pa.uint32(),
    "p2p_seq": pa.uint64(),
    "src_tier": pa.string(),
    "dst_tier": pa.string(),
    "iteration": pa.uint32(),
    "layer": pa.int32(),
    "phase": pa.string(),
}
GROUPS_TYPES: dict[str, pa.DataType] = {
    "group_id": pa.uint32(),
    "ranks": pa.list_(pa.uint32()),
    "name": pa.string(),
}

Row = dict[str, Any]


def rows_to_table(
    rows: Iterable[Row],
    known: dict[str, pa.DataType],
    types: dict[str, pa.DataType] | None = None,
) -> pa.Table:
    """A table with the union of the rows' keys as columns (missing keys are null), typed by
    `types`, else by the canonical type, else inferred by pyarrow."""
    rows = list(rows)
    names: list[str] = []
    for r in rows:
        names.extend(k for k in r if k not in names)
    types = types or {}
    arrays = []
    for name in names:
        values = [r.get(name) for r in rows]
        t = types.get(name, known.get(name))
        arrays.append(pa.array(values, type=t))
    return pa.table(arrays, names=names)


def ops_table(rows: Iterable[Row], types: dict[str, pa.DataType] | None = None) -> pa.Table:
    return rows_to_table(rows, OPS_TYPES, types)


def groups_table(rows: Iterable[Row], types: dict[str, pa.DataType] | None = None) -> pa.Table:
    return rows_to_table(rows, GROUPS_TYPES, types)


def base_ops() -> list[Row]:
    """A small valid trace on 2 ranks: compute, an all-reduce in group 0, a send/recv pair, deps
    across streams and ranks. Tests break one thing in a copy of it."""
    c = {"kind": "compute", "category": "gemm", "dtype": "bf16", "flops": 1e9, "duration_ns": 1000}
    ar = {"kind": "collective", "coll": "all_reduce", "group_id": 0, "coll_seq": 0, "comm_bytes": 1 << 20}
    return [
        {"op_id": 1, "rank": 0, "stream": 0, "name": "fwd", "deps": [], **c},
        {"op_id": 2, "rank": 1, "stream": 0, "name": "fwd", "deps": [], **c},
        {"op_id": 3, "rank": 0, "stream": 1, "name": "ar", "deps": [1], **ar, "duration_ns": 500},
        {"op_id": 4, "rank": 1, "stream": 1, "name": "ar", "deps": [2], **ar, "duration_ns": 600},
        {"op_id": 5, "rank": 0, "stream": 0, "name": "send", "kind": "send", "peer": 1, "p2p_seq": 0,
         "comm_bytes": 4096, "deps": []},
        {"op_id": 6, "rank": 1, "stream": 0, "name": "recv", "kind": "recv", "peer": 0, "p2p_seq": 0,
         "comm_bytes": 4096, "deps": []},
        {"op_id": 7, "rank": 0, "stream": 0, "name": "bwd", "deps": [3], **c},
        {"op_id": 8, "rank": 1, "stream": 0, "name": "bwd", "deps": [4, 6], **c},
    ]  # fmt: skip


def base_groups() -> list[Row]:
    return [{"group_id": 0, "ranks": [0, 1], "name": "dp"}]


def write_trace_dir(
    path: Path,
    ops: Iterable[Row] | pa.Table | None,
    *,
    ranks: int = 2,
    groups: Iterable[Row] | pa.Table | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Writes trace.json, ops.parquet (unless `ops` is None) and groups.parquet (when given)."""
    path.mkdir(parents=True, exist_ok=True)
    m: dict[str, Any] = {
        "format": "tracesim-trace",
        "version": 1,
        "ranks": ranks,
        "source": "tests",
        "source_system": None,
    }
    m.update(meta or {})
    (path / "trace.json").write_text(json.dumps(m))
    if ops is not None:
        table = ops if isinstance(ops, pa.Table) else ops_table(ops)
        pq.write_table(table, path / "ops.parquet")
    if groups is not None:
        table = groups if isinstance(groups, pa.Table) else groups_table(groups)
        pq.write_table(table, path / "groups.parquet")
    return path
