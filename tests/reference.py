"""An independent reference scheduler for replay semantics (DESIGN.md §3), written as plainly
as possible to check the engine against. It handles traces whose op_id order is a valid
schedule order: every op's deps and stream predecessor have smaller op_ids, and the members of
a collective or send/recv pair may be interleaved with anything after their own predecessors.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from tracesim import Trace


def reference_schedule(trace: Trace) -> dict[int, tuple[int, int]]:
    """op_id -> (start_ns, end_ns) in measured mode, every op carrying duration_ns."""
    rows: list[dict[str, Any]] = trace.ops.to_pylist()
    by_id = {r["op_id"]: r for r in rows}
    groups = {
        g["group_id"]: g["ranks"] for g in (trace.groups.to_pylist() if trace.groups is not None else [])
    }

    stream_pred: dict[int, int | None] = {}
    last_in_stream: dict[tuple[int, int], int] = {}
    for r in sorted(rows, key=lambda r: r["op_id"]):
        key = (r["rank"], r["stream"])
        stream_pred[r["op_id"]] = last_in_stream.get(key)
        last_in_stream[key] = r["op_id"]

    rendezvous: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for r in rows:
        if r["kind"] == "collective":
            rendezvous[("c", r["group_id"], r["coll_seq"])].append(r["op_id"])
        elif r["kind"] == "send":
            rendezvous[("p", r["rank"], r["peer"], r["p2p_seq"])].append(r["op_id"])
        elif r["kind"] == "recv":
            rendezvous[("p", r["peer"], r["rank"], r["p2p_seq"])].append(r["op_id"])
    instance_of = {m: key for key, members in rendezvous.items() for m in members}

    ready: dict[int, int] = {}
    times: dict[int, tuple[int, int]] = {}

    def ready_time(op_id: int) -> int | None:
        preds = list(by_id[op_id]["deps"] or [])
        if stream_pred[op_id] is not None:
            preds.append(stream_pred[op_id])
        if any(p not in times for p in preds):
            return None
        return max((times[p][1] for p in preds), default=0)

    # Repeated sweeps in op_id order until nothing changes: simple and obviously correct.
    progress = True
    while progress:
        progress = False
        for op_id in sorted(by_id):
            if op_id in times:
                continue
            t = ready_time(op_id)
            if t is None:
                continue
            ready[op_id] = t
            key = instance_of.get(op_id)
            if key is None:
                times[op_id] = (t, t + by_id[op_id]["duration_ns"])
                progress = True
                continue
            members = rendezvous[key]
            if all(m in ready for m in members):
                last = max(ready[m] for m in members)
                end = last + min(by_id[m]["duration_ns"] for m in members)
                for m in members:
                    times[m] = (ready[m], end)
                progress = True
    missing = set(by_id) - set(times)
    if missing:
        raise AssertionError(f"reference scheduler is stuck on {sorted(missing)[:10]}")
    if groups:
        for key, members in rendezvous.items():
            if key[0] == "c":
                assert len(members) == len(groups[key[1]])
    return times
