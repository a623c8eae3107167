"""Tables over replay results (Polars): where each rank's time went, which kernels took it,
which ops and ranks bound the step (the critical path), and several scenarios side by side."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import polars as pl

from tracesim.exceptions import TracesimError
from tracesim.simulate import Result, read_result
from tracesim.trace import Trace, read_trace

ResultLike = Result | str | os.PathLike[str]
TraceLike = Trace | str | os.PathLike[str]

_RANK_COLUMNS = ("end_ns", "compute_ns", "comm_ns", "exposed_comm_ns", "wait_ns", "idle_ns", "ops")


def _result(result: ResultLike) -> Result:
    return result if isinstance(result, Result) else read_result(result)


def _trace(trace: TraceLike) -> Trace:
    return trace if isinstance(trace, Trace) else read_trace(trace, validate=False)


# Kernel categories counted as memory-bound by breakdown(by="iteration"), besides kind memory.
MEMORY_BOUND_CATEGORIES = ("elementwise", "norm", "reduction", "embedding", "copy", "optimizer")

ITERATION_BREAKDOWN_SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.UInt32(),
    "iteration": pl.UInt32(),
    **{
        c: pl.Int64()
        for c in (
            "start_ns",
            "end_ns",
            "step_ns",
            "compute_ns",
            "comm_ns",
            "exposed_comm_ns",
            "wait_ns",
            "idle_ns",
            "memory_bound_ns",
        )
    },
}


def breakdown(
    result: ResultLike,
    trace: TraceLike | None = None,
    *,
    by: Literal["rank", "iteration"] = "rank",
) -> pl.DataFrame:
    """Where each rank's time went.

    `by="rank"` (default; the trace is not needed): per rank, from the summary: end_ns,
    compute_ns, comm_ns, exposed_comm_ns, wait_ns, idle_ns and ops, plus peak_memory_bytes (all
    tiers) and each time as a share of the makespan (`*_share`).

    `by="iteration"` (needs the `trace`, for its iteration, kind and category columns): one row
    per (rank, iteration), sorted, from the timeline: start_ns and end_ns (first start and last
    end of the rank's ops of that iteration), step_ns (end − start), compute_ns (length of the
    union of its compute and memory op spans), comm_ns (union of its collective and send/recv
    spans, waits included), exposed_comm_ns (|compute ∪ comm| − |compute|), wait_ns (sum of its
    collectives' and send/recv's waits), idle_ns (step − |compute ∪ comm|) and memory_bound_ns
    (union of the spans of memory-bound ops). Memory-bound is decided by the op's kind and
    category, not by the roofline: kind `memory`, or a category in MEMORY_BOUND_CATEGORIES
    (elementwise, norm, reduction, embedding, copy, optimizer). Ops without an iteration are
    left out (a trace without the column gives no rows). With a single iteration that spans the
    replay, compute, comm, exposed comm and wait equal the summary's per-rank values."""
    if by == "rank":
        return _rank_breakdown(result)
    if by != "iteration":
        raise ValueError(f"breakdown: by must be 'rank' or 'iteration', not {by!r}")
    if trace is None:
        raise TracesimError(
            'breakdown(by="iteration") needs the trace the result was replayed from '
            '(for its iteration, kind and category columns): breakdown(result, trace, by="iteration")'
        )
    return _iteration_breakdown(_result(result), _trace(trace))


def _union_ns(spans: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Per group of `keys`: the length of the union of its [start_ns, end_ns) spans. Sorted by
    start within the group, each span adds what reaches past the running max of the ends before
    it: Σ max(0, end − max(start, previous running max))."""
    prev = pl.col("end_ns").cum_max().shift(1).over(keys)
    return (
        spans.sort([*keys, "start_ns", "end_ns"])
        .with_columns(
            (pl.col("end_ns") - pl.max_horizontal("start_ns", prev.fill_null(pl.col("start_ns"))))
            .clip(lower_bound=0)
            .alias("_add")
        )
        .group_by(keys)
        .agg(pl.col("_add").sum().alias("union_ns"))
    )


def _iteration_breakdown(res: Result, tr: Trace) -> pl.DataFrame:
    names = tr.ops.column_names
    if "iteration" not in names or res.timeline.height == 0:
        return pl.DataFrame(schema=ITERATION_BREAKDOWN_SCHEMA)
    ops = pl.from_arrow(
        tr.ops.select(["op_id", "kind", "iteration", *(["category"] if "category" in names else [])]),
        rechunk=True,
    )
    assert isinstance(ops, pl.DataFrame)
    if "category" not in names:
        ops = ops.with_columns(pl.lit(None, dtype=pl.String).alias("category"))
    ops = ops.with_columns(pl.col("kind").cast(pl.String), pl.col("category").cast(pl.String))
    joined = res.timeline.select("op_id", "rank", "start_ns", "end_ns", "wait_ns").join(
        ops, on="op_id", how="left"
    )
    if joined["kind"].null_count():
        missing = joined.filter(pl.col("kind").is_null())["op_id"][0]
        raise TracesimError(
            f"breakdown: op_id {missing} of the result is not in the trace "
            f"{tr.path or ''}; pass the trace the result was replayed from".replace(" ;", ";")
        )
    joined = joined.filter(pl.col("iteration").is_not_null()).with_columns(
        pl.col("iteration").cast(pl.UInt32)
    )
    keys = ["rank", "iteration"]
    compute = pl.col("kind").is_in(["compute", "memory"])
    comm = pl.col("kind").is_in(["collective", "send", "recv"])
    by_category = pl.col("category").is_in(MEMORY_BOUND_CATEGORIES).fill_null(False)
    membound = (pl.col("kind") == "memory") | by_category
    sets = {"compute": compute, "comm": comm, "busy": compute | comm, "memory_bound": membound}
    spans = pl.concat(
        [
            joined.filter(cond).select(*keys, "start_ns", "end_ns", pl.lit(name).alias("_set"))
            for name, cond in sets.items()
        ]
    )
    unions = _union_ns(spans, [*keys, "_set"])
    steps = joined.group_by(keys).agg(
        pl.col("start_ns").min(),
        pl.col("end_ns").max(),
        pl.col("wait_ns").filter(comm).sum().alias("wait_ns"),
    )
    for name in sets:
        steps = steps.join(
            unions.filter(pl.col("_set") == name).select(*keys, pl.col("union_ns").alias(f"_{name}")),
            on=keys,
            how="left",
        )
    u = {name: pl.col(f"_{name}").fill_null(0) for name in sets}
    return (
        steps.select(
            *keys,
            "start_ns",
            "end_ns",
            (pl.col("end_ns") - pl.col("start_ns")).alias("step_ns"),
            u["compute"].alias("compute_ns"),
            u["comm"].alias("comm_ns"),
            (u["busy"] - u["compute"]).alias("exposed_comm_ns"),
            "wait_ns",
            (pl.col("end_ns") - pl.col("start_ns") - u["busy"]).alias("idle_ns"),
            u["memory_bound"].alias("memory_bound_ns"),
        )
        .sort(keys)
        .cast(ITERATION_BREAKDOWN_SCHEMA)  # type: ignore[arg-type]
    )


def _rank_breakdown(result: ResultLike) -> pl.DataFrame:
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
    tr = _trace(trace)
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


# ---------------------------------------------------------------------------------------------
# Critical path

CRITICAL_PATH_SCHEMA: dict[str, pl.DataType] = {
    "op_id": pl.UInt64(),
    "rank": pl.UInt32(),
    "stream": pl.UInt32(),
    "name": pl.String(),
    "kind": pl.String(),
    "category": pl.String(),
    "start_ns": pl.Int64(),
    "end_ns": pl.Int64(),
    "duration": pl.Int64(),
    "reason": pl.String(),
    "via_op_id": pl.UInt64(),
}

_STREAM, _DEP = 0, 1  # binding edge kinds; stream wins a tie with a dep


def _ops_frame(tr: Trace) -> pl.DataFrame:
    """The trace columns the critical path needs; optional ones absent from the trace are null."""
    wanted = ("category", "deps", "group_id", "coll_seq", "peer", "p2p_seq")
    names = tr.ops.column_names
    ops = pl.from_arrow(
        tr.ops.select(["op_id", "name", "kind", *(c for c in wanted if c in names)]), rechunk=True
    )
    assert isinstance(ops, pl.DataFrame)
    types: dict[str, pl.DataType] = {
        "category": pl.String(),
        "deps": pl.List(pl.UInt64),
        "group_id": pl.UInt32(),
        "coll_seq": pl.UInt64(),
        "peer": pl.UInt32(),
        "p2p_seq": pl.UInt64(),
    }
    return ops.with_columns(pl.lit(None, dtype=types[c]).alias(c) for c in wanted if c not in names)


def _binding_predecessors(graph: pl.DataFrame) -> pl.DataFrame:
    """Per op with predecessors (op_id, pred, edge): the stream predecessor or dep that ended
    last, i.e. the one whose end is the op's ready time; a stream predecessor wins a tie."""
    stream = (
        graph.sort("rank", "stream", "op_id")
        .select("op_id", pl.col("op_id").shift(1).over("rank", "stream").alias("pred"))
        .drop_nulls("pred")
        .with_columns(pl.lit(_STREAM, dtype=pl.Int8).alias("edge"))
    )
    deps = (
        graph.select("op_id", pl.col("deps").alias("pred"))
        .explode("pred")
        .drop_nulls("pred")
        .with_columns(pl.lit(_DEP, dtype=pl.Int8).alias("edge"))
    )
    ends = graph.select(pl.col("op_id").alias("pred"), pl.col("end_ns").alias("pred_end"))
    return (
        pl.concat([stream, deps])
        .join(ends, on="pred", how="inner")
        .sort(["op_id", "pred_end", "edge", "pred"], descending=[False, True, False, False])
        .group_by("op_id", maintain_order=True)
        .first()
        .select("op_id", "pred", "edge")
    )


def _last_arrivals(graph: pl.DataFrame) -> pl.DataFrame:
    """Per collective, send and recv op (op_id, last): the participant of its rendezvous that
    became ready last (itself when it is among the last), whose arrival started the transfer."""
    coll = graph.filter(pl.col("kind") == "collective").select(
        "op_id",
        "ready_ns",
        pl.lit("c").alias("tag"),
        pl.col("group_id").cast(pl.Int64).alias("k0"),
        pl.lit(None, dtype=pl.Int64).alias("k1"),
        pl.col("coll_seq").cast(pl.Int64).alias("k2"),
    )
    send = pl.col("kind") == "send"
    p2p = graph.filter(pl.col("kind").is_in(["send", "recv"])).select(
        "op_id",
        "ready_ns",
        pl.lit("p").alias("tag"),
        pl.when(send).then(pl.col("rank")).otherwise(pl.col("peer")).cast(pl.Int64).alias("k0"),
        pl.when(send).then(pl.col("peer")).otherwise(pl.col("rank")).cast(pl.Int64).alias("k1"),
        pl.col("p2p_seq").cast(pl.Int64).alias("k2"),
    )
    members = pl.concat([coll, p2p])
    keys = ["tag", "k0", "k1", "k2"]
    latest = (
        members.sort(["ready_ns", "op_id"], descending=[True, False])
        .group_by(keys, maintain_order=True)
        .agg(pl.col("op_id").first().alias("latest"), pl.col("ready_ns").first().alias("latest_ready"))
    )
    return members.join(latest, on=keys, how="left", nulls_equal=True).select(
        "op_id",
        pl.when(pl.col("ready_ns") >= pl.col("latest_ready"))
        .then(pl.col("op_id"))
        .otherwise(pl.col("latest"))
        .alias("last"),
    )


def critical_path(result: ResultLike, trace: TraceLike) -> pl.DataFrame:
    """The chain of ops that bounds the step, in time order: walking back from the op that ends
    last, each op's binding predecessor is its stream predecessor or dep that ended last (its
    end is the op's start; the stream predecessor wins a tie), until time 0. A collective or
    send/recv is bound by the participant that arrived last: the path goes on through that
    participant's own predecessors, and shows that participant's op, whose run (from its
    arrival to the common end) is the transfer.

    Columns: op_id, rank, stream, name, kind, category, start_ns, end_ns, duration (end − start),
    reason and via_op_id. `reason` says how the op holds up the next op on the path: `stream`
    (the next op follows it on its rank and stream), `dep` (the next op lists it in its deps),
    `waited-for-rank N` (it is rank N's op of a collective or send/recv whose op on the next
    op's rank, `via_op_id`, is that op's stream predecessor or dep, and rank N arrived last),
    or `end` for the last op. `via_op_id` is the op the next op waited for (null on the last
    row). Consecutive ops satisfy end ≤ next start; with start = ready, as in the replay, the
    path covers [start of the replay, makespan] without gaps.

    Predecessors are found with Polars joins over the whole trace; the Python loop only walks
    the path."""
    res = _result(result)
    tr = _trace(trace)
    timeline = res.timeline.select("op_id", "rank", "stream", "start_ns", "end_ns", "ready_ns")
    if timeline.height == 0:
        return pl.DataFrame(schema=CRITICAL_PATH_SCHEMA)
    graph = timeline.join(_ops_frame(tr), on="op_id", how="left")
    if graph["kind"].null_count():
        missing = graph.filter(pl.col("kind").is_null())["op_id"][0]
        raise TracesimError(
            f"critical_path: op_id {missing} of the result is not in the trace "
            f"{tr.path or ''}; pass the trace the result was replayed from".replace(" ;", ";")
        )
    graph = (
        graph.join(_binding_predecessors(graph), on="op_id", how="left")
        .join(_last_arrivals(graph), on="op_id", how="left")
        .with_columns(pl.col("last").fill_null(pl.col("op_id")))
        .sort("op_id")
    )

    op_ids = graph["op_id"].to_numpy()
    pred = graph["pred"].fill_null(0).to_numpy()
    has_pred = graph["pred"].is_not_null().to_numpy()
    edge = graph["edge"].fill_null(_STREAM).to_numpy()
    last = graph["last"].to_numpy()
    rank = graph["rank"].to_numpy()
    start = graph["start_ns"].to_numpy()
    t0 = int(graph["start_ns"].min())  # type: ignore[arg-type]

    def index(op_id: int) -> int:
        return int(np.searchsorted(op_ids, op_id))

    # The op that ends last (lowest op_id on a tie), as its rendezvous' last arrival.
    first_end = graph.select(pl.col("op_id").sort_by("end_ns", "op_id", descending=[True, False]).first())
    i = index(int(last[index(int(first_end.item()))]))
    steps: list[tuple[int, str, int | None]] = [(i, "end", None)]
    for _ in range(graph.height):
        if start[i] <= t0 or not has_pred[i]:
            break
        p = index(int(pred[i]))
        m = index(int(last[p]))
        edge_name = "stream" if edge[i] == _STREAM else "dep"
        reason = edge_name if m == p else f"waited-for-rank {int(rank[m])}"
        steps.append((m, reason, int(op_ids[p])))
        i = m
    steps.reverse()

    rows = pl.DataFrame(
        {
            "_row": [s[0] for s in steps],
            "reason": [s[1] for s in steps],
            "via_op_id": [s[2] for s in steps],
        },
        schema={"_row": pl.UInt32, "reason": pl.String, "via_op_id": pl.UInt64},
    )
    picked = graph.with_row_index("_row").join(rows, on="_row", how="inner", maintain_order="right")
    return picked.select(
        "op_id",
        "rank",
        "stream",
        "name",
        "kind",
        pl.col("category").cast(pl.String),
        "start_ns",
        "end_ns",
        (pl.col("end_ns") - pl.col("start_ns")).alias("duration"),
        "reason",
        "via_op_id",
    ).cast(CRITICAL_PATH_SCHEMA)  # type: ignore[arg-type]


def critical_path_summary(
    path: pl.DataFrame | ResultLike,
    trace: TraceLike | None = None,
    *,
    by: str | Sequence[str] = ("kind", "category"),
) -> pl.DataFrame:
    """Time on the critical path grouped by `by` (default kind and category; `by="rank"`: which
    ranks bound the step): ops, total_ns (sum of their durations) and share of the path's span
    (first start to last end, the makespan), largest first. `path` is what critical_path returns,
    or a result, then with its `trace`."""
    if not isinstance(path, pl.DataFrame):
        if trace is None:
            raise TypeError("critical_path_summary: pass the trace along with a result")
        path = critical_path(path, trace)
    keys = [by] if isinstance(by, str) else list(by)
    span = path.select(pl.col("end_ns").max() - pl.col("start_ns").min()).item() if path.height else 0
    return (
        path.group_by(keys)
        .agg(pl.len().cast(pl.Int64).alias("ops"), pl.col("duration").sum().alias("total_ns"))
        .with_columns((pl.col("total_ns") / span if span else pl.lit(None, dtype=pl.Float64)).alias("share"))
        .sort(["total_ns", *keys], descending=[True, *([False] * len(keys))], nulls_last=True)
    )
