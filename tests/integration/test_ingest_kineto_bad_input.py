"""`tracesim ingest kineto` on bad input: malformed files (truncated JSON, corrupt gzip, not JSON,
not a Chrome trace, invalid UTF-8) raise a `TraceError` naming the file and the problem; odd
events (missing fields, unknown phases and categories, non-objects) are ingested and counted in
the `IngestReport`; rank clashes and collectives whose peers are absent; the CLI's one-line
error; and a hypothesis fuzz of the reader (arbitrary bytes, truncated or flipped valid files):
it ingests or raises `TraceError`, nothing else."""

from __future__ import annotations

import gzip
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cli import run_cli
from tests.integration.test_ingest_kineto import _rank_events, _x
from tests.unit.test_cli_errors import assert_one_line_error
from tracesim.exceptions import TraceError
from tracesim.ingest import ingest_kineto
from tracesim.ingest.kineto import IngestReport

NO_PEER_FILES = "collective without its peer ranks (their files absent)"
NO_PEER_OP = "collective without its peer ranks (no matching op in a peer's file)"


def _trace_bytes(rank: int = 0, events: list[Any] | None = None, **top: Any) -> bytes:
    data = {
        "schemaVersion": 1,
        "distributedInfo": {"backend": "nccl", "rank": rank, "world_size": 2},
        "traceEvents": _rank_events(rank) if events is None else events,
        **top,
    }
    return json.dumps(data).encode()


def _file(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _error(path: Path | list[Path]) -> str:
    """The message of the `TraceError` that ingesting `path` raises."""
    with pytest.raises(TraceError) as e:
        ingest_kineto(path if isinstance(path, list) else [path])
    return str(e.value)


# --- malformed files ---------------------------------------------------------------------------

GOOD = _trace_bytes()
CUT = GOOD[: len(GOOD) // 2]  # cut inside the event list
GZ = gzip.compress(GOOD, mtime=0)


def _flipped(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0xFF
    return bytes(out)


MALFORMED: list[tuple[str, bytes, str | tuple[str, ...]]] = [
    ("truncated.json", CUT, "not valid JSON"),
    ("truncated_end.json", GOOD[:-1], "not valid JSON"),  # only the closing brace missing
    ("truncated.json.gz", gzip.compress(CUT), "not valid JSON"),  # a sound gzip of cut JSON
    ("cut8.json.gz", GZ[:-8], "not a readable gzip file"),  # CRC and size trailer cut
    ("cut_half.json.gz", GZ[: len(GZ) // 2], "not a readable gzip file"),
    # a byte of the deflate stream changed: the old reader inflates it all first and reports the
    # CRC mismatch, the streaming one may meet the garbled JSON before the CRC
    ("flipped_mid.json.gz", _flipped(GZ, 200), ("not a readable gzip file", "not valid JSON")),
    ("flipped_crc.json.gz", _flipped(GZ, len(GZ) - 6), "not a readable gzip file"),
    ("magic_garbage.json.gz", b"\x1f\x8b" + b"garbage" * 10, "not a readable gzip file"),
    ("magic_only.json.gz", b"\x1f\x8b", "not a readable gzip file"),
    ("not_json.json", b"hello world", "not valid JSON"),
    ("empty.json", b"", "not valid JSON"),
    ("empty_gz.json.gz", gzip.compress(b""), "not valid JSON"),
    ("trailing.json", GOOD + b" x", "not valid JSON"),
    ("two_docs.json", GOOD + GOOD, "not valid JSON"),
    ("events_object.json", b'{"traceEvents": {}}', "not a Chrome trace"),
    ("events_null.json", b'{"traceEvents": null}', "not a Chrome trace"),
    ("events_string.json", b'{"traceEvents": "x"}', "not a Chrome trace"),
    ("no_events.json", b'{"schemaVersion": 1, "displayTimeUnit": "ns"}', "not a Chrome trace"),
    ("null.json", b"null", "not a Chrome trace"),
    ("number.json", b"42", "not a Chrome trace"),
    ("string.json", b'"traceEvents"', "not a Chrome trace"),
    # valid JSON, but no event to make an op of
    ("numbers.json", b"[1, 2, 3]", "no GPU kernels, copies or runtime calls to ingest"),
    ("empty_list.json", b"[]", "no GPU kernels, copies or runtime calls to ingest"),
    ("no_gpu.json", b'{"traceEvents": []}', "no GPU kernels, copies or runtime calls to ingest"),
    (
        "cpu_only.json",
        _trace_bytes(events=[_x("cpu_op", "aten::mm", 0, 5, 100), _x("python_function", "f", 0, 9, 100)]),
        "no GPU kernels, copies or runtime calls to ingest",
    ),
    # invalid UTF-8 inside a string: a kernel name, a value in args, a key
    ("utf8_name.json", GOOD.replace(b"sm90_xmma_gemm_bf16", b"sm90_\xff\xfe_gemm"), "not valid JSON"),
    ("utf8_args.json", GOOD.replace(b'"python"', b'"py\xc3thon"'), "not valid JSON"),
    ("utf8_key.json", GOOD.replace(b'"schemaVersion"', b'"schema\xe2\x82Version"'), "not valid JSON"),
    ("utf8_gz.json.gz", gzip.compress(GOOD.replace(b"aten::mm", b"aten::\x80m")), "not valid JSON"),
    # JSON syntax errors inside an event and inside its args
    ("bad_event.json", GOOD.replace(b'"ph": "X"', b'"ph": "X",', 1), "not valid JSON"),
    ("bad_args.json", GOOD.replace(b'"correlation": 1', b'"correlation": 1,,', 1), "not valid JSON"),
    ("nan.json", GOOD.replace(b'"dur": 20', b'"dur": NaN', 1), "not valid JSON"),
]


@pytest.mark.parametrize(("name", "data", "problem"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_file(tmp_path: Path, name: str, data: bytes, problem: str | tuple[str, ...]) -> None:
    assert data != GOOD
    path = _file(tmp_path, name, data)
    msg = _error(path)
    assert msg.startswith(str(path) + ": "), msg
    assert any(p in msg for p in ((problem,) if isinstance(problem, str) else problem)), msg
    assert len(msg.splitlines()) == 1, msg


@pytest.mark.parametrize("at", [10, 11, 12])
def test_corrupt_deflate_stream(tmp_path: Path, at: int) -> None:
    path = _file(tmp_path, "flipped.json.gz", _flipped(GZ, at))  # the header is 10 bytes
    msg = _error(path)
    assert msg.startswith(f"{path}: not a readable gzip file"), msg


def test_malformed_file_among_good_ones_is_named(tmp_path: Path) -> None:
    good = _file(tmp_path, "rank0.json", GOOD)
    bad = _file(tmp_path, "rank1.json.gz", gzip.compress(_trace_bytes(1))[:-8])
    msg = _error([good, bad])
    assert msg.startswith(f"{bad}: not a readable gzip file"), msg
    assert "rank0.json" not in msg


def test_two_files_of_one_rank(tmp_path: Path) -> None:
    a = _file(tmp_path, "a.json", _trace_bytes(0))
    b = _file(tmp_path, "b.json.gz", gzip.compress(_trace_bytes(0)))
    msg = _error([a, b])
    assert "rank 0 (distributedInfo.rank) is also the rank of" in msg, msg
    assert str(a) in msg and str(b) in msg
    # the same file twice
    assert "is also the rank of" in _error([a, a])


def test_no_input_files() -> None:
    with pytest.raises(TraceError, match="ingest kineto: no input files"):
        ingest_kineto([])


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_unreadable_path(tmp_path: Path, what: str) -> None:
    path = tmp_path / "missing.json" if what == "missing" else tmp_path
    msg = _error(path)
    assert msg.startswith(str(path) + ": "), msg


# --- odd events: ingested and counted ------------------------------------------------------------


def _report(tmp: Path, extra: list[Any]) -> tuple[IngestReport, IngestReport, pl.DataFrame]:
    """The report of the rank-0 events alone, and that of the events plus `extra` (and its ops)."""
    base = _file(tmp, "base.json", _trace_bytes(events=_rank_events(0)))
    odd = _file(tmp, "odd.json", _trace_bytes(events=_rank_events(0) + extra))
    _, r0 = ingest_kineto([base])
    trace, r1 = ingest_kineto([odd])
    ops = pl.from_arrow(trace.ops)
    assert isinstance(ops, pl.DataFrame)
    return r0, r1, ops


KERNEL = _x("kernel", "extra_kernel", 200, 5, 7, stream=7)


def _without(ev: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in ev.items() if k != key}


def test_events_not_mapped_are_counted(tmp_path: Path) -> None:
    extra: list[Any] = [
        _without(KERNEL, "ts"),
        {**KERNEL, "ts": None},
        {**KERNEL, "ts": "soon"},
        {**KERNEL, "ts": 1e300},  # does not fit in int64 ns
        _without(KERNEL, "ph"),
        _without(KERNEL, "cat"),
        {**KERNEL, "ph": "Q"},
        {**KERNEL, "ph": "B"},
        {**KERNEL, "ph": "E"},
        {**KERNEL, "cat": "weird_cat"},
        {**KERNEL, "cat": "weird_cat"},
        _x("cuda_runtime", "cudaLaunchKernel", 300, 1, 100, correlation=99) | {"ph": "i"},
    ]
    r0, r1, ops = _report(tmp_path, extra)
    assert r1.unmapped - r0.unmapped == Counter(
        {
            "kernel (no ts/dur)": 4,
            "ph None event (kernel)": 1,
            "no cat": 1,
            "ph Q event (kernel)": 1,
            "ph B event (kernel)": 1,
            "ph E event (kernel)": 1,
            "weird_cat": 2,
            "ph i event (cuda_runtime)": 1,
        }
    )
    assert r1.ops_by_kind == r0.ops_by_kind  # none of them became an op
    assert "extra_kernel" not in ops.get_column("name").to_list()
    lines = r1.lines()
    assert f"events not mapped to ops: {sum(r1.unmapped.values()):,}" in lines
    assert any(line.endswith("  weird_cat") and " 2  " in line for line in lines), lines


@pytest.mark.parametrize(
    ("event", "name", "dur_ns"),
    [
        (_without(KERNEL, "name"), "", 5_000),  # no name: an op named ""
        (_without(KERNEL, "dur"), "extra_kernel", 0),  # no dur: 0, as documented in kineto_json.rs
        ({**KERNEL, "dur": -5}, "extra_kernel", 0),  # negative: clipped to 0
        ({**KERNEL, "ts": "200.5"}, "extra_kernel", 5_000),  # a number in a string
        ({**KERNEL, "name": 5}, "5", 5_000),  # str() of a non-string name
        ({**KERNEL, "args": [1, 2]}, "extra_kernel", 5_000),  # args not an object
        ({**KERNEL, "args": "x"}, "extra_kernel", 5_000),
    ],
    ids=["no_name", "no_dur", "negative_dur", "string_ts", "int_name", "list_args", "string_args"],
)
def test_odd_kernels_become_orphan_ops(tmp_path: Path, event: dict[str, Any], name: str, dur_ns: int) -> None:
    r0, r1, ops = _report(tmp_path, [event])
    assert r1.unmapped == r0.unmapped
    assert r1.ops_by_kind["compute"] == r0.ops_by_kind["compute"] + 1
    assert r1.orphan_gpu_ops == r0.orphan_gpu_ops + 1  # no launch in the trace
    (row,) = ops.filter((pl.col("kind") == "compute") & (pl.col("name") == name)).iter_rows(named=True)
    assert row["duration_ns"] == dur_ns


def test_non_object_events_are_counted(tmp_path: Path) -> None:
    extra: list[Any] = [1, "x", None, [], [KERNEL], True, 2.5]
    r0, r1, _ = _report(tmp_path, extra)
    assert r1.ops_by_kind == r0.ops_by_kind  # not events: no op (the kernel in a list neither)
    assert r1.unmapped - r0.unmapped == Counter({"traceEvents element that is not an object": len(extra)})


def test_numbers_python_cannot_read_are_errors(tmp_path: Path) -> None:
    """Values serde reads but Python's json does not (integers of more than 4,300 digits) are an
    error naming the file, not a crash; so is a ProfilerStep number of thousands of digits."""
    meta = {"Collective name": "allreduce", "In msg nelems": 1, "Process Group Ranks": "[0]"}
    events = [_x("kernel", "ncclDevKernel_AllReduce", 12, 20, 7, stream=7, **meta)]
    text = _trace_bytes(events=events).replace(b'"In msg nelems": 1', b'"In msg nelems": 1' + b"0" * 5000)
    path = _file(tmp_path, "huge_int.json", text)
    assert _error(path).startswith(f"{path}: not valid JSON: an event's args: ")
    steps = [_x("user_annotation", "ProfilerStep#" + "9" * 5000, 0, 100, 100), *_rank_events(0)[4:6]]
    path = _file(tmp_path, "long_step.json", _trace_bytes(events=steps))
    assert "the step number is above 4294967295" in _error(path)


@pytest.mark.parametrize("n", [2**32, 10**20])
def test_profiler_step_number_out_of_range(tmp_path: Path, n: int) -> None:
    events = [_x("user_annotation", f"ProfilerStep#{n}", 0, 100, 100), *_rank_events(0)[4:6]]
    path = _file(tmp_path, "big_step.json", _trace_bytes(events=events))
    assert _error(path) == (
        f"{path}: ProfilerStep#{n}: the step number is above 4294967295 (iterations are uint32)"
    )
    ok = [_x("user_annotation", f"ProfilerStep#{2**32 - 1}", 0, 100, 100), *_rank_events(0)[4:6]]
    _, report = ingest_kineto([_file(tmp_path, "max_step.json", _trace_bytes(events=ok))])
    assert report.iterations == [2**32 - 1]


@pytest.mark.parametrize(
    "event",
    [
        _x("kernel", "k", 1.7e15, 8e15, 7, stream=7),  # ts + dur beyond int64 ns
        _x("cuda_runtime", "cudaLaunchKernel", -5e15, 5, 100),  # 2^62 ns before 0
        _x("user_annotation", "ProfilerStep#1", 9e15, 1e15, 100),
    ],
)
def test_times_beyond_range(tmp_path: Path, event: dict[str, Any]) -> None:
    """Times whose differences could pass int64 are an error naming the file and the event."""
    events = [*_rank_events(0)[4:6], event]
    path = _file(tmp_path, "far.json", _trace_bytes(events=events))
    err = _error(path)
    assert err.startswith(f"{path}: ") and "its times are beyond ±2^62 ns" in err, err
    assert f"'{event['name']}'" in err


def test_empty_kernels_starting_together_wait_for_nothing(tmp_path: Path) -> None:
    """Two empty kernels on two streams, both starting late at the same instant: no cross-stream
    wait is inferred between them (each on the other would be a cycle)."""
    events = [
        _x("cuda_runtime", "cudaLaunchKernel", 0, 5, 100, correlation=1),
        _x("cuda_runtime", "cudaLaunchKernel", 10, 5, 100, correlation=2),
        _x("kernel", "a", 100, 0, 7, stream=7, correlation=1),
        _x("kernel", "b", 100, 0, 8, stream=8, correlation=2),
    ]
    trace, report = ingest_kineto([_file(tmp_path, "zero.json", _trace_bytes(events=events))])
    assert report.inferred_stream_deps == 0
    assert trace.num_ops == 2 + 3  # the kernels; launch, cpu_gap, launch


def test_thread_ids_of_many_digits(tmp_path: Path) -> None:
    """Thread ids too long for int() are ordered as strings, not an error."""
    events = [
        _x("cuda_runtime", "cudaLaunchKernel", 10, 5, 424242, correlation=1),
        _x("kernel", "k", 20, 5, 7, stream=7, correlation=1),
    ]
    text = _trace_bytes(events=events).replace(b"424242", b"9" * 5000)
    _, report = ingest_kineto([_file(tmp_path, "long_tid.json", text)])
    assert report.launch_deps == 1


def test_collective_size_out_of_range(tmp_path: Path) -> None:
    meta = {
        "Collective name": "allreduce",
        "In msg nelems": 10**30,
        "Out msg nelems": 10**30,
        "dtype": "Float",
        "Group size": 1,
        "Process Group Name": "0",
        "Process Group Ranks": "[0]",
    }
    events = [
        _x("cuda_runtime", "cudaLaunchKernel", 10, 5, 100, correlation=1),
        _x("kernel", "ncclDevKernel_AllReduce_Sum_f32_RING_LL", 12, 20, 7, stream=7, correlation=1, **meta),
    ]
    path = _file(tmp_path, "big_coll.json", _trace_bytes(events=events))
    trace, report = ingest_kineto([path])
    assert report.collective_problems == Counter(
        {"collective whose message size is negative or 2^64 bytes or more": 1}
    )
    ops = pl.from_arrow(trace.ops)
    assert isinstance(ops, pl.DataFrame)
    (row,) = ops.filter(pl.col("name").str.starts_with("ncclDevKernel")).iter_rows(named=True)
    assert (row["kind"], row["category"], row["comm_bytes"]) == ("compute", "communication", None)


# --- collectives whose peers are not all there ---------------------------------------------------


def _nccl(ops: pl.DataFrame) -> pl.DataFrame:
    return ops.filter(pl.col("name").str.starts_with("ncclDevKernel"))


def test_collective_on_one_rank_of_two(tmp_path: Path) -> None:
    rank1 = [
        e
        for e in _rank_events(1)
        if not (e.get("name", "").startswith("ncclDevKernel") or e.get("name") == "record_param_comms")
    ]
    paths = [
        _file(tmp_path, "rank0.json", _trace_bytes(0)),
        _file(tmp_path, "rank1.json", _trace_bytes(1, events=rank1)),
    ]
    trace, report = ingest_kineto(paths)
    ops = pl.from_arrow(trace.ops)
    assert isinstance(ops, pl.DataFrame)
    nccl = _nccl(ops)
    assert nccl.height == 1
    row = nccl.row(0, named=True)
    assert (row["rank"], row["kind"], row["category"]) == (0, "compute", "communication")
    assert (row["duration_ns"], row["group_id"], row["coll_seq"]) == (30_000, None, None)
    assert report.collectives_matched == 0
    assert report.collective_problems == {NO_PEER_OP: 1}
    assert f"  kept as compute/communication: 1 {NO_PEER_OP}" in report.lines()
    assert report.uncosted["NCCL kernel (timed by the network model)"] == 1
    assert trace.groups is None


def test_collective_group_larger_than_the_files(tmp_path: Path) -> None:
    def four_ranks(rank: int) -> list[dict[str, Any]]:
        events = _rank_events(rank)
        for e in events:
            args = e.get("args", {})
            if "Collective name" in args:
                args.update({"Group size": 4, "Process Group Ranks": "[0, 1, 2, 3]"})
        return events

    paths = [_file(tmp_path, f"rank{r}.json", _trace_bytes(r, events=four_ranks(r))) for r in (0, 1)]
    trace, report = ingest_kineto(paths)
    ops = pl.from_arrow(trace.ops)
    assert isinstance(ops, pl.DataFrame)
    nccl = _nccl(ops)
    assert nccl.height == 2 and nccl.get_column("rank").sort().to_list() == [0, 1]
    assert (nccl.get_column("kind") == "compute").all()
    assert (nccl.get_column("category") == "communication").all()
    assert nccl.get_column("group_id").null_count() == 2
    assert report.collectives_matched == 0
    assert report.collective_problems == {NO_PEER_FILES: 2}
    assert f"  kept as compute/communication: 2 {NO_PEER_FILES}" in report.lines()
    assert report.ops_by_kind["collective"] == 0 and trace.groups is None


# --- the CLI ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "problem"),
    [
        ("truncated.json", CUT, "not valid JSON"),
        ("cut8.json.gz", GZ[:-8], "not a readable gzip file"),
        ("events_object.json", b'{"traceEvents": {}}', "not a Chrome trace"),
    ],
)
def test_cli_bad_file(tmp_path: Path, name: str, data: bytes, problem: str) -> None:
    good = _file(tmp_path, "rank0.json", GOOD)
    bad = _file(tmp_path, name, data)
    out = tmp_path / "out"
    line = assert_one_line_error(run_cli("ingest", "kineto", good, bad, "--out", out), str(bad))
    assert problem in line, line
    assert not out.exists()


def test_cli_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    out = tmp_path / "out"
    assert_one_line_error(run_cli("ingest", "kineto", missing, "--out", out), str(missing))
    assert not out.exists()


# --- fuzz -----------------------------------------------------------------------------------------

SMALL = _trace_bytes(0)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _ingests_or_trace_error(data: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            trace, report = ingest_kineto([path])
        except TraceError as e:
            assert str(path) in str(e), str(e)
        else:
            assert trace.num_ops > 0 and report.files == [str(path)]


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """The small valid file, truncated at a random point and/or with bytes flipped or replaced."""
    data = bytearray(SMALL)
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data) - 1)) :]
    for _ in range(draw(st.integers(0 if len(data) < len(SMALL) else 1, 4))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if draw(st.booleans()):
            data[i] ^= 1 << draw(st.integers(0, 7))
        else:
            data[i] = draw(st.sampled_from(b'{}[]",:0-.eE \\\x00\xff'))
    return bytes(data)


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _ingests_or_trace_error(data, "fuzz.json")


@FUZZ
@given(_mutated(), st.booleans())
def test_fuzz_mutated_trace(data: bytes, gz: bool) -> None:
    _ingests_or_trace_error(gzip.compress(data) if gz else data, "fuzz.json.gz" if gz else "fuzz.json")


@FUZZ
@given(st.data())
def test_fuzz_corrupt_gzip(data: st.DataObject) -> None:
    raw = bytearray(gzip.compress(SMALL))
    cut = data.draw(st.integers(2, len(raw)))
    raw = raw[:cut]
    if len(raw) > 2 and data.draw(st.booleans()):
        i = data.draw(st.integers(2, len(raw) - 1))
        raw[i] ^= 1 << data.draw(st.integers(0, 7))
    _ingests_or_trace_error(bytes(raw), "fuzz.json.gz")
