"""`tracesim ingest pytorch-et ET... --kineto KINETO...`: a handwritten two-rank pair (ET schema
1.1 on rank 0 and 1.0.1 on rank 1, Kineto with `Record function id`) whose data flow gives a
cross-stream dep, a dep implied by stream order and one the measured times contradict; bad
input (rank and count mismatches, traces of different runs, malformed files); and the one real
ET + Kineto pair of the same run under ../shared/data (HTA's simple_add), with its identity
replay."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import tracesim
from benches.identity_kineto import step_errors
from tests.cli import run_cli
from tests.unit.test_cli_errors import assert_one_line_error
from tracesim.exceptions import TraceError
from tracesim.ingest import ingest_kineto, ingest_pytorch_et_kineto

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
BF16 = "c10::BFloat16"

# Tensor 6-tuples [tensor id, storage id, offset, numel, elem bytes, device]; views share storage.
A = [20, 21, 0, 64 * 128, 2, "cuda:0"]
B = [22, 23, 0, 128 * 256, 2, "cuda:0"]
C = [24, 25, 0, 64 * 256, 2, "cuda:0"]
MM_OUT = [30, 31, 0, 64 * 256, 2, "cuda:0"]
MM_OUT_VIEW = [34, 31, 0, 64 * 256, 2, "cuda:0"]  # another tensor id, same storage
ADD_OUT = [32, 33, 0, 64 * 256, 2, "cuda:0"]
MUL_OUT = [37, 38, 0, 64 * 256, 2, "cuda:0"]


def _x(cat: str, name: str, ts: float, dur: float, tid: int, **args: Any) -> dict[str, Any]:
    return {"ph": "X", "cat": cat, "name": name, "pid": 7, "tid": tid, "ts": ts, "dur": dur, "args": args}


def _op(name: str, ts: float, dur: float, ext: int, rf: int) -> dict[str, Any]:
    return _x("cpu_op", name, ts, dur, 100, **{"External id": ext, "Record function id": rf})


def _launch(ts: float, dur: float, corr: int) -> dict[str, Any]:
    return _x("cuda_runtime", "cudaLaunchKernel", ts, dur, 100, correlation=corr)


def _kernel(name: str, ts: float, dur: float, stream: int, corr: int, **meta: Any) -> dict[str, Any]:
    return _x("kernel", name, ts, dur, stream, stream=stream, correlation=corr, **meta)


COMM_META = {
    "Collective name": "allreduce",
    "In msg nelems": 64 * 256,
    "Out msg nelems": 64 * 256,
    "dtype": "BFloat16",
    "Group size": 2,
    "Process Group Name": "0",
    "Process Group Ranks": "[0, 1]",
}


def kineto_events() -> list[dict[str, Any]]:
    """One rank's Kineto events (µs). Streams 7, 13 and 20; the comments give the data flow."""
    return [
        _x("user_annotation", "ProfilerStep#1", 0, 200, 100, **{"External id": 1, "Record function id": 1}),
        _op("aten::empty", 3, 1, 7, 10),
        # mm: GEMM on stream 7, 12..62, writes storage 31
        _op("aten::mm", 5, 10, 2, 11),
        _launch(8, 4, 101),
        _kernel("sm80_xmma_gemm_bf16bf16_bf16f32", 12, 50, 7, 101),
        # add reads 31 on stream 13: waits for the GEMM (cross-stream data dep), 62..70, writes 33
        _op("aten::add", 20, 10, 3, 12),
        _launch(22, 4, 102),
        _kernel("vectorized_elementwise_kernel<add>", 62, 8, 13, 102),
        # relu reads a view of 31 on stream 7: after the GEMM by stream order, 62..66
        _op("aten::relu", 30, 8, 4, 13),
        _launch(32, 3, 103),
        _kernel("vectorized_elementwise_kernel<relu>", 62, 4, 7, 103),
        # mul reads 33 but its kernel started (66) before add's ended (70): contradicted
        _op("aten::mul", 40, 8, 5, 15),
        _launch(42, 3, 104),
        _kernel("vectorized_elementwise_kernel<mul>", 66, 3, 7, 104),
        # all-reduce of 33 on stream 20, 85..115: after add (cross-stream data dep)
        _x(
            "cpu_op",
            "record_param_comms",
            80,
            10,
            100,
            **{"External id": 6, "Record function id": 16, **COMM_META},
        ),
        _launch(82, 3, 105),
        _kernel("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", 85, 30, 20, 105, **COMM_META),
        # a CPU op the ET does not have
        _op("aten::detach", 100, 1, 8, 0),
        _x("cuda_runtime", "cudaDeviceSynchronize", 120, 5, 100),
    ]


def et_nodes(schema: str) -> dict[str, Any]:
    """One rank's ET: schema "1.1" (inputs/outputs objects, attrs) or "1.0.1" (top-level fields)."""

    def node(
        nid: int, name: str, parent: int, rf: int, inputs: list[Any], shapes: list[Any], types: list[str],
        outputs: list[Any],
    ) -> dict[str, Any]:  # fmt: skip
        if schema == "1.1":
            return {
                "id": nid,
                "name": name,
                "ctrl_deps": parent,
                "inputs": {"values": inputs, "shapes": shapes, "types": types},
                "outputs": {"values": outputs, "shapes": [], "types": []},
                "attrs": [
                    {"name": "rf_id", "type": "uint64", "value": rf},
                    {"name": "tid", "type": "uint64", "value": 1},
                ],
            }
        return {
            "id": nid,
            "name": name,
            "parent": parent,
            "rf_id": rf,
            "tid": 1,
            "inputs": inputs,
            "input_shapes": shapes,
            "input_types": types,
            "outputs": outputs,
        }

    t = f"Tensor({BF16})"
    nodes = [
        node(1, "[pytorch|profiler|execution_trace|process]", 1, 0, [], [], [], []),
        node(2, "[pytorch|profiler|execution_trace|thread]", 1, 0, [], [], [], []),
        node(3, "ProfilerStep#1", 2, 1, [], [], [], []),
        node(4, "aten::empty", 3, 10, [[64, 256], 15], [[[], []], []], ["GenericList[Int,Int]", "Int"], [C]),
        node(5, "aten::mm", 3, 11, [A, B], [[64, 128], [128, 256]], [t, t], [MM_OUT]),
        node(6, "aten::add", 3, 12, [MM_OUT, C, 1], [[64, 256], [64, 256], []], [t, t, "Int"], [ADD_OUT]),
        node(7, "aten::relu", 3, 13, [MM_OUT_VIEW], [[64, 256]], [t], [[35, 36, 0, 16384, 2, "cuda:0"]]),
        node(8, "aten::mul", 3, 15, [ADD_OUT, 2.0], [[64, 256], []], [t, "Double"], [MUL_OUT]),
        node(9, "record_param_comms", 3, 16, [ADD_OUT], [[64, 256]], [t], [ADD_OUT]),
        node(10, "aten::copy_", 3, 99, [ADD_OUT, C], [[64, 256], [64, 256]], [t, t], [ADD_OUT]),
    ]  # fmt: skip
    return {"schema": "1.1.0-chakra.0.0.4" if schema == "1.1" else "1.0.1", "pid": 7, "nodes": nodes}


def write_pair(
    tmp: Path, rank: int, *, schema: str = "1.1", et_name: str | None = None, kineto_rank: int | None = None
) -> tuple[Path, Path]:
    """Writes rank's ET (gzipped) and Kineto file; returns (et, kineto)."""
    et = tmp / (et_name or f"run_et.{rank}.json.gz")
    et.write_bytes(gzip.compress(json.dumps(et_nodes(schema)).encode()))
    kin = tmp / f"rank{rank}.pt.trace.json"
    dist = {"backend": "nccl", "rank": rank if kineto_rank is None else kineto_rank, "world_size": 2}
    kin.write_text(json.dumps({"distributedInfo": dist, "traceEvents": kineto_events()}))
    return et, kin


def _ops(trace: tracesim.Trace) -> pl.DataFrame:
    df = pl.from_arrow(trace.ops)
    assert isinstance(df, pl.DataFrame)
    return df


@pytest.fixture
def pair(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    et0, k0 = write_pair(tmp_path, 0, schema="1.1")
    et1, k1 = write_pair(tmp_path, 1, schema="1.0.1")
    # Kineto files in the other order: pairing is by rank, not by position.
    return [et0, et1], [k1, k0]


def test_synthetic_pair(pair: tuple[list[Path], list[Path]]) -> None:
    ets, kins = pair
    trace, rep = ingest_pytorch_et_kineto(ets, kins)
    assert trace.ranks == 2 and rep.kineto.source_ranks == [0, 1]
    assert [Path(p).name for p in rep.et_files] == ["run_et.0.json.gz", "run_et.1.json.gz"]
    assert rep.keys == ["Record function id"] * 2
    # per rank: 8 ET operators matched, 2 roots and 1 copy_ absent from Kineto not
    assert rep.et_nodes == 20
    assert rep.et_matched == {"aten operator": 10, "ProfilerStep": 2, "communication operator": 2}
    assert rep.et_unmatched == {
        "ET process/thread root (not an operator)": 4,
        "aten operator (rf_id not in the Kineto trace)": 2,
    }
    assert rep.kineto_unmatched == {"cpu_op aten operator": 2}  # aten::detach
    assert rep.gpu_with_et == 10 and not rep.gpu_without_et
    assert (rep.data_deps, rep.data_deps_same_stream, rep.data_deps_contradicted) == (4, 2, 2)
    assert rep.shapes_from_et == 12  # per rank the 6 matched cpu_ops (record_param_comms too)
    assert rep.kineto.collectives_matched == 2
    # The data dep explains add's wait for the GEMM: no cross-stream wait is inferred from timing.
    assert rep.kineto.inferred_stream_deps == 0
    _, alone = ingest_kineto(kins)
    assert alone.inferred_stream_deps == 2

    ops = _ops(trace)
    for rank in (0, 1):
        r = ops.filter(pl.col("rank") == rank)
        by_name = {row["name"]: row for row in r.iter_rows(named=True)}
        gemm = by_name["sm80_xmma_gemm_bf16bf16_bf16f32"]
        add = by_name["vectorized_elementwise_kernel<add>"]
        relu = by_name["vectorized_elementwise_kernel<relu>"]
        mul = by_name["vectorized_elementwise_kernel<mul>"]
        nccl = by_name["ncclDevKernel_AllReduce_Sum_bf16_RING_LL"]
        assert gemm["op_id"] in add["deps"]  # cross stream, through the data flow
        assert gemm["op_id"] not in relu["deps"]  # same stream: stream order suffices
        assert add["op_id"] not in mul["deps"]  # contradicted by the measured times
        assert add["op_id"] in nccl["deps"] and nccl["kind"] == "collective"
        # shapes and dtypes from the ET (the Kineto file records none)
        assert gemm["flops"] == 2.0 * 64 * 256 * 128 and gemm["dtype"] == "bf16"
        assert (gemm["gemm_m"], gemm["gemm_n"], gemm["gemm_k"]) == (64, 256, 128)
        assert add["flops"] == 64 * 256 and add["category"] == "elementwise"
    # Identity: the measured step is reproduced exactly; with the deps, also what-if replays keep
    # the consumer after its producer.
    spans = step_errors(trace)
    assert spans == {(0, 1): (103_000, 103_000), (1, 1): (103_000, 103_000)}
    res = tracesim.simulate(trace, "dgx-h100", compute_model="roofline")
    tl = res.timeline.join(ops.select("op_id", "name", "rank"), on="op_id")
    for rank in (0, 1):
        t = {row["name"]: row for row in tl.filter(pl.col("rank") == rank).iter_rows(named=True)}
        assert (
            t["vectorized_elementwise_kernel<add>"]["start_ns"]
            >= t["sm80_xmma_gemm_bf16bf16_bf16f32"]["end_ns"]
        )


def test_pairing_by_position(tmp_path: Path) -> None:
    # ET names without a rank: the i-th ET goes with the i-th Kineto file
    et0, k0 = write_pair(tmp_path, 0, et_name="a_et.json")
    et1, k1 = write_pair(tmp_path, 1, et_name="b_et.json")
    _, rep = ingest_pytorch_et_kineto([et1, et0], [k1, k0])
    assert [Path(p).name for p in rep.et_files] == ["a_et.json", "b_et.json"]  # rank order


def test_cli_paired(pair: tuple[list[Path], list[Path]], tmp_path: Path) -> None:
    ets, kins = pair
    out = tmp_path / "t"
    proc = run_cli("ingest", "pytorch-et", *ets, "--kineto", kins[0], "--kineto", kins[1], "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "data-flow deps (tensor producer → consumer): 4 added across streams" in proc.stdout
    assert "not matched: aten operator (rf_id not in the Kineto trace)" in proc.stdout
    assert "collectives matched across ranks: 2" in proc.stdout
    assert tracesim.read_trace(out).ranks == 2


def test_bad_input(tmp_path: Path) -> None:
    et0, k0 = write_pair(tmp_path, 0)
    et1, k1 = write_pair(tmp_path, 1)
    et5, _ = write_pair(tmp_path, 5)
    bad = [
        # count mismatch
        (([et0, et1], [k0]), "2 execution-trace file(s) but 1 --kineto file(s)"),
        (([et0, tmp_path / "x"], [k0, k1]), "x: no such file"),
        # an ET rank (from its name) without a Kineto file of that rank
        (([et0, et5], [k0, k1]), "run_et.5.json.gz: rank 5 (from the file name) has no Kineto trace"),
        # two ETs of one rank
        (([et0, et0], [k0, k1]), "rank 0 (from the file name) is also the rank of"),
    ]
    for (ets, kins), msg in bad:
        with pytest.raises(TraceError) as e:
            ingest_pytorch_et_kineto(ets, kins)
        assert msg in str(e.value)

    def et_file(name: str, data: Any, raw: bytes | None = None) -> Path:
        p = tmp_path / name
        p.write_bytes(raw if raw is not None else json.dumps(data).encode())
        return p

    good = et_nodes("1.1")
    cases: list[tuple[Path, str]] = [
        (et_file("trunc_et.json", None, json.dumps(good).encode()[:-20]), "trunc_et.json: not valid JSON"),
        (et_file("nonodes_et.json", {"schema": "1.0.1"}), "nonodes_et.json: not a PyTorch execution trace"),
        (
            et_file("noid_et.json", {"nodes": [{"name": "aten::mm"}]}),
            "noid_et.json: nodes[0]: 'id' is missing or not an integer",
        ),
        (
            et_file("rf_et.json", {"nodes": [{"id": 4, "name": "aten::mm", "rf_id": "x1"}]}),
            "rf_et.json: node 4 (aten::mm): 'rf_id' is not an integer",
        ),
        (et_file("pid_et.json", {**good, "pid": 8}), "pid 8 is not the pid 7 of the CPU ops of"),
    ]
    # another run: the same ids name other operators
    other = json.loads(json.dumps(good))
    for n in other["nodes"]:
        if n["name"].startswith("aten::"):
            n["name"] = "aten::other"
    cases.append((et_file("other_et.json", other), "have the same name there: not traces of the same run"))
    shifted = json.loads(json.dumps(good))
    for n in shifted["nodes"]:
        for a in n["attrs"]:
            if a["name"] == "rf_id":
                a["value"] += 1000
    cases.append((et_file("shifted_et.json", shifted), "no ET operator's rf_id matches a Kineto CPU op"))
    for path, msg in cases:
        with pytest.raises(TraceError) as e:
            ingest_pytorch_et_kineto([path], [k0])
        assert msg in str(e.value), str(e.value)
        assert path.name in str(e.value)
    # a Kineto trace without CPU ops: nothing to pair with
    no_cpu = [e for e in kineto_events() if e.get("cat") not in ("cpu_op", "user_annotation")]
    k_no_cpu = tmp_path / "no_cpu.json"
    k_no_cpu.write_text(json.dumps({"traceEvents": no_cpu}))
    with pytest.raises(TraceError, match=r"no_cpu.json: no ET operator's rf_id matches a Kineto CPU op"):
        ingest_pytorch_et_kineto([et0], [k_no_cpu])
    # ids written as strings ("+11", " 12 ") are ids; one beyond int64 is not
    events = kineto_events()
    for e in events:
        rf = e.get("args", {}).get("Record function id")
        if rf:
            e["args"]["Record function id"] = f" +{rf} " if rf % 2 else str(rf)
    k_str = tmp_path / "str_rf.json"
    k_str.write_text(json.dumps({"traceEvents": events}))
    _, rep = ingest_pytorch_et_kineto([et0], [k_str])
    _, rep0 = ingest_pytorch_et_kineto([et0], [k0])
    assert rep.et_matched == rep0.et_matched and sum(rep.et_matched.values()) > 0
    events[2]["args"]["Record function id"] = 2**63
    k_big = tmp_path / "big_rf.json"
    k_big.write_text(json.dumps({"traceEvents": events}))
    with pytest.raises(
        TraceError, match=r"big_rf.json: .*'Record function id' is not an integer: 9223372036854775808"
    ):
        ingest_pytorch_et_kineto([et0], [k_big])
    # a Kineto op whose record-function id is not a number
    events = kineto_events()
    events[2]["args"]["Record function id"] = "eleven"
    k_bad = tmp_path / "bad_rf.json"
    k_bad.write_text(json.dumps({"traceEvents": events}))
    with pytest.raises(
        TraceError, match=r"bad_rf.json: cpu_op 'aten::mm' .*'Record function id' is not an integer"
    ):
        ingest_pytorch_et_kineto([et0], [k_bad])
    # the CLI: one line naming the file
    proc = run_cli(
        "ingest", "pytorch-et", tmp_path / "trunc_et.json", "--kineto", k0, "--out", tmp_path / "o"
    )
    assert_one_line_error(proc, "trunc_et.json: not valid JSON")
    proc = run_cli("ingest", "pytorch-et", et0, et1, "--kineto", k0, "--out", tmp_path / "o")
    assert_one_line_error(proc, "give one Kineto trace per ET")
    proc = run_cli("ingest", "pytorch-et", et0, "--time-unit", "ns", "--out", tmp_path / "o")
    assert_one_line_error(proc, "--time-unit: only for the Kineto files of --kineto")


# --- the real pair ----------------------------------------------------------------------------


def _real(rel: str) -> Path:
    if not DATA.is_dir():
        pytest.skip("../shared/data not present: real traces are outside the repo")
    return DATA / rel


def test_real_pair_simple_add() -> None:
    """HTA's execution_trace pair (PARAM torch.add benchmark, A100): the one ET + Kineto pair of
    the same run under ../shared/data. Old PyTorch: no `Record function id`, `External id` = rf_id."""
    d = _real("hta/tests/data/execution_trace")
    et, kin = d / "benchmark_simple_add_et.json.gz", d / "benchmark_simple_add_trace.json.gz"
    trace, rep = ingest_pytorch_et_kineto([et], [kin])
    assert rep.keys == ["External id"]
    assert rep.et_nodes == 38
    assert rep.et_matched == {"aten operator": 28, "annotation": 8}
    assert rep.et_unmatched == {"ET process/thread root (not an operator)": 2}
    assert not rep.kineto_unmatched
    assert rep.gpu_with_et == 4 and rep.shapes_from_et == 28
    # both aten::add read the two aten::rand outputs, produced by their uniform_ kernels (one stream)
    assert (rep.data_deps, rep.data_deps_same_stream, rep.data_deps_contradicted) == (0, 4, 0)
    ops = _ops(trace).filter(pl.col("kind") == "compute")
    assert ops.height == 4 and ops["flops"].to_list() == [65536.0] * 4  # 256×256 fp32, from the ET
    assert ops["dtype"].to_list() == ["fp32"] * 4
    # Identity replay: the same as the Kineto trace alone (the kernels started 2.4–8 ms after their
    # launch on an idle GPU; the replay starts them at once): 3.85 % short, docs/ingest.md.
    spans = step_errors(trace)
    alone, _ = ingest_kineto([kin])
    assert spans == step_errors(alone)
    ((measured, simulated),) = spans.values()
    assert measured == 108_919_000 and abs(simulated - measured) / measured < 0.04


def test_real_files_of_different_runs() -> None:
    """PARAM's linear_et / linear_kineto: same process (pid 24248), but the ET observer ran for
    one iteration of a 40-iteration profile, so rf_ids are not the Kineto External ids."""
    d = _real("param/et_replay/tests/inputs")
    with pytest.raises(TraceError, match=r"only 218 of the 928 ET operators .* not traces of the same run"):
        ingest_pytorch_et_kineto([d / "linear_et.json.gz"], [d / "linear_kineto.json.gz"])
