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
from tracesim.exceptions import TraceError
from tracesim.ingest import ingest_kineto
from tracesim.ingest.kineto import expand_kineto_paths

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


def test_directory_of_rank_files(two_ranks: list[Path], tmp_path: Path) -> None:
    """A directory stands for its .json/.json.gz files (as tensorboard_trace_handler writes them);
    ranks still come from distributedInfo, and file order (natural: 2 before 10) only for the
    files without it."""
    (tmp_path / "notes.txt").write_text("not a trace")
    by_dir, rep = ingest_kineto([tmp_path])
    by_files, _ = ingest_kineto(two_ranks)
    assert by_dir.ops.equals(by_files.ops) and rep.source_ranks == [0, 1]
    assert expand_kineto_paths([tmp_path]) == [
        tmp_path / "rank0.pt.trace.json.gz",
        tmp_path / "rank1.pt.trace.json",
    ]
    names = ["w10.json", "w2.json", "w1.json.gz"]
    plain = tmp_path / "plain"
    plain.mkdir()
    for n in names:
        (plain / n).write_text("{}")
    assert [q.name for q in expand_kineto_paths([plain])] == ["w1.json.gz", "w2.json", "w10.json"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TraceError, match=r"empty: directory without \.json or \.json\.gz files"):
        ingest_kineto([empty])
    out = tmp_path / "trace"
    proc = run_cli("ingest", "kineto", tmp_path, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert tracesim.read_trace(out).ranks == 2


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
    "hta/tests/data/trace_diff/test/test.json.gz": (0.0119, 0.0131),
    # TorchRec DLRM with CUDA graphs: the waits inside graph launches carry it (was 25.6%)
    "hta/tests/data/negative_queue_length_values_check/rank0.json.gz": (0.0094, 0.0170),
}


@pytest.mark.parametrize("rel", sorted(IDENTITY))
def test_identity_real(rel: str) -> None:
    (row,) = identity(_real(rel))
    median, worst = IDENTITY[rel]
    assert row.steps in (3, 5, 6)
    assert row.median_err <= median + 0.01
    assert row.worst_err <= worst + 0.01


def test_graph_node_waits(tmp_path: Path) -> None:
    """A CUDA graph's nodes that start later than their launch, stream and earlier nodes allow
    (Kineto does not record the graph's edges or event waits) keep their measured gaps; kernels
    of ordinary launches close up to their predecessor."""
    events = [
        _x("cuda_runtime", "cudaGraphLaunch", 0, 5, 100, correlation=1),
        _x("kernel", "graph_node_a", 10, 10, 7, stream=7, correlation=1),  # 5 µs after the launch
        _x("kernel", "graph_node_b", 50, 10, 7, stream=7, correlation=1),  # 30 µs idle before it
        _x("kernel", "graph_node_c", 200, 10, 13, stream=13, correlation=1),  # first on its stream
        _x("cuda_runtime", "cudaLaunchKernel", 6, 4, 100, correlation=2),
        _x("kernel", "plain", 90, 10, 7, stream=7, correlation=2),  # 30 µs idle: not kept
    ]
    path = tmp_path / "graph.json"
    path.write_text(json.dumps({"traceEvents": events}))
    trace, report = ingest_kineto([path])
    assert report.graph_node_waits == 3
    assert "waits inside CUDA/HIP graphs kept as measured: 3" in report.lines()
    ops = _ops(trace)
    waits = ops.filter(pl.col("name") == "graph node wait").sort("start_ns")
    assert waits["duration_ns"].to_list() == [5_000, 30_000, 140_000]
    res = tracesim.simulate(trace, "dgx-h100", compute_model="measured")
    start = dict(
        res.timeline.join(ops.select("op_id", "name"), on="op_id").select("name", "start_ns").iter_rows()
    )
    first = int(ops["start_ns"].min())
    assert {k: start[k] - first for k in ("graph_node_a", "graph_node_b", "graph_node_c")} == {
        "graph_node_a": 10_000,
        "graph_node_b": 50_000,
        "graph_node_c": 200_000,
    }
    assert start["plain"] - first == 60_000  # right after graph_node_b


# --- FLOPs / bytes / dtype from recorded shapes ------------------------------------------------

M, K, N = 256, 512, 128


def _costs_events() -> list[dict[str, Any]]:
    bf16 = "c10::BFloat16"
    return [
        # addmm(bias [N], a [M, K], b [K, N]) → one GEMM kernel (+ nothing else)
        _x(
            "cpu_op",
            "aten::linear",
            0,
            40,
            100,
            **{"Input Dims": [[M, K], [N, K], [N]], "Input type": [bf16] * 3},
        ),
        _x(
            "cpu_op",
            "aten::addmm",
            5,
            30,
            100,
            **{
                "Input Dims": [[N], [M, K], [K, N], [], []],
                "Input type": [bf16, bf16, bf16, "Scalar", "Scalar"],
            },
        ),
        _x("cuda_runtime", "cudaLaunchKernel", 10, 5, 100, correlation=1),
        _x("kernel", "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n", 16, 20, 7, stream=7, correlation=1),
        # elementwise add of two fp32 [M, N] tensors
        _x(
            "cpu_op",
            "aten::add",
            50,
            10,
            100,
            **{"Input Dims": [[M, N], [M, N], []], "Input type": ["float", "float", "Scalar"]},
        ),
        _x("cuda_runtime", "cudaLaunchKernel", 52, 4, 100, correlation=2),
        _x("kernel", "void at::native::vectorized_elementwise_kernel<4>", 57, 5, 7, stream=7, correlation=2),
        # one CPU op, two kernels, neither GEMM-like: split evenly
        _x(
            "cpu_op",
            "aten::native_layer_norm",
            70,
            20,
            100,
            **{"Input Dims": [[M, N], [N], [N], []], "Input type": ["c10::Half"] * 3 + ["Double"]},
        ),
        _x("cuda_runtime", "cudaLaunchKernel", 72, 4, 100, correlation=3),
        _x("kernel", "layer_norm_stats_kernel", 77, 3, 7, stream=7, correlation=3),
        _x("cuda_runtime", "cudaLaunchKernel", 80, 4, 100, correlation=4),
        _x("kernel", "layer_norm_apply_kernel", 85, 3, 7, stream=7, correlation=4),
        # mm → GEMM kernel + split-K reduction: the FLOPs go to the GEMM kernel
        _x(
            "cpu_op",
            "aten::mm",
            100,
            20,
            100,
            **{"Input Dims": [[M, K], [K, N]], "Input type": ["float", "float"]},
        ),
        _x("cuda_runtime", "cudaLaunchKernel", 102, 4, 100, correlation=5),
        _x("kernel", "ampere_sgemm_128x64_tn", 107, 10, 7, stream=7, correlation=5),
        _x("cuda_runtime", "cudaLaunchKernel", 110, 4, 100, correlation=6),
        _x("kernel", "splitKreduce_kernel", 118, 2, 7, stream=7, correlation=6),
        # stride-2 convolution, with Concrete Inputs (newer PyTorch)
        _x(
            "cpu_op",
            "aten::convolution",
            130,
            20,
            100,
            **{
                "Input Dims": [[8, 64, 56, 56], [128, 64, 3, 3], [], [], [], [], [], [], []],
                "Input type": [
                    "c10::Half",
                    "c10::Half",
                    "",
                    "ScalarList",
                    "ScalarList",
                    "ScalarList",
                    "Scalar",
                    "ScalarList",
                    "Scalar",
                ],
                "Concrete Inputs": ["", "", "", "[2, 2]", "[1, 1]", "[1, 1]", "False", "[0, 0]", "1"],
            },
        ),
        _x("cuda_runtime", "cudaLaunchKernel", 132, 4, 100, correlation=7),
        _x("kernel", "sm80_xmma_fprop_implicit_gemm_f16f16", 137, 10, 7, stream=7, correlation=7),
        # a kernel launched outside any recorded CPU op
        _x("cuda_runtime", "cudaLaunchKernel", 160, 4, 100, correlation=8),
        _x("kernel", "some_kernel", 165, 2, 7, stream=7, correlation=8),
    ]


def test_costs_from_recorded_shapes(tmp_path: Path) -> None:
    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"traceEvents": _costs_events()}))
    trace, report = ingest_kineto([path])
    ops = _ops(trace).filter(pl.col("kind") == "compute")
    k = {r["name"]: r for r in ops.iter_rows(named=True)}

    gemm = k["sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n"]
    assert gemm["flops"] == 2 * M * N * K
    assert (gemm["gemm_m"], gemm["gemm_n"], gemm["gemm_k"]) == (M, N, K)
    assert gemm["dtype"] == "bf16" and gemm["category"] == "gemm"
    assert gemm["bytes_read"] == (N + M * K + K * N) * 2 and gemm["bytes_written"] == M * N * 2

    add = k["void at::native::vectorized_elementwise_kernel<4>"]
    assert (add["category"], add["dtype"], add["flops"]) == ("elementwise", "fp32", M * N)
    assert (add["bytes_read"], add["bytes_written"]) == (2 * M * N * 4, M * N * 4)

    # two kernels of one layer norm: half the cost each
    read = (M * N + 2 * N) * 2
    for name in ("layer_norm_stats_kernel", "layer_norm_apply_kernel"):
        row = k[name]
        assert (row["category"], row["dtype"], row["flops"]) == ("norm", "fp16", M * N / 2)
        assert (row["bytes_read"], row["bytes_written"]) == (read // 2, M * N * 2 // 2)

    mm = k["ampere_sgemm_128x64_tn"]
    assert (mm["flops"], mm["dtype"], mm["gemm_m"]) == (2 * M * N * K, "fp32", M)
    red = k["splitKreduce_kernel"]
    assert red["flops"] is None and red["bytes_read"] is None

    conv = k["sm80_xmma_fprop_implicit_gemm_f16f16"]
    p = q = 28  # (56 + 2·1 − 3) // 2 + 1
    assert conv["flops"] == 2 * 8 * 128 * 64 * 9 * p * q
    assert (conv["gemm_m"], conv["gemm_n"], conv["gemm_k"]) == (8 * p * q, 128, 64 * 9)
    assert conv["bytes_written"] == 8 * 128 * p * q * 2

    assert k["some_kernel"]["flops"] is None
    assert report.costed == 6 and report.split_kernels == 2
    assert report.uncosted == {
        "extra kernel of a GEMM/conv/attention op (cost on its main kernel)": 1,
        "no enclosing CPU op with recorded shapes": 1,
    }
    assert any("GPU ops with FLOPs/bytes" in line for line in report.lines())

    # the compute models now have something to work with; retime on its own system is the identity
    all_ops = _ops(trace)
    roof = tracesim.op_times(trace, "dgx-h100", compute_model="roofline").to_pylist()
    ret = tracesim.op_times(trace, "dgx-h100", compute_model="retime", source_system="dgx-h100").to_pylist()
    for i, row in enumerate(all_ops.iter_rows(named=True)):
        if row["flops"] is not None:
            assert roof[i] is not None and roof[i] > 0
            assert ret[i] == row["duration_ns"]


# Share of GPU time (kernels, copies, NCCL) in ops with costs, measured in docs/ingest.md; the
# test allows a few points less.
COVERAGE = {
    "kineto/tb_plugin/samples/resnet50_num_workers_0/worker0.1623143089861.pt.trace.json.gz": 0.92,
    "hta/tests/data/trace_diff/control/control.json.gz": 0.28,
}


@pytest.mark.parametrize("rel", sorted(COVERAGE))
def test_costs_real_coverage(rel: str) -> None:
    trace, report = ingest_kineto([_real(rel)])
    gpu = _ops(trace).filter(pl.col("kind") != "host")
    costed = gpu.filter(pl.col("flops").is_not_null() | pl.col("bytes_written").is_not_null())
    share = costed.get_column("duration_ns").sum() / gpu.get_column("duration_ns").sum()
    assert share > COVERAGE[rel]
    assert report.costed == costed.height
    assert report.costed + sum(report.uncosted.values()) == gpu.height
