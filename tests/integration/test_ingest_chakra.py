"""`tracesim ingest chakra` / `pytorch-et`: a synthetic two-rank protobuf trace written here by a
tiny encoder (multi-byte varints, packed and unpacked deps, a gzipped rank, metadata nodes in the
dependency chain, a collective and a send/recv pair), bad input, and the real Chakra / PyTorch ET
files under ../shared/data (node counts from SOURCES.md, protobuf vs JSON rendering, replay)."""

from __future__ import annotations

import gzip
import json
import tarfile
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tracesim
from tests.unit.test_cli_errors import run_cli
from tracesim.exceptions import TraceError
from tracesim.ingest import chakra, ingest_chakra, ingest_pytorch_et

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

# --- a tiny protobuf encoder -------------------------------------------------------------------


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _vf(num: int, v: int) -> bytes:
    return _varint(num << 3) + _varint(v)


def _ld(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _attr(name: str, value: Any) -> bytes:
    body = _ld(1, name.encode())
    if isinstance(value, bool):
        body += _vf(27, int(value))
    elif isinstance(value, int):
        body += _vf(9, value)  # int64_val
    else:
        body += _ld(29, str(value).encode())
    return _ld(10, body)


def _node(
    nid: int,
    name: str,
    ntype: int,
    *,
    data: tuple[int, ...] = (),
    ctrl: tuple[int, ...] = (),
    dur: int | None = None,
    packed: bool = True,
    inputs: str | None = None,
    **attrs: Any,
) -> bytes:
    m = _vf(1, nid) + _ld(2, name.encode()) + _vf(3, ntype)
    if ctrl:
        m += _ld(4, b"".join(map(_varint, ctrl)))
    if data:
        m += _ld(5, b"".join(map(_varint, data))) if packed else b"".join(_vf(5, d) for d in data)
    if dur is not None:
        m += _vf(7, dur)
    if inputs is not None:
        m += _ld(8, _ld(1, inputs.encode()))
    return m + b"".join(_attr(k, v) for k, v in attrs.items())


def _et(nodes: list[bytes]) -> bytes:
    meta = _ld(2, _ld(1, b"schema") + _ld(29, b"1.0.2-chakra.0.0.4"))
    return b"".join(_varint(len(m)) + m for m in [meta, *nodes])


def _rank_nodes(rank: int) -> list[bytes]:
    peer = 1 - rank
    p2p = (
        _node(400, "send", 5, data=(300,), comm_dst=peer, comm_size=4096, is_cpu_op=False, tid=9)
        if rank == 0
        else _node(400, "recv", 6, data=(300,), comm_src=peer, comm_size=4096, is_cpu_op=False, tid=9)
    )
    return [
        _node(1, "pg", 1, inputs='[{"pg_name": "0", "ranks": [0, 1]}]'),
        _node(200, "sm90_xmma_gemm", 4, dur=300, num_ops=10**12, is_cpu_op=False, tid=7),
        _node(250, "marker", 1, data=(200,)),  # a dropped node in the middle of the chain
        _node(
            300,
            "ncclKernel_AllReduce",
            7,
            data=(250,),
            packed=False,
            dur=1000,
            comm_type=0,
            comm_size=1 << 20,
            pg_name="0",
            is_cpu_op=False,
            tid=8,
        ),
        p2p,
        # 100000 is not in the file (ctrl_deps: a parent outside the trace)
        _node(500, "elementwise", 4, data=(400, 300), ctrl=(100000,), dur=2, is_cpu_op=False, tid=7),
    ]


def _ops(trace: tracesim.Trace) -> pl.DataFrame:
    ops = trace.ops
    return ops if isinstance(ops, pl.DataFrame) else pl.from_arrow(ops)  # type: ignore[return-value]


def test_synthetic_two_ranks(tmp_path: Path) -> None:
    (tmp_path / "syn.0.et").write_bytes(_et(_rank_nodes(0)))
    (tmp_path / "syn.1.et").write_bytes(gzip.compress(_et(_rank_nodes(1))))
    trace, report = ingest_chakra([tmp_path / "syn"])  # a prefix
    assert report.formats == ["protobuf", "protobuf"] and report.source_ranks == [0, 1]
    assert report.nodes == 12 and report.nodes_by_type["METADATA_NODE"] == 4
    assert report.unmapped["METADATA_NODE (dropped; deps reconnected)"] == 4
    assert report.collectives_matched == 2 and report.p2p_matched == 1
    assert report.deps_reconnected == 2  # 300 → 250 (dropped) → 200, on both ranks
    assert not report.collective_problems
    ops = _ops(trace)
    assert ops.height == 8
    r0 = ops.filter(pl.col("rank") == 0).sort("op_id")
    assert r0["kind"].to_list() == ["compute", "collective", "send", "compute"]
    assert r0["duration_ns"].to_list() == [300_000, 1_000_000, None, 2_000]
    assert r0["flops"][0] == 1e12 and r0["category"][0] == "gemm"
    ids = r0["op_id"].to_list()
    assert r0["deps"].to_list() == [[], [ids[0]], [ids[1]], [ids[2], ids[1]]]
    coll = ops.filter(pl.col("kind") == "collective")
    assert coll["coll"].to_list() == ["all_reduce"] * 2 and coll["comm_bytes"].to_list() == [1 << 20] * 2
    assert coll["coll_seq"].to_list() == [0, 0]
    recv = ops.filter(pl.col("kind") == "recv")
    assert recv["peer"].to_list() == [0] and recv["comm_bytes"].to_list() == [4096]
    res = tracesim.simulate(trace, "dgx-h100", compute_model="measured")
    assert res.summary["makespan_ns"] >= 300_000 + 1_000_000 + 2_000

    # One rank alone: its collective and its send have no peer; kept as communication, counted.
    trace1, rep1 = ingest_chakra([tmp_path / "syn.0.et"])
    assert rep1.collective_problems == Counter(
        {
            "collective without its peer ranks (their files absent)": 1,
            "send whose peer rank's file is absent": 1,
        }
    )
    k1 = _ops(trace1).sort("op_id")
    assert k1["kind"].to_list() == ["compute"] * 4
    assert k1["category"].to_list()[1:3] == ["communication", "communication"]


def test_bad_input_names_file_and_offset(tmp_path: Path) -> None:
    ok = _et(_rank_nodes(0))
    cases = {
        "trunc.0.et": ok + b"\x85",  # a record length whose varint never ends
        "cut.0.et": ok[:-3],  # the last record is cut short
        "garbage.0.et": b"\x07garbage and more",  # 'g' = field 12, wire type 7
    }
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(TraceError, match=r"byte offset \d+") as e:
            ingest_chakra([tmp_path / name])
        assert name in str(e.value)
    with pytest.raises(TraceError, match=rf"byte offset {len(ok)}: truncated varint"):
        ingest_chakra([tmp_path / "trunc.0.et"])
    (tmp_path / "bad.0.et").write_bytes(gzip.compress(ok)[:-8])
    with pytest.raises(TraceError, match="gzip"):
        ingest_chakra([tmp_path / "bad.0.et"])
    flipped = bytearray(gzip.compress(ok, mtime=0))
    flipped[11] ^= 0xFF  # inside the deflate stream: zlib's own error
    (tmp_path / "flipped.0.et").write_bytes(bytes(flipped))
    with pytest.raises(TraceError, match=r"flipped\.0\.et: not a readable gzip file"):
        ingest_chakra([tmp_path / "flipped.0.et"])
    r = run_cli("ingest", "chakra", tmp_path / "garbage.0.et", "--out", tmp_path / "o")
    assert r.returncode == 1 and "garbage.0.et: byte offset" in r.stderr


def test_chakra_json_odd_but_readable(tmp_path: Path) -> None:
    """What Python's json writes or reads is read: NaN and Infinity, attributes nested deeper than
    any parser's recursion limit, a `workload_graph` after another top-level list, a process-group
    config that is not JSON or too deep."""
    graph = [
        {"Id": 1, "Name": "pg", "NodeType": 1, "inputs": "x"},
        {"Id": 2, "Name": "a", "NodeType": 4, "runtime": 5, "num_ops": float("nan"), "is_cpu_op": False},
        {"Id": 3, "Name": "b", "NodeType": 4, "runtime": float("inf"), "data_deps": [2]},
    ]
    text = json.dumps({"workload_graph": graph})  # NaN, Infinity: Python's json writes them
    deep = "[" * 5000 + "]" * 5000
    text = text.replace('"inputs": "x"', f'"inputs": "{"[" * 100_000}", "shapes": {deep}')
    path = tmp_path / "odd.0.json"
    path.write_text(text)
    trace, report = ingest_chakra([path])
    ops = _ops(trace).sort("op_id")
    assert ops["name"].to_list() == ["a", "b"] and ops["duration_ns"].to_list() == [5000, None]
    assert ops["flops"].to_list() == [None, None] and report.nodes == 3
    path.write_text(json.dumps({"nodes": [], "workload_graph": graph[1:]}))
    trace, report = ingest_chakra([path])
    assert report.formats == ["chakra-json"] and trace.num_ops == 2


def test_long_chain_of_dropped_nodes(tmp_path: Path) -> None:
    """Deps through thousands of dropped (metadata) nodes in a row are reconnected (no recursion
    limit), and a dependency cycle is an error naming the nodes."""
    n = 5000
    graph = [{"Id": 0, "Name": "a", "NodeType": 4, "runtime": 5, "data_deps": []}]
    graph += [{"Id": i, "Name": "m", "NodeType": 1, "data_deps": [i - 1]} for i in range(1, n)]
    graph += [{"Id": n, "Name": "b", "NodeType": 4, "runtime": 5, "data_deps": [n - 1]}]
    path = tmp_path / "deep.0.json"
    path.write_text(json.dumps({"schema": "x", "workload_graph": graph}))
    trace, report = ingest_chakra([path])
    assert (
        report.deps_reconnected == 1 and report.unmapped["METADATA_NODE (dropped; deps reconnected)"] == n - 1
    )
    ops = _ops(trace).sort("op_id")
    assert ops["name"].to_list() == ["a", "b"] and ops["deps"].to_list() == [[], [0]]
    graph[0]["data_deps"] = [n]  # a → b → (chain) → a
    path.write_text(json.dumps({"schema": "x", "workload_graph": graph}))
    with pytest.raises(
        TraceError, match=r"deep.0.json: dependency cycle among 2 nodes \(node ids \[0, 5000\]\)"
    ):
        ingest_chakra([path])


# --- fuzz: any bytes ingest or raise TraceError, nothing else ------------------------------------


def _ingests_or_trace_error(data: bytes, name: str, ingest: Any = ingest_chakra) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        try:
            ingest([path])
        except TraceError as e:
            assert name in str(e)


GOOD_ET = _et(_rank_nodes(0))
GOOD_JSON = json.dumps(
    {
        "schema": "1.0.2-chakra.0.0.4",
        "workload_graph": [
            {"Id": 1, "Name": "a", "NodeType": 4, "runtime": 5, "data_deps": [], "ctrlDeps": []},
            {"Id": 2, "Name": "ncclKernel", "NodeType": 7, "runtime": 9, "data_deps": [1], "ctrlDeps": [1]},
        ],
    }
).encode()
GOOD_PYTORCH_ET = json.dumps(
    {
        "schema": "1.1.0",
        "pid": 7,
        "nodes": [
            {"id": 1, "name": "[pytorch|profiler|execution_trace|thread]", "ctrl_deps": 0,
             "attrs": [{"name": "tid", "type": "uint64", "value": 3}]},
            {"id": 2, "name": "aten::mm", "ctrl_deps": 1, "inputs": {"values": [[1, 2, 0, 4, 4, "cuda:0"]],
             "shapes": [[2, 2]], "types": ["Tensor(float)"]}, "attrs": [{"name": "rf_id", "value": 9}]},
        ],
    }
).encode()  # fmt: skip


@st.composite
def _mutated(draw: st.DrawFn, good: bytes) -> bytes:
    """A valid file cut, with bytes flipped, or with bytes inserted."""
    data = bytearray(good)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_fuzz_chakra_arbitrary_bytes(data: bytes) -> None:
    _ingests_or_trace_error(data, "fuzz.0.et")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated(GOOD_ET), st.booleans())
def test_fuzz_chakra_mutated_protobuf(data: bytes, gz: bool) -> None:
    _ingests_or_trace_error(gzip.compress(data, mtime=0) if gz else data, "fuzz.0.et")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated(GOOD_JSON))
def test_fuzz_chakra_mutated_json(data: bytes) -> None:
    _ingests_or_trace_error(data, "fuzz.0.json")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated(GOOD_PYTORCH_ET))
def test_fuzz_pytorch_et_mutated(data: bytes) -> None:
    _ingests_or_trace_error(data, "fuzz_et.0.json", ingest_pytorch_et)


def test_fuzz_seeds_ingest() -> None:
    """The seeds of the fuzz tests are valid files (so that the mutations start from ones)."""
    for data, name, ingest in [
        (GOOD_ET, "seed.0.et", ingest_chakra),
        (GOOD_JSON, "seed.0.json", ingest_chakra),
        (GOOD_PYTORCH_ET, "seed_et.0.json", ingest_pytorch_et),
    ]:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / name
            path.write_bytes(data)
            trace, _ = ingest([path])
            assert trace.num_ops >= 1


def test_pytorch_et_json_is_streamed(tmp_path: Path) -> None:
    """PyTorch ET JSON is read node by node: the header may follow the nodes, a node is kept
    only as far as the ingester reads it, and a bad node or a cut file names the file."""
    nodes = [
        {"id": 1, "name": "[pytorch|profiler|execution_trace|process]", "ctrl_deps": 0},
        {"id": 2, "name": "[pytorch|profiler|execution_trace|thread]", "ctrl_deps": 1,
         "attrs": [{"name": "tid", "type": "uint64", "value": 3}]},
        {"id": 3, "name": "aten::mm", "ctrl_deps": 2, "inputs": {"values": [[1, 2, 0, 4, 4, "cuda:0"]]},
         "attrs": [{"name": "rf_id", "type": "uint64", "value": 9}, {"name": "big", "value": "x" * 1000}]},
        {"id": 4, "name": "aten::add", "ctrl_deps": 2},
    ]  # fmt: skip
    text = json.dumps({"schema": "1.1.0", "nodes": nodes, "finish_ts": 5})
    plain = tmp_path / "s_et.json"
    plain.write_text(text)
    zipped = tmp_path / "z_et.json.gz"
    zipped.write_bytes(gzip.compress(text.encode()))
    for f in (plain, zipped):
        trace, rep = ingest_pytorch_et([f])
        assert trace.num_ops == 2 and rep.nodes == 4
    fmt, data = chakra._read_any(plain)
    assert (fmt, data["schema"], data["finish_ts"]) == ("pytorch-et", "1.1.0", 5)  # after the nodes
    assert data["nodes"][2] == {"id": 3, "name": "aten::mm", "ctrl_deps": 2, "attrs": []}  # slimmed
    cut = tmp_path / "cut_et.json"
    cut.write_text(text[: len(text) // 2])
    with pytest.raises(TraceError, match=r"cut_et\.json: not valid JSON: EOF"):
        ingest_pytorch_et([cut])
    bad = tmp_path / "bad_et.json"
    bad.write_text(text.replace('"name": "aten::add"', '"name": aten::add'))
    with pytest.raises(TraceError, match=r"bad_et\.json: not valid JSON: nodes\[3\]"):
        ingest_pytorch_et([bad])
    neither = tmp_path / "neither.json"
    neither.write_text('{"schema": "1.1.0", "events": []}')
    with pytest.raises(TraceError, match="neither Chakra"):
        ingest_chakra([neither])
    # a bad header: the JSON error, not what the protobuf reader makes of the bytes
    header = tmp_path / "header_et.json"
    header.write_text('{"schema": "1.1')
    with pytest.raises(TraceError, match=r"header_et\.json: not valid JSON"):
        ingest_chakra([header])
    # `workload_graph` makes it Chakra JSON whatever comes first, and it must be a list
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"nodes": nodes, "workload_graph": {}}))
    with pytest.raises(TraceError, match="Chakra JSON without a 'workload_graph' list"):
        ingest_chakra([both])
    # numbers and nesting Python's json cannot read are errors naming the file and the node
    huge = tmp_path / "huge_et.json"
    huge.write_text(text.replace('"ctrl_deps": 2}', '"ctrl_deps": 2' + "0" * 5000 + "}"))
    deep = tmp_path / "deep_et.json"
    nested = "[" * 100_000 + "]" * 100_000
    deep.write_text(text.replace('"ctrl_deps": 2}', '"ctrl_deps": 2, "x": ' + nested + "}"))
    for f in (huge, deep):
        with pytest.raises(TraceError, match=rf"{f.name}: not valid JSON: nodes\[3\]"):
            ingest_pytorch_et([f])


@pytest.mark.parametrize(
    "rel",
    [
        "param/et_replay/tests/inputs/resnet_et.json.gz",
        "param/et_replay/tests/inputs/1.1.0-chakra.0.0.4/resnet_2gpu_et.json.gz",
        "param/et_replay/tests/inputs/linear_et.json.gz",
    ],
)
def test_slim_et_nodes_map_as_full_ones(rel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`_slim_et_node` keeps all that the PyTorch ET mapping reads: the same trace without it."""
    path = DATA / rel
    if not path.is_file():
        pytest.skip("../shared/data not present: real traces are outside the repo")
    slim, slim_rep = ingest_pytorch_et([path])
    monkeypatch.setattr(chakra, "_slim_et_node", lambda d: d)
    full, full_rep = ingest_pytorch_et([path])
    assert slim.ops.equals(full.ops) and slim_rep.lines() == full_rep.lines()


# --- real traces -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chakra_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not DATA.is_dir():
        pytest.skip("../shared/data not present: real traces are outside the repo")
    out = tmp_path_factory.mktemp("chakra")
    for name in ("feeder_tests_trace.tar.gz", "json_trace.tar.gz", "1.0.2-chakra.0.0.4.tgz"):
        with tarfile.open(DATA / "chakra" / "tests" / "data" / name) as tf:
            tf.extractall(out, filter="data")
    return out


def test_real_protobuf_and_json_agree(chakra_dir: Path) -> None:
    pb, rpb = ingest_chakra([chakra_dir / "tests" / "data" / "chakra.0.et"])
    js, rjs = ingest_chakra([chakra_dir / "jsonData" / "chakra.0.json"])
    for rep in (rpb, rjs):
        assert rep.nodes == 3664
        assert rep.nodes_by_type == Counter({"COMP_NODE": 3643, "COMM_COLL_NODE": 21})
        assert sum(rep.collective_problems.values()) == 21  # one rank: no collective has its peers
        assert rep.deps == 181_878 and rep.deps_outside_file == 0
    # 14 CPU-side c10d ops have no comm_type; the 7 NCCL kernels have one, but no peers here
    assert rpb.collective_problems["collective without its peer ranks (single file, group unknown)"] == 7
    a, b = _ops(pb).sort("op_id"), _ops(js).sort("op_id")
    assert a.height == b.height == 3664
    # The JSON rendering has mangled names (void → voId) and no tid: same graph otherwise.
    assert a["name"].str.to_lowercase().to_list() == b["name"].str.to_lowercase().to_list()
    for col in ("kind", "category", "duration_ns", "deps"):
        assert a[col].to_list() == b[col].to_list(), col
    assert Counter(a["kind"].to_list()) == Counter({"host": 2448, "compute": 1216})
    dur = dict(zip(a["op_id"].to_list(), a["duration_ns"].fill_null(0).to_list(), strict=True))
    finish: dict[int, int] = {}
    for oid, deps in zip(a["op_id"].to_list(), a["deps"].to_list(), strict=True):
        finish[oid] = max((finish[d] for d in deps), default=0) + dur[oid]
    res = tracesim.simulate(pb, "dgx-h100", compute_model="measured")
    span = res.summary["makespan_ns"]
    assert max(finish.values()) <= span <= sum(dur.values())


def test_real_pytorch_et(chakra_dir: Path) -> None:
    files = [chakra_dir / "1.0.2-chakra.0.0.4.json"]
    inputs = DATA / "param" / "et_replay" / "tests" / "inputs"
    files += sorted(inputs.rglob("*_et.json.gz"))
    expected = {"1.0.2-chakra.0.0.4.json": 263, "linear_et.json.gz": 931, "resnet_et.json.gz": 14392}
    expected["resnet_2gpu_et.json.gz"] = 14392
    assert {f.name for f in files} == set(expected)
    for f in files:
        trace, rep = ingest_pytorch_et([f])
        assert rep.nodes == expected[f.name] and rep.source_ranks == [0]
        ops = _ops(trace)
        comms = ops.filter(pl.col("category") == "communication")
        n_comm = {"1.0.2-chakra.0.0.4.json": 10, "linear_et.json.gz": 0}.get(f.name, 21)
        assert comms.height == n_comm == sum(rep.collective_problems.values())
        assert ops.height + sum(rep.unmapped.values()) <= rep.nodes
        tracesim.simulate(trace, "dgx-h100", compute_model="measured")
    r = run_cli("ingest", "pytorch-et", files[0], "--out", chakra_dir / "et_out")
    assert r.returncode == 0, r.stderr
    assert "collective without its peer ranks" in r.stdout


def test_cli_chakra(chakra_dir: Path, tmp_path: Path) -> None:
    r = run_cli("ingest", "chakra", chakra_dir / "tests" / "data" / "chakra", "--out", tmp_path / "t")
    assert r.returncode == 0, r.stderr
    assert "3,664 ops on 1 ranks" in r.stdout and "COMP_NODE 3,643" in r.stdout
    trace = tracesim.read_trace(tmp_path / "t")
    assert trace.num_ops == 3664
