"""PyTorch profiler (Kineto) Chrome-trace JSON → canonical trace (`tracesim ingest kineto`).

One file per rank, plain or gzip. What becomes an op:

- GPU kernels (cat `kernel`/`Kernel`) → kind `compute`, with a category guessed from the name;
  `gpu_memcpy`/`gpu_memset` (old: `Memcpy`/`Memset`) → kind `memory`, category `copy`.
- NCCL kernels (`ncclKernel*`, `ncclDevKernel*`) → kind `collective` when their process group
  is fully present among the files, with `coll`, `group_id`, `coll_seq` and `comm_bytes` from the
  kernel's collective metadata or, failing that, from the enclosing `record_param_comms` CPU op.
  Otherwise (peer ranks' files absent, no metadata, participants that do not line up) the kernel
  keeps its measured duration as kind `compute`, category `communication`, and is counted in the
  report. Nothing is dropped.
- CUDA/HIP runtime and driver calls (cat `cuda_runtime`/`Runtime`/`cuda_driver`) → kind `host`,
  one host stream per CPU thread, with the time between calls as `cpu_gap` host ops, so that the
  host timeline is reproduced. A GPU op depends on the runtime call that launched it (through
  `args.correlation`, or the `s`/`f` flow events), cut at the instant the GPU op started when
  the GPU started it before the call returned. Blocking calls (`*Synchronize`, `cudaMemcpy`)
  depend on the last GPU op of the rank that ended while they waited, and keep only their
  measured time after that op.
- `ProfilerStep#N` CPU annotations give the `iteration` (N) of every GPU op launched inside them.

- Costs: a GPU kernel whose launch is in the trace gets `dtype`, `flops`, `bytes_read`,
  `bytes_written` (and `gemm_m/n/k` for GEMMs and convolutions) from the innermost CPU operator
  (`cpu_op`/`Operator`) with recorded shapes (`Input Dims`, `Input type`) that encloses the
  launch on its thread; rules per operator in docs/ingest.md. An operator's cost goes to its
  GEMM/conv/attention-looking kernel(s) by name, else is split evenly over its kernels. DtoD
  copies and memsets get their `bytes`. Kernels without costs are counted in the report by reason.

Everything else (CPU operators, Python functions, annotations, flows, metadata, instants) is
counted by class in the `IngestReport`.

Reading: the file is streamed (and gunzipped) by the Rust core (`tracesim._core.read_kineto_file`)
into Arrow columns, never held whole; there too events are classified, the unmapped ones counted
and launches matched to GPU ops, and only the mapped classes reach Python, as columns. Mapping:
each rank's ops, deps and host streams are made in Rust too (`tracesim._core.map_kineto_rank`,
src/kineto_map.rs) from integer columns; Python works on columns (NumPy/Arrow) and on distinct
values only: the cost of each distinct (CPU op, recorded shapes), the category of each distinct
kernel name. No event becomes a Python object, except NCCL kernels (for their collective
metadata and the matching across ranks; a trace has few).

Times: Chrome-trace `ts`/`dur` are microseconds; they are read exactly (from their decimal text,
never through a float) into integer nanoseconds. A trace with `displayTimeUnit: "ns"` whose times are all
integers is taken to be in nanoseconds already; Kineto's own "ns" traces write microseconds with
three decimals and are read as microseconds (`time_unit` overrides the guess).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracesim._core import kineto_innermost, map_kineto_rank, read_kineto_file
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
    _match_by_seq,
    _parse_json,
    _problem_lines,
    _to_trace,
)
from tracesim.trace import Trace

TimeUnit = Literal["auto", "us", "ns"]


@dataclass
class IngestReport:
    """What `ingest_kineto` made of its input; nothing it did not map goes uncounted."""

    files: list[str] = field(default_factory=list)
    source_ranks: list[int] = field(default_factory=list)  # trace rank r came from this rank
    time_units: list[str] = field(default_factory=list)  # per file: "us" or "ns"
    ops_by_kind: Counter[str] = field(default_factory=Counter)
    iterations: list[int] = field(default_factory=list)
    collectives_matched: int = 0
    collective_problems: Counter[str] = field(default_factory=Counter)
    launch_deps: int = 0
    sync_deps: int = 0
    inferred_stream_deps: int = 0  # cross-stream waits (cudaStreamWaitEvent) inferred from the timing
    graph_node_waits: int = 0  # idle time inside a CUDA/HIP graph's execution, kept as measured
    orphan_gpu_ops: int = 0  # GPU ops whose launching runtime call is not in the trace
    unmapped: Counter[str] = field(default_factory=Counter)
    costed: int = 0  # GPU ops that got FLOPs and/or bytes
    split_kernels: int = 0  # of those, kernels that share their CPU op's cost evenly with others
    uncosted: Counter[str] = field(default_factory=Counter)  # GPU ops without costs, by reason
    uncosted_ops: Counter[str] = field(default_factory=Counter)  # CPU ops whose kernels got none

    @property
    def ranks(self) -> int:
        return len(self.source_ranks)

    def lines(self) -> list[str]:
        """A one-screen text rendering (the CLI prints it)."""
        out = [
            f"files {len(self.files)}, ranks {self.ranks} (source ranks {self.source_ranks}), "
            f"time units {sorted(set(self.time_units))}",
            "ops by kind: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.ops_by_kind.items())),
        ]
        its = self.iterations
        out.append(
            f"iterations: {len(its)}"
            + (f" (ProfilerStep#{its[0]}..#{its[-1]})" if its else " (none annotated)")
        )
        out.append(f"deps: {self.launch_deps:,} launch → GPU op, {self.sync_deps:,} GPU op → blocking call")
        out.append(f"cross-stream waits inferred from timing: {self.inferred_stream_deps:,}")
        if self.graph_node_waits:
            out.append(f"waits inside CUDA/HIP graphs kept as measured: {self.graph_node_waits:,}")
        if self.orphan_gpu_ops:
            out.append(
                f"GPU ops without a launch in the trace: {self.orphan_gpu_ops:,} "
                "(released at their measured start)"
            )
        out.append(f"collectives matched across ranks: {self.collectives_matched:,}")
        out.extend(_problem_lines(self.collective_problems))
        out.append(
            f"GPU ops with FLOPs/bytes from recorded shapes: {self.costed:,} "
            f"({self.split_kernels:,} sharing their CPU op's cost evenly); "
            f"without: {sum(self.uncosted.values()):,}"
        )
        out.extend(_counter_lines(self.uncosted))
        if self.uncosted_ops:
            out.append(
                "  CPU ops whose kernels got no cost: "
                + ", ".join(f"{k} {v:,}" for k, v in self.uncosted_ops.most_common(8))
            )
        total = sum(self.unmapped.values())
        out.append(f"events not mapped to ops: {total:,}")
        out.extend(_counter_lines(self.unmapped))
        return out


@dataclass(slots=True)
class _Coll:
    """The collective of an NCCL kernel: the only ops that become Python objects (a trace has
    few), for their metadata and the matching across ranks."""

    key: int  # the op's key (creation index over all ranks)
    rank: int
    start: int
    kind: str = "compute"
    coll: str | None = None
    dtype: str | None = None
    group_key: tuple[str, tuple[int, ...]] | None = None
    comm_bytes: int | None = None
    coll_seq: int | None = None
    group_id: int | None = None
    comm_problem: str | None = None


def _parse_ranks(v: Any) -> tuple[int, ...] | None:
    if isinstance(v, list):
        vals = v
    elif isinstance(v, str):
        try:
            vals = json.loads(v)
        except json.JSONDecodeError:
            return None
    else:
        return None
    if isinstance(vals, list) and vals and all(type(x) is int and 0 <= x < 2**32 for x in vals):
        return tuple(vals)
    return None


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(Decimal(v))
        except ArithmeticError:
            return None
    return None


def _args(text: str | None, path: Path) -> dict[str, Any]:
    """An event's `args` (floats kept as their text)."""
    if text is None:
        return {}
    v = _parse_json(text, path, "an event's args", parse_float=str)
    return v if isinstance(v, dict) else {}


# Times (ns) must lie in [-TIME_BOUND, TIME_BOUND): then every difference of two fits in int64.
TIME_BOUND = 2**62


def _check_times(path: Path, cls: str, batch: pa.RecordBatch) -> None:
    """A TraceError unless every event's start and end (ts + dur) lie within ±TIME_BOUND ns."""
    if not batch.num_rows:
        return
    ts, dur = batch.column("ts"), batch.column("dur")
    # Each below 2^62 in size, so their sum (wrapping addition) is exact.
    ok = pc.and_(
        pc.and_(pc.greater_equal(ts, -TIME_BOUND), pc.less(ts, TIME_BOUND)), pc.less(dur, TIME_BOUND)
    )
    ok = pc.fill_null(pc.and_(ok, pc.less(pc.add(ts, dur), TIME_BOUND)), False)
    if pc.all(ok).as_py():
        return
    row = pc.index(ok, False).as_py()
    if "name" in batch.schema.names:
        name = f" '{batch.column('name')[row].as_py()}'"
    else:  # steps
        name = f" 'ProfilerStep#{batch.column('step_n')[row].as_py()}'"
    raise TraceError(
        f"{path}: {cls} event{name} at ts {ts[row].as_py()} ns, dur {dur[row].as_py()} ns: "
        "its times are beyond ±2^62 ns (146 years from 0)"
    )


def _natural(s: str) -> tuple[int, int | str]:
    """Numbers (an optional minus, ASCII digits) in numeric order, before other strings."""
    digits = s[1:] if s.startswith("-") else s
    number = digits.isascii() and digits.isdigit() and len(digits) <= 4000  # int()'s limit is 4300
    return (0, int(s)) if number else (1, s)


# Files read at once: more cores speed up the reading of a job's ranks, but each reader holds its
# file's columns (~0.7x the JSON) until it is split.
READ_WORKERS = 4

# What `read_kineto_file` gives: (time unit, {class: columns}, unmapped counts, distributedInfo).
_Read = tuple[str, dict[str, pa.RecordBatch], list[tuple[str, int]], str | None]


def _read_files(
    paths: Sequence[str | Path], time_unit: TimeUnit, keep_cpu: bool
) -> Generator[_Read, None, None]:
    """The files read and split by class, in order, several at a time (the reader releases the
    GIL): up to READ_WORKERS at once, each holding its whole file's columns until it is split. The
    first failing file in the given order raises."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(len(paths), cores, READ_WORKERS)
    if workers <= 1:
        yield from (read_kineto_file(p, time_unit, keep_cpu) for p in paths)
        return
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        yield from pool.map(lambda p: read_kineto_file(p, time_unit, keep_cpu), paths)
    finally:
        pool.shutdown(cancel_futures=True)  # after a failing file, read no more


@dataclass
class _Rank:
    """One rank's mapped classes as columns (`load`). Times are absolute ns; threads and GPU
    streams are indices: runtime threads `0..threads` and GPU streams `0..streams` in natural
    order (their host and GPU stream order), CPU threads without runtime calls after them."""

    runtime: pa.RecordBatch  # ts, end, thread, name (index into `names`)
    names: list[str]
    threads: int
    gpu: pa.RecordBatch  # ts, end, stream, launch (runtime row, -1: none), nccl, name, kind, bytes, args
    streams: int
    comms: pa.RecordBatch  # record_param_comms: ts, end, thread, args
    recorded: pa.RecordBatch  # CPU ops with recorded shapes: ts, end, thread, name, shapes
    # Every CPU op and annotation, in file order (keep_cpu): ts, end, thread, pid, name, cat, cpu_op,
    # has_dims, and the JSON text of args' rf_id, external_id and concrete (Concrete Inputs).
    cpu_all: pa.RecordBatch | None


class _File:
    """One Kineto file, read into columns (`read_kineto_file`) and split by class: only the
    events the ingester maps (GPU ops, runtime calls, recorded CPU ops, record_param_comms,
    ProfilerSteps) are kept, as columns; the others are counted by class."""

    def __init__(self, path: Path, order: int, read: _Read, keep_cpu: bool) -> None:
        """`read`: what `read_kineto_file(path, time_unit, keep_cpu)` gave."""
        self.path = path
        unit, parts, unmapped, dist_text = read
        self.unit: str = unit
        dist = json.loads(dist_text, parse_float=str) if dist_text is not None else None
        dist = dist if isinstance(dist, dict) else {}
        rank = dist.get("rank")
        self.source_rank: int = rank if isinstance(rank, int) and not isinstance(rank, bool) else order
        self.has_rank = isinstance(rank, int)
        self.pg_ranks: dict[str, tuple[int, ...]] = {}
        pg_config = dist.get("pg_config")
        if isinstance(pg_config, list):
            for pg in pg_config:
                if isinstance(pg, dict) and "pg_name" in pg:
                    ranks = _parse_ranks(pg.get("ranks"))
                    if ranks is not None:
                        self.pg_ranks[str(pg["pg_name"])] = ranks
        # Events not mapped, counted by class (in order of first appearance, as the report lists
        # ties).
        self.unmapped: Counter[str] = Counter(dict(unmapped))
        self.keep_cpu = keep_cpu
        self._parts = parts  # the mapped classes, as Arrow columns, until `load`
        for c, batch in parts.items():
            _check_times(path, c, batch)
        starts = [pc.min(parts[c].column("ts")).as_py() for c in ("gpu", "runtime") if parts[c].num_rows]
        self.first_ts: int | None = min(starts) if starts else None  # of its GPU ops and runtime calls
        self.steps: list[tuple[int, int, int]] = []  # (start, end, N), sorted
        steps = parts.pop("steps")
        for t, d, n in zip(*(steps.column(c).to_pylist() for c in ("ts", "dur", "step_n")), strict=True):
            if len(n) > 10 or int(n) >= 2**32:
                raise TraceError(
                    f"{path}: ProfilerStep#{n}: the step number is above 4294967295 (iterations are uint32)"
                )
            self.steps.append((t, t + d, int(n)))
        self.steps.sort()

    def load(self) -> _Rank:
        """The mapped classes with threads and streams as indices (their columns are given up)."""
        parts, self._parts = self._parts, {}
        rt, gpu = parts.pop("runtime"), parts.pop("gpu")
        comms, rec = parts.pop("comms"), parts.pop("recorded")
        cpu_all = parts.pop("cpu_all", None)

        def end(b: pa.RecordBatch) -> pa.Array:
            return pc.add(b.column("ts"), b.column("dur"))

        # Host streams: one per thread with runtime calls, in natural (pid, tid) order.
        rt_inv, pairs = _distinct(rt.column("pid"), rt.column("tid"))
        order = sorted(range(len(pairs)), key=lambda k: tuple(_natural(str(x)) for x in pairs[k]))
        thread_of: dict[tuple[Any, ...], int] = {pairs[k]: i for i, k in enumerate(order)}
        lookup = np.empty(len(pairs), np.int64)
        for i, k in enumerate(order):
            lookup[k] = i

        def threads(b: pa.RecordBatch) -> np.ndarray:
            inv, ps = _distinct(b.column("pid"), b.column("tid"))
            idx = np.array([thread_of.setdefault(p, len(thread_of)) for p in ps], np.int64)
            return idx[inv] if len(ps) else np.zeros(0, np.int64)

        name_idx, names = _codes(rt.column("name"))
        runtime = pa.record_batch(
            {"ts": rt.column("ts"), "end": end(rt), "thread": lookup[rt_inv], "name": name_idx}
        )
        del rt
        s_idx, s_names = _codes(
            pc.coalesce(gpu.column("stream").cast(pa.string()), gpu.column("tid").cast(pa.string()))
        )
        s_order = sorted(range(len(s_names)), key=lambda k: _natural(s_names[k]))
        s_lookup = np.empty(len(s_names), np.int64)
        for i, k in enumerate(s_order):
            s_lookup[k] = i
        kind = gpu.column("gpu_kind")
        gpu_cols = {
            "ts": gpu.column("ts"),
            "end": end(gpu),
            "stream": s_lookup[s_idx],
            "launch": pc.fill_null(gpu.column("launch"), -1),
            "nccl": pc.equal(kind.cast(pa.string()), "nccl"),
            "name": gpu.column("name"),
            "kind": kind,
            "bytes": gpu.column("bytes"),
            "args": gpu.column("args"),
        }
        gpu_batch = pa.record_batch(gpu_cols)
        del gpu, gpu_cols
        comms_batch = pa.record_batch(
            {
                "ts": comms.column("ts"),
                "end": end(comms),
                "thread": threads(comms),
                "args": comms.column("args"),
            }
        )
        rec_batch = pa.record_batch(
            {
                "ts": rec.column("ts"),
                "end": end(rec),
                "thread": threads(rec),
                "name": rec.column("name"),
                "shapes": rec.column("shapes"),
            }
        )
        all_batch = None
        if cpu_all is not None:
            all_batch = pa.record_batch(
                {
                    "ts": cpu_all.column("ts"),
                    "end": end(cpu_all),
                    "thread": threads(cpu_all),
                    "pid": cpu_all.column("pid"),
                    "name": cpu_all.column("name"),
                    "cat": cpu_all.column("cat"),
                    "cpu_op": cpu_all.column("cpu_op"),
                    "has_dims": cpu_all.column("has_dims"),
                    "rf_id": cpu_all.column("rf_id"),
                    "external_id": cpu_all.column("external_id"),
                    "concrete": cpu_all.column("concrete"),
                }
            )
        return _Rank(runtime, names, len(pairs), gpu_batch, len(s_names), comms_batch, rec_batch, all_batch)


def _coll_info(
    meta: dict[str, Any], f: _File
) -> tuple[str | None, tuple[str, tuple[int, ...]] | None, int | None, str | None, str | None]:
    """(coll, (pg name, ranks), comm_bytes, format dtype, problem) from collective metadata."""
    raw = str(meta.get("Collective name", "")).lower().lstrip("_")
    if raw in ("send", "recv", "isend", "irecv"):
        return None, None, None, None, "point-to-point send/recv without peer information"
    coll = COLL_NAMES.get(raw)
    if coll is None:
        return None, None, None, None, f"collective of unknown type '{raw}'"
    pg_name = str(meta.get("Process Group Name", ""))
    ranks = _parse_ranks(meta.get("Process Group Ranks"))
    if ranks is None:
        ranks = f.pg_ranks.get(pg_name)
    if ranks is None:
        size = _as_int(meta.get("Group size"))
        if size == 1:
            ranks = (f.source_rank,)
        else:
            return coll, None, None, None, "collective without its process group's ranks"
    dt = str(meta.get("dtype", "")).lower().replace("c10::", "")
    esize = DTYPE_BYTES.get(dt)
    n_in = _as_int(meta.get("In msg nelems"))
    n_out = _as_int(meta.get("Out msg nelems"))
    if coll == "barrier":
        nbytes: int | None = 0
    elif esize is None:
        nbytes = None
    else:
        # nccl-tests convention: all_gather counts the full output, the others the input.
        n = n_out if coll == "all_gather" else n_in
        if n is None:
            n = n_in if n_out is None else n_out
        nbytes = None if n is None else n * esize
    if nbytes is None:
        return coll, None, None, None, "collective without message size or dtype"
    if not 0 <= nbytes < 2**64:
        return coll, None, None, None, "collective whose message size is negative or 2^64 bytes or more"
    return coll, (pg_name, ranks), nbytes, FORMAT_DTYPE.get(dt), None


class _Hook(Protocol):
    """What another ingester (PyTorch ET + Kineto, `tracesim.ingest.et_kineto`) adds to this one."""

    def begin(self, files: list[_File]) -> None:
        """Called once all files are read, in rank order (before any is loaded: `source_rank` and
        `path` are set, the events not yet)."""

    def prepare(self, rank: int, f: _File, r: _Rank) -> pa.RecordBatch | None:
        """Called per rank before its ops are made: more CPU ops with recorded shapes for the
        costs (columns as `r.recorded`), or None."""

    def link(self, rank: int, f: _File, r: _Rank) -> list[tuple[int, int]]:
        """Called per rank before its ops are made: (consumer, producer) deps between its GPU ops
        (rows of `r.gpu`), added after the launch deps."""


def ingest_kineto(paths: Sequence[str | Path], *, time_unit: TimeUnit = "auto") -> tuple[Trace, IngestReport]:
    """Reads Kineto Chrome-trace files (one per rank; a directory stands for the `*.json` and
    `*.json.gz` files in it, as the profiler's `tensorboard_trace_handler` writes them) into a
    validated trace and a report."""
    return _ingest_kineto(expand_kineto_paths(paths), time_unit, None)


DIGITS = re.compile(r"(\d+)")


def expand_kineto_paths(paths: Sequence[str | Path]) -> list[Path]:
    """The files as given, a directory replaced by its `*.json`/`*.json.gz` files, in natural
    name order (rank2 before rank10: the order gives the ranks of files without
    `distributedInfo`)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                (q for q in p.iterdir() if q.is_file() and q.name.endswith((".json", ".json.gz"))),
                key=lambda q: [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in DIGITS.split(q.name)],
            )
            if not found:
                raise TraceError(f"{p}: directory without .json or .json.gz files")
            out.extend(found)
        else:
            out.append(p)
    return out


def _ingest_kineto(
    paths: Sequence[str | Path], time_unit: TimeUnit, hook: _Hook | None
) -> tuple[Trace, IngestReport]:
    with _ingesting():
        return _ingest(paths, time_unit, hook)


# Kinds of ops, as codes of the ops' kind column while it is built.
KINDS = ["compute", "memory", "host", "collective"]
COMPUTE, MEMORY, HOST, COLLECTIVE = range(4)


class _Vocab:
    """Strings as codes (a column's dictionary while it is built)."""

    def __init__(self) -> None:
        self.words: list[str] = []
        self._code: dict[str, int] = {}

    def code(self, word: str | None) -> int:
        if word is None:
            return -1
        c = self._code.get(word)
        if c is None:
            c = self._code[word] = len(self.words)
            self.words.append(word)
        return c

    def column(self, codes: np.ndarray) -> pa.Array:
        return pa.DictionaryArray.from_arrays(
            pa.array(codes, pa.int32(), mask=codes < 0), pa.array(self.words, pa.string())
        )


@dataclass
class _Columns:
    """The ops of every rank, column by column, in key order (GPU ops of rank 0, its host ops,
    then rank 1's...)."""

    start: list[np.ndarray] = field(default_factory=list)
    dur: list[np.ndarray] = field(default_factory=list)
    rank: list[np.ndarray] = field(default_factory=list)
    stream: list[np.ndarray] = field(default_factory=list)
    name: list[pa.Array] = field(default_factory=list)
    kind: list[np.ndarray] = field(default_factory=list)
    category: list[np.ndarray] = field(default_factory=list)
    dtype: list[np.ndarray] = field(default_factory=list)
    iteration: list[pa.Array] = field(default_factory=list)
    deps: list[pa.Array] = field(default_factory=list)
    flops: list[np.ndarray] = field(default_factory=list)
    bytes_read: list[np.ndarray] = field(default_factory=list)
    bytes_written: list[np.ndarray] = field(default_factory=list)
    gemm: list[np.ndarray] = field(default_factory=list)  # (n, 3), -1: none
    categories: _Vocab = field(default_factory=_Vocab)
    dtypes: _Vocab = field(default_factory=_Vocab)
    n: int = 0


def _ingest(
    paths: Sequence[str | Path], time_unit: TimeUnit, hook: _Hook | None
) -> tuple[Trace, IngestReport]:
    if not paths:
        raise TraceError("ingest kineto: no input files")
    report = IngestReport()
    keep_cpu = hook is not None
    with closing(_read_files(paths, time_unit, keep_cpu)) as reads:  # a failing file stops the reads
        files = [
            _File(Path(p), i, read, keep_cpu) for i, (p, read) in enumerate(zip(paths, reads, strict=True))
        ]
    seen: dict[int, Path] = {}
    for f in files:
        if f.source_rank in seen:
            raise TraceError(
                f"{f.path}: rank {f.source_rank} (distributedInfo.rank) is also the rank of "
                f"{seen[f.source_rank]}"
            )
        seen[f.source_rank] = f.path
    files.sort(key=lambda f: f.source_rank)
    rank_of = {f.source_rank: r for r, f in enumerate(files)}
    report.files = [str(f.path) for f in files]
    report.source_ranks = [f.source_rank for f in files]
    report.time_units = [f.unit for f in files]
    if hook is not None:
        hook.begin(files)
    firsts = [f.first_ts for f in files if f.first_ts is not None]
    if not firsts:
        raise TraceError(f"{files[0].path}: no GPU kernels, copies or runtime calls to ingest")
    base = min(firsts)

    cols = _Columns()
    colls: list[_Coll] = []
    for rank, f in enumerate(files):
        r = f.load()
        report.unmapped.update(f.unmapped)
        extra_rec = hook.prepare(rank, f, r) if hook is not None else None
        data_deps = hook.link(rank, f, r) if hook is not None else []
        _map_rank(rank, f, r, base, extra_rec, data_deps, cols, colls, report)
        report.iterations.extend(n for _, _, n in f.steps)
        del r

    groups_by_id = _match_collectives(colls, files, rank_of, report)
    report.iterations = sorted(set(report.iterations))
    kinds = _take_all(cols.kind) if cols.kind else np.zeros(0, np.int8)
    for c in colls:
        if c.kind == "collective":
            kinds[c.key] = COLLECTIVE
    counts = np.bincount(kinds, minlength=len(KINDS))
    for k in (COMPUTE, COLLECTIVE, MEMORY):
        if counts[k]:
            report.ops_by_kind[KINDS[k]] += int(counts[k])
    if counts[HOST]:
        report.ops_by_kind["host"] += int(counts[HOST])
    trace = _build(cols, kinds, colls, files, groups_by_id)
    return trace, report


def _map_rank(
    rank: int,
    f: _File,
    r: _Rank,
    base: int,
    extra_rec: pa.RecordBatch | None,
    data_deps: list[tuple[int, int]],
    cols: _Columns,
    colls: list[_Coll],
    report: IngestReport,
) -> None:
    """Makes one rank's ops (`tracesim._core.map_kineto_rank`) and their costs and collectives,
    appended to `cols` (and `colls`)."""
    gpu = r.gpu
    steps = np.array(f.steps, np.int64).reshape(-1, 3)
    extra = np.array(data_deps, np.int64).reshape(-1, 2)
    ops, counts = map_kineto_rank(
        r.runtime,
        r.names,
        r.threads,
        pa.record_batch({c: gpu.column(c) for c in ("ts", "end", "stream", "launch", "nccl")}),
        r.streams,
        pa.record_batch({"start": steps[:, 0], "end": steps[:, 1], "n": steps[:, 2]}),
        pa.record_batch({c: r.comms.column(c) for c in ("ts", "end", "thread")}),
        pa.record_batch({"consumer": extra[:, 0], "producer": extra[:, 1]}),
        base,
    )
    count = dict(counts)
    report.launch_deps += count["launch_deps"]
    report.sync_deps += count["sync_deps"]
    report.inferred_stream_deps += count["inferred_stream_deps"]
    report.graph_node_waits += count["graph_node_waits"]
    report.orphan_gpu_ops += count["orphan_gpu_ops"]
    if count["nested_runtime_calls"]:
        report.unmapped["runtime call nested in another (merged into it)"] += count["nested_runtime_calls"]

    g, n = gpu.num_rows, ops.num_rows
    key0 = cols.n
    # GPU ops: kind and category from gpu_kind and the name; then costs and collectives.
    kind_idx, kind_words = _codes(gpu.column("kind"))
    kind_of = np.array([MEMORY if w == "memory" else COMPUTE for w in kind_words] or [COMPUTE], np.int8)
    gpu_kind = kind_of[kind_idx] if g else np.zeros(0, np.int8)
    nccl = gpu.column("nccl").to_numpy(zero_copy_only=False).astype(bool)
    name_idx, gpu_names = _codes(gpu.column("name"))
    cat_of = np.array([cols.categories.code(_category(w)) for w in gpu_names] or [-1], np.int64)
    category = cat_of[name_idx] if g else np.zeros(0, np.int64)
    category[gpu_kind == MEMORY] = cols.categories.code("copy")
    category[nccl] = cols.categories.code("communication")
    costs = _assign_costs(f.path, r, extra_rec, gpu_kind, nccl, name_idx, gpu_names, category, cols, report)

    # Host ops: names from the runtime call names (see `HostName` in src/kineto_map.rs).
    words = list(r.names)
    words += [f"{w} {s}" for w in r.names for s in ("[wait]", "[after launch]")]
    words += ["cpu_gap", "launch not in trace", "graph node wait"]
    host_names = pa.DictionaryArray.from_arrays(
        ops.column("name").slice(g).cast(pa.int32()), pa.array(words, pa.string())
    )
    gpu_name_col = gpu.column("name")
    cols.name.append(gpu_name_col.cast(pa.dictionary(pa.int32(), pa.string())))
    cols.name.append(host_names)

    cols.start.append(_ints(ops.column("start")) - base)
    cols.dur.append(_ints(ops.column("dur")))
    cols.rank.append(np.full(n, rank, np.int32))
    cols.stream.append(_ints(ops.column("stream")).astype(np.int32))
    cols.kind.append(np.concatenate([gpu_kind, np.full(n - g, HOST, np.int8)]))
    cols.category.append(np.concatenate([category, np.full(n - g, -1, np.int64)]).astype(np.int32))
    cols.dtype.append(np.concatenate([costs.dtype, np.full(n - g, -1, np.int64)]).astype(np.int32))
    cols.iteration.append(ops.column("iteration"))
    deps = ops.column("deps")
    cols.deps.append(
        pa.LargeListArray.from_arrays(
            pc.subtract(deps.offsets, deps.offsets[0]), pc.add(deps.flatten(), pa.scalar(key0, pa.int64()))
        )
    )
    cols.flops.append(np.concatenate([costs.flops, np.full(n - g, np.nan)]))
    cols.bytes_read.append(np.concatenate([costs.read, np.full(n - g, -1, np.int64)]))
    cols.bytes_written.append(np.concatenate([costs.written, np.full(n - g, -1, np.int64)]))
    cols.gemm.append(np.concatenate([costs.gemm, np.full((n - g, 3), -1, np.int64)]))
    cols.n += n

    # NCCL kernels: collective metadata from their own args, else from the enclosing
    # record_param_comms op.
    rows = np.flatnonzero(nccl)
    if len(rows):
        own = gpu.column("args").take(rows).to_pylist()
        enc = ops.column("comms").slice(0, g).take(rows).to_pylist()
        comms_args = r.comms.column("args")
        starts = _ints(gpu.column("ts").take(rows)) - base
        for j, text, c, start in zip(rows.tolist(), own, enc, starts.tolist(), strict=True):
            op = _Coll(key0 + j, rank, start)
            meta = _args(text, f.path) if text is not None else None
            if meta is None or "Collective name" not in meta:
                meta = _args(comms_args[c].as_py(), f.path) if c is not None else None
                if meta is not None and "Collective name" not in meta:
                    meta = None
            if meta is None:
                op.comm_problem = "NCCL kernel without collective metadata"
            else:
                coll, gkey, nbytes, dtype, problem = _coll_info(meta, f)
                if problem is not None:
                    op.comm_problem = problem
                else:
                    op.coll, op.group_key, op.comm_bytes, op.dtype = coll, gkey, nbytes, dtype
            colls.append(op)


def _match_collectives(
    colls: list[_Coll], files: list[_File], rank_of: dict[int, int], report: IngestReport
) -> dict[int, tuple[str, list[int]]]:
    """group ids, coll_seq; collectives that cannot be matched stay compute/communication."""
    present = set(rank_of)
    group_ids: dict[tuple[str, tuple[int, ...]], int] = {}
    per: dict[tuple[int, int], list[_Coll]] = defaultdict(list)  # (group, rank) → ops in time order
    for op in sorted(colls, key=lambda o: (o.start, o.key)):
        if op.comm_problem is not None:
            report.collective_problems[op.comm_problem] += 1
            continue
        if op.group_key is None:
            continue
        ranks = op.group_key[1]
        if not set(ranks) <= present or len(set(ranks)) != len(ranks):
            report.collective_problems[NO_PEER_FILES] += 1
            continue
        if files[op.rank].source_rank not in ranks:
            report.collective_problems[OUTSIDE_GROUP] += 1
            continue
        gid = group_ids.setdefault(op.group_key, len(group_ids))
        op.group_id = gid
        per[(gid, op.rank)].append(op)
    members: dict[int, list[int]] = {g: sorted(rank_of[r] for r in k[1]) for k, g in group_ids.items()}

    def fail(_op: _Coll, problem: str) -> None:
        report.collective_problems[problem] += 1

    # Keep only the (group, seq) that every member has, with agreeing type and size.
    report.collectives_matched += _match_by_seq(
        per, members, "collective without its peer ranks (no matching op in a peer's file)", fail
    )
    return {gid: (k[0], [rank_of[r] for r in k[1]]) for k, gid in group_ids.items()}


def _build(
    cols: _Columns,
    kinds: np.ndarray,
    colls: list[_Coll],
    files: list[_File],
    groups_by_id: dict[int, tuple[str, list[int]]],
) -> Trace:
    """The validated trace of the ops: sorted by (start, rank, stream, key) into op_id order,
    deps mapped from keys to op_ids. Each column is made and its parts freed before the next, so
    that the ops are held about once."""
    n = cols.n
    start = _take_all(cols.start)
    rank = _take_all(cols.rank)
    stream = _take_all(cols.stream)
    order = np.lexsort((np.arange(n), stream, rank, start))
    op_id = np.empty(n, np.int64)
    op_id[order] = np.arange(n)
    take = pa.array(order)
    out: dict[str, pa.Array] = {"op_id": pa.array(np.arange(n), OP_COLUMN_TYPES["op_id"])}
    out["rank"] = pa.array(rank[order], OP_COLUMN_TYPES["rank"])
    out["stream"] = pa.array(stream[order], OP_COLUMN_TYPES["stream"])
    del rank, stream
    names = pa.chunked_array(cols.name).unify_dictionaries().combine_chunks()
    out["name"] = names.take(take).cast(pa.string())
    del names
    cols.name.clear()

    # Collectives (matched ones only): their columns and dtype, by key.
    is_coll = np.zeros(n, bool)
    coll_code = np.full(n, -1, np.int32)
    group_id = np.zeros(n, np.int64)
    coll_seq = np.zeros(n, np.int64)
    comm_bytes = np.zeros(n, np.uint64)
    colls_vocab = _Vocab()
    dtype = _take_all(cols.dtype)
    used: set[int] = set()
    for c in colls:
        if c.kind != "collective":
            continue
        assert c.group_id is not None and c.coll_seq is not None and c.comm_bytes is not None
        is_coll[c.key] = True
        coll_code[c.key] = colls_vocab.code(c.coll)
        group_id[c.key], coll_seq[c.key] = c.group_id, c.coll_seq
        comm_bytes[c.key] = c.comm_bytes
        dtype[c.key] = cols.dtypes.code(c.dtype)
        used.add(c.group_id)
    kind_vocab = _Vocab()
    for w in KINDS:
        kind_vocab.code(w)

    def strings(codes: np.ndarray, vocab: _Vocab) -> pa.Array:
        return vocab.column(codes[order]).cast(pa.string())

    def ints(values: np.ndarray, attr: str, mask: np.ndarray | None = None) -> pa.Array:
        """`values` in op_id order; null where `mask` (default: where negative)."""
        v = values[order]
        return pa.array(v, OP_COLUMN_TYPES[attr], mask=(v < 0) if mask is None else mask[order])

    out["kind"] = strings(kinds.astype(np.int32), kind_vocab)
    out["category"] = strings(_take_all(cols.category), cols.categories)
    out["dtype"] = strings(dtype, cols.dtypes)
    del dtype
    out["duration_ns"] = pa.array(_take_all(cols.dur)[order], OP_COLUMN_TYPES["duration_ns"])
    out["start_ns"] = pa.array(start[order], OP_COLUMN_TYPES["start_ns"])
    del start
    deps = pa.chunked_array(cols.deps, pa.large_list(pa.int64())).combine_chunks().take(take)
    cols.deps.clear()
    targets = op_id[_ints(deps.flatten())]
    offsets = pc.subtract(deps.offsets, deps.offsets[0])
    del deps, op_id
    out["deps"] = pa.LargeListArray.from_arrays(offsets, pa.array(targets)).cast(OP_COLUMN_TYPES["deps"])
    del targets, offsets
    out["coll"] = strings(coll_code, colls_vocab)
    not_coll = ~is_coll
    out["group_id"] = ints(group_id, "group_id", not_coll)
    out["coll_seq"] = ints(coll_seq, "coll_seq", not_coll)
    out["comm_bytes"] = ints(comm_bytes, "comm_bytes", not_coll)
    del is_coll, not_coll, coll_code, group_id, coll_seq, comm_bytes
    iteration = pa.chunked_array(cols.iteration, pa.int64()).combine_chunks()
    cols.iteration.clear()
    out["iteration"] = iteration.take(take).cast(OP_COLUMN_TYPES["iteration"])
    del iteration
    flops = _take_all(cols.flops)[order]
    out["flops"] = pa.array(flops, OP_COLUMN_TYPES["flops"], mask=np.isnan(flops))
    del flops
    out["bytes_read"] = ints(_take_all(cols.bytes_read), "bytes_read")
    out["bytes_written"] = ints(_take_all(cols.bytes_written), "bytes_written")
    gemm = _take_all(cols.gemm)
    for i, attr in enumerate(("gemm_m", "gemm_n", "gemm_k")):
        out[attr] = ints(gemm[:, i], attr)
    del gemm
    table = pa.table(out)
    del out
    return _to_trace(
        table,
        sorted(used),
        groups_by_id,
        "tracesim.ingest.kineto",
        [f.path.name for f in files],
        [f.source_rank for f in files],
    )


def _take_all(parts: list[np.ndarray]) -> np.ndarray:
    """The parts (of each rank) as one array; the list is emptied, so that they are freed."""
    whole = np.concatenate(parts)
    parts.clear()
    return whole


# ---------------------------------------------------------------------------------------------
# Costs (FLOPs, bytes, dtype, GEMM shape) from the recorded shapes of the enclosing CPU operator.


# Bytes per element and canonical dtype of PyTorch's "Input type" strings.
ELEM_BYTES = {
    "float": 4,
    "double": 8,
    "c10::Half": 2,
    "c10::BFloat16": 2,
    "long int": 8,
    "long": 8,
    "int": 4,
    "short int": 2,
    "short": 2,
    "bool": 1,
    "unsigned char": 1,
    "signed char": 1,
    "c10::complex<float>": 8,
    "c10::complex<double>": 16,
}
# Tensor types are written lower case or c10::; capitalised ones (Int, Double, Bool, Scalar) are
# Python scalars, not tensors.
INPUT_DTYPE = {"float": "fp32", "c10::Half": "fp16", "c10::BFloat16": "bf16"}

GEMM_OPS = {
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::matmul",
    "aten::linear",
    "aten::_scaled_mm",
    "aten::_addmm_activation",
}
CONV_FWD_OPS = {
    "aten::convolution",
    "aten::_convolution",
    "aten::conv1d",
    "aten::conv2d",
    "aten::conv3d",
    "aten::cudnn_convolution",
    "aten::miopen_convolution",
    "aten::cudnn_convolution_relu",
    "aten::cudnn_convolution_add_relu",
}
# Ops whose Concrete Inputs hold (input, weight, bias, stride, padding, dilation, ...).
CONV_STD_ORDER = {"aten::convolution", "aten::_convolution", "aten::conv1d", "aten::conv2d", "aten::conv3d"}
ATTN_OPS = {
    "aten::scaled_dot_product_attention",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention",
    "aten::_flash_attention_forward",
    "aten::_efficient_attention_forward",
}
ATTN_BWD_OPS = {
    "aten::_scaled_dot_product_flash_attention_backward",
    "aten::_scaled_dot_product_efficient_attention_backward",
    "aten::_scaled_dot_product_cudnn_attention_backward",
    "aten::_flash_attention_backward",
    "aten::_efficient_attention_backward",
}
NORM_WORDS = ("norm",)
REDUCTION_OPS = {
    "sum",
    "mean",
    "max",
    "min",
    "amax",
    "amin",
    "argmax",
    "argmin",
    "prod",
    "var",
    "std",
    "var_mean",
    "std_mean",
    "all",
    "any",
    "norm",
    "linalg_vector_norm",
    "logsumexp",
    "cumsum",
    "softmax",
    "_softmax",
    "log_softmax",
    "_log_softmax",
    "_softmax_backward_data",
    "_log_softmax_backward_data",
    "nll_loss_forward",
    "nll_loss_backward",
    "nll_loss2d_forward",
    "nll_loss2d_backward",
}
# Reductions whose output is not the size of their largest input (written bytes not counted).
SHRINKING = {
    "sum", "mean", "max", "min", "amax", "amin", "argmax", "argmin", "prod", "var", "std",
    "var_mean", "std_mean", "all", "any", "norm", "linalg_vector_norm", "logsumexp",
    "nll_loss_forward", "nll_loss2d_forward",
}  # fmt: skip
COPY_OPS = {"copy_", "_to_copy", "clone", "contiguous", "to", "_copy_from", "copy"}
FILL_OPS = {"fill", "zero", "zeros", "ones", "full", "zeros_like", "ones_like", "full_like"}
ELEMENTWISE_OPS = {
    "add", "sub", "mul", "div", "rsub", "neg", "abs", "exp", "exp2", "expm1", "log", "log2", "log1p",
    "sqrt", "rsqrt", "pow", "reciprocal", "sign", "sin", "cos", "tanh", "sigmoid", "relu", "relu6",
    "gelu", "silu", "mish", "elu", "leaky_relu", "hardtanh", "hardswish", "hardsigmoid", "softplus",
    "clamp", "clamp_min", "clamp_max", "clip", "threshold", "threshold_backward", "gelu_backward",
    "silu_backward", "sigmoid_backward", "tanh_backward", "where", "masked_fill", "lerp", "addcmul",
    "addcdiv", "floor", "ceil", "round", "trunc", "frac", "remainder", "fmod", "maximum", "minimum",
    "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_not", "bitwise_and",
    "bitwise_or", "bitwise_not", "native_dropout", "native_dropout_backward", "dropout", "bernoulli",
    "uniform", "normal", "erf", "erfinv", "square", "hardtanh_backward", "leaky_relu_backward",
    "elu_backward", "softplus_backward", "mse_loss", "mse_loss_backward", "nan_to_num", "sgn",
    "masked_scale", "_masked_scale", "fused_dropout", "_fused_dropout", "mul_out",
}  # fmt: skip
HEAVY_RE = re.compile(
    r"gemm|xmma|cutlass|cublas|wgmma|hmma|s884|s1688|s16816|conv|cudnn|dgrad|wgrad|fprop|"
    r"implicit|winograd|fft|flash|fmha|attention|attn|sdpa|Kernel2|magma|cijk_|nn_v1|nt_v1|tn_v1|tt_v1",
    re.IGNORECASE,
)
# Helper kernels of GEMM/conv ops whose names match HEAVY_RE through their template arguments.
NOT_HEAVY_RE = re.compile(
    r"splitkreduce|reduce_kernel|epilogue|memset|transpose|nchwtonhwc|nhwctonchw|elementwise", re.IGNORECASE
)
# fp32 GEMMs/convs that run on tensor cores in TF32.
TF32_RE = re.compile(r"tf32|tensorop_s1688|tensorop_s16816|s1688gemm|s16816gemm", re.IGNORECASE)
GEMM_LIKE_CATEGORIES = {"gemm", "attention"}


@dataclass(slots=True)
class _Cost:
    category: str
    dtype: str | None
    flops: float | None
    read: int
    written: int
    gemm: tuple[int, int, int] | None = None
    heavy: bool = False  # GEMM/conv/attention: the cost belongs to the GEMM-looking kernel(s)


# What a convolution's cost reads besides its own shapes: the recorded args of its enclosing
# convolution op (backward_input/backward_weight: (name, args) of their parent), or of the
# first of itself and its ancestors with stride and padding (forward).
_ConvContext = tuple[str, dict[str, Any]] | dict[str, Any] | None


def _tensors(args: dict[str, Any]) -> list[tuple[list[int], str]] | None:
    """(shape, type) of each input of a CPU op; None when it has no recorded shapes."""
    dims = args.get("Input Dims", args.get("Input dims"))
    types = args.get("Input type", args.get("Input types"))
    if not isinstance(dims, list):
        return None
    if not isinstance(types, list) or len(types) != len(dims):
        types = [""] * len(dims)
    out: list[tuple[list[int], str]] = []
    for d, t in zip(dims, types, strict=True):
        if isinstance(d, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in d):
            out.append((d, str(t)))
        else:
            out.append(([], ""))  # TensorList and the like: not read
    return out


def _numel(shape: list[int]) -> int:
    n = 1
    for x in shape:
        n *= max(x, 0)
    return n


def _esize(t: str) -> int | None:
    if t.startswith("c10::Float8"):
        return 1
    return ELEM_BYTES.get(t)


def _dtype_of(t: str) -> str | None:
    return "fp8" if t.startswith("c10::Float8") else INPUT_DTYPE.get(t)


def _is_tensor(shape: list[int], t: str) -> bool:
    return _esize(t) is not None


def _tbytes(x: tuple[list[int], str]) -> int:
    return _numel(x[0]) * (_esize(x[1]) or 0)


def _concrete(args: dict[str, Any], i: int) -> Any:
    """Input i of a CPU op's `Concrete Inputs` (newer PyTorch), parsed; None when absent."""
    ci = args.get("Concrete Inputs")
    if not isinstance(ci, list) or i >= len(ci) or not isinstance(ci[i], str):
        return None
    try:
        return json.loads(ci[i].replace("True", "true").replace("False", "false"))
    except json.JSONDecodeError:
        return None


def _concrete_list(args: dict[str, Any], i: int) -> list[int] | None:
    v = _concrete(args, i)
    if isinstance(v, int) and not isinstance(v, bool):
        return [v]
    if isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return v
    return None


def _short(name: str) -> str:
    base = name.split("::", 1)[1] if "::" in name else name
    return base


def _op_cost(name: str, args: dict[str, Any], context: _ConvContext) -> _Cost | str:
    """The cost of a CPU op (all its kernels together), from its name and recorded shapes (`args`),
    or why there is none."""
    ins = _tensors(args)
    if ins is None:
        return "enclosing CPU op has no recorded shapes"
    tens = [x for x in ins if _is_tensor(*x)]
    if not tens:
        return "enclosing CPU op has no tensor inputs of a known type"
    dtype = _dtype_of(tens[0][1])
    es = _esize(tens[0][1]) or 4
    if name in GEMM_OPS:
        return _gemm_cost(name, ins, dtype, es)
    if name in CONV_FWD_OPS or "convolution_backward" in name:
        return _conv_cost(name, args, context, ins, dtype, es)
    if name in ATTN_OPS or name in ATTN_BWD_OPS or name.startswith("flash_attn::"):
        return _attn_cost(name, ins, dtype, es)
    short = _short(name)
    base = short[:-1] if short.endswith("_") and not short.endswith("__") else short
    base = base.removesuffix(".out")
    read = sum(_tbytes(x) for x in tens)
    big = max(tens, key=lambda x: _numel(x[0]))
    numel = _numel(big[0])
    if base in COPY_OPS:
        if short == "copy_" and len(tens) >= 2:  # copy_(dst, src): read src, write dst
            return _Cost("copy", dtype, None, _tbytes(tens[1]), _tbytes(tens[0]))
        return _Cost("copy", dtype, None, _tbytes(tens[0]), _tbytes(tens[0]))
    if base in FILL_OPS:
        return _Cost("elementwise", dtype, None, 0, _tbytes(big))
    if any(w in base for w in NORM_WORDS) and base not in REDUCTION_OPS:
        return _Cost("norm", dtype, float(numel), read, numel * es)
    if base in REDUCTION_OPS:
        written = 0 if base in SHRINKING else numel * es
        return _Cost("reduction", dtype, float(numel), read, written)
    if base in ELEMENTWISE_OPS:  # in place (add_): the output is the first input, written back
        return _Cost("elementwise", dtype, float(numel), read, numel * es)
    return "no cost rule for the enclosing CPU op"


def _gemm_cost(name: str, ins: list[tuple[list[int], str]], dtype: str | None, es: int) -> _Cost | str:
    shapes = [s for s, t in ins if _is_tensor(s, t) and s]
    bias: list[int] | None = None
    b = 1
    if name in ("aten::addmm", "aten::_addmm_activation") and len(shapes) >= 3:
        bias, a, w = shapes[0], shapes[1], shapes[2]
        m, k, n = a[0], a[1], w[1]
    elif name in ("aten::mm", "aten::_scaled_mm") and len(shapes) >= 2 and len(shapes[0]) == 2:
        a, w = shapes[0], shapes[1]
        m, k, n = a[0], a[1], w[-1]
    elif name == "aten::bmm" and len(shapes) >= 2 and len(shapes[0]) == 3:
        a, w = shapes[0], shapes[1]
        b, m, k, n = a[0], a[1], a[2], w[2]
    elif name == "aten::baddbmm" and len(shapes) >= 3 and len(shapes[1]) == 3:
        bias, a, w = shapes[0], shapes[1], shapes[2]
        b, m, k, n = a[0], a[1], a[2], w[2]
    elif name == "aten::linear" and len(shapes) >= 2 and len(shapes[1]) == 2:
        a, w = shapes[0], shapes[1]
        m, k, n = _numel(a[:-1]), a[-1], w[0]
        bias = shapes[2] if len(shapes) >= 3 else None
    elif name == "aten::matmul" and len(shapes) >= 2 and shapes[0] and shapes[1]:
        a, w = shapes[0], shapes[1]
        if len(w) == 1:
            m, k, n = _numel(a[:-1]), a[-1], 1
        elif len(a) == 1:
            m, k, n = 1, a[0], w[-1]
        elif len(w) == 2:
            m, k, n = _numel(a[:-1]), a[-1], w[-1]
        else:
            m, k, n = a[-2], a[-1], w[-1]
            b = max(_numel(a[:-2]), _numel(w[:-2]))
    else:
        return "GEMM op with shapes it does not recognise"
    if min(b, m, n, k) <= 0:
        return "GEMM op with shapes it does not recognise"
    flops = 2.0 * b * m * n * k  # the bias add (b·m·n) is not counted
    read = (b * m * k + b * k * n + (_numel(bias) if bias is not None else 0)) * es
    if name == "aten::_scaled_mm":
        dtype = "fp8"
    return _Cost("gemm", dtype, flops, read, b * m * n * es, gemm=(b * m, n, k), heavy=True)


def _conv_out(size: int, r: int, stride: int, pad: int, dil: int) -> int:
    return max((size + 2 * pad - dil * (r - 1) - 1) // stride + 1, 1)


def _conv_cost(
    name: str,
    args: dict[str, Any],
    context: _ConvContext,
    ins: list[tuple[list[int], str]],
    dtype: str | None,
    es: int,
) -> _Cost | str:
    shapes = [s for s, t in ins if _is_tensor(s, t)]
    bad = "convolution op with shapes it does not recognise"
    if "convolution_backward" in name:
        # (grad_out, input, weight) for convolution_backward; (input, grad_out, weight) for
        # cudnn/miopen_convolution_backward; backward_input: ([], grad_out, weight);
        # backward_weight: ([], grad_out, input): its weight shape comes from the parent op.
        if name.endswith(("backward_input", "backward_weight")):
            if isinstance(context, tuple):
                pname, pargs = context
                pins = _tensors(pargs)
                if pins is not None and "convolution_backward" in pname:
                    return _conv_bwd(pname, [s for s, t in pins if _is_tensor(s, t)], 1, dtype, es)
            if name.endswith("backward_input") and len(shapes) >= 2:
                g, w = shapes[0], shapes[1]
                if len(g) >= 3 and len(w) == len(g):
                    x = [g[0], w[1], *g[2:]]
                    return _conv_flops(x, w, g, dtype, es, reads=[g, w], writes=[x])
            return bad
        mask = _concrete(args, 10) if name == "aten::convolution_backward" else None
        grads = 2  # grad input and grad weight, unless the output mask says otherwise
        if isinstance(mask, list) and len(mask) >= 2:
            grads = int(mask[0] is True) + int(mask[1] is True)
        return _conv_bwd(name, shapes, grads, dtype, es)
    if len(shapes) < 2 or len(shapes[0]) < 3 or len(shapes[1]) != len(shapes[0]):
        return bad
    x, w = shapes[0], shapes[1]
    stride = pad = dil = None
    if isinstance(context, dict):
        stride = _concrete_list(context, 3)
        pad = _concrete_list(context, 4)
        dil = _concrete_list(context, 5)
    nsp = len(x) - 2
    if stride is not None and pad is not None:
        d = dil or [1]
        sp = [
            _conv_out(
                x[2 + i],
                w[2 + i],
                stride[min(i, len(stride) - 1)],
                pad[min(i, len(pad) - 1)],
                d[min(i, len(d) - 1)],
            )
            for i in range(nsp)
        ]
    else:
        sp = list(x[2:])  # stride and padding not recorded: output the size of the input
    y = [x[0], w[0], *sp]
    return _conv_flops(x, w, y, dtype, es, reads=[x, w], writes=[y])


def _conv_bwd(name: str, shapes: list[list[int]], grads: int, dtype: str | None, es: int) -> _Cost | str:
    if len(shapes) < 3:
        return "convolution op with shapes it does not recognise"
    if name == "aten::convolution_backward":
        g, x, w = shapes[0], shapes[1], shapes[2]
    else:
        x, g, w = shapes[0], shapes[1], shapes[2]
    if not (len(g) == len(x) == len(w) >= 3):
        return "convolution op with shapes it does not recognise"
    c = _conv_flops(x, w, g, dtype, es, reads=[g, x, w], writes=[x, w])
    if isinstance(c, _Cost) and c.flops is not None:
        c.flops *= max(grads, 1)
    return c


def _conv_flops(
    x: list[int],
    w: list[int],
    y: list[int],
    dtype: str | None,
    es: int,
    *,
    reads: list[list[int]],
    writes: list[list[int]],
) -> _Cost | str:
    n, kk, cg = x[0], w[0], w[1]
    rs = _numel(w[2:])
    pq = _numel(y[2:])
    if min(n, kk, cg, rs, pq) <= 0:
        return "convolution op with shapes it does not recognise"
    flops = 2.0 * n * kk * cg * rs * pq
    # As an implicit GEMM: M = N·P·Q, N = K, K = C·R·S (per group).
    return _Cost(
        "gemm",
        dtype,
        flops,
        sum(_numel(s) for s in reads) * es,
        sum(_numel(s) for s in writes) * es,
        gemm=(n * pq, kk, cg * rs),
        heavy=True,
    )


def _attn_cost(name: str, ins: list[tuple[list[int], str]], dtype: str | None, es: int) -> _Cost | str:
    shapes = [s for s, t in ins if _is_tensor(s, t)]
    bwd = "backward" in name or "bwd" in name
    qi = 1 if bwd and not name.startswith("flash_attn::") else 0  # SDPA backward: (grad_out, q, k, v, ...)
    if name.startswith("flash_attn::") and bwd:
        qi = 1  # (dout, q, k, v, out, ...)
    if len(shapes) < qi + 3 or len(shapes[qi]) != 4 or len(shapes[qi + 1]) != 4:
        return "attention op with shapes it does not recognise"
    q, kk, v = shapes[qi], shapes[qi + 1], shapes[qi + 2]
    if name.startswith("flash_attn::"):  # (B, S, H, D)
        b, sq, h, d = q
        sk = kk[1]
    else:  # (B, H, S, D)
        b, h, sq, d = q
        sk = kk[2]
    flops = 4.0 * b * h * sq * sk * d * (2.5 if bwd else 1.0)
    io = (_numel(q) + _numel(kk) + _numel(v)) * es
    out = _numel(q) * es
    if bwd:
        return _Cost("attention", dtype, flops, io + 2 * out, io, heavy=True)
    return _Cost("attention", dtype, flops, io, out, heavy=True)


@dataclass
class _GpuCosts:
    """Per GPU op of a rank: its cost (none: NaN flops, -1 bytes, dtype code and GEMM shape)."""

    flops: np.ndarray
    read: np.ndarray
    written: np.ndarray
    dtype: np.ndarray  # codes of `_Columns.dtypes`
    gemm: np.ndarray  # (ops, 3): m, n, k


# Costs above this are not kept (the columns are 64-bit).
MAX_COST = 2**63 - 1


def _assign_costs(
    path: Path,
    r: _Rank,
    extra_rec: pa.RecordBatch | None,
    gpu_kind: np.ndarray,
    nccl: np.ndarray,
    name_idx: np.ndarray,
    gpu_names: list[str],
    category: np.ndarray,
    cols: _Columns,
    report: IngestReport,
) -> _GpuCosts:
    """The costs of a rank's GPU ops (see the module doc); sets the category of costed kernels
    (in `category`) and counts the ops without cost by reason. Vectorised: only each distinct
    (CPU op name, recorded shapes) has its cost worked out in Python."""
    g = len(gpu_kind)
    out = _GpuCosts(
        np.full(g, np.nan), np.full(g, -1, np.int64), np.full(g, -1, np.int64), np.full(g, -1, np.int64),
        np.full((g, 3), -1, np.int64),
    )  # fmt: skip
    if g == 0:
        return out
    reasons: list[str] = []
    reason = np.full(g, -1, np.int64)

    def why(mask: np.ndarray, text: str) -> None:
        reason[mask] = len(reasons)
        reasons.append(text)

    why(nccl, "NCCL kernel (timed by the network model)")
    # Copies and fills: DtoD copies and memsets get their bytes.
    memory = gpu_kind == MEMORY
    low = [w.lower() for w in gpu_names]
    is_memset = np.array(["memset" in w for w in low], bool)[name_idx]
    is_dtod = np.array(["dtod" in w or "device -> device" in w for w in low], bool)[name_idx]
    nbytes = _ints(r.gpu.column("bytes"), -1)
    sized = memory & (nbytes > 0)
    why(memory & ~sized, "copy/memset without a byte count")
    fill, dtod = sized & is_memset, sized & ~is_memset & is_dtod
    out.read[fill], out.written[fill] = 0, nbytes[fill]
    out.read[dtod], out.written[dtod] = nbytes[dtod], nbytes[dtod]
    why(sized & ~is_memset & ~is_dtod, "host↔device copy (no PCIe in the roofline)")
    report.costed += int(fill.sum() + dtod.sum())

    # Kernels: the innermost CPU op with recorded shapes enclosing their launch.
    kernel = ~memory & ~nccl
    launch = _ints(r.gpu.column("launch"))
    why(kernel & (launch < 0), "launch not in trace")
    rec = r.recorded
    if extra_rec is not None and extra_rec.num_rows:
        # Strings as plain strings: the two parts' dictionaries differ.
        both = [pa.table(b).cast(_plain_strings(b.schema)) for b in (rec, extra_rec)]
        rec = pa.concat_tables(both).combine_chunks().to_batches()[0]
    if rec.num_rows:
        inner_b, parent_b = kineto_innermost(
            pa.record_batch({"ts": r.runtime.column("ts"), "thread": r.runtime.column("thread")}),
            pa.record_batch({c: rec.column(c) for c in ("ts", "end", "thread")}),
        )
        inner = _ints(inner_b.column("inner"))
        parent = _ints(parent_b.column("parent"))
        cpu = np.where(launch >= 0, inner[np.maximum(launch, 0)] if len(inner) else -1, -1)
    else:
        parent = np.zeros(0, np.int64)
        cpu = np.full(g, -1, np.int64)
    why(kernel & (launch >= 0) & (cpu < 0), "no enclosing CPU op with recorded shapes")
    found = np.flatnonzero(reason >= 0)
    _counted(report.uncosted, reasons, reason[found], found)

    js = np.flatnonzero(kernel & (cpu >= 0))
    if len(js) == 0:
        return out
    # Groups: the kernels of one CPU op (in order of their first kernel).
    rows, first, inv, size = np.unique(cpu[js], return_index=True, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    rname_idx, rnames = _codes(rec.column("name"))
    rshape_idx, rshapes = _codes(rec.column("shapes"))
    # Convolutions also read their enclosing convolution op: a context per group, as a code.
    contexts: dict[tuple[Any, ...], int] = {}
    ctx = np.full(len(rows), -1, np.int64)
    for gi in np.flatnonzero(
        np.array([_conv_kind(w) for w in rnames], np.int8)[rname_idx[rows]] > 0
    ).tolist():
        row = int(rows[gi])
        name = rnames[rname_idx[row]]
        key: tuple[Any, ...] | None = None
        if name in CONV_FWD_OPS:
            j = row
            while j >= 0:
                if rnames[rname_idx[j]] in CONV_STD_ORDER:
                    key = ("std", int(rshape_idx[j]))
                    break
                j = int(parent[j])
        elif name.endswith(("backward_input", "backward_weight")) and parent[row] >= 0:
            p = int(parent[row])
            key = ("parent", int(rname_idx[p]), int(rshape_idx[p]))
        if key is not None:
            ctx[gi] = contexts.setdefault(key, len(contexts))
    # One cost per distinct (name, shapes, context).
    keys, key_of = np.unique(
        np.stack([rname_idx[rows], rshape_idx[rows], ctx], 1), axis=0, return_inverse=True
    )
    key_of = key_of.reshape(-1)
    ctx_of = {v: k for k, v in contexts.items()}
    args_memo: dict[int, dict[str, Any]] = {}

    def args(shape: int) -> dict[str, Any]:
        a = args_memo.get(shape)
        if a is None:
            a = args_memo[shape] = _args(rshapes[shape] if shape >= 0 else None, path)
        return a

    nk = len(keys)
    k_ok = np.zeros(nk, bool)
    k_heavy = np.zeros(nk, bool)
    k_flops = np.full(nk, np.nan)
    k_read = np.zeros(nk, np.int64)
    k_written = np.zeros(nk, np.int64)
    k_dtype = np.full(nk, -1, np.int64)
    k_cat = np.full(nk, -1, np.int64)
    k_gemm = np.full((nk, 3), -1, np.int64)
    k_why: list[str] = []
    for i, (ni, si, ci) in enumerate(keys.tolist()):
        context: _ConvContext = None
        if ci >= 0:
            c = ctx_of[ci]
            context = args(c[1]) if c[0] == "std" else (rnames[c[1]], args(c[2]))
        cost = _op_cost(rnames[ni], args(si), context)
        if isinstance(cost, _Cost) and (
            max(cost.read, cost.written, *(cost.gemm or ())) > MAX_COST or min(cost.read, cost.written) < 0
        ):
            cost = "recorded shapes of 2^63 bytes or elements or more"
        if isinstance(cost, str):
            k_why.append(cost)
            continue
        k_why.append("")
        k_ok[i], k_heavy[i] = True, cost.heavy
        k_flops[i] = np.nan if cost.flops is None else cost.flops
        k_read[i], k_written[i] = cost.read, cost.written
        k_dtype[i] = cols.dtypes.code(cost.dtype)
        k_cat[i] = cols.categories.code(cost.category)
        if cost.gemm is not None:
            k_gemm[i] = cost.gemm

    gkey = key_of  # per group
    okey = gkey[inv]  # per kernel of js
    heavy_name = np.array([bool(HEAVY_RE.search(w)) and not NOT_HEAVY_RE.search(w) for w in gpu_names], bool)
    heavy = heavy_name[name_idx[js]]
    n_heavy = np.bincount(inv, weights=heavy & k_heavy[okey], minlength=len(rows)).astype(np.int64)
    on_heavy = k_ok[gkey] & k_heavy[gkey] & (n_heavy > 0)  # per group: cost on its heavy kernels
    target = k_ok[okey] & (~on_heavy[inv] | heavy)
    n_target = np.bincount(inv, weights=target, minlength=len(rows)).astype(np.int64)

    # The report: groups without cost (by reason and by CPU op), extra kernels of heavy ops.
    failed = np.flatnonzero(~k_ok[gkey])
    heavy_groups = np.flatnonzero(on_heavy)
    extra = len(k_why)  # the code of extra kernels, after the keys' reasons
    _counted(
        report.uncosted,
        [*k_why, "extra kernel of a GEMM/conv/attention op (cost on its main kernel)"],
        np.concatenate([gkey[failed], np.full(len(heavy_groups), extra)]),
        np.concatenate([first[failed], first[heavy_groups]]),
        np.concatenate([size[failed], size[heavy_groups] - n_heavy[heavy_groups]]),
    )
    _counted(report.uncosted_ops, rnames, rname_idx[rows[failed]], first[failed], size[failed])
    report.split_kernels += int(n_target[n_target > 1].sum())
    report.costed += int(target.sum())

    t = js[target]
    tk = okey[target]
    n = n_target[inv[target]]
    out.flops[t] = k_flops[tk] / n
    out.read[t] = k_read[tk] // n
    out.written[t] = k_written[tk] // n
    dtype = k_dtype[tk]
    tf32_name = np.array([bool(TF32_RE.search(w)) for w in gpu_names], bool)[name_idx[t]]
    fp32 = cols.dtypes.code("fp32")
    dtype[(dtype == fp32) & k_heavy[tk] & tf32_name] = cols.dtypes.code("tf32")
    out.dtype[t] = dtype
    single = (n == 1) & (k_gemm[tk, 0] >= 0)
    out.gemm[t[single]] = k_gemm[tk[single]]
    gemm_like = np.isin(category[t], [cols.categories.code(c) for c in GEMM_LIKE_CATEGORIES])
    recat = k_heavy[tk] | ~gemm_like
    category[t[recat]] = k_cat[tk[recat]]
    return out


def _plain_strings(schema: pa.Schema) -> pa.Schema:
    """`schema` with its string and dictionary columns as large strings (no 2 GiB limit)."""
    plain = [pa.types.is_dictionary(f.type) or pa.types.is_string(f.type) for f in schema]
    return pa.schema(
        [(f.name, pa.large_string() if p else f.type) for f, p in zip(schema, plain, strict=True)]
    )


def _conv_kind(name: str) -> int:
    """1: a convolution whose cost reads an enclosing op's args (forward, backward_input/weight)."""
    if name in CONV_FWD_OPS:
        return 1
    return int("convolution_backward" in name and name.endswith(("backward_input", "backward_weight")))
