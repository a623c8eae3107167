"""tracesim.analysis.critical_path and critical_path_summary: a hand-built trace whose answer is
known, the sample traces (the path covers the makespan exactly), and random traces
(hypothesis): the path ends at the makespan, is causally ordered, and every step's reason
names a real stream, dep or rendezvous edge."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings

import tracesim
from tests.strategies import traces
from tests.tracedirs import SAMPLE_TRACES
from tracesim import Result, Trace, TracesimError
from tracesim.analysis import CRITICAL_PATH_SCHEMA, critical_path, critical_path_summary


def simulate(trace: Trace) -> Result:
    return tracesim.simulate(trace, "dgx-h100", compute_model="measured")


def op(op_id: int, rank: int, duration: int, *, stream: int = 0, **fields: Any) -> dict[str, Any]:
    return {
        "op_id": op_id,
        "rank": rank,
        "stream": stream,
        "name": fields.pop("name", f"op{op_id}"),
        "kind": fields.pop("kind", "compute"),
        "category": fields.pop("category", "gemm"),
        "duration_ns": duration,
        **fields,
    }


def table(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    keys = sorted({k for r in rows for k in r})
    return {k: [r.get(k) for r in rows] for k in keys}


def ar(op_id: int, rank: int, duration: int, seq: int = 0) -> dict[str, Any]:
    return op(
        op_id,
        rank,
        duration,
        name="allreduce",
        kind="collective",
        category="communication",
        coll="all_reduce",
        group_id=0,
        coll_seq=seq,
        comm_bytes=1 << 20,
    )


def straggler_trace() -> Trace:
    """Rank 0: short compute, all-reduce, then a compute and a dep on another stream; rank 1:
    long compute, all-reduce. The all-reduce waits for rank 1's long compute."""
    rows = [
        op(0, 0, 100, name="short"),
        op(1, 1, 1_000, name="long"),
        ar(2, 0, 50),
        ar(3, 1, 50),
        op(4, 0, 200, name="after", deps=[]),
        op(5, 0, 300, stream=1, name="tail", category="optimizer", deps=[4]),
    ]
    return Trace.from_tables(table(rows), ranks=2, groups={"group_id": [0], "ranks": [[0, 1]]})


def test_path_goes_through_the_straggler() -> None:
    trace = straggler_trace()
    result = simulate(trace)
    assert result.makespan_ns == 1_550
    path = critical_path(result, trace)
    assert path.schema == pl.Schema(CRITICAL_PATH_SCHEMA)
    assert path.select("op_id", "rank", "start_ns", "end_ns", "duration", "reason", "via_op_id").rows() == [
        (1, 1, 0, 1_000, 1_000, "stream", 1),
        (3, 1, 1_000, 1_050, 50, "waited-for-rank 1", 2),
        (4, 0, 1_050, 1_250, 200, "dep", 4),
        (5, 0, 1_250, 1_550, 300, "end", None),
    ]
    assert path["name"].to_list() == ["long", "allreduce", "after", "tail"]
    assert path["kind"].to_list() == ["compute", "collective", "compute", "compute"]

    by_rank = critical_path_summary(path, by="rank")
    assert by_rank.rows() == [(1, 2, 1_050, 1_050 / 1_550), (0, 2, 500, 500 / 1_550)]
    by_kind = critical_path_summary(result, trace)
    assert by_kind.columns == ["kind", "category", "ops", "total_ns", "share"]
    assert by_kind.rows()[0] == ("compute", "gemm", 2, 1_200, 1_200 / 1_550)
    assert by_kind["total_ns"].sum() == 1_550
    assert by_kind["share"].sum() == pytest.approx(1.0)


def test_without_deps_and_collectives() -> None:
    rows = [op(0, 0, 10), op(1, 0, 30, stream=1), op(2, 0, 5), op(3, 1, 20)]
    trace = Trace.from_tables(table(rows), ranks=2)
    assert "deps" not in trace.ops.column_names and "group_id" not in trace.ops.column_names
    path = critical_path(simulate(trace), trace)
    assert path.select("op_id", "reason").rows() == [(1, "end")]
    assert path["duration"].to_list() == [30]


def test_stream_wins_a_tie_with_a_dep() -> None:
    rows = [op(0, 0, 10), op(1, 1, 10), op(2, 0, 5, deps=[1])]
    trace = Trace.from_tables(table(rows), ranks=2)
    path = critical_path(simulate(trace), trace)
    assert path.select("op_id", "reason").rows() == [(0, "stream"), (2, "end")]


def test_empty_and_mismatched() -> None:
    trace = straggler_trace()
    result = simulate(trace)
    other = Trace.from_tables(table([op(0, 0, 10)]), ranks=1)
    with pytest.raises(TracesimError, match="op_id 1 of the result is not in the trace"):
        critical_path(result, other)
    empty = replace(result, timeline=result.timeline.clear())
    assert critical_path(empty, trace).height == 0
    assert critical_path_summary(critical_path(empty, trace)).height == 0
    with pytest.raises(TypeError, match="trace"):
        critical_path_summary(result)


# ---------------------------------------------------------------------------------------------
# Checks shared by the sample traces and the random ones


def check_path(path: pl.DataFrame, result: Result, trace: Trace) -> None:
    """The path is causally ordered, covers [start, makespan] exactly, and every step's reason
    is a real edge of the replayed graph."""
    s = result.summary
    assert path.height >= 1
    assert path["start_ns"][0] == s["start_ns"]
    assert path["end_ns"][-1] == s["end_ns"] == result.timeline["end_ns"].max()
    gaps = sum(int(b - a) for a, b in zip(path["end_ns"][:-1], path["start_ns"][1:], strict=True))
    assert int(path["duration"].sum()) + gaps == result.makespan_ns
    assert path["op_id"].n_unique() == path.height

    ops = {r["op_id"]: r for r in trace.ops.to_pylist()}
    tl = {r["op_id"]: r for r in result.timeline.iter_rows(named=True)}
    streams: dict[tuple[int, int], list[int]] = {}
    for o in sorted(ops):
        streams.setdefault((ops[o]["rank"], ops[o]["stream"]), []).append(o)

    def stream_pred(o: int) -> int | None:
        lane = streams[(ops[o]["rank"], ops[o]["stream"])]
        k = lane.index(o)
        return lane[k - 1] if k else None

    def binds(x: int, nxt: int) -> bool:
        return stream_pred(nxt) == x or x in (ops[nxt].get("deps") or [])

    def rendezvous(o: int) -> tuple[Any, ...]:
        r = ops[o]
        if r["kind"] == "collective":
            return ("c", r["group_id"], r["coll_seq"])
        src, dst = (r["rank"], r["peer"]) if r["kind"] == "send" else (r["peer"], r["rank"])
        return ("p", src, dst, r["p2p_seq"])

    rows = path.rows(named=True)
    for row, nxt in zip(rows, [*rows[1:], None], strict=True):
        o = row["op_id"]
        assert (row["rank"], row["stream"], row["kind"]) == (ops[o]["rank"], ops[o]["stream"], ops[o]["kind"])
        assert (row["start_ns"], row["end_ns"]) == (tl[o]["start_ns"], tl[o]["end_ns"])
        assert row["duration"] == row["end_ns"] - row["start_ns"] >= 0
        if nxt is None:
            assert row["reason"] == "end" and row["via_op_id"] is None
            continue
        n = nxt["op_id"]
        assert row["end_ns"] == nxt["start_ns"] == tl[n]["ready_ns"]  # binding: ends when next is ready
        reason, via = row["reason"], row["via_op_id"]
        if reason == "stream":
            assert via == o and stream_pred(n) == o
        elif reason == "dep":
            assert via == o and o in (ops[n].get("deps") or []) and stream_pred(n) != o
        else:
            assert reason == f"waited-for-rank {row['rank']}", reason
            assert ops[o]["kind"] in ("collective", "send", "recv")
            assert via != o and binds(via, n)
            assert rendezvous(via) == rendezvous(o) and ops[via]["rank"] != ops[o]["rank"]
            assert tl[o]["ready_ns"] > tl[via]["ready_ns"] and tl[o]["end_ns"] == tl[via]["end_ns"]
            assert tl[o]["wait_ns"] == 0


@pytest.mark.parametrize("name", ["dp2_allreduce", "pp8_gpipe"])
def test_sample_traces(name: str) -> None:
    trace = tracesim.read_trace(SAMPLE_TRACES / name)
    result = tracesim.simulate(trace)
    path = critical_path(result, trace)
    check_path(path, result, trace)
    for by in (("kind", "category"), "rank"):
        summary = critical_path_summary(path, by=by)
        assert summary["total_ns"].sum() == result.makespan_ns
        assert summary["ops"].sum() == path.height
        assert summary["share"].sum() == pytest.approx(1.0)


def test_pipeline_path_crosses_every_stage() -> None:
    trace = tracesim.read_trace(SAMPLE_TRACES / "pp8_gpipe")
    path = critical_path(tracesim.simulate(trace), trace)
    assert set(path["rank"].to_list()) == set(range(8))
    assert path.filter(pl.col("reason").str.starts_with("waited-for-rank")).height > 0


@settings(max_examples=120, deadline=None)
@given(traces())
def test_random_traces(trace: Trace) -> None:
    result = simulate(trace)
    check_path(critical_path(result, trace), result, trace)
