"""Chakra execution traces and PyTorch execution-trace JSON → canonical trace.

`tracesim ingest chakra` reads, one file per rank (plain or gzip):

- the Chakra protobuf stream (`<prefix>.<rank>.et`): a varint32 length, then that many bytes of a
  message; first a `GlobalMetadata`, then `Node`s. The wire format is decoded here by hand (no
  protobuf dependency), with the field numbers of `et_def.proto` (package `ChakraProtoMsg`):
  Node id 1, name 2, type 3, ctrl_deps 4, data_deps 5 (packed or not), start_time_micros 6,
  duration_micros 7, inputs 8, outputs 9, attr 10; AttributeProto name 1, value oneof 3..32
  (scalars and `*List{values = 1}`), IOInfo values 1, shapes 2, types 3;
- the Chakra JSON rendering (`{"workload_graph": [{"Id", "Name", "NodeType", "data_deps",
  "ctrlDeps", "runtime", "is_cpu_op", ...}]}`);
- PyTorch execution-trace JSON (`{"schema": "1.0.x"/"1.1.x…", "nodes": [...]}`), also on its own
  through `tracesim ingest pytorch-et`.

What becomes an op (Chakra): COMP_NODE → `compute` (`host` when `is_cpu_op`), duration from
`duration_micros`/`runtime`, FLOPs from `num_ops`, bytes from `tensor_size`; COMM_COLL_NODE with a
`comm_type` → `collective` (`coll`, `comm_bytes` from `comm_size`, group from `pg_name`) when all
of its group's ranks are among the files; otherwise, and for the CPU-side `c10d::*` COMM_COLL
nodes that carry no `comm_type`, `compute`/`host` with category `communication` and its measured
duration (counted). COMM_SEND/RECV_NODE → `send`/`recv` (peer from `comm_dst`/`comm_src`) when the
peer's file is present and the messages pair up, else `compute`/`communication` (counted).
MEM_LOAD/STORE_NODE → `memory` (category `copy`). METADATA_NODE and INVALID_NODE are dropped and
counted; a dep through a dropped node is reconnected to that node's own deps (transitively).

Deps come from `data_deps` (what the ASTRA-sim feeder waits on; `deps="ctrl"` or `"both"` use
`ctrl_deps` too); a dep on a node that is not in the file is counted and ignored. Each rank's
nodes are put in a topological order (lowest node id first among the ready ones, as the Chakra
feeder issues them) which gives the op_ids; stream = one per (`is_cpu_op`, `tid`) so ops of one
thread or GPU stream run one at a time.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracesim._core import decode_chakra, read_chakra_json, resolve_chakra_deps
from tracesim.exceptions import TraceError
from tracesim.ingest._common import (
    COLL_NAMES,
    DTYPE_BYTES,
    FORMAT_DTYPE,
    NO_PEER_FILES,
    OP_COLUMN_TYPES,
    OUTSIDE_GROUP,
    _category,
    _codes,
    _counted,
    _counter_lines,
    _distinct,
    _ingesting,
    _ints,
    _JsonList,
    _load,
    _match_by_seq,
    _problem_lines,
    _starts_like_json,
    _to_trace,
)
from tracesim.trace import Trace

DepMode = Literal["data", "ctrl", "both"]

# NodeType (et_def.proto)
INVALID_NODE, METADATA_NODE, MEM_LOAD_NODE, MEM_STORE_NODE = 0, 1, 2, 3
COMP_NODE, COMM_SEND_NODE, COMM_RECV_NODE, COMM_COLL_NODE = 4, 5, 6, 7
NODE_TYPE_NAMES = {
    0: "INVALID_NODE",
    1: "METADATA_NODE",
    2: "MEM_LOAD_NODE",
    3: "MEM_STORE_NODE",
    4: "COMP_NODE",
    5: "COMM_SEND_NODE",
    6: "COMM_RECV_NODE",
    7: "COMM_COLL_NODE",
}
# CollectiveCommType (et_def.proto); GATHER/SCATTER have no canonical counterpart.
COMM_TYPES = {
    0: "all_reduce",
    1: "reduce",
    2: "all_gather",
    5: "broadcast",
    6: "all_to_all",
    7: "reduce_scatter",
    8: "reduce_scatter",
    9: "barrier",
}

# Process groups larger than this are not taken as one (no job has that many ranks).
MAX_GROUP_SIZE = 1 << 20

# `<prefix>.<rank>.et` (or .json); the prefix must not end in a digit or a dot, so that a version
# number such as `1.0.2-chakra.0.0.4.json` is not read as rank 4.
RANK_RE = re.compile(r"^.*[^\d.]\.(\d+)\.(?:et|json)(?:\.gz)?$")


@dataclass
class ChakraReport:
    """What `ingest_chakra`/`ingest_pytorch_et` made of their input; nothing goes uncounted."""

    files: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)  # per file: protobuf, chakra-json, pytorch-et
    source_ranks: list[int] = field(default_factory=list)
    nodes: int = 0
    nodes_by_type: Counter[str] = field(default_factory=Counter)
    ops_by_kind: Counter[str] = field(default_factory=Counter)
    deps: int = 0
    deps_reconnected: int = 0  # deps that went through a dropped node, reconnected to its deps
    deps_outside_file: int = 0  # deps on node ids that are not in the file (ignored)
    collectives_matched: int = 0
    p2p_matched: int = 0
    collective_problems: Counter[str] = field(default_factory=Counter)
    unmapped: Counter[str] = field(default_factory=Counter)

    @property
    def ranks(self) -> int:
        return len(self.source_ranks)

    def lines(self) -> list[str]:
        """A one-screen text rendering (the CLI prints it)."""
        out = [
            f"files {len(self.files)} ({', '.join(sorted(set(self.formats)))}), ranks {self.ranks} "
            f"(source ranks {self.source_ranks})",
            f"nodes {self.nodes:,}: "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(self.nodes_by_type.items())),
            "ops by kind: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.ops_by_kind.items())),
            f"deps: {self.deps:,} ({self.deps_reconnected:,} reconnected through dropped nodes, "
            f"{self.deps_outside_file:,} on nodes not in the file ignored)",
            f"collectives matched across ranks: {self.collectives_matched:,}; "
            f"send/recv pairs: {self.p2p_matched:,}",
        ]
        out.extend(_problem_lines(self.collective_problems))
        total = sum(self.unmapped.values())
        out.append(f"nodes not mapped to ops: {total:,}")
        out.extend(_counter_lines(self.unmapped))
        return out


# ---------------------------------------------------------------------------------------------
# Protobuf wire format: decoded in Rust (`tracesim._core.decode_chakra`, src/chakra_pb.rs)


@dataclass
class _Flat:
    """Lists of ints held flat (a trace has tens of deps per node: as Python lists they would be
    most of its memory): list i is `values[offsets[i]:offsets[i + 1]]`, `offsets[0]` = 0."""

    offsets: np.ndarray
    values: np.ndarray

    @staticmethod
    def of(lengths: Any, values: Any) -> _Flat:
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(np.asarray(lengths, np.int64), out=offsets[1:])
        return _Flat(offsets, np.asarray(values, np.int64))

    @staticmethod
    def of_lists(lists: list[list[int]]) -> _Flat:
        return _Flat.of([len(x) for x in lists], np.fromiter(chain.from_iterable(lists), np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def select(self, rows: np.ndarray) -> _Flat:
        """The lists of `rows`, in that order (this one when they are all, in order)."""
        if len(rows) == len(self) and (len(rows) == 0 or (rows[0] == 0 and bool(np.all(np.diff(rows) == 1)))):
            return self
        lengths = self.lengths()[rows]
        out = _Flat.of(lengths, np.zeros(0, np.int64))
        starts = np.repeat(self.offsets[:-1][rows] - out.offsets[:-1], lengths)
        out.values = self.values[starts + np.arange(int(out.offsets[-1]))]
        return out

    def union(self, other: _Flat) -> _Flat:
        """Per row, this list then `other`'s, each value once (its first occurrence)."""
        n = len(self)
        rows = np.concatenate(
            [np.repeat(np.arange(n), self.lengths()), np.repeat(np.arange(n), other.lengths())]
        )
        values = np.concatenate([self.values, other.values])
        order = np.argsort(rows, kind="stable")  # within a row: this list's values first
        rows, values = rows[order], values[order]
        keep = np.zeros(len(rows), bool)
        if len(rows):
            keep[np.unique(np.stack([rows, values], 1), axis=0, return_index=True)[1]] = True
        return _Flat.of(np.bincount(rows[keep], minlength=n), values[keep])


# A file's nodes as columns (id, name, node_type, dur_ns, start_ns, is_cpu, thread, flops,
# tensor_size, comm_size, comm_type, comm_dst, comm_src, pg_name, inputs; src/chakra_nodes.rs),
# with their ctrl and data deps.
_Nodes = tuple[pa.RecordBatch, "_Flat", "_Flat"]


def _nodes(batch: pa.RecordBatch, deps: tuple[pa.Array, pa.Array, pa.Array, pa.Array]) -> _Nodes:
    ctrl_off, ctrl, data_off, data = (a.to_numpy() for a in deps)
    return batch, _Flat(ctrl_off, ctrl), _Flat(data_off, data)


def read_et(path: Path, raw: bytes | None = None) -> tuple[dict[str, Any], _Nodes]:
    """The GlobalMetadata attributes and the nodes of one Chakra protobuf file, decoded in Rust
    (`tracesim._core.decode_chakra`: src/chakra_pb.rs, src/chakra_nodes.rs) into columns."""
    meta, batch, deps = decode_chakra(_load(path) if raw is None else raw, str(path))
    return dict(meta), _nodes(batch, deps)


# ---------------------------------------------------------------------------------------------
# JSON renderings


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


def _read_any(path: Path) -> tuple[str, Any]:
    """("protobuf", (meta, nodes)), ("chakra-json", {"workload_graph": nodes}) (nodes: `_Nodes`,
    columns read in Rust) or ("pytorch-et", the JSON object). JSON is streamed node by node, and a
    PyTorch ET keeps of each node only what `_et_ops` reads (`_slim_et_node`): the parsed file
    would be 6-8x its size in Python objects."""
    if not _starts_like_json(path):
        return "protobuf", read_et(path)
    json_error: TraceError | None = None
    try:
        nodes = _JsonList(path, ["workload_graph", "nodes"])
    except TraceError as e:
        json_error = e  # or a protobuf file whose first byte is '{' or '[' (tried next)
    else:
        if nodes.is_object:
            if nodes.key == "workload_graph":  # read again, into columns, in Rust
                _header, batch, deps = read_chakra_json(path)
                return "chakra-json", {"workload_graph": _nodes(batch, deps)}
            items = [_slim_et_node(d) for d in nodes]
            graph = next((t for k, t in nodes.raw_header() if k == "workload_graph"), None)
            if graph is not None and graph.lstrip().startswith("["):  # after another list
                _header, batch, deps = read_chakra_json(path)
                return "chakra-json", {"workload_graph": _nodes(batch, deps)}
            data = nodes.header()
            if nodes.key is not None:
                data[nodes.key] = items
            if "workload_graph" in data:  # not a list (the mapper says so)
                return "chakra-json", data
            if isinstance(data.get("nodes"), list):
                return "pytorch-et", data
            raise TraceError(f"{path}: JSON, but neither Chakra ('workload_graph') nor PyTorch ET ('nodes')")
    try:
        return "protobuf", read_et(path)
    except TraceError:
        if json_error is not None:
            raise json_error from None  # the more precise of the two
        raise


# Attributes of ET nodes that `_et_ops` reads (`_et_attrs`); the others are dropped on reading.
_ET_ATTRS = frozenset(
    {
        "tid",
        "collective_name",
        "dtype",
        "in_msg_nelems",
        "out_msg_nelems",
        "pg_name",
        "pg_size",
        "global_rank_start",
        "global_rank_stride",
    }
)
_ET_THREAD_ATTRS = frozenset({"tid"})  # all that other nodes need (thread roots: their tid)
_ET_WITH_VALUES = ("## process_group:init ##", "record_param_comms")


def _slim_et_node(d: Any) -> Any:
    """What `_et_ops` reads of a PyTorch ET node: id, name, parent and `tid`, and of
    process-group and collective nodes their other attributes and input/output values."""
    if not isinstance(d, dict):
        return d
    keep = {k: d[k] for k in ("id", "name", "ctrl_deps", "parent", "tid") if k in d}
    attrs = d.get("attrs")
    comms = d.get("name") in _ET_WITH_VALUES
    if isinstance(attrs, list):
        names = _ET_ATTRS if comms else _ET_THREAD_ATTRS
        keep["attrs"] = [
            a for a in attrs if type(a) is dict and type(n := a.get("name")) is str and n in names
        ]
    if comms:
        for k in ("inputs", "outputs"):
            if k in d:
                keep[k] = d[k]
    return keep


# ---------------------------------------------------------------------------------------------
# Mapping to canonical ops


@dataclass(slots=True)
class _Op:
    nid: int
    rank: int  # index into the files
    stream_key: tuple[Any, ...]
    name: str
    kind: str
    dur: int | None
    category: str | None = None
    flops: float | None = None
    bytes_read: int | None = None
    bytes_written: int | None = None
    start: int | None = None
    coll: str | None = None
    comm_bytes: int | None = None
    dtype: str | None = None
    group_key: tuple[str, tuple[int, ...] | None] | None = None  # (pg name, source ranks or None)
    peer: int | None = None  # source rank (send/recv)
    group_id: int | None = None
    coll_seq: int | None = None
    p2p_seq: int | None = None
    problem: str | None = None  # why a communication op could not be mapped (counted)
    fallback_kind: str = "compute"
    row: int = -1  # the op's row in its rank's `_OpColumns`


@dataclass
class _OpColumns:
    """A rank's ops, a row each (strings shared: `kind` and `category` are object arrays of a few
    distinct strings; `stream`: codes of the ops' stream keys)."""

    nid: np.ndarray
    name: pa.Array
    kind: np.ndarray
    category: np.ndarray
    flops: np.ndarray  # NaN: none
    bytes_read: np.ndarray  # -1: none
    bytes_written: np.ndarray
    dur: pa.Array  # int64, null: none
    start: pa.Array
    stream: np.ndarray

    @staticmethod
    def of_ops(ops: list[_Op]) -> _OpColumns:
        """Columns of op records (the PyTorch ET's ops), in that order."""
        keys: dict[tuple[Any, ...], int] = {}
        return _OpColumns(
            np.fromiter((o.nid for o in ops), np.int64, len(ops)),
            pa.array([o.name for o in ops], pa.string()),
            np.array([o.kind for o in ops], object),
            np.array([o.category for o in ops], object),
            np.array([np.nan if o.flops is None else o.flops for o in ops], np.float64),
            np.array([-1 if o.bytes_read is None else o.bytes_read for o in ops], np.int64),
            np.array([-1 if o.bytes_written is None else o.bytes_written for o in ops], np.int64),
            pa.array([o.dur for o in ops], pa.int64()),
            pa.array([o.start for o in ops], pa.int64()),
            np.array([keys.setdefault(o.stream_key, len(keys)) for o in ops], np.int64),
        )

    def __len__(self) -> int:
        return len(self.nid)


@dataclass
class _Rank:
    path: Path
    fmt: str
    source_rank: int
    cols: _OpColumns | None = None
    comms: list[_Op] = field(default_factory=list)  # the communication ops (`row`: theirs in `cols`)
    # Deps (node ids, same rank) of the ops, by row; dropped nodes' ids and their deps.
    op_deps: _Flat = field(default_factory=lambda: _Flat.of([], []))
    dropped_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    dropped_deps: _Flat = field(default_factory=lambda: _Flat.of([], []))
    pg_ranks: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # Resolved deps, of the ops in topological order, as positions in that order.
    deps: _Flat = field(default_factory=lambda: _Flat.of([], []))
    order: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # rows, topological


def _pg_config(text: str, into: dict[str, tuple[int, ...]], alias: dict[int, str] | None = None) -> bool:
    """Process groups from `[{"pg_name": …, "ranks": […], "group_size": n}]` (ranks [] = 0..n-1)."""
    try:
        data = json.loads(text)
    except (ValueError, TypeError, RecursionError):  # not JSON, too deep, or an int of 4,300+ digits
        return False
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], str):
        return _pg_config(data[0], into, alias)
    if not isinstance(data, list):
        return False
    found = False
    for pg in data:
        if not isinstance(pg, dict) or "pg_name" not in pg:
            continue
        ranks = pg.get("ranks")
        size = _int(pg.get("group_size"))
        if isinstance(ranks, list) and ranks and all(_int(r) is not None for r in ranks):
            into[str(pg["pg_name"])] = tuple(int(r) for r in ranks)
        elif size is not None and 0 < size <= MAX_GROUP_SIZE:
            into[str(pg["pg_name"])] = tuple(range(size))
        else:
            continue
        if alias is not None and _int(pg.get("backend_id")) is not None:
            alias[int(pg["backend_id"])] = str(pg["pg_name"])
        found = True
    return found


KEPT_TYPES = (MEM_LOAD_NODE, MEM_STORE_NODE, COMP_NODE, COMM_SEND_NODE, COMM_RECV_NODE, COMM_COLL_NODE)


def _chakra_ops(r: _Rank, rank: int, graph: _Nodes, report: ChakraReport, dep_mode: DepMode) -> None:
    """A Chakra file's nodes (columns) → the rank's ops, on columns: only communication nodes
    become objects (`r.comms`)."""
    nodes, ctrl, data = graph
    n = nodes.num_rows
    report.nodes += n
    ids = nodes.column("id").to_numpy()
    by_id = np.argsort(ids, kind="stable")
    again = by_id[1:][ids[by_id][1:] == ids[by_id][:-1]]  # rows whose id an earlier row has
    if len(again):
        raise TraceError(f"{r.path}: duplicate node id {ids[again.min()]}")
    ntype = nodes.column("node_type").to_numpy()
    types, type_code = np.unique(ntype, return_inverse=True)
    type_code = type_code.reshape(-1)
    tnames = [NODE_TYPE_NAMES.get(t, f"unknown NodeType {t}") for t in types.tolist()]
    for tname, count in zip(tnames, np.bincount(type_code, minlength=len(types)).tolist(), strict=True):
        report.nodes_by_type[tname] += count
    inputs = nodes.column("inputs")
    for row in np.flatnonzero(ntype == METADATA_NODE).tolist():
        _pg_config(inputs[row].as_py() or "", r.pg_ranks)
    kept = np.isin(ntype, KEPT_TYPES)
    rows, dropped = np.flatnonzero(kept), np.flatnonzero(~kept)
    _counted(
        report.unmapped, [f"{t} (dropped; deps reconnected)" for t in tnames], type_code[dropped], dropped
    )
    deps = data if dep_mode == "data" else ctrl if dep_mode == "ctrl" else data.union(ctrl)
    r.op_deps, r.dropped_deps, r.dropped_ids = deps.select(rows), deps.select(dropped), ids[dropped]

    # The kept nodes' columns, then the ops' by kind.
    take = pa.array(rows)

    def col(name: str) -> pa.Array:
        return nodes.column(name).take(take)

    t = ntype[rows]
    cpu = col("is_cpu").to_numpy(zero_copy_only=False)
    name = col("name")
    kind = np.full(len(rows), "compute", object)  # shared strings, not one per op
    kind[cpu] = "host"
    category = np.full(len(rows), None, object)
    comp, memory = t == COMP_NODE, np.isin(t, (MEM_LOAD_NODE, MEM_STORE_NODE))
    comm = np.isin(t, (COMM_SEND_NODE, COMM_RECV_NODE, COMM_COLL_NODE))
    name_idx, names = _codes(name)
    category[comp] = np.array([_category(w) for w in names] + [None], object)[name_idx][comp]
    kind[memory], category[memory], category[comm] = "memory", "copy", "communication"
    flops = np.where(comp, pc.fill_null(col("flops"), np.nan).to_numpy(zero_copy_only=False), np.nan)
    size = _ints(col("tensor_size"), -1)
    bytes_read = np.where((comp | (t == MEM_LOAD_NODE)) & (size >= 0), size, -1)
    bytes_written = np.where((t == MEM_STORE_NODE) & (size >= 0), size, -1)
    stream, _ = _distinct(col("is_cpu").cast(pa.string()), col("thread"))  # (is_cpu_op, tid)
    r.cols = _OpColumns(
        ids[rows],
        name,
        kind,
        category,
        flops,
        bytes_read,
        bytes_written,
        col("dur_ns"),
        col("start_ns"),
        stream,
    )

    # Communication nodes: their collective or peer, as objects (a trace has few).
    for row in np.flatnonzero(comm).tolist():
        node_type = int(t[row])
        base = "host" if cpu[row] else "compute"
        op = _Op(
            int(ids[rows[row]]),
            rank,
            (),
            "",
            base,
            None,
            category="communication",
            fallback_kind=base,
            row=row,
        )
        get = {
            k: nodes.column(k)[int(rows[row])].as_py()
            for k in ("comm_size", "comm_type", "comm_dst", "comm_src", "pg_name")
        }
        size_c = get["comm_size"]
        if node_type == COMM_COLL_NODE:
            ctype = get["comm_type"]
            if ctype is None:
                op.problem = "COMM_COLL_NODE without comm_type (CPU-side c10d op or no metadata)"
            elif ctype not in COMM_TYPES:
                op.problem = f"COMM_COLL_NODE with unsupported comm_type {ctype}"
            else:
                op.coll = COMM_TYPES[ctype]
                op.comm_bytes = max(size_c or 0, 0)
                op.group_key = (get["pg_name"] or "", None)
        else:
            key = "comm_dst" if node_type == COMM_SEND_NODE else "comm_src"
            if get[key] is None:
                op.problem = f"{NODE_TYPE_NAMES[node_type]} without {key}"
            else:
                op.peer = get[key]
                op.comm_bytes = max(size_c or 0, 0)
                op.kind = "send" if node_type == COMM_SEND_NODE else "recv"
        r.comms.append(op)


ET_ROOTS = ("[pytorch|profiler|execution_trace|", "[pytorch|profiler|execution_graph|")


def _et_attrs(d: dict[str, Any]) -> dict[str, Any]:
    attrs = d.get("attrs")
    out: dict[str, Any] = {}
    if isinstance(attrs, list):
        for a in attrs:
            if isinstance(a, dict) and "name" in a:
                out[str(a["name"])] = a.get("value")
    for k in ("tid", "rf_id", "op_schema"):  # schema 1.0.1 has them at the top level
        if k in d and k not in out:
            out[k] = d[k]
    return out


def _et_inputs(d: dict[str, Any]) -> list[Any]:
    inp = d.get("inputs")
    if isinstance(inp, dict):
        inp = inp.get("values")
    return inp if isinstance(inp, list) else []


def _et_outputs(d: dict[str, Any]) -> list[Any]:
    out = d.get("outputs")
    if isinstance(out, dict):
        out = out.get("values")
    return out if isinstance(out, list) else []


def _tensor_bytes(v: Any) -> int:
    """Bytes of the tensors in an ET value: 6-tuples [id, storage, offset, numel, elem_bytes, dev]."""
    if isinstance(v, list):
        if (
            len(v) == 6
            and all(isinstance(x, int) and not isinstance(x, bool) for x in v[:5])
            and isinstance(v[5], str)
        ):
            return int(v[3]) * int(v[4])
        return sum(_tensor_bytes(x) for x in v)
    return 0


def _et_ops(r: _Rank, rank: int, data: dict[str, Any], report: ChakraReport) -> None:
    """PyTorch ET: top-level operators of each thread → host ops; record_param_comms → comms."""
    raw = data["nodes"]
    by_id: dict[int, dict[str, Any]] = {}
    for i, d in enumerate(raw):
        nid = _int(d.get("id")) if isinstance(d, dict) else None
        if not isinstance(d, dict) or nid is None:
            raise TraceError(f"{r.path}: nodes[{i}] is not a node with an integer 'id'")
        if nid in by_id:
            raise TraceError(f"{r.path}: duplicate node id {nid}")
        by_id[nid] = d
    report.nodes_by_type["pytorch-et node"] += len(by_id)
    parent = {nid: _int(d.get("ctrl_deps", d.get("parent"))) for nid, d in by_id.items()}
    roots = {nid for nid, d in by_id.items() if str(d.get("name", "")).startswith(ET_ROOTS)}
    threads = {nid for nid in roots if "thread]" in str(by_id[nid].get("name", ""))}
    backend_alias: dict[int, str] = {}

    tops: dict[int, int | None] = {}  # node → its top-level operator (memo of `top_of`)
    launched_by: dict[int, int] = {}  # collective → the top-level operator it depends on
    ops: dict[int, _Op] = {}

    def top_of(nid: int) -> int | None:
        """The ancestor of `nid` (or itself) whose parent is a thread root; None outside threads."""
        path: list[int] = []
        cur: int | None = nid
        top: int | None = None
        for _ in range(10_000):
            if cur is None:
                break
            if cur in tops:
                top = tops[cur]
                break
            p = parent.get(cur)
            if p is None or p not in by_id:
                break
            path.append(cur)
            if p in threads:
                top = cur
                break
            cur = p
        for n in path:
            tops[n] = top
        return top

    for nid in sorted(by_id):
        d = by_id[nid]
        name = str(d.get("name", ""))
        if nid in roots:
            report.unmapped["ET process/thread root node"] += 1
            continue
        if name == "## process_group:init ##":
            vals = _et_inputs(d)
            if vals and isinstance(vals[0], str):
                _pg_config(vals[0], r.pg_ranks, backend_alias)
            report.unmapped["process_group:init node (→ process groups)"] += 1
            continue
    for nid in sorted(by_id):
        d = by_id[nid]
        name = str(d.get("name", ""))
        if nid in roots or name == "## process_group:init ##":
            continue
        top = top_of(nid)
        if top == nid:
            p = parent[nid]
            assert p is not None
            tkey = ("thread", _et_attrs(by_id[p]).get("tid", p))
            ops[nid] = _Op(nid, rank, tkey, name, "host", None, fallback_kind="host")
            continue
        if name != "record_param_comms":
            report.unmapped[
                "operator nested in a top-level operator" if top is not None else "node outside any thread"
            ] += 1
            continue
        a = _et_attrs(d)
        vals = _et_inputs(d)
        cname = a.get("collective_name")
        if cname is None and len(vals) > 4 and isinstance(vals[4], str):
            cname = vals[4]
        coll = COLL_NAMES.get(str(cname).lower()) if cname is not None else None
        if coll is None:
            report.unmapped[f"record_param_comms {cname!s} (not a collective)"] += 1
            continue
        dtype = str(a.get("dtype", "")).lower()
        elem = DTYPE_BYTES.get(dtype)
        nel = _int(a.get("out_msg_nelems" if coll == "all_gather" else "in_msg_nelems"))
        if elem is not None and nel is not None:
            nbytes = nel * elem
        else:
            nbytes = _tensor_bytes(_et_outputs(d) if coll == "all_gather" else vals[:1])
        pg: Any = a.get("pg_name")
        if pg is None and len(vals) > 2:
            pg = vals[2]
            if isinstance(pg, list) and pg:
                pg = pg[0]
            elif _int(pg) is not None and _int(pg) in backend_alias:
                pg = backend_alias[int(pg)]
        pgs = "" if pg is None else str(pg)
        ranks: tuple[int, ...] | None = r.pg_ranks.get(pgs)
        size = _int(a.get("pg_size"))
        if ranks is None and size is not None and 0 < size <= MAX_GROUP_SIZE:
            start = _int(a.get("global_rank_start")) or 0
            stride = _int(a.get("global_rank_stride")) or 1
            ranks = tuple(start + stride * i for i in range(size))
        last = _int(vals[-1]) if len(vals) > 7 else None
        if ranks is None and last is not None and 0 < last <= MAX_GROUP_SIZE:
            ranks = tuple(range(last))
        op = _Op(nid, rank, ("comm",), name, "compute", None, category="communication")
        if top is not None:
            launched_by[nid] = top  # its top-level operator (ET records no GPU timing)
            op.name = f"{by_id[top].get('name', name)} [{coll}]"
        op.coll, op.comm_bytes, op.group_key = coll, nbytes, (pgs, ranks)
        op.dtype = FORMAT_DTYPE.get(dtype)
        ops[nid] = op
    r.op_deps = _Flat.of_lists([[launched_by[nid]] if nid in launched_by else [] for nid in ops])
    for row, op in enumerate(ops.values()):
        op.row = row
    r.cols = _OpColumns.of_ops(list(ops.values()))
    r.comms = [op for op in ops.values() if op.category == "communication"]


def _resolve_deps(r: _Rank, report: ChakraReport) -> None:
    """`r.deps`: the ops' deps only to kept nodes, through dropped nodes transitively (a chain of
    any length), unknown ids counted; then `r.order`, Kahn's order with the lowest node id first
    among the ready nodes (the Chakra feeder's order). In Rust: `tracesim._core.resolve_chakra_deps`."""
    assert r.cols is not None
    ids = r.cols.nid
    deps, dropped = r.op_deps, r.dropped_deps
    resolved, stuck = resolve_chakra_deps(
        pa.array(ids),
        pa.array(deps.offsets),
        pa.array(deps.values),
        pa.array(r.dropped_ids),
        pa.array(dropped.offsets),
        pa.array(dropped.values),
    )
    if resolved is None and not stuck:
        raise TraceError(f"{r.path}: more than 2^31 nodes or deps in one file")
    if resolved is None:
        raise TraceError(
            f"{r.path}: dependency cycle among {len(stuck)} nodes (node ids {stuck[:10]}"
            f"{' …' if len(stuck) > 10 else ''})"
        )
    offsets, flat, order, reconnected, outside = resolved
    r.deps = _Flat(offsets.to_numpy(), flat.to_numpy())  # in topological order, as positions in it
    r.order = order.to_numpy()
    r.op_deps = r.dropped_deps = _Flat.of([], [])  # resolved: no longer needed
    report.deps += len(flat)
    report.deps_reconnected += reconnected
    report.deps_outside_file += outside


def _match(ranks: list[_Rank], report: ChakraReport) -> dict[int, tuple[str, list[int]]]:
    """Collectives and send/recv pairs; what cannot be matched stays compute/communication."""
    present = {r.source_rank: i for i, r in enumerate(ranks)}
    group_ids: dict[tuple[str, tuple[int, ...]], int] = {}
    per: dict[tuple[int, int], list[_Op]] = defaultdict(list)
    for r in ranks:  # the communication ops in topological order
        at = np.empty(len(r.order), np.int64)
        at[r.order] = np.arange(len(r.order))
        r.comms.sort(key=lambda op: at[op.row])
    for i, r in enumerate(ranks):
        for op in r.comms:
            if op.problem is not None or op.coll is None or op.group_key is None:
                continue
            pg, members = op.group_key
            if members is None:
                members = r.pg_ranks.get(pg)
            if members is None:
                if len(ranks) == 1:
                    op.problem = "collective without its peer ranks (single file, group unknown)"
                    continue
                members = tuple(sorted(present))  # no group: all ranks of the job (ASTRA-sim's default)
            if len(set(members)) < 2:
                op.problem = "collective on a one-rank process group"
            elif not set(members) <= set(present):
                op.problem = NO_PEER_FILES
            elif r.source_rank not in members:
                op.problem = OUTSIDE_GROUP
            if op.problem is not None:
                continue
            gid = group_ids.setdefault((pg, tuple(members)), len(group_ids))
            op.group_id = gid
            per[(gid, i)].append(op)

    def fail(op: _Op, problem: str) -> None:
        op.problem = problem

    report.collectives_matched += _match_by_seq(
        per,
        {gid: [present[m] for m in members] for (_pg, members), gid in group_ids.items()},
        "collective without its peer ranks (no matching node in a peer's file)",
        fail,
    )
    # send/recv: the n-th send from src to dst pairs with the n-th recv at dst from src.
    sends: dict[tuple[int, int], list[_Op]] = defaultdict(list)
    recvs: dict[tuple[int, int], list[_Op]] = defaultdict(list)
    for i, r in enumerate(ranks):
        for op in r.comms:
            if op.kind not in ("send", "recv") or op.problem is not None:
                continue
            assert op.peer is not None
            if op.peer not in present or op.peer == r.source_rank:
                op.problem = f"{op.kind} whose peer rank's file is absent"
                continue
            if op.kind == "send":
                sends[(i, present[op.peer])].append(op)
            else:
                recvs[(present[op.peer], i)].append(op)
    for key in set(sends) | set(recvs):
        s, v = sends.get(key, []), recvs.get(key, [])
        k = 0
        for a, b in zip(s, v, strict=False):
            if a.comm_bytes != b.comm_bytes:
                a.problem = b.problem = "send/recv pair whose sizes disagree"
                continue
            a.p2p_seq = b.p2p_seq = k
            k += 1
            report.p2p_matched += 1
        for extra in s[len(v) :] + v[len(s) :]:
            extra.problem = f"{extra.kind} without a matching {'recv' if extra.kind == 'send' else 'send'}"
    for r in ranks:
        for op in r.comms:
            if op.problem is not None:
                report.collective_problems[op.problem] += 1
                op.kind, op.category = op.fallback_kind, "communication"
                op.group_id = op.coll_seq = op.p2p_seq = op.peer = None
    return {gid: (pg, [present[m] for m in members]) for (pg, members), gid in group_ids.items()}


def _build(
    ranks: list[_Rank], groups_by_id: dict[int, tuple[str, list[int]]], source: str, report: ChakraReport
) -> Trace:
    """The ops table: each rank's ops in topological order (op_ids rank after rank), streams
    numbered in order of first use; columns gathered with NumPy, the communication ops' fields
    written in from their records. Counts the ops by kind in `report`."""
    parts: dict[str, list[Any]] = defaultdict(list)
    firsts: list[int] = []  # per rank: its first op_id
    offset = 0
    for i, r in enumerate(ranks):
        c = r.cols
        assert c is not None
        n, order = len(c), r.order
        firsts.append(offset)
        offset += n
        # Streams: numbered by first use in topological order.
        first = np.full(int(c.stream.max()) + 1 if n else 0, n, np.int64)
        np.minimum.at(first, c.stream[order], np.arange(n))
        number = np.empty(len(first), np.int64)
        number[np.argsort(first, kind="stable")] = np.arange(len(first))
        kind = c.kind.copy()
        category = c.category.copy()
        comm = {
            k: np.full(n, None, object)
            for k in ("coll", "group_id", "coll_seq", "comm_bytes", "peer", "p2p_seq", "dtype")
        }
        for op in r.comms:
            kind[op.row], category[op.row] = op.kind, op.category
            coll, p2p = op.kind == "collective", op.kind in ("send", "recv")
            if coll:
                for k in ("coll", "group_id", "coll_seq", "dtype"):
                    comm[k][op.row] = getattr(op, k)
            if coll or p2p:
                comm["comm_bytes"][op.row] = op.comm_bytes
            if p2p:
                comm["p2p_seq"][op.row] = op.p2p_seq
                comm["peer"][op.row] = None if op.peer is None else _peer_index(ranks, op.peer)
        take = pa.array(order)
        parts["rank"].append(np.full(n, i, np.int64))
        parts["stream"].append(number[c.stream[order]])
        parts["name"].append(c.name.take(take))
        parts["kind"].append(kind[order])
        parts["category"].append(category[order])
        parts["flops"].append(c.flops[order])
        parts["bytes_read"].append(c.bytes_read[order])
        parts["bytes_written"].append(c.bytes_written[order])
        parts["duration_ns"].append(c.dur.take(take))
        parts["start_ns"].append(c.start.take(take))
        for k, v in comm.items():
            parts[k].append(v[order])
        words, counts = np.unique(kind.astype(str), return_counts=True)
        for w, count in zip(words.tolist(), counts.tolist(), strict=True):
            report.ops_by_kind[w] += count
    total = offset

    def cat(k: str) -> np.ndarray:
        return np.concatenate(parts[k]) if parts[k] else np.zeros(0)

    def typed(k: str, values: np.ndarray | list[Any]) -> pa.Array:
        return pa.array(values, OP_COLUMN_TYPES[k])

    def ints(k: str) -> pa.Array:
        v = cat(k).astype(np.int64)
        return pa.array(v, OP_COLUMN_TYPES[k], mask=v < 0)

    flops = cat("flops").astype(np.float64)
    table = pa.table(
        {
            "op_id": typed("op_id", np.arange(total)),
            "rank": typed("rank", cat("rank").astype(np.int64)),
            "stream": typed("stream", cat("stream").astype(np.int64)),
            "name": _names(parts["name"], ranks),
            "kind": typed("kind", cat("kind").tolist()),
            "category": typed("category", cat("category").tolist()),
            "dtype": typed("dtype", cat("dtype").tolist()),
            "flops": pa.array(flops, OP_COLUMN_TYPES["flops"], mask=np.isnan(flops)),
            "bytes_read": ints("bytes_read"),
            "bytes_written": ints("bytes_written"),
            "duration_ns": pa.concat_arrays(parts["duration_ns"]).cast(OP_COLUMN_TYPES["duration_ns"])
            if parts["duration_ns"]
            else pa.array([], OP_COLUMN_TYPES["duration_ns"]),
            "start_ns": pa.concat_arrays(parts["start_ns"]).cast(OP_COLUMN_TYPES["start_ns"])
            if parts["start_ns"]
            else pa.array([], OP_COLUMN_TYPES["start_ns"]),
            "deps": _deps_column(ranks, firsts),
            "coll": typed("coll", cat("coll").tolist()),
            "group_id": typed("group_id", cat("group_id").tolist()),
            "coll_seq": typed("coll_seq", cat("coll_seq").tolist()),
            "comm_bytes": typed("comm_bytes", cat("comm_bytes").tolist()),
            "peer": typed("peer", cat("peer").tolist()),
            "p2p_seq": typed("p2p_seq", cat("p2p_seq").tolist()),
        }
    )
    used = sorted(
        {op.group_id for r in ranks for op in r.comms if op.kind == "collective" and op.group_id is not None}
    )
    return _to_trace(
        table,
        used,
        groups_by_id,
        source,
        [r.path.name for r in ranks],
        [r.source_rank for r in ranks],
    )


def _deps_column(ranks: list[_Rank], offsets: list[int]) -> pa.Array:
    """The ops' deps as op ids, in op_id order: each rank's resolved deps are in its topological
    order already, as positions in it (`_resolve_deps`), so its op ids are those plus the rank's
    first op_id (`offsets`). No Python object per dep."""
    lengths = [np.diff(r.deps.offsets.astype(np.int64)) for r in ranks]
    values = []
    for r, first in zip(ranks, offsets, strict=True):
        v = r.deps.values.astype(np.uint64)
        v += np.uint64(first)  # in place: one copy of the deps at a time
        values.append(v)
        r.deps = _Flat.of([], [])  # in the table now
    total = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    if int(total.sum()) >= 2**31:
        raise TraceError(f"{ranks[0].path}: more than 2^31 deps in the job (the table's limit)")
    bounds = np.zeros(len(total) + 1, np.int32)
    np.cumsum(total, out=bounds[1:])
    flat = values[0] if len(values) == 1 else np.concatenate(values) if values else np.zeros(0, np.uint64)
    del values
    return pa.ListArray.from_arrays(pa.array(bounds), pa.array(flat, pa.uint64()))


def _names(parts: list[pa.Array], ranks: list[_Rank]) -> pa.Array:
    """The ops' names as the table's strings (2 GiB of text at most)."""
    if not parts:
        return pa.array([], pa.string())
    try:
        return pa.concat_arrays([p.cast(pa.large_string()) for p in parts]).cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowCapacityError):
        raise TraceError(
            f"{ranks[0].path}: more than 2 GiB of op names in the job (the table's limit)"
        ) from None


def _peer_index(ranks: list[_Rank], source_rank: int) -> int:
    for i, r in enumerate(ranks):
        if r.source_rank == source_rank:
            return i
    raise AssertionError(source_rank)


def expand_paths(paths: Sequence[Path | str]) -> list[Path]:
    """Files as given; a directory → its `*.et`/`*.json(.gz)` files; a prefix → `<prefix>.<rank>.et`."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                (q for q in p.iterdir() if q.is_file() and RANK_RE.search(q.name)),
                key=lambda q: int(RANK_RE.search(q.name).group(1)),  # type: ignore[union-attr]
            )
            if not found:
                raise TraceError(f"{p}: directory without <prefix>.<rank>.et or .json files")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            pat = re.compile(re.escape(p.name) + r"\.(\d+)\.et(?:\.gz)?$")
            found = sorted(
                (q for q in p.parent.glob(p.name + ".*") if pat.match(q.name)),
                key=lambda q: int(pat.match(q.name).group(1)),  # type: ignore[union-attr]
            )
            if not found:
                raise TraceError(f"{p}: no such file, and no {p.name}.<rank>.et files next to it")
            out.extend(found)
    return out


def _ingest(
    paths: Sequence[Path | str], dep_mode: DepMode, only: str | None, source: str
) -> tuple[Trace, ChakraReport]:
    files = expand_paths(paths)
    if not files:
        raise TraceError("no input files")
    report = ChakraReport()
    ranks: list[_Rank] = []
    used: set[int] = set()
    for order, path in enumerate(files):
        fmt, data = _read_any(path)
        if only is not None and fmt != only:
            raise TraceError(f"{path}: expected a PyTorch execution trace (JSON with 'nodes'), got {fmt}")
        m = RANK_RE.search(path.name)
        src = int(m.group(1)) if m else order
        if src in used:
            src = max(used) + 1
        used.add(src)
        r = _Rank(path, fmt, src)
        if fmt == "protobuf":
            _chakra_ops(r, order, data[1], report, dep_mode)
        elif fmt == "chakra-json":
            if not isinstance(data.get("workload_graph"), tuple):
                raise TraceError(f"{path}: Chakra JSON without a 'workload_graph' list")
            _chakra_ops(r, order, data["workload_graph"], report, dep_mode)
        else:
            report.nodes += len(data["nodes"])
            _et_ops(r, order, data, report)
        del data  # the nodes and their deps are mapped: free them before the next file
        _resolve_deps(r, report)
        ranks.append(r)
        report.files.append(str(path))
        report.formats.append(fmt)
    # Ranks renumbered 0..R-1 in source-rank order.
    ranks.sort(key=lambda r: r.source_rank)
    for i, r in enumerate(ranks):
        for op in r.comms:
            op.rank = i
    report.source_ranks = [r.source_rank for r in ranks]
    groups = _match(ranks, report)
    return _build(ranks, groups, source, report), report


def ingest_chakra(paths: Sequence[Path | str], *, deps: DepMode = "data") -> tuple[Trace, ChakraReport]:
    """Chakra ET files (protobuf or JSON; PyTorch ET JSON also accepted), one per rank."""
    with _ingesting():
        return _ingest(paths, deps, None, "tracesim.ingest.chakra")


def ingest_pytorch_et(paths: Sequence[Path | str]) -> tuple[Trace, ChakraReport]:
    """PyTorch execution-trace JSON files (schemas 1.0.x, 1.1.x), one per rank."""
    with _ingesting():
        return _ingest(paths, "data", "pytorch-et", "tracesim.ingest.pytorch_et")
