"""The trace format, version 1 (DESIGN.md §2): the one definition of every table's columns.

Every reader and writer goes through `conform`, which checks that required columns exist,
casts compatible types to the canonical ones and refuses the rest with an error naming the
file, the column and, where one is at fault, the op_id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import pyarrow as pa
import pyarrow.compute as pc

from tracesim.exceptions import TraceError

FORMAT_NAME = "tracesim-trace"
FORMAT_VERSION = 1

OP_KINDS = ("compute", "memory", "collective", "send", "recv", "host")
Category = Literal[
    "gemm",
    "attention",
    "elementwise",
    "reduction",
    "norm",
    "embedding",
    "optimizer",
    "communication",
    "copy",
    "other",
]
CATEGORIES: tuple[str, ...] = get_args(Category)
Dtype = Literal["fp32", "tf32", "bf16", "fp16", "fp8", "fp4", "int8"]
DTYPES: tuple[str, ...] = get_args(Dtype)
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast", "reduce", "barrier")
PHASES = ("fwd", "bwd", "optim", "prefill", "decode")
TensorClass = Literal[
    "weight",
    "gradient",
    "optimizer_state",
    "activation",
    "kv_cache",
    "workspace",
    "input",
    "other",
]
TENSOR_CLASSES: tuple[str, ...] = get_args(TensorClass)
ACCESS_MODES = ("read", "write")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    required: bool = False
    values: tuple[str, ...] | None = None  # allowed values of a string column


def _cols(*columns: Column) -> dict[str, Column]:
    return {c.name: c for c in columns}


OPS = _cols(
    Column("op_id", pa.uint64(), required=True),
    Column("rank", pa.uint32(), required=True),
    Column("stream", pa.uint32(), required=True),
    Column("name", pa.string(), required=True),
    Column("kind", pa.string(), required=True, values=OP_KINDS),
    Column("category", pa.string(), values=CATEGORIES),
    Column("dtype", pa.string(), values=DTYPES),
    Column("flops", pa.float64()),
    Column("bytes_read", pa.uint64()),
    Column("bytes_written", pa.uint64()),
    Column("duration_ns", pa.int64()),
    Column("start_ns", pa.int64()),
    Column("deps", pa.list_(pa.uint64())),
    Column("coll", pa.string(), values=COLLECTIVES),
    Column("group_id", pa.uint32()),
    Column("coll_seq", pa.uint64()),
    Column("comm_bytes", pa.uint64()),
    Column("peer", pa.uint32()),
    Column("p2p_seq", pa.uint64()),
    Column("src_tier", pa.string()),
    Column("dst_tier", pa.string()),
    Column("iteration", pa.uint32()),
    Column("layer", pa.int32()),
    Column("phase", pa.string(), values=PHASES),
    # Extension of DESIGN.md §2: GEMM problem shape, for wave quantisation in the compute model.
    Column("gemm_m", pa.uint64()),
    Column("gemm_n", pa.uint64()),
    Column("gemm_k", pa.uint64()),
)

GROUPS = _cols(
    Column("group_id", pa.uint32(), required=True),
    Column("ranks", pa.list_(pa.uint32()), required=True),
    Column("name", pa.string()),
)

TENSORS = _cols(
    Column("tensor_id", pa.uint64(), required=True),
    Column("rank", pa.uint32(), required=True),
    Column("bytes", pa.uint64(), required=True),
    Column("class", pa.string(), required=True, values=TENSOR_CLASSES),
    Column("alloc_op", pa.uint64()),
    Column("free_op", pa.uint64()),
)

ACCESSES = _cols(
    Column("op_id", pa.uint64(), required=True),
    Column("tensor_id", pa.uint64(), required=True),
    Column("mode", pa.string(), required=True, values=ACCESS_MODES),
    Column("bytes", pa.uint64()),
)

TABLES = {"ops": OPS, "groups": GROUPS, "tensors": TENSORS, "accesses": ACCESSES}


def schema(columns: dict[str, Column]) -> pa.Schema:
    """The canonical Arrow schema with every column of a table."""
    return pa.schema([pa.field(c.name, c.type) for c in columns.values()])


def _kind(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_dictionary(t):
        return _kind(t.value_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t):
        return "list<" + _kind(t.value_type) + ">"
    if pa.types.is_null(t):
        return "null"
    return str(t)


def _compatible(have: pa.DataType, want: pa.DataType) -> bool:
    h, w = _kind(have), _kind(want)
    if h == "null":
        return True
    if w == "float":
        return h in ("float", "integer")
    return h == w or (h == "list<null>" and w.startswith("list<"))


def _row_label(table: pa.Table, row: int) -> str:
    if "op_id" in table.column_names:
        op_id = table.column("op_id")[row].as_py()
        if op_id is not None:
            return f", op_id {op_id}"
    return f", row {row}"


def _first(mask: pa.ChunkedArray | pa.Array) -> int:
    idx = pc.indices_nonzero(pc.fill_null(mask, False))
    return int(idx[0].as_py())


def _cast(table: pa.Table, col: Column, where: str) -> pa.ChunkedArray:
    arr = table.column(col.name)
    if arr.type == col.type:
        return arr
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if pa.types.is_integer(col.type) and pa.types.is_integer(arr.type):
        span = 2**col.type.bit_width
        lo, hi = (0, span - 1) if pa.types.is_unsigned_integer(col.type) else (-(span // 2), span // 2 - 1)
        mm = pc.min_max(arr)
        mn, mx = mm["min"].as_py(), mm["max"].as_py()
        if (mn is not None and mn < lo) or (mx is not None and mx > hi):
            # Error path only: find the first offending row.
            row = next(i for i, v in enumerate(arr.to_pylist()) if v is not None and not lo <= v <= hi)
            raise TraceError(
                f"{where}: column '{col.name}'{_row_label(table, row)}: value {arr[row].as_py()} "
                f"does not fit {col.type}"
            )
    try:
        return arr.cast(col.type, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise TraceError(
            f"{where}: column '{col.name}': cannot convert {arr.type} to {col.type}: {e}"
        ) from None


def conform(table: pa.Table, columns: dict[str, Column], where: str) -> pa.Table:
    """Checks and casts `table` to the canonical schema; `where` names the file in errors.

    Columns the format does not define are kept as they are.
    """
    for col in columns.values():
        if col.required and col.name not in table.column_names:
            raise TraceError(f"{where}: column '{col.name}': missing required column")
    out = table
    for col in columns.values():
        if col.name not in table.column_names:
            continue
        have = table.column(col.name).type
        if not _compatible(have, col.type):
            raise TraceError(f"{where}: column '{col.name}': has type {have}, expected {col.type}")
        arr = _cast(table, col, where)
        if col.required and arr.null_count:
            row = _first(pc.is_null(arr))
            raise TraceError(
                f"{where}: column '{col.name}'{_row_label(table, row)}: null in a required column"
            )
        if col.values is not None:
            bad = pc.invert(pc.is_in(arr, value_set=pa.array(col.values)))
            bad = pc.and_(bad, pc.is_valid(arr))
            if pc.any(bad).as_py():
                row = _first(bad)
                raise TraceError(
                    f"{where}: column '{col.name}'{_row_label(table, row)}: unknown value "
                    f"{arr[row].as_py()!r}; expected one of: {', '.join(col.values)}"
                )
        if col.name == "duration_ns" and len(arr) and (pc.min(arr).as_py() or 0) < 0:
            row = _first(pc.less(arr, 0))
            raise TraceError(
                f"{where}: column 'duration_ns'{_row_label(table, row)}: negative duration {arr[row].as_py()}"
            )
        out = out.set_column(out.column_names.index(col.name), pa.field(col.name, col.type), arr)
    return out
