"""The shipped optical-circuit-switching sweep (examples/ocs_sweep) runs and keeps the relations
its README section states."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from tests.examples import load_example


def test_ocs_sweep(tmp_path: Path) -> None:
    run = load_example("ocs_sweep")
    table = run.run(tmp_path / "sweep")
    assert table.height == 18
    step = {(r["policy"], r["reconfig_ns"]): r["step_ms"] for r in table.iter_rows(named=True)}
    delays = sorted({d for _, d in step})
    static = [step[("static", d)] for d in delays]
    assert len(set(static)) == 1  # no reconfiguration: the delay cannot matter
    for policy in ("per_collective", "per_step"):
        times = [step[(policy, d)] for d in delays]
        assert times == sorted(times)
        # Both ports towards the ring neighbour beat one each way while the delay is small...
        assert times[0] < static[0]
        # ...and a 30 ms delay per gradient all-reduce costs far more than it saves.
        assert times[-1] > 3 * static[0]
    # A static ring per rail gives each GPU what its NDR rail gives: the same step.
    base_ms, _ = run.baseline_ms()
    assert abs(base_ms - static[0]) < 0.01
    assert table.filter(pl.col("energy_j") <= 0).height == 0
