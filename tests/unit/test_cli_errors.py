"""The `tracesim` CLI (DESIGN.md §6): one line per error on stderr naming the file, a non-zero
exit code, a traceback only with TRACESIM_DEBUG=1; `validate` and `simulate` on the samples."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.cli import run_cli
from tests.tracedirs import SAMPLE_TRACES, Row, base_groups, base_ops

TraceWriter = Callable[..., Path]


def assert_one_line_error(proc: subprocess.CompletedProcess[str], names: str) -> str:
    assert proc.returncode != 0, f"exit code 0; stdout: {proc.stdout!r}"
    err = proc.stderr
    assert "Traceback" not in err, f"traceback without TRACESIM_DEBUG:\n{err}"
    lines = err.splitlines()
    assert len(lines) == 1, f"stderr is not exactly one line:\n{err}"
    assert lines[0].startswith("tracesim: error:"), err
    assert names in lines[0], f"{names} not named in: {err}"
    return lines[0]


def _bad_dep(rows: list[Row]) -> list[Row]:
    rows[6]["deps"] = [3, 99]  # op_id 7
    return rows


def test_validate_bad_dep(make_trace: TraceWriter) -> None:
    path = make_trace(_bad_dep(base_ops()), groups=base_groups())
    line = assert_one_line_error(run_cli("validate", path), str(path / "ops.parquet"))
    assert "column 'deps'" in line and "op_id 7" in line


def test_validate_missing_trace_json(make_trace: TraceWriter) -> None:
    path = make_trace(base_ops(), groups=base_groups())
    (path / "trace.json").unlink()
    assert_one_line_error(run_cli("validate", path), str(path / "trace.json"))


def test_validate_not_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "nowhere"
    assert_one_line_error(run_cli("validate", path), str(path))


def test_simulate_malformed_parquet(make_trace: TraceWriter, tmp_path: Path) -> None:
    path = make_trace(base_ops(), groups=base_groups())
    (path / "ops.parquet").write_bytes(b"not parquet at all\n" * 20)
    out = tmp_path / "result"
    assert_one_line_error(run_cli("simulate", path, "--out", out, "--quiet"), str(path / "ops.parquet"))
    assert not out.exists(), "a failed simulate left a result directory behind"


def test_simulate_deadlock_is_one_line(make_trace: TraceWriter, tmp_path: Path) -> None:
    coll = {"kind": "collective", "coll": "all_reduce", "coll_seq": 0, "comm_bytes": 1024, "stream": 0}
    ops = [
        {"op_id": 10, "rank": 0, "name": "A", "group_id": 0, **coll},
        {"op_id": 11, "rank": 0, "name": "B", "group_id": 1, **coll},
        {"op_id": 20, "rank": 1, "name": "B", "group_id": 1, **coll},
        {"op_id": 21, "rank": 1, "name": "A", "group_id": 0, **coll},
    ]
    path = make_trace(ops, groups=[{"group_id": 0, "ranks": [0, 1]}, {"group_id": 1, "ranks": [0, 1]}])
    line = assert_one_line_error(run_cli("simulate", path, "--out", tmp_path / "r", "--quiet"), "deadlock")
    assert "op_id 10" in line and "op_id 20" in line


def test_traceback_with_debug(make_trace: TraceWriter) -> None:
    path = make_trace(_bad_dep(base_ops()), groups=base_groups())
    proc = run_cli("validate", path, debug=True)
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr, proc.stderr
    assert "TraceError" in proc.stderr and str(path / "ops.parquet") in proc.stderr


def test_validate_sample_succeeds() -> None:
    proc = run_cli("validate", "traces/dp2_allreduce")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "valid" in proc.stdout


RANK_KEYS = {
    "rank",
    "end_ns",
    "compute_ns",
    "comm_ns",
    "exposed_comm_ns",
    "wait_ns",
    "idle_ns",
    "peak_memory_bytes",
}
SUMMARY_KEYS = {
    "makespan_ns",
    "ranks",
    "iterations",
    "energy_j",
    "energy_breakdown_j",
    "mfu",
    "warnings",
    "system",
    "compute_model",
    "network_model",
}


@pytest.mark.parametrize("sample", ["pp8_gpipe"])
def test_simulate_sample_writes_result(tmp_path: Path, sample: str) -> None:
    out = tmp_path / "result"
    proc = run_cli("simulate", f"traces/{sample}", "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "", "--quiet printed something"
    assert proc.stderr == ""

    timeline = pq.read_table(out / "timeline.parquet")
    columns = set(timeline.column_names)
    assert columns >= {"op_id", "rank", "stream", "start_ns", "end_ns", "ready_ns", "wait_ns"}, columns
    assert any("energy" in c for c in timeline.column_names), timeline.column_names
    ops = pq.read_table(SAMPLE_TRACES / sample / "ops.parquet")
    assert sorted(timeline.column("op_id").to_pylist()) == sorted(ops.column("op_id").to_pylist())

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS, SUMMARY_KEYS - set(summary)
    assert isinstance(summary["makespan_ns"], int) and summary["makespan_ns"] > 0
    meta = json.loads((SAMPLE_TRACES / sample / "trace.json").read_text())
    assert [r["rank"] for r in summary["ranks"]] == list(range(meta["ranks"]))
    for r in summary["ranks"]:
        assert set(r) >= RANK_KEYS, RANK_KEYS - set(r)
        assert isinstance(r["peak_memory_bytes"], dict)
    assert isinstance(summary["iterations"], list)
    for it in summary["iterations"]:
        assert {"iteration", "step_ns"} <= set(it)
    assert {"compute", "memory", "network", "static"} <= set(summary["energy_breakdown_j"])
    assert summary["mfu"] is None or isinstance(summary["mfu"], float)
    assert isinstance(summary["warnings"], list)
    assert isinstance(summary["compute_model"], str) and isinstance(summary["network_model"], str)
    assert summary["system"]
