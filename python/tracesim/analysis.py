"""Tables over replay results (Polars): where each rank's time went, which kernels took it,
and several scenarios side by side."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import polars as pl

from tracesim.simulate import Result, read_result
from tracesim.trace import Trace, read_trace

ResultLike = Result | str | os.PathLike[str]

_RANK_COLUMNS = ("end_ns", "compute_ns", "comm_ns", "exposed_comm_ns", "wait_ns", "idle_ns", "ops")


def _result(result: ResultLike) -> Result:
    return result if isinstance(result, Result) else read_result(result)


def breakdown(result: ResultLike) -> pl.DataFrame:
    """Per rank, from the summary: end_ns, compute_ns, comm_ns, exposed_comm_ns, wait_ns,
    idle_ns and ops, plus peak_memory_bytes (all tiers) and each time as a share of the
    makespan (`*_share`)."""
    summary = _result(result).summary
    makespan = summary["makespan_ns"] or 0
    rows: list[dict[str, Any]] = [
        {
            "rank": r["rank"],
            **{c: r[c] for c in _RANK_COLUMNS},
            "peak_memory_bytes": sum(r.get("peak_memory_bytes", {}).values()),
        }
        for r in summary["ranks"]
    ]
    schema = {"rank": pl.UInt32, **dict.fromkeys(_RANK_COLUMNS, pl.Int64), "peak_memory_bytes": pl.Int64}
    df = pl.DataFrame(rows, schema=schema)
    times = ("compute_ns", "comm_ns", "exposed_comm_ns", "wait_ns", "idle_ns")
    return df.with_columns(
        (pl.col(c) / makespan if makespan else pl.lit(None, dtype=pl.Float64)).alias(
            c.removesuffix("_ns") + "_share"
        )
        for c in times
    )


def category_summary(result: ResultLike, trace: Trace | str | os.PathLike[str]) -> pl.DataFrame:
    """Per (kind, category) of op: count, total_ns (sum of op durations), mean_ns, share of busy
    time (total_ns over the sum of all op durations, so the shares add up to 1) and energy_j,
    largest first. Waits inside collectives and send/recv count as their ops' time."""
    res = _result(result)
    tr = trace if isinstance(trace, Trace) else read_trace(trace, validate=False)
    names = tr.ops.column_names
    ops = pl.from_arrow(tr.ops.select(["op_id", "kind", *(["category"] if "category" in names else [])]))
    assert isinstance(ops, pl.DataFrame)
    if "category" not in names:
        ops = ops.with_columns(pl.lit(None, dtype=pl.String).alias("category"))
    joined = res.timeline.join(ops, on="op_id", how="left").with_columns(
        (pl.col("end_ns") - pl.col("start_ns")).alias("dur_ns")
    )
    busy = joined["dur_ns"].sum()
    return (
        joined.group_by("kind", "category")
        .agg(
            pl.len().alias("count"),
            pl.col("dur_ns").sum().alias("total_ns"),
            pl.col("dur_ns").mean().alias("mean_ns"),
            pl.col("energy_j").sum().alias("energy_j"),
        )
        .with_columns((pl.col("total_ns") / busy if busy else pl.lit(0.0)).alias("share"))
        .select("kind", "category", "count", "total_ns", "mean_ns", "share", "energy_j")
        .sort(["total_ns", "kind", "category"], descending=[True, False, False], nulls_last=True)
    )


def compare(*results: ResultLike, names: Sequence[str] | None = None) -> pl.DataFrame:
    """One row per result: scenario, system, makespan_ns, speedup (first result's makespan over
    this one's), energy_j, mfu (null without FLOPs) and mean_exposed_comm_ns over ranks.
    `names` label the scenarios; by default the system names (numbered when they repeat)."""
    loaded = [_result(r) for r in results]
    systems = [str(r.summary.get("system", {}).get("name", "?")) for r in loaded]
    if names is None:
        repeated = len(set(systems)) < len(systems)
        labels = [f"{i}: {s}" if repeated else s for i, s in enumerate(systems)]
    else:
        labels = list(names)
        if len(labels) != len(loaded):
            raise ValueError(f"compare: {len(labels)} names for {len(loaded)} results")
    first = loaded[0].makespan_ns if loaded else 0
    rows = []
    for label, system, r in zip(labels, systems, loaded, strict=True):
        s = r.summary
        exposed = [rank["exposed_comm_ns"] for rank in s["ranks"]]
        rows.append(
            {
                "scenario": label,
                "system": system,
                "makespan_ns": s["makespan_ns"],
                "speedup": first / s["makespan_ns"] if s["makespan_ns"] else None,
                "energy_j": s["energy_j"],
                "mfu": s.get("mfu"),
                "mean_exposed_comm_ns": sum(exposed) / len(exposed) if exposed else None,
            }
        )
    schema = {
        "scenario": pl.String,
        "system": pl.String,
        "makespan_ns": pl.Int64,
        "speedup": pl.Float64,
        "energy_j": pl.Float64,
        "mfu": pl.Float64,
        "mean_exposed_comm_ns": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)
