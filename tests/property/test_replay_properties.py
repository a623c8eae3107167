"""Properties of the replay engine over random traces (hypothesis)."""

from __future__ import annotations

from collections import defaultdict

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

import tracesim
from tests.reference import reference_schedule
from tests.strategies import traces

SETTINGS = settings(max_examples=150, deadline=None)


def _times(result: tracesim.Result) -> dict[int, tuple[int, int]]:
    tl = result.timeline
    return {
        int(o): (int(s), int(e)) for o, s, e in zip(tl["op_id"], tl["start_ns"], tl["end_ns"], strict=True)
    }


def _with_column(trace: tracesim.Trace, name: str, values: list[object]) -> tracesim.Trace:
    ops = trace.ops
    if name in ops.column_names:
        ops = ops.set_column(
            ops.column_names.index(name), name, pa.array(values, ops.schema.field(name).type)
        )
    else:
        ops = ops.append_column(name, pa.array(values, pa.int64()))
    return tracesim.Trace.from_tables(ops, ranks=trace.ranks, groups=trace.groups)


@SETTINGS
@given(traces())
def test_matches_reference_scheduler(trace: tracesim.Trace) -> None:
    result = tracesim.simulate(trace, "dgx-h100", compute_model="measured")
    assert _times(result) == reference_schedule(trace)


@SETTINGS
@given(traces())
def test_causality_and_collectives_end_together(trace: tracesim.Trace) -> None:
    result = tracesim.simulate(trace, "dgx-h100", compute_model="measured")
    times = _times(result)
    tl = result.timeline
    ready = dict(zip(tl["op_id"].to_list(), tl["ready_ns"].to_list(), strict=True))
    rows = trace.ops.to_pylist()
    last: dict[tuple[int, int], int] = {}
    for r in sorted(rows, key=lambda r: r["op_id"]):
        start, end = times[r["op_id"]]
        assert start <= end
        for d in r["deps"] or []:
            assert start >= times[d][1], f"op {r['op_id']} starts before its dep {d} ends"
        key = (r["rank"], r["stream"])
        if key in last:
            assert start >= times[last[key]][1], f"op {r['op_id']} overlaps its stream predecessor"
        last[key] = r["op_id"]
    instances: dict[tuple[object, ...], list[int]] = defaultdict(list)
    for r in rows:
        if r["kind"] == "collective":
            instances[(r["group_id"], r["coll_seq"])].append(r["op_id"])
    for members in instances.values():
        ends = {times[m][1] for m in members}
        assert len(ends) == 1, "participants of a collective end at different times"
        last_ready = max(ready[m] for m in members)
        transfer = min(r["duration_ns"] for r in rows if r["op_id"] in members)
        assert ends.pop() == last_ready + transfer, "data moved before the last participant was ready"


@SETTINGS
@given(traces())
def test_deterministic(trace: tracesim.Trace) -> None:
    a = tracesim.simulate(trace, "dgx-h100", compute_model="measured")
    b = tracesim.simulate(trace, "dgx-h100", compute_model="measured")
    assert a.timeline.equals(b.timeline)
    assert a.summary == b.summary


@SETTINGS
@given(traces(), st.data())
def test_shorter_duration_never_lengthens_makespan(trace: tracesim.Trace, data: st.DataObject) -> None:
    base = tracesim.simulate(trace, "dgx-h100", compute_model="measured").makespan_ns
    durations = trace.ops.column("duration_ns").to_pylist()
    i = data.draw(st.integers(0, len(durations) - 1))
    durations[i] = data.draw(st.integers(0, durations[i]))
    shorter = _with_column(trace, "duration_ns", durations)
    assert tracesim.simulate(shorter, "dgx-h100", compute_model="measured").makespan_ns <= base


@SETTINGS
@given(traces(), st.floats(1.0, 100.0), st.sampled_from(["scale_up", "scale_out"]))
def test_more_bandwidth_never_lengthens_makespan(trace: tracesim.Trace, factor: float, level: str) -> None:
    # Roofline mode: collectives and send/recv are timed by the analytical network model.
    system = tracesim.load_system("dgx-h100", nodes=1 if trace.ranks <= 8 else None)
    faster = tracesim.load_system(
        system, overrides=[f"network.{level}.bw_bytes={system.network.scale_up.bw_bytes * factor}"]
    )
    if level == "scale_out":
        faster = tracesim.load_system(
            system, overrides=[f"network.scale_out.bw_bytes={system.network.scale_out.bw_bytes * factor}"]
        )
    base = tracesim.simulate(trace, system, compute_model="roofline").makespan_ns
    assert tracesim.simulate(trace, faster, compute_model="roofline").makespan_ns <= base


@SETTINGS
@given(traces())
def test_identity_replay_of_a_consistent_schedule(trace: tracesim.Trace) -> None:
    """A trace whose measured schedule is self-consistent replays to exactly that schedule."""
    times = reference_schedule(trace)
    ids = trace.ops.column("op_id").to_pylist()
    # Each op's measured duration is its span in the schedule (collectives include their wait).
    measured = _with_column(trace, "duration_ns", [times[i][1] - times[i][0] for i in ids])
    measured = _with_column(measured, "start_ns", [times[i][0] for i in ids])
    result = tracesim.simulate(measured, "dgx-h100", compute_model="measured")
    tl = result.timeline.sort("op_id")
    expected = pl.DataFrame(
        {
            "op_id": sorted(ids),
            "start_ns": [times[i][0] for i in sorted(ids)],
            "end_ns": [times[i][1] for i in sorted(ids)],
        }
    ).cast({"op_id": pl.UInt64})
    assert tl.select("op_id", "start_ns", "end_ns").equals(expected)
    assert pc.max(measured.ops.column("start_ns")).as_py() <= result.summary["end_ns"]


@SETTINGS
@given(traces())
def test_flow_level_network_never_beats_analytical(trace: tracesim.Trace) -> None:
    """Sharing links can only slow transfers down: with the same algorithms, every collective
    and message takes at least its α-β time in the flow-level model, so the makespan does too
    (up to the nanosecond each rendezvous rounds to)."""
    h100 = tracesim.load_system("dgx-h100", nodes=1 if trace.ranks <= 8 else None)
    network = h100.network.model_copy(update={"nccl": None, "algorithm": "ring"})
    system = h100.model_copy(update={"network": network})
    analytical = tracesim.simulate(trace, system, compute_model="roofline", network="analytical")
    flow = tracesim.simulate(trace, system, compute_model="roofline", network="flow")
    rendezvous = pc.sum(pc.is_in(trace.ops.column("kind"), pa.array(["collective", "send"]))).as_py() or 0
    assert flow.makespan_ns >= analytical.makespan_ns - rendezvous
