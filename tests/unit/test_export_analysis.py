"""Chrome trace-event export (tracesim.export) and the analysis tables (tracesim.analysis) on the
sample traces: one complete event per op at the replayed times, flows for every rendezvous,
memory counters, filters, the `tracesim export chrome` command, and table sums."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import tracesim
from tests.cli import run_cli
from tests.tracedirs import SAMPLE_TRACES
from tracesim import Result, Trace, TracesimError
from tracesim.analysis import breakdown, category_summary, compare
from tracesim.export import to_chrome

Events = list[dict[str, Any]]


@pytest.fixture(scope="module")
def dp2() -> tuple[Result, Trace]:
    trace = tracesim.read_trace(SAMPLE_TRACES / "dp2_allreduce")
    return tracesim.simulate(trace), trace


@pytest.fixture(scope="module")
def pp8() -> tuple[Result, Trace]:
    trace = tracesim.read_trace(SAMPLE_TRACES / "pp8_gpipe")
    return tracesim.simulate(trace), trace


def events(doc: dict[str, Any], ph: str) -> Events:
    return [e for e in doc["traceEvents"] if e["ph"] == ph]


def roundtrip(result: Result, trace: Trace, **kw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(to_chrome(result, trace, **kw)))
    return doc


def ops_frame(trace: Trace) -> pl.DataFrame:
    df = pl.from_arrow(trace.ops.drop(["deps"]))
    assert isinstance(df, pl.DataFrame)
    return df


def enclosing(x_events: Events, flow: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        x
        for x in x_events
        if x["pid"] == flow["pid"] and x["tid"] == flow["tid"] and x["ts"] <= flow["ts"] <= x["ts"] + x["dur"]
    ]


@pytest.mark.parametrize("fixture", ["dp2", "pp8"])
def test_one_complete_event_per_op_at_replayed_times(fixture: str, request: pytest.FixtureRequest) -> None:
    result, trace = request.getfixturevalue(fixture)
    doc = roundtrip(result, trace)
    xs = events(doc, "X")
    assert len(xs) == result.timeline.height == trace.num_ops
    by_op = {x["args"]["op_id"]: x for x in xs}
    assert len(by_op) == len(xs)
    names = dict(zip(*ops_frame(trace).select("op_id", "name"), strict=True))
    for row in result.timeline.iter_rows(named=True):
        x = by_op[row["op_id"]]
        assert x["pid"] == row["rank"] and x["tid"] == row["stream"]
        assert x["ts"] == pytest.approx(row["start_ns"] / 1000, abs=1e-9)
        assert x["dur"] == pytest.approx((row["end_ns"] - row["start_ns"]) / 1000, abs=1e-9)
        assert isinstance(x["ts"], float) and isinstance(x["dur"], float)
        assert x["name"] == names[row["op_id"]]
        assert x["args"]["energy_j"] == pytest.approx(row["energy_j"])
    kinds = {x["cat"].split(",")[0] for x in xs}
    assert kinds <= {"compute", "memory", "collective", "send", "recv", "host"}
    comm = [x for x in xs if x["cat"].split(",")[0] in ("collective", "send", "recv")]
    assert comm and all("comm_bytes" in x["args"] and "wait_ns" in x["args"] for x in comm)
    assert all("wait_ns" not in x["args"] for x in xs if x["cat"].startswith("compute"))


def test_processes_and_threads_are_named(dp2: tuple[Result, Trace]) -> None:
    result, trace = dp2
    doc = roundtrip(result, trace)
    meta = events(doc, "M")
    procs = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    assert procs == {r: f"rank {r}" for r in range(trace.ranks)}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    expected = set(result.timeline.select("rank", "stream").unique().iter_rows())
    assert set(threads) == expected
    assert all(name == f"stream {tid}" for (_, tid), name in threads.items())
    assert doc["displayTimeUnit"] == "ns"


def _flows(doc: dict[str, Any]) -> dict[int, Events]:
    chains: dict[int, Events] = defaultdict(list)
    for e in doc["traceEvents"]:
        if e["ph"] in ("s", "t", "f"):
            chains[e["id"]].append(e)
    return chains


def _check_chain(chain: Events, xs: Events) -> None:
    phases = [e["ph"] for e in chain]
    assert phases[0] == "s" and phases[-1] == "f" and set(phases[1:-1]) <= {"t"}, phases
    assert len({(e["name"], e["cat"]) for e in chain}) == 1
    ts = [e["ts"] for e in chain]
    assert ts == sorted(ts)
    for e in chain:
        assert enclosing(xs, e), f"flow event {e} is not inside an op of its thread"


def test_collective_flows_link_every_instance(dp2: tuple[Result, Trace]) -> None:
    result, trace = dp2
    doc = roundtrip(result, trace)
    xs = events(doc, "X")
    chains = _flows(doc)
    colls = ops_frame(trace).filter(pl.col("kind") == "collective")
    instances = colls.group_by("group_id", "coll_seq").agg(pl.col("rank").sort())
    assert len(chains) == instances.height > 0
    by_name = {chain[0]["name"]: chain for chain in chains.values()}
    for group, seq, ranks in instances.iter_rows():
        chain = by_name[f"group {group} coll_seq {seq}"]
        _check_chain(chain, xs)
        assert sorted(e["pid"] for e in chain) == ranks
        assert all(e["cat"] == "collective" for e in chain)


def test_collective_flows_chain_many_ranks() -> None:
    trace = tracesim.read_trace(SAMPLE_TRACES / "dp16_two_nodes")
    result = tracesim.simulate(trace)
    doc = roundtrip(result, trace)
    xs = events(doc, "X")
    chains = _flows(doc)
    n_instances = ops_frame(trace).filter(pl.col("kind") == "collective").select("group_id", "coll_seq")
    assert len(chains) == n_instances.unique().height
    for chain in chains.values():
        _check_chain(chain, xs)
        assert len(chain) == 16 and sorted(e["pid"] for e in chain) == list(range(16))


def test_send_recv_flows_pair_each_message(pp8: tuple[Result, Trace]) -> None:
    result, trace = pp8
    doc = roundtrip(result, trace)
    xs = events(doc, "X")
    ops = ops_frame(trace)
    sends = ops.filter(pl.col("kind") == "send")
    streams = {
        (r["rank"], r["peer"], r["p2p_seq"], r["kind"]): r["stream"] for r in ops.iter_rows(named=True)
    }
    chains = _flows(doc)
    assert len(chains) == sends.height > 0
    by_name = {chain[0]["name"]: chain for chain in chains.values()}
    for src, dst, seq in sends.select("rank", "peer", "p2p_seq").iter_rows():
        chain = by_name[f"{src} → {dst} p2p_seq {seq}"]
        assert [e["ph"] for e in chain] == ["s", "f"]
        _check_chain(chain, xs)
        start, finish = chain
        assert (start["pid"], start["tid"]) == (src, streams[(src, dst, seq, "send")])
        assert (finish["pid"], finish["tid"]) == (dst, streams[(dst, src, seq, "recv")])
        assert start["cat"] == "p2p" and start["bp"] == finish["bp"] == "e"


def test_memory_counters(dp2: tuple[Result, Trace], pp8: tuple[Result, Trace]) -> None:
    result, trace = dp2
    assert result.memory is not None and result.memory.height
    counters = [c for c in events(roundtrip(result, trace), "C") if c["name"].startswith("memory ")]
    assert counters and {c["name"] for c in counters} == {"memory hbm"}
    for rank in result.summary["ranks"]:
        mine = [c for c in counters if c["pid"] == rank["rank"]]
        assert max(c["args"]["used_bytes"] for c in mine) == rank["peak_memory_bytes"]["hbm"]
        ts = [c["ts"] for c in mine]
        assert ts == sorted(ts) and len(set(ts)) == len(ts)  # one value per instant
    memory = [c for c in events(roundtrip(*pp8), "C") if c["name"].startswith("memory ")]
    assert memory == []  # no tensors, no memory counters


def test_link_utilisation_counters() -> None:
    trace = tracesim.read_trace(SAMPLE_TRACES / "dp16_two_nodes")
    # A flat ring, so only the ranks at the node boundary use their NIC.
    system = tracesim.load_system("dgx-h100", overrides=["network.algorithm=ring"])
    result = tracesim.simulate(trace, system, compute_model="roofline")
    assert result.links is not None
    doc = roundtrip(result, trace)
    counters = [c for c in events(doc, "C") if c["name"].startswith("link ")]
    assert {c["name"] for c in counters} == {"link scale_up", "link scale_out"}
    end_us = result.makespan_ns / 1000.0
    by_key: dict[tuple[int, str], Events] = defaultdict(list)
    for c in counters:
        assert c["tid"] == 0 and set(c["args"]) == {"utilisation"}
        by_key[(c["pid"], c["name"])].append(c)
    assert set(by_key) == {(r, f"link {link}") for r in range(16) for link in ("scale_up", "scale_out")}
    for row in result.links.filter(pl.col("rank").is_not_null()).iter_rows(named=True):
        samples = by_key[(row["rank"], f"link {row['link']}")]
        # An average over the replay: the same value at its start and at its end.
        assert [c["ts"] for c in samples] == [0.0, end_us]
        assert all(c["args"]["utilisation"] == pytest.approx(row["utilisation"]) for c in samples)
    crossing = {c["pid"] for c in counters if c["name"] == "link scale_out" and c["args"]["utilisation"] > 0}
    assert crossing and crossing != set(range(16))
    # Filters: only the ranks kept, samples at the window's bounds.
    window = roundtrip(result, trace, ranks=[7], start_ns=1000, end_ns=2000)
    kept = [c for c in events(window, "C") if c["name"].startswith("link ")]
    assert {c["pid"] for c in kept} == {7} and {c["ts"] for c in kept} == {1.0, 2.0}


def test_rank_filter(dp2: tuple[Result, Trace], pp8: tuple[Result, Trace]) -> None:
    result, trace = dp2
    doc = roundtrip(result, trace, ranks=[1])
    assert {e["pid"] for e in doc["traceEvents"]} == {1}
    assert len(events(doc, "X")) == result.timeline.filter(pl.col("rank") == 1).height
    assert _flows(doc) == {}  # a collective with one participant left has no flow
    assert events(doc, "C")
    result, trace = pp8
    doc = roundtrip(result, trace, ranks=[2, 3])
    assert {e["pid"] for e in events(doc, "X")} == {2, 3}
    sends = ops_frame(trace).filter((pl.col("kind") == "send") & pl.col("rank").is_in([2, 3]))
    both = sends.filter(pl.col("peer").is_in([2, 3])).height
    assert len(_flows(doc)) == both > 0


def test_time_window(dp2: tuple[Result, Trace]) -> None:
    result, trace = dp2
    lo, hi = result.makespan_ns // 3, 2 * result.makespan_ns // 3
    doc = roundtrip(result, trace, start_ns=lo, end_ns=hi)
    xs = events(doc, "X")
    expected = result.timeline.filter((pl.col("end_ns") >= lo) & (pl.col("start_ns") <= hi))
    assert 0 < len(xs) == expected.height < result.timeline.height
    assert {x["args"]["op_id"] for x in xs} == set(expected["op_id"])
    counters = events(doc, "C")
    assert counters and all(lo / 1000 <= c["ts"] <= hi / 1000 for c in counters)
    for rank in range(trace.ranks):  # the level in force at the window's start is shown
        assert min(c["ts"] for c in counters if c["pid"] == rank) == pytest.approx(lo / 1000)
    for chain in _flows(doc).values():
        _check_chain(chain, xs)


def test_bad_arguments(dp2: tuple[Result, Trace], pp8: tuple[Result, Trace]) -> None:
    result, trace = dp2
    with pytest.raises(TracesimError, match=r"outside 0\.\.1"):
        to_chrome(result, trace, ranks=[0, 7])
    with pytest.raises(TracesimError, match="after end_ns"):
        to_chrome(result, trace, start_ns=10, end_ns=5)
    with pytest.raises(TracesimError, match="not the trace this result was replayed from"):
        to_chrome(result, pp8[1])


def test_cli_export_chrome(dp2: tuple[Result, Trace], tmp_path: Path) -> None:
    result, trace = dp2
    assert result.summary["trace"]["path"] == str(SAMPLE_TRACES / "dp2_allreduce")
    res_dir = result.write(tmp_path / "result")
    out = tmp_path / "out" / "trace.json"
    proc = run_cli("export", "chrome", res_dir, "--out", out)  # trace from summary.json
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text()) == roundtrip(result, trace)

    lo, hi = 1_000_000, 3_000_000
    proc = run_cli(
        "export", "chrome", res_dir, "--out", out, "--trace", SAMPLE_TRACES / "dp2_allreduce",
        "--ranks", "0", "--start-ns", lo, "--end-ns", hi,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text()) == roundtrip(result, trace, ranks=[0], start_ns=lo, end_ns=hi)

    summary = json.loads((res_dir / "summary.json").read_text())
    summary["trace"]["path"] = None
    (res_dir / "summary.json").write_text(json.dumps(summary))
    proc = run_cli("export", "chrome", res_dir, "--out", out)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith("tracesim: error:") and "--trace" in proc.stderr


def test_breakdown(pp8: tuple[Result, Trace]) -> None:
    result, _ = pp8
    df = breakdown(result)
    ranks = result.summary["ranks"]
    assert df.height == len(ranks) and df["rank"].to_list() == [r["rank"] for r in ranks]
    for col in ("compute_ns", "comm_ns", "exposed_comm_ns", "wait_ns", "idle_ns"):
        assert df[col].to_list() == [r[col] for r in ranks]
        share = df[col.removesuffix("_ns") + "_share"].to_list()
        assert share == pytest.approx([r[col] / result.makespan_ns for r in ranks])


@pytest.mark.parametrize("fixture", ["dp2", "pp8"])
def test_category_summary(fixture: str, request: pytest.FixtureRequest) -> None:
    result, trace = request.getfixturevalue(fixture)
    df = category_summary(result, trace)
    durations = result.timeline["end_ns"] - result.timeline["start_ns"]
    assert df["total_ns"].sum() == durations.sum()
    assert df["count"].sum() == result.timeline.height
    assert df["share"].sum() == pytest.approx(1.0)
    assert df["energy_j"].sum() == pytest.approx(result.timeline["energy_j"].sum())
    assert df["total_ns"].to_list() == sorted(df["total_ns"].to_list(), reverse=True)
    ops = ops_frame(trace)
    expected = ops.group_by("kind", "category").len()
    got = {(k, c): n for k, c, n in df.select("kind", "category", "count").iter_rows()}
    assert got == {(k, c): n for k, c, n in expected.iter_rows()}
    gemm = ops.filter(pl.col("category") == "gemm")["op_id"]
    gemm_ns = result.timeline.filter(pl.col("op_id").is_in(gemm.implode())).select(
        (pl.col("end_ns") - pl.col("start_ns")).sum()
    )
    assert df.filter(pl.col("category") == "gemm")["total_ns"].sum() == gemm_ns.item()


def test_compare(dp2: tuple[Result, Trace], tmp_path: Path) -> None:
    result, trace = dp2
    other = tracesim.simulate(trace, "dgx-a100")
    df = compare(result, other)
    assert df["scenario"].to_list() == ["dgx-h100", "dgx-a100"]
    assert df["makespan_ns"].to_list() == [result.makespan_ns, other.makespan_ns]
    assert df["speedup"][0] == 1.0
    assert df["speedup"][1] == pytest.approx(result.makespan_ns / other.makespan_ns)
    assert df["energy_j"].to_list() == [result.summary["energy_j"], other.summary["energy_j"]]
    assert df["mfu"].to_list() == [result.summary["mfu"], other.summary["mfu"]]
    exposed = [r["exposed_comm_ns"] for r in other.summary["ranks"]]
    assert df["mean_exposed_comm_ns"][1] == pytest.approx(sum(exposed) / len(exposed))
    written = result.write(tmp_path / "r")
    named = compare(result, written, names=["in memory", "on disk"])
    assert named["scenario"].to_list() == ["in memory", "on disk"]
    assert named["makespan_ns"][0] == named["makespan_ns"][1]
    assert compare(result, result)["scenario"].to_list() == ["0: dgx-h100", "1: dgx-h100"]
    with pytest.raises(ValueError, match="names"):
        compare(result, other, names=["one"])
    assert tracesim.compare is compare and tracesim.breakdown is breakdown
    assert tracesim.category_summary is category_summary


def _op(op_id: int, duration: int, *, stream: int = 0, **fields: Any) -> dict[str, Any]:
    return {
        "op_id": op_id,
        "rank": 0,
        "stream": stream,
        "name": f"op{op_id}",
        "kind": fields.pop("kind", "compute"),
        "category": fields.pop("category", "gemm"),
        "duration_ns": duration,
        "iteration": fields.pop("iteration", 0),
        "deps": fields.pop("deps", []),
        **fields,
    }


def _coll(op_id: int, duration: int, seq: int, **fields: Any) -> dict[str, Any]:
    return _op(
        op_id,
        duration,
        stream=1,
        kind="collective",
        category="communication",
        coll="all_reduce",
        group_id=0,
        coll_seq=seq,
        comm_bytes=1 << 20,
        **fields,
    )


def test_breakdown_by_iteration_hand_built() -> None:
    """One rank, compute on stream 0 and all-reduces on stream 1 (replayed with the measured
    durations). Iteration 0: gemm [0,100), elementwise [100,130), all-reduce [0,150).
    Iteration 1: copy (kind memory) [150,190) after the all-reduce, gemm [190,240), an op
    without an iteration [240,265) (left out: idle within the step), all-reduce [190,260)
    after the copy, norm [265,285) after that all-reduce."""
    rows = [
        _op(0, 100),
        _coll(1, 150, 0),
        _op(2, 30, category="elementwise"),
        _op(3, 40, kind="memory", category="copy", iteration=1, deps=[1]),
        _op(4, 50, iteration=1),
        _op(5, 25, iteration=None),
        _coll(6, 70, 1, iteration=1, deps=[3]),
        _op(7, 20, category="norm", iteration=1, deps=[6]),
    ]
    keys = sorted({k for r in rows for k in r})
    trace = Trace.from_tables(
        {k: [r.get(k) for r in rows] for k in keys}, ranks=1, groups={"group_id": [0], "ranks": [[0]]}
    )
    result = tracesim.simulate(trace, "dgx-h100", compute_model="measured")
    spans = {r["op_id"]: (r["start_ns"], r["end_ns"]) for r in result.timeline.iter_rows(named=True)}
    assert spans == {
        0: (0, 100),
        1: (0, 150),
        2: (100, 130),
        3: (150, 190),
        4: (190, 240),
        5: (240, 265),
        6: (190, 260),
        7: (265, 285),
    }
    df = breakdown(result, trace, by="iteration")
    assert df.columns == [
        "rank",
        "iteration",
        "start_ns",
        "end_ns",
        "step_ns",
        "compute_ns",
        "comm_ns",
        "exposed_comm_ns",
        "wait_ns",
        "idle_ns",
        "memory_bound_ns",
    ]
    assert df.rows() == [
        # rank, it, start, end, step, compute, comm, exposed, wait, idle, memory-bound
        (0, 0, 0, 150, 150, 130, 150, 20, 0, 0, 30),
        (0, 1, 150, 285, 135, 110, 70, 20, 0, 5, 60),
    ]
    # The default stays the per-rank table from the summary.
    assert breakdown(result).columns == breakdown(result, trace).columns
    assert "iteration" not in breakdown(result, trace).columns


def test_breakdown_by_iteration_matches_summary(dp2: tuple[Result, Trace]) -> None:
    result, trace = dp2
    df = breakdown(result, trace, by="iteration")
    ranks = result.summary["ranks"]
    assert df["iteration"].unique().to_list() == [0]
    assert df["rank"].to_list() == [r["rank"] for r in ranks]
    for col in ("compute_ns", "comm_ns", "exposed_comm_ns", "wait_ns", "idle_ns"):
        assert df[col].to_list() == [r[col] for r in ranks]
    assert df["end_ns"].to_list() == [r["end_ns"] for r in ranks]
    assert (df["step_ns"] == df["end_ns"] - df["start_ns"]).all()
    assert (df["memory_bound_ns"] <= df["compute_ns"]).all()


def test_breakdown_by_iteration_needs_the_trace(dp2: tuple[Result, Trace]) -> None:
    result, _ = dp2
    with pytest.raises(TracesimError, match="needs the trace"):
        breakdown(result, by="iteration")
    with pytest.raises(ValueError, match="by must be"):
        breakdown(result, by="layer")  # type: ignore[arg-type]
