"""Hypothesis strategies for random valid traces whose op_id order is a valid schedule."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from tracesim import Trace

COLLS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast", "reduce", "barrier")


@st.composite
def traces(draw: st.DrawFn, max_ranks: int = 4, max_steps: int = 24) -> Trace:
    ranks = draw(st.integers(1, max_ranks))
    streams = draw(st.integers(1, 3))
    groups: list[list[int]] = [list(range(ranks))]
    if ranks >= 2:
        for _ in range(draw(st.integers(0, 2))):
            members = draw(st.lists(st.integers(0, ranks - 1), min_size=2, max_size=ranks, unique=True))
            groups.append(sorted(members))
    coll_seq = [0] * len(groups)
    p2p_seq: dict[tuple[int, int], int] = {}
    ops: list[dict[str, Any]] = []
    durations = st.integers(0, 5_000)

    def add(before: int, **fields: Any) -> None:
        """Adds an op whose deps are among the first `before` ops: never a fellow participant."""
        deps = draw(st.lists(st.integers(0, before - 1), max_size=2, unique=True)) if before else []
        row = {
            "op_id": len(ops),
            "stream": draw(st.integers(0, streams - 1)),
            "name": "op",
            "duration_ns": draw(durations),
            "deps": deps,
            "iteration": 0,
            **fields,
        }
        ops.append(row)

    for _ in range(draw(st.integers(1, max_steps))):
        what = draw(st.sampled_from(["compute", "compute", "host", "collective", "p2p"]))
        before = len(ops)
        if what in ("compute", "host"):
            add(
                before,
                rank=draw(st.integers(0, ranks - 1)),
                kind=what,
                flops=float(draw(st.integers(0, 10**9))),
            )
        elif what == "collective":
            g = draw(st.integers(0, len(groups) - 1))
            coll = draw(st.sampled_from(COLLS))
            size = draw(st.integers(0, 1 << 24))
            for r in groups[g]:
                add(
                    before,
                    rank=r,
                    kind="collective",
                    coll=coll,
                    group_id=g,
                    coll_seq=coll_seq[g],
                    comm_bytes=size,
                )
            coll_seq[g] += 1
        elif ranks >= 2:
            src, dst = draw(st.lists(st.integers(0, ranks - 1), min_size=2, max_size=2, unique=True))
            s = p2p_seq.get((src, dst), 0)
            p2p_seq[(src, dst)] = s + 1
            size = draw(st.integers(0, 1 << 24))
            add(before, rank=src, kind="send", peer=dst, p2p_seq=s, comm_bytes=size)
            add(before, rank=dst, kind="recv", peer=src, p2p_seq=s, comm_bytes=size)
    if not ops:
        add(0, rank=0, kind="compute")
    keys = sorted({k for r in ops for k in r})
    table = {k: [r.get(k) for r in ops] for k in keys}
    return Trace.from_tables(
        table,
        ranks=ranks,
        groups={"group_id": list(range(len(groups))), "ranks": groups},
    )
