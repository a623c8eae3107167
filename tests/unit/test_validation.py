"""Bad traces are refused on load with a TraceError naming the file, the column and the op_id
(DESIGN.md §2); deadlocks are reported with the blocked ops (DESIGN.md §3)."""

from __future__ import annotations

import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tracesim
from tests.tracedirs import OPS_TYPES, SAMPLE_TRACES, Row, base_groups, base_ops, ops_table, write_trace_dir
from tracesim import SimulationError, TraceError

TraceWriter = Callable[..., Path]


def trace_error(path: Path) -> str:
    """The message of the TraceError that reading `path` raises."""
    with pytest.raises(TraceError) as info:
        tracesim.read_trace(path)
    return str(info.value)


def assert_names(
    msg: str,
    file: Path,
    column: str | None = None,
    op_id: int | None = None,
) -> None:
    """`msg` names the file (full path), the column and the op_id, on one line."""
    assert "\n" not in msg, f"error message is not one line: {msg!r}"
    assert str(file) in msg, f"{file} not named in: {msg}"
    if column is not None:
        assert f"column '{column}'" in msg, f"column {column!r} not named in: {msg}"
    if op_id is not None:
        assert re.search(rf"\bop_id {op_id}\b", msg), f"op_id {op_id} not named in: {msg}"


def reason(msg: str, file: Path) -> str:
    """The part of the message after the file name (paths may contain digits and test names)."""
    return msg.split(str(file), 1)[1]


def find(rows: list[Row], op_id: int) -> Row:
    return next(r for r in rows if r["op_id"] == op_id)


def drop(rows: list[Row], *op_ids: int) -> list[Row]:
    return [r for r in rows if r["op_id"] not in op_ids]


# --------------------------------------------------------------------------- baseline


def test_base_trace_is_valid(make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row]) -> None:
    """The trace the other tests break is itself valid, so each test isolates one fault."""
    path = make_trace(valid_ops, groups=valid_groups)
    trace = tracesim.read_trace(path)
    assert trace.num_ops == len(valid_ops)
    result = tracesim.simulate(trace, "dgx-h100", compute_model="measured")
    assert result.timeline.height == len(valid_ops)


def test_compatible_integer_types_are_accepted(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row]
) -> None:
    types = {"op_id": pa.int64(), "rank": pa.int64(), "stream": pa.int32(), "coll_seq": pa.int32()}
    path = make_trace(ops_table(valid_ops, types), groups=valid_groups)
    trace = tracesim.read_trace(path)
    assert trace.ops.schema.field("rank").type == pa.uint32()
    assert trace.ops.schema.field("op_id").type == pa.uint64()


# --------------------------------------------------------------------------- columns


@pytest.mark.parametrize("column", ["op_id", "rank", "stream", "name", "kind"])
def test_missing_required_column(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row], column: str
) -> None:
    for r in valid_ops:
        del r[column]
    path = make_trace(valid_ops, groups=valid_groups)
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", column)
    assert "missing" in msg


@pytest.mark.parametrize(
    ("column", "arrow_type", "convert"),
    [
        ("rank", pa.string(), str),
        ("stream", pa.float64(), float),
        ("op_id", pa.float64(), float),
        ("name", pa.int64(), lambda v: len(v)),
        ("kind", pa.int64(), lambda v: len(v)),
        ("deps", pa.list_(pa.string()), lambda v: [str(d) for d in v]),
        ("duration_ns", pa.string(), lambda v: None if v is None else str(v)),
        ("group_id", pa.string(), lambda v: None if v is None else str(v)),
    ],
)
def test_mistyped_column(
    make_trace: TraceWriter,
    valid_ops: list[Row],
    valid_groups: list[Row],
    column: str,
    arrow_type: pa.DataType,
    convert: Callable[[Any], Any],
) -> None:
    for r in valid_ops:
        r[column] = convert(r.get(column))
    path = make_trace(ops_table(valid_ops, {column: arrow_type}), groups=valid_groups)
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", column)
    assert "type" in msg


def test_mistyped_groups_column(make_trace: TraceWriter, valid_ops: list[Row]) -> None:
    groups = pa.table({"group_id": pa.array([0], pa.uint32()), "ranks": pa.array(["0,1"])})
    path = make_trace(valid_ops, groups=groups)
    assert_names(trace_error(path), path / "groups.parquet", "ranks")


def test_kind_with_unknown_value(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row]
) -> None:
    find(valid_ops, 7)["kind"] = "warp_drive"
    path = make_trace(valid_ops, groups=valid_groups)
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", "kind", 7)
    assert "warp_drive" in msg


def test_coll_with_unknown_value(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row]
) -> None:
    find(valid_ops, 4)["coll"] = "all_reduce_scatter"
    path = make_trace(valid_ops, groups=valid_groups)
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", "coll", 4)
    assert "all_reduce_scatter" in msg


@pytest.mark.parametrize("column", ["rank", "stream", "name", "kind"])
def test_null_in_required_column(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row], column: str
) -> None:
    find(valid_ops, 7)[column] = None
    path = make_trace(valid_ops, groups=valid_groups)
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", column, 7)
    assert "null" in msg


def test_null_op_id(make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row]) -> None:
    find(valid_ops, 7)["op_id"] = None
    path = make_trace(valid_ops, groups=valid_groups)
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", "op_id")
    assert "null" in msg


def test_negative_rank_does_not_fit(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row]
) -> None:
    find(valid_ops, 7)["rank"] = -1
    path = make_trace(ops_table(valid_ops, {"rank": pa.int64()}), groups=valid_groups)
    assert_names(trace_error(path), path / "ops.parquet", "rank", 7)


def test_null_inside_deps(make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row]) -> None:
    find(valid_ops, 8)["deps"] = [4, None]
    path = make_trace(valid_ops, groups=valid_groups)
    assert_names(trace_error(path), path / "ops.parquet", "deps", 8)


# --------------------------------------------------------------------------- ids, deps, cycles


def _scaled(rows: list[Row], scale: int) -> list[Row]:
    """op_ids multiplied by `scale` (a large scale makes them sparse, a different id index)."""
    for r in rows:
        r["op_id"] *= scale
        r["deps"] = [d * scale for d in r["deps"]]
    return rows


@pytest.mark.parametrize("scale", [1, 10**12], ids=["dense", "sparse"])
def test_duplicate_op_id(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row], scale: int
) -> None:
    find(valid_ops, 8)["op_id"] = 7
    path = make_trace(_scaled(valid_ops, scale), groups=valid_groups)
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", "op_id", 7 * scale)
    assert "duplicate" in msg


@pytest.mark.parametrize("scale", [1, 10**12], ids=["dense", "sparse"])
def test_dependency_on_unknown_op(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row], scale: int
) -> None:
    find(valid_ops, 7)["deps"] = [3, 99]
    path = make_trace(_scaled(valid_ops, scale), groups=valid_groups)
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", "deps", 7 * scale)
    assert re.search(rf"\b{99 * scale}\b", reason(msg, path / "ops.parquet")), msg


def _cycle_ids(msg: str) -> set[int]:
    """The op_ids listed after 'cycle' in the message."""
    assert "cycle" in msg, msg
    return {int(x) for x in re.findall(r"\d+", msg.rsplit("cycle", 1)[1])}


def test_dependency_cycle_across_ranks(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row]
) -> None:
    c = {"kind": "compute", "name": "k", "duration_ns": 10}
    valid_ops += [
        {"op_id": 9, "rank": 0, "stream": 2, "deps": [10], **c},
        {"op_id": 10, "rank": 1, "stream": 2, "deps": [9], **c},
        {"op_id": 11, "rank": 0, "stream": 2, "deps": [], **c},  # after the cycle, not in it
        {"op_id": 12, "rank": 1, "stream": 0, "deps": [10], **c},  # after the cycle, not in it
    ]
    path = make_trace(valid_ops, groups=valid_groups)
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", "deps")
    assert re.search(r"\bop_id (9|10)\b", msg), msg
    assert _cycle_ids(msg) == {9, 10}


def test_dependency_cycle_in_one_stream(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row]
) -> None:
    """A dep on a later op of the same stream: stream order 20 → 21 → 22, and 20 waits for 22."""
    c = {"kind": "compute", "name": "k", "duration_ns": 10}
    valid_ops += [
        {"op_id": 20, "rank": 1, "stream": 3, "deps": [22], **c},
        {"op_id": 21, "rank": 1, "stream": 3, "deps": [], **c},
        {"op_id": 22, "rank": 1, "stream": 3, "deps": [], **c},
        {"op_id": 23, "rank": 0, "stream": 3, "deps": [21], **c},  # after the cycle, not in it
    ]
    path = make_trace(valid_ops, groups=valid_groups)
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", "deps")
    assert re.search(r"\bop_id (20|21|22)\b", msg), msg
    assert _cycle_ids(msg) == {20, 21, 22}


def test_self_dependency_is_a_cycle(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row]
) -> None:
    find(valid_ops, 7)["deps"] = [3, 7]
    path = make_trace(valid_ops, groups=valid_groups)
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", "deps", 7)
    assert _cycle_ids(msg) == {7}


# --------------------------------------------------------------------------- collectives


def test_collective_missing_a_rank(make_trace: TraceWriter, valid_ops: list[Row]) -> None:
    """Group 0 is {0, 1, 2} but only ranks 0 and 1 run its coll_seq 0."""
    path = make_trace(valid_ops, ranks=3, groups=[{"group_id": 0, "ranks": [0, 1, 2]}])
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", "coll_seq")
    assert re.search(r"\bop_id (3|4)\b", msg), msg
    assert "[2]" in reason(msg, path / "ops.parquet"), f"missing rank 2 not named: {msg}"


def test_collective_on_a_rank_outside_the_group(make_trace: TraceWriter, valid_ops: list[Row]) -> None:
    extra = {**find(valid_ops, 3), "op_id": 9, "rank": 2, "deps": []}
    valid_ops.append(extra)
    path = make_trace(valid_ops, ranks=3, groups=base_groups())
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", "group_id", 9)
    assert "rank 2" in msg


def test_two_ops_of_one_rank_in_one_collective(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row]
) -> None:
    """Rank 0 has two ops with (group_id 0, coll_seq 0): 3 and 9."""
    valid_ops.append({**find(valid_ops, 3), "op_id": 9, "stream": 2, "deps": []})
    path = make_trace(valid_ops, groups=valid_groups)
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", "coll_seq")
    assert re.search(r"\bop_id (3|9)\b", msg), msg
    rest = reason(msg, path / "ops.parquet")
    assert re.search(r"\b3\b", rest) and re.search(r"\b9\b", rest), f"both ops not named: {msg}"


def test_participants_disagree_on_coll(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row]
) -> None:
    find(valid_ops, 4)["coll"] = "all_gather"
    path = make_trace(valid_ops, groups=valid_groups)
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", "coll")
    assert re.search(r"\bop_id (3|4)\b", msg), msg
    rest = reason(msg, path / "ops.parquet")
    assert re.search(r"\b3\b", rest) and re.search(r"\b4\b", rest), f"both ops not named: {msg}"
    assert "all_gather" in msg and "all_reduce" in msg


@pytest.mark.parametrize("bytes_", [12345, None], ids=["different", "null"])
def test_participants_disagree_on_comm_bytes(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row], bytes_: int | None
) -> None:
    find(valid_ops, 4)["comm_bytes"] = bytes_
    path = make_trace(valid_ops, groups=valid_groups)
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", "comm_bytes")
    assert re.search(r"\bop_id (3|4)\b", msg), msg
    assert str(1 << 20) in msg and (bytes_ is None or str(bytes_) in msg)
    # The message is for users: no Rust Debug syntax such as Some(12345) or None.
    assert not re.search(r"\bSome\(|\bNone\b", msg), f"Rust Option syntax in message: {msg}"


def test_collective_group_not_in_groups(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row]
) -> None:
    for op_id in (3, 4):
        find(valid_ops, op_id)["group_id"] = 9
    path = make_trace(valid_ops, groups=valid_groups)
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", "group_id")
    assert re.search(r"\bop_id (3|4)\b", msg), msg
    assert "groups.parquet" in msg and re.search(r"\b9\b", reason(msg, path / "ops.parquet"))


def test_collectives_without_groups_file(make_trace: TraceWriter, valid_ops: list[Row]) -> None:
    path = make_trace(valid_ops, groups=None)
    msg = trace_error(path)
    assert_names(msg, path / "groups.parquet")
    assert re.search(r"\bop_id (3|4)\b", msg), msg


def test_collective_without_group_id(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row]
) -> None:
    find(valid_ops, 4)["group_id"] = None
    path = make_trace(valid_ops, groups=valid_groups)
    assert_names(trace_error(path), path / "ops.parquet", "group_id", 4)


def test_group_naming_ranks_that_do_not_exist(make_trace: TraceWriter, valid_ops: list[Row]) -> None:
    path = make_trace(valid_ops, groups=[{"group_id": 0, "ranks": [0, 1, 5]}])
    msg = trace_error(path)
    assert_names(msg, path / "groups.parquet", "ranks")
    assert re.search(r"\b5\b", reason(msg, path / "groups.parquet")), msg


def test_duplicate_group_id(make_trace: TraceWriter, valid_ops: list[Row]) -> None:
    groups = [{"group_id": 0, "ranks": [0, 1]}, {"group_id": 0, "ranks": [0]}]
    path = make_trace(valid_ops, groups=groups)
    assert_names(trace_error(path), path / "groups.parquet", "group_id")


# --------------------------------------------------------------------------- send / recv


def test_send_without_recv(make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row]) -> None:
    valid_ops = drop(valid_ops, 6)
    find(valid_ops, 8)["deps"] = [4]
    path = make_trace(valid_ops, groups=valid_groups)
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", "p2p_seq", 5)
    assert "recv" in msg


def test_recv_without_send(make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row]) -> None:
    path = make_trace(drop(valid_ops, 5), groups=valid_groups)
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", "p2p_seq", 6)
    assert "send" in msg


def test_send_and_recv_disagree_on_p2p_seq(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row]
) -> None:
    find(valid_ops, 6)["p2p_seq"] = 1
    path = make_trace(valid_ops, groups=valid_groups)
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", "p2p_seq")
    assert re.search(r"\bop_id (5|6)\b", msg), msg


@pytest.mark.parametrize(("op_id", "rank"), [(5, 0), (6, 1)], ids=["send", "recv"])
def test_send_to_itself(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row], op_id: int, rank: int
) -> None:
    find(valid_ops, op_id)["peer"] = rank
    path = make_trace(valid_ops, groups=valid_groups)
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", "peer", op_id)
    assert "itself" in msg


@pytest.mark.parametrize("op_id", [5, 6], ids=["send", "recv"])
def test_peer_outside_ranks(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row], op_id: int
) -> None:
    find(valid_ops, op_id)["peer"] = 7
    path = make_trace(valid_ops, groups=valid_groups)
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", "peer", op_id)
    assert re.search(r"\b7\b", reason(msg, path / "ops.parquet")), msg


def test_send_without_peer(make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row]) -> None:
    find(valid_ops, 5)["peer"] = None
    path = make_trace(valid_ops, groups=valid_groups)
    assert_names(trace_error(path), path / "ops.parquet", "peer", 5)


# --------------------------------------------------------------------------- values


def test_negative_duration(make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row]) -> None:
    find(valid_ops, 7)["duration_ns"] = -5
    path = make_trace(valid_ops, groups=valid_groups)
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", "duration_ns", 7)
    assert "-5" in msg


def test_rank_outside_ranks(make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row]) -> None:
    find(valid_ops, 7)["rank"] = 5
    path = make_trace(valid_ops, groups=valid_groups)
    msg = trace_error(path)
    assert_names(msg, path / "ops.parquet", "rank", 7)
    assert re.search(r"\b5\b", reason(msg, path / "ops.parquet")), msg


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("file", ["ops.parquet", "groups.parquet"])
def test_malformed_parquet(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row], file: str
) -> None:
    path = make_trace(valid_ops, groups=valid_groups)
    (path / file).write_bytes(b"PAR1 this is not a parquet file \x00\x01\x02" * 10)
    assert_names(trace_error(path), path / file)


def test_missing_ops_file(make_trace: TraceWriter) -> None:
    path = make_trace(None)
    assert_names(trace_error(path), path / "ops.parquet")


def test_missing_trace_json(make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row]) -> None:
    path = make_trace(valid_ops, groups=valid_groups)
    (path / "trace.json").unlink()
    assert_names(trace_error(path), path / "trace.json")


@pytest.mark.parametrize(
    "text",
    ["{not json", "", "\xff\xfe", "[1, 2, 3]"],
    ids=["broken", "empty", "binary", "not-an-object"],
)
def test_trace_json_not_json(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row], text: str
) -> None:
    path = make_trace(valid_ops, groups=valid_groups)
    (path / "trace.json").write_bytes(text.encode("latin-1"))
    assert_names(trace_error(path), path / "trace.json")


@pytest.mark.parametrize("ranks", [0, -2, "2", None, 1.5, True])
def test_trace_json_bad_ranks(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row], ranks: Any
) -> None:
    path = make_trace(valid_ops, groups=valid_groups, meta={"ranks": ranks})
    msg = trace_error(path)
    assert_names(msg, path / "trace.json")
    assert "'ranks'" in msg


@pytest.mark.parametrize(("field", "value"), [("format", "chakra"), ("version", 2)])
def test_trace_json_wrong_format_or_version(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row], field: str, value: Any
) -> None:
    path = make_trace(valid_ops, groups=valid_groups, meta={field: value})
    msg = trace_error(path)
    assert_names(msg, path / "trace.json")
    assert f"'{field}'" in msg


def test_empty_trace_is_valid(make_trace: TraceWriter) -> None:
    """A trace with the required columns and no rows is empty, not malformed."""
    ops = pa.table({c: pa.array([], OPS_TYPES[c]) for c in ("op_id", "rank", "stream", "name", "kind")})
    path = make_trace(ops, ranks=1)
    trace = tracesim.read_trace(path)
    assert trace.num_ops == 0


def test_path_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    path.write_text("{}")
    assert_names(trace_error(path), path)


def test_path_does_not_exist(tmp_path: Path) -> None:
    path = tmp_path / "nowhere"
    assert_names(trace_error(path), path)


def test_simulate_validates_a_trace_directory(
    make_trace: TraceWriter, valid_ops: list[Row], valid_groups: list[Row]
) -> None:
    """simulate(path) refuses a bad trace with a TraceError too, naming the file."""
    find(valid_ops, 7)["deps"] = [3, 99]
    path = make_trace(valid_ops, groups=valid_groups)
    with pytest.raises(TraceError) as info:
        tracesim.simulate(path, "dgx-h100")
    assert_names(str(info.value), path / "ops.parquet", "deps", 7)


# --------------------------------------------------------------------------- row order


def _timeline(path: Path) -> pl.DataFrame:
    return tracesim.simulate(path, "dgx-h100").timeline.sort("op_id")


def _shuffled_copy(src: Path, dst: Path, seed: int) -> Path:
    shutil.copytree(src, dst)
    for file in ("ops.parquet", "groups.parquet"):
        if (dst / file).exists():
            table = pq.read_table(dst / file)
            order = list(range(table.num_rows))
            random.Random(seed).shuffle(order)
            pq.write_table(table.take(order), dst / file)
    return dst


@pytest.mark.parametrize("sample", ["dp2_allreduce", "pp8_gpipe"])
def test_shuffled_rows_give_the_same_timeline(tmp_path: Path, sample: str) -> None:
    src = SAMPLE_TRACES / sample
    expected = _timeline(src)
    for seed in range(3):
        shuffled = _shuffled_copy(src, tmp_path / f"s{seed}", seed)
        assert pq.read_table(shuffled / "ops.parquet").column("op_id").to_pylist() != sorted(
            pq.read_table(shuffled / "ops.parquet").column("op_id").to_pylist()
        )
        assert tracesim.read_trace(shuffled).num_ops == expected.height
        got = _timeline(shuffled)
        assert got.equals(expected), f"seed {seed}: timelines differ"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(range(len(base_ops()))))
def test_shuffled_base_trace_gives_the_same_timeline(tmp_path: Path, order: list[int]) -> None:
    rows = base_ops()
    sorted_dir = tmp_path / "sorted"
    if not sorted_dir.exists():
        write_trace_dir(sorted_dir, rows, groups=base_groups())
    shuffled = write_trace_dir(tmp_path / "shuffled", [rows[i] for i in order], groups=base_groups())
    assert _timeline(shuffled).equals(_timeline(sorted_dir))


# --------------------------------------------------------------------------- deadlock


def test_deadlock_is_reported_with_blocked_ops(make_trace: TraceWriter) -> None:
    """Rank 0 runs collective A then B on one stream, rank 1 runs B then A: neither can start."""
    coll = {"kind": "collective", "coll": "all_reduce", "coll_seq": 0, "comm_bytes": 1024, "stream": 0}
    ops = [
        {"op_id": 10, "rank": 0, "name": "A", "group_id": 0, **coll},
        {"op_id": 11, "rank": 0, "name": "B", "group_id": 1, **coll},
        {"op_id": 20, "rank": 1, "name": "B", "group_id": 1, **coll},
        {"op_id": 21, "rank": 1, "name": "A", "group_id": 0, **coll},
    ]
    groups = [{"group_id": 0, "ranks": [0, 1], "name": "A"}, {"group_id": 1, "ranks": [0, 1], "name": "B"}]
    path = make_trace(ops, groups=groups)
    tracesim.read_trace(path)  # valid-looking: no cycle through stream order and deps
    with pytest.raises(SimulationError) as info:
        tracesim.simulate(path, "dgx-h100")
    msg = str(info.value)
    assert msg.startswith("deadlock"), msg
    assert "\n" not in msg
    # op_id N is named between "rank R" and the next rank's entry.
    for rank, op_id in ((0, 10), (1, 20)):
        assert re.search(rf"rank {rank}\b(?:(?!rank \d).)*\bop_id {op_id}\b", msg), (
            f"rank {rank} blocked at op_id {op_id} not named in: {msg}"
        )


def test_deadlock_through_send_recv_order(make_trace: TraceWriter) -> None:
    """Both ranks receive before they send, on one stream each."""
    p2p = {"stream": 0, "comm_bytes": 64, "p2p_seq": 0}
    ops = [
        {"op_id": 1, "rank": 0, "name": "r", "kind": "recv", "peer": 1, **p2p},
        {"op_id": 2, "rank": 0, "name": "s", "kind": "send", "peer": 1, **p2p},
        {"op_id": 3, "rank": 1, "name": "r", "kind": "recv", "peer": 0, **p2p},
        {"op_id": 4, "rank": 1, "name": "s", "kind": "send", "peer": 0, **p2p},
    ]
    path = make_trace(ops)
    tracesim.read_trace(path)
    with pytest.raises(SimulationError) as info:
        tracesim.simulate(path, "dgx-h100")
    msg = str(info.value)
    assert msg.startswith("deadlock"), msg
    for rank, op_id in ((0, 1), (1, 3)):
        assert re.search(rf"rank {rank}\b(?:(?!rank \d).)*\bop_id {op_id}\b", msg), msg


# --------------------------------------------------------------------------- fuzz


@st.composite
def _random_trace(draw: st.DrawFn) -> tuple[int, list[Row], pa.Table]:
    """Small traces that are often valid and often broken in one or two ways."""
    ranks = draw(st.integers(1, 3))
    n = draw(st.integers(1, 8))
    ids = draw(st.lists(st.integers(0, 12), min_size=n, max_size=n))
    rank = st.one_of(st.integers(0, ranks - 1), st.integers(0, ranks))  # mostly in range
    kind = st.sampled_from(["compute", "collective", "send", "recv", "host", "memory"])
    rows = []
    for op_id in ids:
        rows.append(
            {
                "op_id": op_id,
                "rank": draw(rank),
                "stream": draw(st.integers(0, 1)),
                "name": "op",
                "kind": draw(kind),
                "duration_ns": draw(st.one_of(st.none(), st.integers(-1, 1000))),
                "deps": draw(st.lists(st.sampled_from([*ids, 13]), max_size=2)),
                "coll": draw(st.sampled_from([None, "all_reduce", "barrier"])),
                "group_id": draw(st.one_of(st.none(), st.integers(0, 1))),
                "coll_seq": draw(st.one_of(st.none(), st.integers(0, 1))),
                "comm_bytes": draw(st.sampled_from([None, 8, 16])),
                "peer": draw(st.one_of(st.none(), rank)),
                "p2p_seq": draw(st.one_of(st.none(), st.integers(0, 1))),
            }
        )
    group_rows = draw(
        st.lists(
            st.fixed_dictionaries(
                {"group_id": st.integers(0, 2), "ranks": st.lists(rank, min_size=1, max_size=3, unique=True)}
            ),
            max_size=2,
        )
    )
    groups = pa.table(
        {
            "group_id": pa.array([g["group_id"] for g in group_rows], pa.uint32()),
            "ranks": pa.array([g["ranks"] for g in group_rows], pa.list_(pa.uint32())),
        }
    )
    return ranks, rows, groups


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_random_trace(), with_groups=st.booleans())
def test_random_traces_fail_cleanly(
    tmp_path: Path, case: tuple[int, list[Row], pa.Table], with_groups: bool
) -> None:
    """Any trace is either read, or refused with a one-line TraceError naming a file; a trace
    that is read replays or reports a deadlock, never anything else."""
    ranks, rows, groups = case
    path = tmp_path / "t"
    if path.exists():
        shutil.rmtree(path)
    write_trace_dir(path, ops_table(rows), ranks=ranks, groups=groups if with_groups else None)
    try:
        trace = tracesim.read_trace(path)
    except TraceError as e:
        msg = str(e)
        assert "\n" not in msg, msg
        assert re.search(r"(trace\.json|ops\.parquet|groups\.parquet)", msg), msg
        return
    try:
        result = tracesim.simulate(trace, "dgx-h100")
    except SimulationError as e:
        assert str(e).startswith("deadlock"), str(e)
        return
    assert sorted(result.timeline["op_id"].to_list()) == sorted(r["op_id"] for r in rows)
