"""`tracesim ingest kineto` on the small real Kineto traces committed under tests/fixtures/kineto
(see its README.md for origin and licence): what the ingest makes of them is checked against the
JSON itself, read here with the json module, and the measured replay reproduces the GPU span."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import tracesim
from benches.identity_kineto import identity
from tests.cli import run_cli
from tracesim.ingest import ingest_kineto
from tracesim.ingest.kineto import IngestReport

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kineto"
ALEXNET = FIXTURES / "hta_alexnet_trace.json.gz"
MI250 = FIXTURES / "hta_mi250_minitoy_train_ROCm6_2_kineto.json.gz"
TRACES = [ALEXNET, MI250]

KERNEL_CATS = {"kernel"}
MEMORY_CATS = {"gpu_memcpy", "gpu_memset"}
RUNTIME_CATS = {"cuda_runtime", "cuda_driver"}
STEP = re.compile(r"^ProfilerStep#(\d+)$")


def _events(path: Path) -> list[dict[str, Any]]:
    # floats as Decimal: times are compared exactly, as the ingester reads them
    data = json.loads(gzip.decompress(path.read_bytes()), parse_float=Decimal)
    events = data["traceEvents"]
    assert isinstance(events, list) and all(isinstance(e, dict) for e in events)
    return events


def _ns(us: Any) -> int:
    return int(Decimal(us) * 1000)


def _x(events: list[dict[str, Any]], cats: set[str]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("ph") == "X" and e.get("cat") in cats]


def _ingest(path: Path) -> tuple[tracesim.Trace, IngestReport, pl.DataFrame]:
    trace, report = ingest_kineto([path])
    ops = pl.from_arrow(trace.ops)
    assert isinstance(ops, pl.DataFrame)
    return trace, report, ops


def test_fixtures_are_small_and_gzipped() -> None:
    for path in TRACES:
        raw = path.read_bytes()
        assert raw[:2] == b"\x1f\x8b" and len(raw) < 200_000, path


@pytest.mark.parametrize("path", TRACES, ids=lambda p: p.name)
def test_gpu_ops_are_the_json_gpu_events(path: Path) -> None:
    events = _events(path)
    kernels, memory = _x(events, KERNEL_CATS), _x(events, MEMORY_CATS)
    runtime = _x(events, RUNTIME_CATS)
    trace, report, ops = _ingest(path)
    assert trace.ranks == 1 and report.time_units == ["us"]
    gpu = ops.filter(pl.col("kind") != "host")
    assert gpu.height == len(kernels) + len(memory)
    assert report.ops_by_kind["compute"] == len(kernels) and report.ops_by_kind["memory"] == len(memory)
    assert Counter(gpu.get_column("kind").to_list()) == {"compute": len(kernels), "memory": len(memory)}
    assert (gpu.filter(pl.col("kind") == "memory").get_column("category") == "copy").all()
    # names, starts (from the first GPU op or runtime call) and durations, exactly
    base = min(_ns(e["ts"]) for e in kernels + memory + runtime)
    want = Counter((e["name"], _ns(e["ts"]) - base, _ns(e["dur"])) for e in kernels + memory)
    got = Counter(gpu.select("name", "start_ns", "duration_ns").iter_rows())
    assert got == want
    # the GPU ops are on as many streams as the JSON has (pid, tid) of GPU events
    lanes = {(e["pid"], e["args"].get("stream", e["tid"])) for e in kernels + memory}
    assert gpu.get_column("stream").n_unique() == len(lanes)
    # host ops: one host stream per CPU thread that made runtime calls, after the GPU streams
    host = ops.filter(pl.col("kind") == "host")
    threads = {(e["pid"], e["tid"]) for e in runtime}
    assert host.get_column("stream").n_unique() == len(threads)
    assert host.get_column("stream").min() == len(lanes)


@pytest.mark.parametrize("path", TRACES, ids=lambda p: p.name)
def test_every_event_is_an_op_or_counted(path: Path) -> None:
    events = _events(path)
    _, report, _ = _ingest(path)
    gpu = len(_x(events, KERNEL_CATS | MEMORY_CATS))
    runtime = len(_x(events, RUNTIME_CATS))
    assert gpu + runtime + sum(report.unmapped.values()) == len(events)
    u = report.unmapped
    assert u["metadata event (ph M)"] == sum(e.get("ph") == "M" for e in events)
    assert u["cpu_op"] == len(_x(events, {"cpu_op"}))
    flows = Counter(e["cat"] for e in events if e.get("ph") in ("s", "f", "t"))
    assert {k: v for k, v in u.items() if k.startswith("flow event")} == {
        f"flow event ({c})": n for c, n in flows.items()
    }


@pytest.mark.parametrize("path", TRACES, ids=lambda p: p.name)
def test_launch_deps(path: Path) -> None:
    events = _events(path)
    runtime = _x(events, RUNTIME_CATS)
    launch_of = {e["args"]["correlation"]: e for e in runtime if "correlation" in e.get("args", {})}
    gpu_events = _x(events, KERNEL_CATS | MEMORY_CATS)
    launched = [e for e in gpu_events if e.get("args", {}).get("correlation") in launch_of]
    _, report, ops = _ingest(path)
    assert report.launch_deps == len(launched)
    assert report.orphan_gpu_ops == len(gpu_events) - len(launched) == 0
    by_id = {r["op_id"]: r for r in ops.iter_rows(named=True)}
    names = {e["name"] for e in runtime}
    for g in ops.filter(pl.col("kind") != "host").iter_rows(named=True):
        hosts = [by_id[d] for d in g["deps"] if by_id[d]["kind"] == "host"]
        # the launching call (cut where the GPU op began: "... [after launch]" is the rest)
        assert any(h["name"] in names and h["start_ns"] + h["duration_ns"] <= g["start_ns"] for h in hosts), g


def test_iterations_from_profiler_steps() -> None:
    events = _events(MI250)
    steps = [
        (_ns(e["ts"]), _ns(e["ts"]) + _ns(e["dur"]), int(m.group(1)))
        for e in _x(events, {"user_annotation"})
        if (m := STEP.match(e["name"]))
    ]
    assert sorted(n for _, _, n in steps) == [1, 2]
    launch_ts = {
        e["args"]["correlation"]: _ns(e["ts"]) for e in _x(events, RUNTIME_CATS) if "correlation" in e["args"]
    }
    gpu_events = _x(events, KERNEL_CATS | MEMORY_CATS)
    base = min([_ns(e["ts"]) for e in gpu_events] + list(launch_ts.values()))
    want: Counter[tuple[int, int | None]] = Counter()
    for e in gpu_events:
        t = launch_ts[e["args"]["correlation"]]
        want[(_ns(e["ts"]) - base, next((n for s, end, n in steps if s <= t < end), None))] += 1
    _, report, ops = _ingest(MI250)
    assert report.iterations == [1, 2]
    gpu = ops.filter(pl.col("kind") != "host")
    assert Counter(gpu.select("start_ns", "iteration").iter_rows()) == want
    assert set(gpu.get_column("iteration").to_list()) == {1}  # ProfilerStep#2 launches nothing
    assert (
        ops.filter(pl.col("kind") == "host").get_column("iteration").null_count() == ops.height - gpu.height
    )
    assert report.unmapped["user_annotation ProfilerStep (→ iteration column)"] == 2
    assert report.unmapped["gpu_user_annotation"] == 2


def test_no_profiler_steps() -> None:
    events = _events(ALEXNET)
    assert not any(STEP.match(str(e.get("name", ""))) for e in events)
    _, report, ops = _ingest(ALEXNET)
    assert report.iterations == []
    assert "iterations: 0 (none annotated)" in report.lines()
    assert ops.get_column("iteration").null_count() == ops.height


def test_blocking_calls_wait_for_the_gpu() -> None:
    _, report, ops = _ingest(ALEXNET)
    # cudaMemcpy / *Synchronize calls that ended after some GPU op depend on it
    assert report.sync_deps == 17
    by_id = {r["op_id"]: r for r in ops.iter_rows(named=True)}
    syncs = [
        r
        for r in ops.filter(pl.col("kind") == "host").iter_rows(named=True)
        if any(by_id[d]["kind"] != "host" for d in r["deps"])
    ]
    assert len(syncs) == 17
    assert all("Synchronize" in r["name"] or r["name"].startswith("cudaMemcpy") for r in syncs)


@pytest.mark.parametrize("path", TRACES, ids=lambda p: p.name)
def test_identity_replay(path: Path) -> None:
    trace, _, ops = _ingest(path)
    gpu = ops.filter(pl.col("kind") != "host")
    starts: list[int] = gpu.get_column("start_ns").to_list()
    ends = [s + d for s, d in zip(starts, gpu.get_column("duration_ns").to_list(), strict=True)]
    measured = max(ends) - min(starts)
    result = tracesim.simulate(trace, "dgx-h100", compute_model="measured")
    tl = result.timeline.join(gpu.select("op_id"), on="op_id")
    assert tl.height == gpu.height
    sim_starts: list[int] = tl.get_column("start_ns").to_list()
    sim_ends: list[int] = tl.get_column("end_ns").to_list()
    simulated = max(sim_ends) - min(sim_starts)
    assert abs(simulated - measured) <= 0.03 * measured, (simulated, measured)
    # the same, per ProfilerStep, as benches/identity_kineto.py measures it
    for row in identity(path):
        assert row.worst_err <= 0.03, row


def test_cli_ingest_fixture(tmp_path: Path) -> None:
    out = tmp_path / "trace"
    proc = run_cli("ingest", "kineto", MI250, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "ops by kind: compute 14" in proc.stdout and "iterations: 2 (ProfilerStep#1..#2)" in proc.stdout
    trace = tracesim.read_trace(out)
    assert trace.ranks == 1 and trace.num_ops == ingest_kineto([MI250])[0].num_ops
