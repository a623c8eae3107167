"""`tracesim ingest kineto`: a handwritten two-rank fixture (two streams, correlation- and
flow-linked launches, an NCCL all-reduce with metadata, a blocking sync, .gz and ns input) and
the real Kineto traces under ../shared/data (identity replay within the figures of docs/ingest.md)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import tracesim
from benches.identity_kineto import identity
from tests.unit.test_cli_errors import run_cli
from tracesim.ingest import ingest_kineto

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _x(cat: str, name: str, ts: float, dur: float, tid: int, **args: Any) -> dict[str, Any]:
    return {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": tid, "ts": ts, "dur": dur, "args": args}


def _rank_events(rank: int) -> list[dict[str, Any]]:
    meta = {
        "Collective name": "allreduce",
        "In msg nelems": 1024,
        "Out msg nelems": 1024,
        "dtype": "Float",
        "Group size": 2,
        "Process Group Name": "0",
        "Process Group Ranks": "[0, 1]",
    }
    return [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "python"}},
        _x("user_annotation", "ProfilerStep#3", 0, 100, 100),
        _x("cpu_op", "aten::mm", 9, 7, 100),
        _x("python_function", "model.py(12): forward", 1, 98, 100),
        # launched by correlation; the kernel starts before the launch call returns
        _x("cuda_runtime", "cudaLaunchKernel", 10, 5, 100, correlation=1),
        _x("kernel", "sm90_xmma_gemm_bf16", 12, 20, 7, stream=7, correlation=1),
        # launched through flow events only (no correlation args), on a second stream
        _x("cuda_runtime", "cudaLaunchKernel", 20, 4, 100),
        {"ph": "s", "cat": "ac2g", "id": 9, "pid": 1, "tid": 100, "ts": 20, "name": "ac2g"},
        {"ph": "f", "cat": "ac2g", "id": 9, "pid": 1, "tid": 13, "ts": 24, "bp": "e", "name": "ac2g"},
        _x("kernel", "vectorized_elementwise_kernel", 24, 10, 13, stream=13),
        # NCCL all-reduce with metadata on the kernel and on record_param_comms
        _x("cpu_op", "record_param_comms", 40, 10, 100, **meta),
        _x("cuda_runtime", "cudaLaunchKernel", 42, 3, 100, correlation=3),
        _x("kernel", "ncclDevKernel_AllReduce_Sum_f32_RING_LL", 45, 30, 13, stream=13, correlation=3, **meta),
        # blocks until the all-reduce is done
        _x("cuda_runtime", "cudaDeviceSynchronize", 60, 30, 100),
        {"ph": "i", "cat": "cpu_instant_event", "name": "[memory]", "pid": 1, "tid": 100, "ts": 95, "s": "t"},
    ]


def _write(tmp: Path, rank: int, *, gz: bool, ns: bool) -> Path:
    events = _rank_events(rank)
    if ns:
        for e in events:
            for k in ("ts", "dur"):
                if k in e:
                    e[k] = int(e[k] * 1000)
    data = {
        "schemaVersion": 1,
        "distributedInfo": {"backend": "nccl", "rank": rank, "world_size": 2},
        "traceEvents": events,
    }
    if ns:
        data["displayTimeUnit"] = "ns"
    text = json.dumps(data).encode()
    if gz:
        path = tmp / f"rank{rank}.pt.trace.json.gz"
        path.write_bytes(gzip.compress(text))
    else:
        path = tmp / f"rank{rank}.pt.trace.json"
        path.write_bytes(text)
    return path


@pytest.fixture
def two_ranks(tmp_path: Path) -> list[Path]:
    # rank 1 first on the command line: ranks come from distributedInfo, not file order
    return [_write(tmp_path, 1, gz=False, ns=True), _write(tmp_path, 0, gz=True, ns=False)]


def _ops(trace: tracesim.Trace) -> pl.DataFrame:
    df = pl.from_arrow(trace.ops)
    assert isinstance(df, pl.DataFrame)
    return df


def test_synthetic_two_ranks(two_ranks: list[Path]) -> None:
    trace, report = ingest_kineto(two_ranks)
    assert trace.ranks == 2 and report.source_ranks == [0, 1]
    assert sorted(report.time_units) == ["ns", "us"]
    ops = _ops(trace)
    for rank in (0, 1):
        r = ops.filter(pl.col("rank") == rank)
        gpu = r.filter(pl.col("kind") != "host").sort("start_ns")
        assert gpu.get_column("kind").to_list() == ["compute", "compute", "collective"]
        assert gpu.get_column("stream").to_list() == [0, 1, 1]  # streams 7 and 13 → 0, 1
        assert gpu.get_column("iteration").to_list() == [3, 3, 3]
        # times count from the first runtime call or GPU op of all files (10 µs here)
        assert gpu.get_column("start_ns").to_list() == [2_000, 14_000, 35_000]
        assert gpu.get_column("category").to_list() == ["gemm", "elementwise", "communication"]
        host = r.filter(pl.col("kind") == "host")
        assert host.get_column("stream").unique().to_list() == [2]
        assert host.get_column("iteration").null_count() == host.height
        by_id = {row["op_id"]: row for row in r.iter_rows(named=True)}
        # every GPU op depends on the host op of its launch; the first launch is cut where the kernel began
        for g in gpu.iter_rows(named=True):
            (dep,) = g["deps"]
            launch = by_id[dep]
            assert launch["kind"] == "host" and launch["name"] == "cudaLaunchKernel"
            assert launch["start_ns"] + launch["duration_ns"] <= g["start_ns"]
        first = by_id[gpu.row(0, named=True)["deps"][0]]
        assert (first["start_ns"], first["duration_ns"]) == (0, 2_000)
        assert host.filter(pl.col("name") == "cudaLaunchKernel [after launch]").height == 1
        sync = host.filter(pl.col("name") == "cudaDeviceSynchronize").row(0, named=True)
        assert sync["deps"] == [gpu.row(2, named=True)["op_id"]]
        assert sync["duration_ns"] == 15_000  # only the time after the all-reduce ended
        coll = gpu.row(2, named=True)
        assert (coll["coll"], coll["comm_bytes"], coll["coll_seq"], coll["dtype"]) == (
            "all_reduce",
            4096,
            0,
            "fp32",
        )
    assert trace.groups is not None and trace.groups.num_rows == 1
    assert trace.groups.column("ranks").to_pylist() == [[0, 1]]
    assert report.collectives_matched == 2 and not report.collective_problems
    assert report.launch_deps == 6 and report.sync_deps == 2
    assert report.ops_by_kind["collective"] == 2 and report.ops_by_kind["compute"] == 4
    assert report.iterations == [3]
    u = report.unmapped
    assert u["python_function"] == 2 and u["cpu_op"] == 2 and u["metadata event (ph M)"] == 2
    assert u["cpu_op record_param_comms (→ collective metadata)"] == 2
    assert u["user_annotation ProfilerStep (→ iteration column)"] == 2
    assert u["flow event (ac2g)"] == 4 and u["ph i event (cpu_instant_event)"] == 2

    # identity: the replay reproduces the measured schedule exactly
    result = tracesim.simulate(trace, "dgx-h100", compute_model="measured")
    tl = result.timeline.join(ops.select("op_id", "start_ns", "duration_ns"), on="op_id", suffix="_m")
    assert (tl.get_column("start_ns") == tl.get_column("start_ns_m")).all()
    (it,) = result.summary["iterations"]
    assert it["step_ns"] == 75_000 - 12_000


def test_single_rank_keeps_collective_as_communication(two_ranks: list[Path]) -> None:
    trace, report = ingest_kineto([two_ranks[1]])  # rank 0 alone: its peer's file is absent
    ops = _ops(trace)
    nccl = ops.filter(pl.col("name").str.starts_with("ncclDevKernel"))
    assert nccl.height == 1
    row = nccl.row(0, named=True)
    assert (row["kind"], row["category"], row["duration_ns"]) == ("compute", "communication", 30_000)
    assert row["group_id"] is None and trace.groups is None
    assert report.collectives_matched == 0
    assert report.collective_problems == {"collective without its peer ranks (their files absent)": 1}
    assert any("without its peer ranks" in line for line in report.lines())


def test_cli_ingest(two_ranks: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "trace"
    proc = run_cli("ingest", "kineto", *two_ranks, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "collectives matched across ranks: 2" in proc.stdout
    assert "python_function" in proc.stdout and "ops by kind" in proc.stdout
    trace = tracesim.read_trace(out)
    assert trace.ranks == 2 and trace.meta["source_ranks"] == [0, 1]
    proc = run_cli("ingest", "kineto", tmp_path / "missing.json", "--out", tmp_path / "t2")
    assert proc.returncode != 0 and "missing.json" in proc.stderr and "Traceback" not in proc.stderr


def _real(rel: str) -> Path:
    if not DATA.is_dir():
        pytest.skip("../shared/data not present: real traces are outside the repo")
    return DATA / rel


def test_real_nccl_trace_counts() -> None:
    trace, report = ingest_kineto([_real("hta/tests/data/nccl_parser_config/nccl_data.json.gz")])
    ops = _ops(trace)
    assert report.iterations == [4, 5, 6]
    nccl = ops.filter(pl.col("name").str.starts_with("ncclKernel"))
    assert nccl.height == 21  # 15 all-reduce + 6 broadcast, none dropped
    assert (nccl.get_column("category") == "communication").all()
    assert report.collective_problems == {"collective without its peer ranks (their files absent)": 21}
    assert report.ops_by_kind["compute"] == 2700 and report.ops_by_kind["memory"] == 1074
    assert report.unmapped["cpu_op"] > 10_000
    gpu = ops.filter(pl.col("kind") != "host")
    assert gpu.filter(pl.col("deps").list.len() == 0).height == 0


# Measured in docs/ingest.md (median, worst relative step-time error); the tests allow +1 point.
IDENTITY = {
    "hta/tests/data/nccl_parser_config/nccl_data.json.gz": (0.0000, 0.0000),
    "hta/tests/data/trace_diff/control/control.json.gz": (0.0008, 0.0032),
    "hta/tests/data/trace_diff/test/test.json.gz": (0.0137, 0.0181),
}


@pytest.mark.parametrize("rel", sorted(IDENTITY))
def test_identity_real(rel: str) -> None:
    (row,) = identity(_real(rel))
    median, worst = IDENTITY[rel]
    assert row.steps == 6 or row.steps == 3
    assert row.median_err <= median + 0.01
    assert row.worst_err <= worst + 0.01
