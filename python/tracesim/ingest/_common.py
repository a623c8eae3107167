"""Pieces the Kineto and Chakra/PyTorch-ET ingesters share (private to `tracesim.ingest`)."""

from __future__ import annotations

import gc
import gzip
import json
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracesim import format
from tracesim._core import JsonListReader
from tracesim.exceptions import TraceError
from tracesim.trace import Trace

# Bytes per element of the `dtype` strings PyTorch writes in collective metadata.
DTYPE_BYTES = {
    "float": 4,
    "float32": 4,
    "double": 8,
    "float64": 8,
    "half": 2,
    "float16": 2,
    "bfloat16": 2,
    "int": 4,
    "int32": 4,
    "long": 8,
    "int64": 8,
    "short": 2,
    "int16": 2,
    "byte": 1,
    "uint8": 1,
    "char": 1,
    "int8": 1,
    "bool": 1,
}
FORMAT_DTYPE = {"float": "fp32", "float32": "fp32", "bfloat16": "bf16", "half": "fp16", "float16": "fp16"}

COLL_NAMES = {
    "allreduce": "all_reduce",
    "all_reduce": "all_reduce",
    "allreduce_coalesced": "all_reduce",
    "allgather": "all_gather",
    "all_gather": "all_gather",
    "allgather_base": "all_gather",
    "all_gather_into_tensor": "all_gather",
    "allgather_into_tensor_coalesced": "all_gather",
    "allgather_coalesced": "all_gather",
    "reduce_scatter": "reduce_scatter",
    "reducescatter": "reduce_scatter",
    "reduce_scatter_base": "reduce_scatter",
    "reduce_scatter_tensor": "reduce_scatter",
    "reduce_scatter_tensor_coalesced": "reduce_scatter",
    "alltoall": "all_to_all",
    "all_to_all": "all_to_all",
    "alltoall_base": "all_to_all",
    "all_to_all_single": "all_to_all",
    "alltoallv": "all_to_all",
    "broadcast": "broadcast",
    "reduce": "reduce",
    "barrier": "barrier",
}

# Problems of collectives both ingesters count (they keep such ops as compute/communication).
NO_PEER_FILES = "collective without its peer ranks (their files absent)"
OUTSIDE_GROUP = "collective on a rank outside its process group"
DISAGREE = "collective whose participants disagree on type or size"

# Arrow type of each column of the canonical ops table, from the one schema definition.
OP_COLUMN_TYPES: dict[str, pa.DataType] = {name: col.type for name, col in format.OPS.items()}


class _CollOp(Protocol):
    """What collective matching reads and writes on an ingester's op record."""

    kind: str
    coll: str | None
    comm_bytes: int | None
    group_id: int | None
    coll_seq: int | None


_C = TypeVar("_C", bound=_CollOp)


def _load(path: Path) -> bytes:
    """The bytes of a file, gunzipped when they start with the gzip magic."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TraceError(f"{path}: no such file") from None
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise TraceError(f"{path}: not a readable gzip file: {e}") from None
    return raw


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pauses the cyclic garbage collector: an ingest makes millions of small acyclic objects
    (freed by reference counting), and the collector's passes over them cost a third to half of
    the time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def _ingesting() -> Iterator[None]:
    """What every ingest runs under: the cyclic garbage collector paused (`_no_cyclic_gc`), and
    Arrow buffers from the C allocator that the readers, NumPy and Python's large objects use,
    not from pyarrow's own pool, so that memory one stage frees is reused by the next (the peak is
    15-25% lower; the buffers stay valid once the pool is restored)."""
    pool = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        with _no_cyclic_gc():
            yield
    finally:
        pa.set_memory_pool(pool)


def _starts_like_json(path: Path) -> bool:
    """Whether the (gunzipped) file starts with `{` or `[` after whitespace."""
    try:
        with path.open("rb") as f:
            head = f.read(2)
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as g:
                head = g.read(256)
        else:
            with path.open("rb") as f:
                head = f.read(256)
    except FileNotFoundError:
        raise TraceError(f"{path}: no such file") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise TraceError(f"{path}: not a readable gzip file: {e}") from None
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e.strerror or e}") from None
    return head.lstrip()[:1] in (b"{", b"[")


class _JsonList:
    """The elements of one list of a JSON object file (the first of `keys` that holds one), read
    and parsed one at a time (`tracesim._core.JsonListReader`: streaming, gunzipped on the way),
    so that a large file is never held whole; then the object's other fields (`header`)."""

    def __init__(self, path: Path, keys: Sequence[str]) -> None:
        self.path = path
        self._reader = JsonListReader(path, list(keys))
        self.key = self._reader.key  # None: no such list (or not a JSON object)
        self.is_object = self._reader.is_object

    def __iter__(self) -> Iterator[Any]:
        for i, text in enumerate(self._reader):
            yield _parse_json(text, self.path, f"{self.key}[{i}]")

    def raw_header(self) -> list[tuple[str, str]]:
        """The object's other fields as (key, JSON text), not parsed; complete once the list has
        been read."""
        return self._reader.header()

    def header(self) -> dict[str, Any]:
        """The object's other fields; complete once the list has been read."""
        return {k: _parse_json(v, self.path, k) for k, v in self._reader.header()}


def _parse_json(text: str, path: Path, where: str, parse_float: Callable[[str], Any] | None = None) -> Any:
    """`json.loads(text)`; malformed JSON, integers of more than 4,300 digits and nesting deeper
    than the interpreter's recursion limit are a `TraceError` naming the file and `where`."""
    try:
        return json.loads(text, parse_float=parse_float)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise TraceError(f"{path}: not valid JSON: {where}: {e}") from None


def _category(name: str) -> str:
    """A compute category guessed from a kernel or node name."""
    n = name.lower()
    if any(k in n for k in ("flash", "fmha", "attention", "attn", "sdpa")):
        return "attention"
    if any(k in n for k in ("gemm", "matmul", "cutlass", "xmma", "wgmma", "cublas", "s884", "s1688", "hmma")):
        return "gemm"
    if "norm" in n:
        return "norm"
    if any(k in n for k in ("adam", "sgd", "optimizer", "multi_tensor_apply")):
        return "optimizer"
    if "embedding" in n:
        return "embedding"
    if any(k in n for k in ("reduce", "softmax", "sum_kernel", "argmax")):
        return "reduction"
    if any(k in n for k in ("elementwise", "vectorized", "unrolled", "fill", "copy")):
        return "elementwise"
    return "other"


def _counter_lines(counter: Counter[str]) -> list[str]:
    """One indented `count  key` line per key of a report counter, most common first."""
    return [f"  {v:>9,}  {k}" for k, v in counter.most_common()]


def _problem_lines(problems: Counter[str]) -> list[str]:
    """The report lines of the communication ops kept as compute/communication, by problem."""
    return [f"  kept as compute/communication: {v:,} {k}" for k, v in sorted(problems.items())]


def _match_by_seq(
    per: Mapping[tuple[int, int], list[_C]],
    members: Mapping[int, Sequence[int]],
    missing: str,
    fail: Callable[[_C, str], None],
) -> int:
    """Numbers each (group, rank)'s collectives and matches them by (group, seq); returns how many matched.

    `per` holds each (group id, rank index)'s collectives in issue order and `members` each group's
    rank indices. A (group, seq) is matched when every member has it, with agreeing type and size:
    its ops become kind `collective`. Otherwise their group_id and coll_seq are cleared and `fail`
    gets each with why (`missing` when a peer has no such op).
    """
    for lst in per.values():
        for seq, op in enumerate(lst):
            op.coll_seq = seq
    matched = 0
    for gid, ranks in members.items():
        seqs: dict[int, list[_C]] = defaultdict(list)
        for r in ranks:
            for op in per.get((gid, r), []):
                assert op.coll_seq is not None
                seqs[op.coll_seq].append(op)
        for parts in seqs.values():
            problem = None
            if len(parts) != len(ranks):
                problem = missing
            elif len({(p.coll, p.comm_bytes) for p in parts}) != 1:
                problem = DISAGREE
            for p in parts:
                if problem is None:
                    p.kind = "collective"
                    matched += 1
                else:
                    p.group_id = p.coll_seq = None
                    fail(p, problem)
    return matched


def _ops_table(cols: Mapping[str, Sequence[Any] | pa.Array]) -> pa.Table:
    """The canonical ops table from its columns (in the order given: lists, or Arrow arrays of
    the column's type), typed by OP_COLUMN_TYPES."""
    return pa.table(
        {k: v if isinstance(v, pa.Array) else pa.array(v, OP_COLUMN_TYPES[k]) for k, v in cols.items()}
    )


def _to_trace(
    table: pa.Table,
    used_groups: Sequence[int],
    groups_by_id: Mapping[int, tuple[str, list[int]]],
    source: str,
    names: Sequence[str],
    source_ranks: list[int],
) -> Trace:
    """The validated trace of an ops table, with the groups its collectives use (id → name, ranks)."""
    groups = None
    if used_groups:
        groups = pa.table(
            {
                "group_id": pa.array(used_groups, pa.uint32()),
                "ranks": pa.array([groups_by_id[g][1] for g in used_groups], pa.list_(pa.uint32())),
                "name": pa.array([groups_by_id[g][0] or None for g in used_groups], pa.string()),
            }
        )
    return Trace.from_tables(
        table,
        ranks=len(source_ranks),
        groups=groups,
        source=source + ": " + ", ".join(names),
        source_system=None,
        validate=True,
        source_ranks=source_ranks,
    )


def _codes(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, list[Any]]:
    """A string column as (per row, the index of its value, -1 for null; the distinct values)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    idx = pc.fill_null(col.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return idx, col.dictionary.to_pylist()


def _distinct(*cols: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, list[tuple[Any, ...]]]:
    """Per row, the index of its tuple of values among the distinct tuples; and those tuples."""
    coded = [_codes(c) for c in cols]
    n = len(coded[0][0])
    if n == 0:
        return np.zeros(0, np.int64), []
    rows, inverse = np.unique(np.stack([c for c, _ in coded], 1), axis=0, return_inverse=True)
    values = [
        tuple(words[i] if i >= 0 else None for i, (_, words) in zip(row.tolist(), coded, strict=True))
        for row in rows
    ]
    return inverse.reshape(-1).astype(np.int64), values


def _ints(col: pa.Array | pa.ChunkedArray, null: int = 0) -> np.ndarray:
    """An integer column as int64 values, nulls as `null`."""
    values: np.ndarray = pc.fill_null(col, null).to_numpy(zero_copy_only=False)
    return values.astype(np.int64)


def _counted(
    counter: Counter[str],
    words: Sequence[str],
    codes: np.ndarray,
    order: np.ndarray,
    counts: np.ndarray | None = None,
) -> None:
    """Adds counts[i] (default 1) to counter[words[codes[i]]], words in the order of the least
    `order` of their rows (the first op each was seen at), so that the report lists ties as they
    were met; a word with a count of 0 is listed too."""
    if not len(codes):
        return
    if counts is None:
        counts = np.ones(len(codes), np.int64)
    uniq, inv = np.unique(codes, return_inverse=True)
    inv = inv.reshape(-1)
    total = np.zeros(len(uniq), np.int64)
    np.add.at(total, inv, counts)
    first = np.full(len(uniq), np.iinfo(np.int64).max)
    np.minimum.at(first, inv, order)
    for i in np.argsort(first, kind="stable").tolist():
        counter[words[int(uniq[i])]] += int(total[i])
