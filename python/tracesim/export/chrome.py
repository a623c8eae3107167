"""Chrome trace-event JSON (opens in Perfetto and chrome://tracing) from a replay result.

Ranks are processes (pid = rank), streams are threads (tid = stream); each op is one complete
event ("X", ts/dur in microseconds). Collectives and send/recv are linked across ranks by flow
events ("s" → "t"… → "f", one id per rendezvous instance: collectives on (group_id, coll_seq),
send/recv on (src, dst, p2p_seq)); memory occupancy per tier is a counter ("C") per rank.
Link utilisation is a counter per rank and link level ("link scale_up", "link scale_out"):
links.parquet holds totals over the replay, so it is the average utilisation (busy time over
the makespan), drawn as one constant level from the start to the end of the replay (or of the
time window), not utilisation over time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import polars as pl

from tracesim.exceptions import TracesimError
from tracesim.simulate import Result
from tracesim.trace import Trace

# Optional ops columns the export reads, with the type to use when a trace lacks them.
_OPTIONAL: dict[str, pl.DataType] = {
    "category": pl.String(),
    "flops": pl.Float64(),
    "bytes_read": pl.UInt64(),
    "bytes_written": pl.UInt64(),
    "comm_bytes": pl.UInt64(),
    "coll": pl.String(),
    "group_id": pl.UInt32(),
    "coll_seq": pl.UInt64(),
    "peer": pl.UInt32(),
    "p2p_seq": pl.UInt64(),
}
_COMM_KINDS = ("collective", "send", "recv")


def _ops_table(trace: Trace) -> pl.DataFrame:
    names = set(trace.ops.column_names)
    wanted = ["op_id", "name", "kind", *(c for c in _OPTIONAL if c in names)]
    ops = pl.from_arrow(trace.ops.select(wanted))
    assert isinstance(ops, pl.DataFrame)
    return ops.with_columns(
        pl.lit(None, dtype=dtype).alias(c) for c, dtype in _OPTIONAL.items() if c not in names
    )


def op_table(
    result: Result,
    trace: Trace,
    *,
    ranks: list[int] | None = None,
    start_ns: int | None = None,
    end_ns: int | None = None,
) -> pl.DataFrame:
    """The timeline joined with the trace's ops on op_id, filtered to `ranks` and to ops that
    overlap [start_ns, end_ns] (bounds inclusive). Raises TracesimError when the trace is not the
    one the result was replayed from."""
    timeline = result.timeline
    ops = _ops_table(trace)
    joined = timeline.join(ops, on="op_id", how="left")
    missing = joined.filter(pl.col("kind").is_null())
    if missing.height or ops.height != timeline.height:
        where = str(trace.path) if trace.path is not None else "the trace"
        detail = (
            f"op_id {missing['op_id'][0]} of the timeline is not in it"
            if missing.height
            else f"it has {ops.height} ops, the timeline {timeline.height}"
        )
        raise TracesimError(f"{where} is not the trace this result was replayed from: {detail}")
    if ranks is not None:
        joined = joined.filter(pl.col("rank").is_in(list(ranks)))
    if start_ns is not None:
        joined = joined.filter(pl.col("end_ns") >= start_ns)
    if end_ns is not None:
        joined = joined.filter(pl.col("start_ns") <= end_ns)
    return joined.sort("rank", "stream", "start_ns", "op_id")


def _check_args(result: Result, ranks: list[int] | None, start_ns: int | None, end_ns: int | None) -> None:
    n = len(result.summary.get("ranks", [])) or result.timeline["rank"].n_unique()
    if ranks is not None:
        bad = sorted({r for r in ranks if not 0 <= r < n})
        if bad:
            raise TracesimError(f"ranks {bad} are outside 0..{n - 1} (the result has {n} ranks)")
    if start_ns is not None and end_ns is not None and start_ns > end_ns:
        raise TracesimError(f"start_ns {start_ns} is after end_ns {end_ns}")


def _metadata(ops: pl.DataFrame, ranks: list[int]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for r in ranks:
        events.append({"ph": "M", "name": "process_name", "pid": r, "tid": 0, "args": {"name": f"rank {r}"}})
        events.append(
            {"ph": "M", "name": "process_sort_index", "pid": r, "tid": 0, "args": {"sort_index": r}}
        )
    streams = (
        ops.group_by("rank", "stream")
        .agg(pl.col("kind").eq("host").all().alias("host"))
        .sort("rank", "stream")
    )
    for r, s, host in streams.iter_rows():
        name = f"host stream {s}" if host else f"stream {s}"
        events.append({"ph": "M", "name": "thread_name", "pid": r, "tid": s, "args": {"name": name}})
        events.append({"ph": "M", "name": "thread_sort_index", "pid": r, "tid": s, "args": {"sort_index": s}})
    return events


def _complete_events(ops: pl.DataFrame) -> list[dict[str, Any]]:
    is_comm = pl.col("kind").is_in(_COMM_KINDS)
    cat = (
        pl.when(pl.col("category").is_null())
        .then(pl.col("kind"))
        .otherwise(pl.concat_str(pl.col("kind"), pl.lit(","), pl.col("category")))
    )
    has_bytes = pl.col("bytes_read").is_not_null() | pl.col("bytes_written").is_not_null()
    table = ops.select(
        pl.col("name"),
        cat.alias("cat"),
        pl.col("rank").alias("pid"),
        pl.col("stream").alias("tid"),
        (pl.col("start_ns") / 1000.0).alias("ts"),
        ((pl.col("end_ns") - pl.col("start_ns")) / 1000.0).alias("dur"),
        pl.col("op_id"),
        pl.col("flops"),
        pl.when(has_bytes)
        .then(pl.col("bytes_read").fill_null(0) + pl.col("bytes_written").fill_null(0))
        .alias("bytes"),
        pl.col("comm_bytes"),
        pl.col("coll"),
        pl.col("group_id"),
        pl.col("coll_seq"),
        pl.col("peer"),
        pl.col("p2p_seq"),
        pl.when(is_comm).then(pl.col("wait_ns")).alias("wait_ns"),
        pl.col("energy_j"),
    )
    events = []
    for row in table.iter_rows(named=True):
        args = {k: row[k] for k in list(row)[6:] if row[k] is not None}
        events.append(
            {
                "ph": "X",
                "name": row["name"],
                "cat": row["cat"],
                "pid": row["pid"],
                "tid": row["tid"],
                "ts": row["ts"],
                "dur": row["dur"],
                "args": args,
            }
        )
    return events


def _flow_events(ops: pl.DataFrame) -> list[dict[str, Any]]:
    """One flow per rendezvous instance: send → recv, or a collective's participants chained in
    order of arrival. Each flow event sits inside its op (at its middle, or later to keep the
    flow's events in time order) and binds to that op's slice ("bp": "e")."""
    coll = ops.filter(pl.col("kind") == "collective").select(
        pl.lit("collective").alias("flow"),
        pl.format("group {} coll_seq {}", pl.col("group_id"), pl.col("coll_seq")).alias("label"),
        pl.lit(0, dtype=pl.Int32).alias("side"),
        "rank",
        "stream",
        "start_ns",
        "end_ns",
        "op_id",
    )
    src = pl.when(pl.col("kind") == "send").then(pl.col("rank")).otherwise(pl.col("peer"))
    dst = pl.when(pl.col("kind") == "send").then(pl.col("peer")).otherwise(pl.col("rank"))
    p2p = ops.filter(pl.col("kind").is_in(["send", "recv"])).select(
        pl.lit("p2p").alias("flow"),
        pl.format("{} → {} p2p_seq {}", src, dst, pl.col("p2p_seq")).alias("label"),
        (pl.col("kind") == "recv").cast(pl.Int32).alias("side"),  # the send starts the flow
        "rank",
        "stream",
        "start_ns",
        "end_ns",
        "op_id",
    )
    parts = (
        pl.concat([coll, p2p])
        .with_columns(pl.len().over("flow", "label").alias("n"))
        .filter(pl.col("n") >= 2)
        .sort("flow", "label", "side", "start_ns", "op_id")
        .with_columns(
            pl.struct("flow", "label").rank("dense").alias("id"),
            pl.int_range(pl.len()).over("flow", "label").alias("pos"),
        )
    )
    table = parts.select(
        pl.when(pl.col("pos") == 0)
        .then(pl.lit("s"))
        .when(pl.col("pos") == pl.col("n") - 1)
        .then(pl.lit("f"))
        .otherwise(pl.lit("t"))
        .alias("ph"),
        pl.col("label").alias("name"),
        pl.col("flow").alias("cat"),
        pl.col("id"),
        pl.col("rank").alias("pid"),
        pl.col("stream").alias("tid"),
        # Never before the previous event of the flow, so arrows point forward in time (the
        # participants of one rendezvous end together, so this stays inside the op).
        ((pl.col("start_ns") + pl.col("end_ns")) / 2000.0).cum_max().over("id").alias("ts"),
    )
    return [{**row, "bp": "e"} for row in table.iter_rows(named=True)]


def _counter_events(
    memory: pl.DataFrame, ranks: list[int] | None, start_ns: int | None, end_ns: int | None
) -> list[dict[str, Any]]:
    """Occupancy per (rank, tier): the last value at each time; inside a window, the level
    in force at its start is repeated at start_ns."""
    mem = memory
    if ranks is not None:
        mem = mem.filter(pl.col("rank").is_in(list(ranks)))
    mem = (
        mem.with_row_index("order")
        .group_by("rank", "tier", "time_ns")
        .agg(pl.col("used_bytes").sort_by("order").last())
    )
    if start_ns is not None:
        before = (
            mem.filter(pl.col("time_ns") < start_ns)
            .sort("time_ns")
            .group_by("rank", "tier")
            .agg(pl.col("used_bytes").last())
            .with_columns(pl.lit(start_ns, dtype=pl.Int64).alias("time_ns"))
        )
        inside = mem.filter(pl.col("time_ns") >= start_ns)
        # The level at start_ns: a change exactly at start_ns wins over the carried value.
        before = before.join(
            inside.select("rank", "tier", "time_ns"), on=["rank", "tier", "time_ns"], how="anti"
        )
        mem = pl.concat([inside, before.select(inside.columns)])
    if end_ns is not None:
        mem = mem.filter(pl.col("time_ns") <= end_ns)
    table = mem.sort("rank", "tier", "time_ns").select(
        pl.format("memory {}", pl.col("tier")).alias("name"),
        pl.col("rank").alias("pid"),
        (pl.col("time_ns") / 1000.0).alias("ts"),
        pl.col("used_bytes"),
    )
    return [
        {"ph": "C", "name": name, "pid": pid, "tid": 0, "ts": ts, "args": {"used_bytes": used}}
        for name, pid, ts, used in table.iter_rows()
    ]


def _link_events(
    links: pl.DataFrame,
    makespan_ns: int,
    ranks: list[int] | None,
    start_ns: int | None,
    end_ns: int | None,
) -> list[dict[str, Any]]:
    """The average utilisation of each (rank, link level) over the replay, as a counter with two
    samples of the same value: at the start and at the end of the replay (or of the window)."""
    # Links that leave a device belong to its rank; switch-to-switch and switch-to-device
    # links have no rank and no process to draw on.
    links = links.filter(pl.col("rank").is_not_null())
    if ranks is not None:
        links = links.filter(pl.col("rank").is_in(list(ranks)))
    first = max(0, start_ns) if start_ns is not None else 0
    last = min(makespan_ns, end_ns) if end_ns is not None else makespan_ns
    last = max(first, last)
    events = []
    for rank, link, util in links.sort("rank", "link").select("rank", "link", "utilisation").iter_rows():
        for ns in dict.fromkeys((first, last)):
            events.append(
                {
                    "ph": "C",
                    "name": f"link {link}",
                    "pid": rank,
                    "tid": 0,
                    "ts": ns / 1000.0,
                    "args": {"utilisation": float(util or 0.0)},
                }
            )
    return events


def to_chrome(
    result: Result,
    trace: Trace,
    *,
    ranks: list[int] | None = None,
    start_ns: int | None = None,
    end_ns: int | None = None,
) -> dict[str, Any]:
    """Chrome trace-event JSON (a dict for `json.dump`) of `result`, replayed from `trace`.

    `ranks` keeps only those ranks; `start_ns`/`end_ns` keep the ops that overlap the window
    (bounds inclusive) and the memory counters inside it. Link counters (when the result has
    links) give each rank's average utilisation per link level over the whole replay. Flows
    link the participants that remain after filtering; an instance with a single remaining
    participant has no flow."""
    _check_args(result, ranks, start_ns, end_ns)
    ops = op_table(result, trace, ranks=ranks, start_ns=start_ns, end_ns=end_ns)
    shown = sorted(set(ranks)) if ranks is not None else list(range(len(result.summary.get("ranks", []))))
    if not shown:
        shown = sorted(set(ops["rank"].to_list()))
    events = _metadata(ops, shown) + _complete_events(ops) + _flow_events(ops)
    if result.memory is not None and result.memory.height:
        events += _counter_events(result.memory, ranks, start_ns, end_ns)
    if result.links is not None and result.links.height:
        makespan = int(result.summary.get("makespan_ns") or 0)
        events += _link_events(result.links, makespan, ranks, start_ns, end_ns)
    return {
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {
            "producer": "tracesim",
            "trace": None if trace.path is None else str(trace.path),
            "system": result.summary.get("system", {}).get("name"),
            "makespan_ns": result.summary.get("makespan_ns"),
        },
    }


def write_chrome(
    result: Result,
    trace: Trace,
    path: str | os.PathLike[str],
    *,
    ranks: list[int] | None = None,
    start_ns: int | None = None,
    end_ns: int | None = None,
) -> Path:
    """`to_chrome` written to `path` as JSON."""
    doc = to_chrome(result, trace, ranks=ranks, start_ns=start_ns, end_ns=end_ns)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    return out
