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
and launches matched to GPU ops, and only the mapped classes reach Python (as columns; their
events become Python objects one rank at a time, while it is mapped).

Times: Chrome-trace `ts`/`dur` are microseconds; they are read exactly (from their decimal text,
never through a float) into integer nanoseconds. A trace with `displayTimeUnit: "ns"` whose times are all
integers is taken to be in nanoseconds already; Kineto's own "ns" traces write microseconds with
three decimals and are read as microseconds (`time_unit` overrides the guess).
"""

from __future__ import annotations

import bisect
import json
import os
import re
from array import array
from collections import Counter, defaultdict
from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from tracesim._core import read_kineto_file
from tracesim.exceptions import TraceError
from tracesim.ingest._common import (
    COLL_NAMES,
    DTYPE_BYTES,
    FORMAT_DTYPE,
    NO_PEER_FILES,
    OP_COLUMN_TYPES,
    OUTSIDE_GROUP,
    _category,
    _counter_lines,
    _match_by_seq,
    _no_cyclic_gc,
    _parse_json,
    _problem_lines,
    _to_trace,
)
from tracesim.trace import Trace

TimeUnit = Literal["auto", "us", "ns"]

BLOCKING_CALLS = {"cudaMemcpy", "cudaMemcpy2D", "hipMemcpy", "hipMemcpy2D"}


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
class _Ev:
    ts: int  # absolute ns
    end: int
    name: str
    cat: str
    thread: tuple[Any, Any]
    args: dict[str, Any]
    shapes: str | None = None  # recorded CPU ops: the JSON text of their shape fields (a cache key)
    cpu_op: bool = False  # of `cpu_all`: an operator (not an annotation)


_NO_ARGS: dict[str, Any] = {}  # shared by the events whose args the ingester reads from columns


@dataclass(slots=True)
class _Op:
    key: int  # creation index, used for ordering ties and deps before op_ids exist
    rank: int
    stream: int
    name: str
    kind: str
    start: int
    dur: int
    category: str | None = None
    deps: list[int] = field(default_factory=list)  # keys
    iteration: int | None = None
    coll: str | None = None
    dtype: str | None = None
    group_key: tuple[str, tuple[int, ...]] | None = None
    comm_bytes: int | None = None
    coll_seq: int | None = None
    group_id: int | None = None
    comm_problem: str | None = None
    flops: float | None = None
    bytes_read: int | None = None
    bytes_written: int | None = None
    gemm_m: int | None = None
    gemm_n: int | None = None
    gemm_k: int | None = None


class _OpCols:
    """Every op's fixed fields, column-wise and indexed by op key (start relative to the trace's
    first event; `gpu`: index of the op's `_Op` in the GPU op list, -1 for host ops). Host ops exist
    only here: they are most of the ops and need nothing else (`dep`: their one dep's key, or -1)."""

    def __init__(self) -> None:
        self.start = array("q")
        self.dur = array("q")
        self.rank = array("q")
        self.stream = array("q")
        self.gpu = array("q")
        self.dep = array("q")
        self.name: list[str] = []
        self.hosts = 0

    def __len__(self) -> int:
        return len(self.name)

    def end(self, key: int) -> int:
        return self.start[key] + self.dur[key]


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


def _comm_meta(args: dict[str, Any]) -> dict[str, Any] | None:
    """The collective metadata PyTorch attaches to NCCL kernels and record_param_comms."""
    if "Collective name" not in args:
        return None
    return args


def _args(text: str | None, path: Path) -> dict[str, Any]:
    """An event's `args` (floats kept as their text)."""
    if text is None:
        return {}
    v = _parse_json(text, path, "an event's args", parse_float=str)
    return v if isinstance(v, dict) else {}


def _interned(s: pl.Series) -> list[Any]:
    """The values of a string column without nulls, equal strings as one object."""
    arr = s.to_arrow()
    if not pa.types.is_dictionary(arr.type):
        arr = pc.dictionary_encode(arr.cast(pa.large_string()))
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    words = arr.dictionary.to_pylist()
    return list(map(words.__getitem__, arr.indices.to_pylist()))


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


class _File:
    """One Kineto file, read into columns (`read_kineto_file`) and split by class: only the
    events the ingester maps (GPU ops, runtime calls, recorded CPU ops, record_param_comms,
    ProfilerSteps) become `_Ev`s, and only while their rank is mapped (`load`); the others are
    counted by class. Times in absolute ns."""

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
        self.gpu: list[_Ev] = []
        self.gpu_launch: list[int | None] = []  # per GPU op: its runtime call's index
        self.gpu_stream: list[str] = []
        self.gpu_kind: list[str] = []  # kernel, memory or nccl
        self.gpu_bytes: list[int | None] = []
        self.runtime: list[_Ev] = []
        self.comms_ops: list[_Ev] = []  # record_param_comms
        self.cpu_ops: list[_Ev] = []  # CPU operators with recorded shapes, for costs
        self.cpu_all: list[_Ev] = []  # every CPU operator and annotation (only with keep_cpu)
        self.steps: list[tuple[int, int, int]] = []  # (start, end, N)
        # Events not mapped, counted by class (in order of first appearance, as the report lists
        # ties).
        self.unmapped: Counter[str] = Counter(dict(unmapped))

        self.keep_cpu = keep_cpu
        self._parts = parts  # the mapped classes, as Arrow columns, until `load`
        starts = [pc.min(parts[c].column("ts")).as_py() for c in ("gpu", "runtime") if parts[c].num_rows]
        self.first_ts: int | None = min(starts) if starts else None  # of its GPU ops and runtime calls
        steps = pl.from_arrow(parts.pop("steps"))
        assert isinstance(steps, pl.DataFrame)
        for t, d, n in zip(*(steps[c].to_list() for c in ("ts", "dur", "step_n")), strict=True):
            if len(n) > 10 or int(n) >= 2**32:
                raise TraceError(
                    f"{path}: ProfilerStep#{n}: the step number is above 4294967295 (iterations are uint32)"
                )
            self.steps.append((t, t + d, int(n)))
        self.steps.sort()

    def load(self) -> None:
        """Makes the `_Ev`s of the mapped classes (done for one rank at a time: a job's ranks are
        held as columns until then)."""
        parts, keep_cpu = self._parts, self.keep_cpu
        self._parts = {}

        def part(name: str) -> pl.DataFrame:
            df = pl.from_arrow(parts.pop(name))
            assert isinstance(df, pl.DataFrame)
            return df

        threads: dict[tuple[str, str], tuple[str, str]] = {}

        def evs(sub: pl.DataFrame, args: list[dict[str, Any]] | None = None) -> list[_Ev]:
            # Names, categories and threads repeat: one Python object per distinct value.
            names, cats, pids, tids = (_interned(sub[c]) for c in ("name", "cat", "pid", "tid"))
            thread = [threads.setdefault(t, t) for t in zip(pids, tids, strict=True)]
            del pids, tids
            if args is None:
                args = [_args(a, self.path) for a in sub["args"].to_list()]
            return [
                _Ev(t, t + d, n, c, th, a)
                for t, d, n, c, th, a in zip(
                    sub["ts"].to_list(), sub["dur"].to_list(), names, cats, thread, args, strict=True
                )
            ]

        rt, gpu, comms, rec = map(part, ("runtime", "gpu", "comms", "recorded"))
        cpu_all = part("cpu_all") if keep_cpu else None

        # GPU ops and runtime calls: the args they use as lists beside them; `args` itself only
        # for NCCL kernels with collective metadata (others share one empty dict). `launch`: the
        # row of the runtime call that launched a GPU op (by correlation id, else flow events).
        self.gpu_launch = gpu["launch"].to_list()
        self.runtime = evs(rt, [_NO_ARGS] * rt.height)
        del rt
        gpu_args = [_args(a, self.path) if a is not None else _NO_ARGS for a in gpu["args"].to_list()]
        self.gpu = evs(gpu, gpu_args)
        del gpu_args
        self.gpu_stream = _interned(gpu.select(pl.coalesce("stream", "tid"))["stream"])
        self.gpu_kind = _interned(gpu["gpu_kind"])
        self.gpu_bytes = gpu["bytes"].to_list()
        del gpu
        self.comms_ops = evs(comms)
        del comms
        if keep_cpu:
            self.cpu_ops = evs(rec)
        else:
            # Recorded CPU ops: only their shape fields, one dict per distinct shapes.
            by_shape: dict[str, dict[str, Any]] = {}
            shapes = _interned(rec["shapes"])
            for sh in shapes:
                if sh not in by_shape:
                    by_shape[sh] = _args(sh, self.path)
            self.cpu_ops = evs(rec, [by_shape[sh] for sh in shapes])
            for ev, sh in zip(self.cpu_ops, shapes, strict=True):
                ev.shapes = sh
            del shapes
        del rec
        if cpu_all is not None:
            # Every CPU op and annotation, in file order (recorded ops and ProfilerSteps included).
            is_cpu_op: list[bool] = cpu_all["cpu_op"].to_list()
            self.cpu_all = evs(cpu_all)
            del cpu_all
            by_key = {(e.ts, e.end, e.name, e.thread): e for e in (*self.comms_ops, *self.cpu_ops)}
            self.cpu_all = [by_key.get((e.ts, e.end, e.name, e.thread), e) for e in self.cpu_all]
            for e, is_op in zip(self.cpu_all, is_cpu_op, strict=True):
                e.cpu_op = is_op


def _launchers(f: _File) -> dict[int, int]:
    """GPU op index → runtime event index (by correlation id, else by flow events)."""
    return {j: i for j, i in enumerate(f.gpu_launch) if i is not None}


def _step_of(steps: list[tuple[int, int, int]], starts: list[int], t: int) -> int | None:
    k = bisect.bisect_right(starts, t) - 1
    if k >= 0 and steps[k][0] <= t < steps[k][1]:
        return steps[k][2]
    return None


def _enclosing(intervals: list[_Ev], starts: list[int], t: int) -> _Ev | None:
    k = bisect.bisect_right(starts, t) - 1
    while k >= 0:
        ev = intervals[k]
        if ev.ts <= t <= ev.end:
            return ev
        if ev.end < t and k > 0 and intervals[k - 1].end < ev.ts:
            break
        k -= 1
    return None


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

    def prepare(self, rank: int, f: _File) -> None:
        """Called per rank before its ops are made (may add recorded shapes to `f.cpu_ops`)."""

    def link(self, rank: int, f: _File, launcher: dict[int, int], gpu_ops: list[_Op]) -> None:
        """Called per rank once its ops exist (may add deps to `gpu_ops`, indexed as `f.gpu`)."""


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
    # Arrow buffers come from the C allocator that the reader and Python's large objects use, not
    # from pyarrow's own pool, so that memory one stage frees is reused by the next (the peak is
    # 15-25% lower; the buffers stay valid once the pool is restored).
    pool = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        with _no_cyclic_gc():
            return _ingest(paths, time_unit, hook)
    finally:
        pa.set_memory_pool(pool)


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

    ops: list[_Op] = []  # the GPU ops (of all ranks)
    cols = _OpCols()  # every op (GPU and host), by key
    labels: dict[tuple[str, str], str] = {}  # (call name, suffix) → host op name, one object each

    def new_op(rank: int, stream: int, name: str, kind: str, start: int, dur: int, **kw: Any) -> _Op:
        op = _Op(len(cols), rank, stream, name, kind, start - base, max(dur, 0), **kw)
        cols.start.append(op.start)
        cols.dur.append(op.dur)
        cols.rank.append(rank)
        cols.stream.append(stream)
        cols.gpu.append(len(ops))
        cols.dep.append(-1)
        cols.name.append(name)
        ops.append(op)
        return op

    def new_host(rank: int, stream: int, name: str, start: int, dur: int, dep: int = -1) -> int:
        key = len(cols)
        cols.start.append(start - base)
        cols.dur.append(max(dur, 0))
        cols.rank.append(rank)
        cols.stream.append(stream)
        cols.gpu.append(-1)
        cols.dep.append(dep)
        cols.name.append(name)
        cols.hosts += 1
        return key

    def label(name: str, suffix: str) -> str:
        v = labels.get((name, suffix))
        if v is None:
            v = labels[(name, suffix)] = f"{name} {suffix}"
        return v

    for rank, f in enumerate(files):
        f.load()
        report.unmapped.update(f.unmapped)
        if hook is not None:
            hook.prepare(rank, f)
        launcher = _launchers(f)
        launched: dict[int, list[int]] = defaultdict(list)
        for j, i in launcher.items():
            launched[i].append(j)
        gpu_streams = sorted(set(f.gpu_stream), key=_natural)
        gstream = {s: k for k, s in enumerate(gpu_streams)}
        threads = sorted(
            {ev.thread for ev in f.runtime}, key=lambda t: (_natural(str(t[0])), _natural(str(t[1])))
        )
        hstream = {t: len(gpu_streams) + k for k, t in enumerate(threads)}
        step_starts = [s[0] for s in f.steps]
        graph_launches: set[int] = set()  # host op keys of cudaGraphLaunch/hipGraphLaunch calls
        comm_by_thread: dict[Any, list[_Ev]] = defaultdict(list)
        for ev in f.comms_ops:
            comm_by_thread[ev.thread].append(ev)
        comm_starts = {t: [e.ts for e in sorted(v, key=lambda e: e.ts)] for t, v in comm_by_thread.items()}
        for t in comm_by_thread:
            comm_by_thread[t].sort(key=lambda e: e.ts)

        # GPU ops first (their host deps are filled in once the host ops exist).
        gpu_ops: list[_Op] = []
        for j, ev in enumerate(f.gpu):
            gpu_kind = f.gpu_kind[j]
            stream = gstream[f.gpu_stream[j]]
            li = launcher.get(j)
            when = f.runtime[li].ts if li is not None else ev.ts
            it = _step_of(f.steps, step_starts, when)
            if gpu_kind == "memory":
                op = new_op(
                    rank, stream, ev.name, "memory", ev.ts, ev.end - ev.ts, category="copy", iteration=it
                )
            elif gpu_kind == "nccl":
                op = new_op(
                    rank,
                    stream,
                    ev.name,
                    "compute",
                    ev.ts,
                    ev.end - ev.ts,
                    category="communication",
                    iteration=it,
                )
                meta = _comm_meta(ev.args)
                if meta is None and li is not None:
                    lt = f.runtime[li].thread
                    if lt in comm_by_thread:
                        rpc = _enclosing(comm_by_thread[lt], comm_starts[lt], f.runtime[li].ts)
                        meta = None if rpc is None else _comm_meta(rpc.args)
                if meta is None:
                    op.comm_problem = "NCCL kernel without collective metadata"
                else:
                    coll, gkey, nbytes, dtype, problem = _coll_info(meta, f)
                    if problem is not None:
                        op.comm_problem = problem
                    else:
                        op.coll, op.group_key, op.comm_bytes, op.dtype = coll, gkey, nbytes, dtype
            else:
                op = new_op(
                    rank,
                    stream,
                    ev.name,
                    "compute",
                    ev.ts,
                    ev.end - ev.ts,
                    category=_kernel_category(ev.name),
                    iteration=it,
                )
            gpu_ops.append(op)

        _assign_costs(f, launcher, gpu_ops, report)
        if hook is None:  # the CPU ops have given their metadata and costs
            f.cpu_ops, f.comms_ops = [], []
            comm_by_thread.clear()

        # GPU ops of this rank by end time, for blocking calls.
        by_end = sorted(range(len(f.gpu)), key=lambda j: f.gpu[j].end)
        ends = [f.gpu[j].end for j in by_end]

        # Host streams: runtime calls per thread, the time between them as cpu_gap.
        per_thread: dict[Any, list[int]] = defaultdict(list)
        for i, ev in enumerate(f.runtime):
            per_thread[ev.thread].append(i)
        for thread in threads:
            idx = sorted(per_thread[thread], key=lambda i: (f.runtime[i].ts, -f.runtime[i].end))
            stream = hstream[thread]
            cursor = base
            outer: int | None = None
            owner: dict[int, int] = {}  # nested runtime call → the call it is merged into
            kept: list[int] = []
            for i in idx:
                ev = f.runtime[i]
                if outer is not None and ev.end <= f.runtime[outer].end and ev.ts < f.runtime[outer].end:
                    owner[i] = outer
                    report.unmapped["runtime call nested in another (merged into it)"] += 1
                    continue
                kept.append(i)
                outer = i
            children: dict[int, list[int]] = defaultdict(list)
            for i, o in owner.items():
                children[o].extend(launched.get(i, []))
            for i in kept:
                ev = f.runtime[i]
                s = max(ev.ts, cursor)
                t = max(ev.end, s)
                if s > cursor:
                    new_host(rank, stream, "cpu_gap", cursor, s - cursor)
                own = launched.get(i, _NO_GPU_OPS)
                if i in children:
                    own = sorted(own + children[i])
                elif len(own) > 1:
                    own = sorted(own)
                blocking = "Synchronize" in ev.name or ev.name in BLOCKING_CALLS
                prev_end = s
                launch_op: int | None = None
                if own:
                    g = min(f.gpu[j].ts for j in own)
                    p = min(t, max(s, g))
                    launch_op = new_host(rank, stream, ev.name, s, p - s)
                    if "GraphLaunch" in ev.name:
                        graph_launches.add(launch_op)
                    for j in own:
                        gpu_ops[j].deps.append(launch_op)
                        report.launch_deps += 1
                    prev_end = p
                wait: int | None = None
                if blocking:
                    k = bisect.bisect_right(ends, t) - 1
                    own_set = set(own)
                    while k >= 0 and ends[k] > prev_end:
                        j = by_end[k]
                        lj = launcher.get(j)
                        if j in own_set or lj is None or f.runtime[lj].ts < ev.ts:
                            wait = j
                            break
                        k -= 1
                if wait is not None:
                    w_end = f.gpu[wait].end
                    start = max(w_end, prev_end)
                    new_host(
                        rank,
                        stream,
                        ev.name if launch_op is None else label(ev.name, "[wait]"),
                        start,
                        t - start,
                        gpu_ops[wait].key,
                    )
                    report.sync_deps += 1
                elif launch_op is None:
                    new_host(rank, stream, ev.name, s, t - s)
                elif prev_end < t:
                    new_host(rank, stream, label(ev.name, "[after launch]"), prev_end, t - prev_end)
                cursor = t
        # GPU ops whose launch is not in the trace (CPU side outside the profiled window or on an
        # untraced thread): released at their measured start by a marker on a host stream of their own.
        orphans = sorted((j for j in range(len(f.gpu)) if j not in launcher), key=lambda j: f.gpu[j].ts)
        if orphans:
            stream = len(gpu_streams) + len(threads)
            cursor = base
            for j in orphans:
                ts = f.gpu[j].ts
                if ts > cursor:
                    new_host(rank, stream, "cpu_gap", cursor, ts - cursor)
                    cursor = ts
                gpu_ops[j].deps.append(new_host(rank, stream, "launch not in trace", cursor, 0))
            report.orphan_gpu_ops += len(orphans)
        if hook is not None:
            hook.link(rank, f, launcher, gpu_ops)
        report.inferred_stream_deps += _infer_stream_waits(gpu_ops, cols)
        graph_stream = len(gpu_streams) + len(threads) + 1
        for node, after, t in _graph_node_waits(gpu_ops, cols, graph_launches):
            gs = graph_stream + node.stream
            wait_op = new_host(rank, gs, "graph node wait", base + t, node.start - t, after)
            node.deps.append(wait_op)
            report.graph_node_waits += 1
        report.iterations.extend(n for _, _, n in f.steps)
        if hook is None:  # this rank's events are no longer needed: free them before the next
            f.gpu, f.runtime, f.comms_ops, f.cpu_ops = [], [], [], []
            f.gpu_launch, f.gpu_stream, f.gpu_bytes, f.gpu_kind = [], [], [], []
            del gpu_ops, launcher, launched

    groups_by_id = _match_collectives(ops, files, rank_of, report)
    report.iterations = sorted(set(report.iterations))
    for op in ops:
        report.ops_by_kind[op.kind] += 1
    if cols.hosts:
        report.ops_by_kind["host"] += cols.hosts
    trace = _build(ops, cols, files, groups_by_id)
    return trace, report


STREAM_WAIT_WINDOW_NS = 20_000
STREAM_WAIT_SLACK_NS = 1_000


def _infer_stream_waits(gpu_ops: list[_Op], cols: _OpCols) -> int:
    """Deps for GPU ops that started later than their launch and their stream allow.

    Kineto does not record which event a `cudaStreamWaitEvent` waits for, so a GPU op that starts
    more than STREAM_WAIT_SLACK_NS after both its launch and the previous op of its stream ended
    is made to depend on the op of another stream of the rank that ended last before it started,
    if that was within STREAM_WAIT_WINDOW_NS. Deps always point to an op that ended before this
    one started, so they cannot make a cycle.
    """
    by_end = sorted(gpu_ops, key=lambda o: o.start + o.dur)
    ends = [o.start + o.dur for o in by_end]
    prev_end: dict[int, int] = {}
    added = 0
    for op in sorted(gpu_ops, key=lambda o: (o.start, o.key)):
        bound = max([prev_end.get(op.stream, -(2**62))] + [cols.end(d) for d in op.deps])
        prev_end[op.stream] = op.start + op.dur
        if op.start - bound <= STREAM_WAIT_SLACK_NS:
            continue
        k = bisect.bisect_right(ends, op.start) - 1
        while k >= 0 and ends[k] >= max(bound, op.start - STREAM_WAIT_WINDOW_NS):
            other = by_end[k]
            if other.stream != op.stream:
                op.deps.append(other.key)
                added += 1
                break
            k -= 1
    return added


def _graph_node_waits(
    gpu_ops: list[_Op], cols: _OpCols, graph_launches: set[int]
) -> list[tuple[_Op, int, int]]:
    """Idle time before the nodes of CUDA/HIP graph launches that nothing in the trace explains.

    Kineto records a graph's kernels but not its edges, event waits or host nodes, so a node that
    starts more than STREAM_WAIT_SLACK_NS after its stream, its deps and every earlier node of its
    launch allow was held back by something unseen. For each such node: (node, key of the op whose
    end bound it, that end): the launch, the previous op of its stream, a dep, or the earlier node
    of its launch that ended last, so that a wait from that end to the node's measured start keeps
    the measured gap, anchored to what the node visibly waited for.
    """
    out: list[tuple[_Op, int, int]] = []
    if not graph_launches:
        return out
    prev: dict[int, _Op] = {}  # stream → its last op so far
    reach: dict[int, _Op] = {}  # graph launch key → its node that ended last so far
    for op in sorted(gpu_ops, key=lambda o: (o.start, o.key)):
        before = prev.get(op.stream)
        prev[op.stream] = op
        launch = next((d for d in op.deps if d in graph_launches), None)
        if launch is None:
            continue
        bound, anchor = max((cols.end(d), d) for d in op.deps)
        last = reach.get(launch)
        for o in (before, last):
            if o is not None and o.start + o.dur > bound:
                bound, anchor = o.start + o.dur, o.key
        if op.start - bound > STREAM_WAIT_SLACK_NS:
            out.append((op, anchor, bound))
        if last is None or op.start + op.dur > last.start + last.dur:
            reach[launch] = op
    return out


_NO_GPU_OPS: list[int] = []


@lru_cache(maxsize=65536)
def _kernel_category(name: str) -> str:
    """`_category`, once per kernel name (a trace repeats a few thousand names)."""
    return _category(name)


def _natural(s: str) -> tuple[int, int | str]:
    return (0, int(s)) if s.lstrip("-").isdigit() else (1, s)


def _match_collectives(
    ops: list[_Op], files: list[_File], rank_of: dict[int, int], report: IngestReport
) -> dict[int, tuple[str, list[int]]]:
    """group ids, coll_seq; collectives that cannot be matched stay compute/communication."""
    present = set(rank_of)
    group_ids: dict[tuple[str, tuple[int, ...]], int] = {}
    per: dict[tuple[int, int], list[_Op]] = defaultdict(list)  # (group, rank) → ops in time order
    for op in sorted(ops, key=lambda o: (o.start, o.key)):
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

    def fail(_op: _Op, problem: str) -> None:
        report.collective_problems[problem] += 1

    # Keep only the (group, seq) that every member has, with agreeing type and size.
    report.collectives_matched += _match_by_seq(
        per, members, "collective without its peer ranks (no matching op in a peer's file)", fail
    )
    return {gid: (k[0], [rank_of[r] for r in k[1]]) for k, gid in group_ids.items()}


def _build(
    ops: list[_Op], cols: _OpCols, files: list[_File], groups_by_id: dict[int, tuple[str, list[int]]]
) -> Trace:
    """The validated trace of the ops (`ops`: the GPU ops; `cols`: every op by key); empties both
    (they are not needed once in the table)."""
    # Ops sorted by (start, rank, stream, key) into op_id order with numpy; deps map keys to
    # op_ids through the inverse order.
    n = len(cols)
    start = np.frombuffer(cols.start, np.int64)
    rank = np.frombuffer(cols.rank, np.int64)
    stream = np.frombuffer(cols.stream, np.int64)
    order = np.lexsort((np.arange(n), stream, rank, start))
    op_id = np.empty(n, np.int64)
    op_id[order] = np.arange(n)
    start, rank, stream = start[order], rank[order], stream[order]
    dur = np.frombuffer(cols.dur, np.int64)[order]
    names = cols.name
    name = pa.array(list(map(names.__getitem__, order.tolist())), OP_COLUMN_TYPES["name"])
    cols.name = names = []
    # Row → index in `ops` (null for host ops): the GPU-only columns are taken through it.
    gpu_of = np.frombuffer(cols.gpu, np.int64)[order]
    take = pa.array(gpu_of, pa.int64(), mask=gpu_of < 0)
    del gpu_of

    # deps: host ops have at most one (`cols.dep`), GPU ops a list; laid out by op_id.
    g = len(ops)
    host_dep = np.frombuffer(cols.dep, np.int64)
    count = (host_dep >= 0).astype(np.int64)
    gkeys = np.fromiter(map(attrgetter("key"), ops), np.int64, g)
    gcount = np.fromiter((len(o.deps) for o in ops), np.int64, g)
    count[gkeys] = gcount
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(count[order], out=offsets[1:])
    del count
    flat = np.empty(int(offsets[-1]), np.int64)
    hk = np.flatnonzero(host_dep >= 0)
    flat[offsets[op_id[hk]]] = host_dep[hk]
    del hk, host_dep
    gtotal = int(gcount.sum())
    gflat = np.fromiter(chain.from_iterable(o.deps for o in ops), np.int64, gtotal)
    first = offsets[op_id[gkeys]] - (np.cumsum(gcount) - gcount)
    flat[np.repeat(first, gcount) + np.arange(gtotal)] = gflat
    del gflat, first, gkeys, gcount
    deps = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(op_id[flat]))
    deps = deps.cast(OP_COLUMN_TYPES["deps"])
    del flat, offsets, op_id, order

    def col(attr: str) -> pa.Array:
        vals = pa.array(list(map(attrgetter(attr), ops)), OP_COLUMN_TYPES[attr])
        return vals.take(take)

    kind = pc.fill_null(col("kind"), "host")
    coll = pc.fill_null(pc.equal(kind, "collective"), False)
    category = col("category")

    def if_coll(name: str, mask: pa.Array = coll) -> pa.Array:
        c = col(name)
        return pc.if_else(mask, c, pa.nulls(n, c.type))

    # A communication op's dtype is kept only when it became a collective.
    keep_dtype = pc.or_(coll, pc.fill_null(pc.not_equal(category, "communication"), True))
    table = pa.table(
        {
            "op_id": pa.array(np.arange(n), OP_COLUMN_TYPES["op_id"]),
            "rank": pa.array(rank, OP_COLUMN_TYPES["rank"]),
            "stream": pa.array(stream, OP_COLUMN_TYPES["stream"]),
            "name": name,
            "kind": kind,
            "category": category,
            "dtype": if_coll("dtype", keep_dtype),
            "duration_ns": pa.array(dur, OP_COLUMN_TYPES["duration_ns"]),
            "start_ns": pa.array(start, OP_COLUMN_TYPES["start_ns"]),
            "deps": deps,
            "coll": if_coll("coll"),
            "group_id": if_coll("group_id"),
            "coll_seq": if_coll("coll_seq"),
            "comm_bytes": if_coll("comm_bytes"),
            "iteration": col("iteration"),
            "flops": col("flops"),
            "bytes_read": col("bytes_read"),
            "bytes_written": col("bytes_written"),
            "gemm_m": col("gemm_m"),
            "gemm_n": col("gemm_n"),
            "gemm_k": col("gemm_k"),
        }
    )
    used = sorted({o.group_id for o in ops if o.kind == "collective" and o.group_id is not None})
    ops.clear()  # the op objects are in the table now: free them before it is validated
    del cols.start, cols.dur, cols.rank, cols.stream, cols.gpu, cols.dep
    return _to_trace(
        table,
        used,
        groups_by_id,
        "tracesim.ingest.kineto",
        [f.path.name for f in files],
        [f.source_rank for f in files],
    )


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


@dataclass(slots=True)
class _CpuOp:
    ev: _Ev
    parent: int | None  # index of the enclosing recorded CPU op


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


def _op_cost(ops: list[_CpuOp], k: int) -> _Cost | str:
    """The cost of CPU op k (all its kernels together), or why there is none."""
    ev = ops[k].ev
    name = ev.name
    ins = _tensors(ev.args)
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
        return _conv_cost(ops, k, ins, dtype, es)
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
    ops: list[_CpuOp], k: int, ins: list[tuple[list[int], str]], dtype: str | None, es: int
) -> _Cost | str:
    name = ops[k].ev.name
    shapes = [s for s, t in ins if _is_tensor(s, t)]
    bad = "convolution op with shapes it does not recognise"
    if "convolution_backward" in name:
        # (grad_out, input, weight) for convolution_backward; (input, grad_out, weight) for
        # cudnn/miopen_convolution_backward; backward_input: ([], grad_out, weight);
        # backward_weight: ([], grad_out, input): its weight shape comes from the parent op.
        if name.endswith(("backward_input", "backward_weight")):
            parent = ops[k].parent
            pev = ops[parent].ev if parent is not None else None
            pins = _tensors(pev.args) if pev is not None else None
            if pev is not None and pins is not None and "convolution_backward" in pev.name:
                return _conv_bwd(pev.name, [s for s, t in pins if _is_tensor(s, t)], 1, dtype, es)
            if name.endswith("backward_input") and len(shapes) >= 2:
                g, w = shapes[0], shapes[1]
                if len(g) >= 3 and len(w) == len(g):
                    x = [g[0], w[1], *g[2:]]
                    return _conv_flops(x, w, g, dtype, es, reads=[g, w], writes=[x])
            return bad
        mask = _concrete(ops[k].ev.args, 10) if name == "aten::convolution_backward" else None
        grads = 2  # grad input and grad weight, unless the output mask says otherwise
        if isinstance(mask, list) and len(mask) >= 2:
            grads = int(mask[0] is True) + int(mask[1] is True)
        return _conv_bwd(name, shapes, grads, dtype, es)
    if len(shapes) < 2 or len(shapes[0]) < 3 or len(shapes[1]) != len(shapes[0]):
        return bad
    x, w = shapes[0], shapes[1]
    stride = pad = dil = None
    j: int | None = k
    while j is not None:
        if ops[j].ev.name in CONV_STD_ORDER:
            stride = _concrete_list(ops[j].ev.args, 3)
            pad = _concrete_list(ops[j].ev.args, 4)
            dil = _concrete_list(ops[j].ev.args, 5)
            break
        j = ops[j].parent
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


def _innermost_ops(f: _File) -> tuple[list[_CpuOp], dict[int, int]]:
    """Recorded CPU ops (with their enclosing op) and runtime call index → innermost enclosing one."""
    by_thread: dict[Any, list[_Ev]] = defaultdict(list)
    for ev in f.cpu_ops:
        by_thread[ev.thread].append(ev)
    rt_by_thread: dict[Any, list[int]] = defaultdict(list)
    for i, ev in enumerate(f.runtime):
        rt_by_thread[ev.thread].append(i)
    ops: list[_CpuOp] = []
    out: dict[int, int] = {}
    for thread, evs in by_thread.items():
        evs.sort(key=lambda e: (e.ts, -e.end))
        calls = sorted(rt_by_thread.get(thread, []), key=lambda i: f.runtime[i].ts)
        stack: list[int] = []
        p = 0
        for i in calls:
            t = f.runtime[i].ts
            while p < len(evs) and evs[p].ts <= t:
                ev = evs[p]
                while stack and ops[stack[-1]].ev.end < ev.ts:
                    stack.pop()
                ops.append(_CpuOp(ev, stack[-1] if stack else None))
                stack.append(len(ops) - 1)
                p += 1
            while stack and ops[stack[-1]].ev.end < t:
                stack.pop()
            if stack:
                out[i] = stack[-1]
    return ops, out


def _assign_costs(f: _File, launcher: dict[int, int], gpu_ops: list[_Op], report: IngestReport) -> None:
    """Fills flops/bytes/dtype/gemm shape/category of this file's GPU ops (see the module doc)."""
    cpu, inner = _innermost_ops(f) if f.cpu_ops else ([], {})
    groups: dict[int, list[int]] = defaultdict(list)
    miss = report.uncosted
    for j, ev in enumerate(f.gpu):
        op = gpu_ops[j]
        if op.category == "communication":
            miss["NCCL kernel (timed by the network model)"] += 1
            continue
        if op.kind == "memory":
            nbytes = f.gpu_bytes[j]
            low = ev.name.lower()
            if nbytes is None or nbytes <= 0:
                miss["copy/memset without a byte count"] += 1
            elif "memset" in low:
                op.bytes_read, op.bytes_written = 0, nbytes
                report.costed += 1
            elif "dtod" in low or "device -> device" in low:
                op.bytes_read, op.bytes_written = nbytes, nbytes
                report.costed += 1
            else:
                miss["host↔device copy (no PCIe in the roofline)"] += 1
            continue
        li = launcher.get(j)
        if li is None:
            miss["launch not in trace"] += 1
            continue
        k = inner.get(li)
        if k is None:
            miss["no enclosing CPU op with recorded shapes"] += 1
            continue
        groups[k].append(j)
    # Ops of one name and the same recorded shapes cost the same (convolutions also read their
    # enclosing op, so they are not shared).
    memo: dict[tuple[str, str], _Cost | str] = {}
    heavy_name: dict[str, bool] = {}
    for k, js in groups.items():
        ev = cpu[k].ev
        key = None
        if ev.shapes is not None and ev.name not in CONV_FWD_OPS and "convolution_backward" not in ev.name:
            key = (ev.name, ev.shapes)
        hit = memo.get(key) if key is not None else None
        cost = hit if hit is not None else _op_cost(cpu, k)
        if key is not None and hit is None:
            memo[key] = cost
        if isinstance(cost, str):
            miss[cost] += len(js)
            report.uncosted_ops[cpu[k].ev.name] += len(js)
            continue
        targets = js
        if cost.heavy:
            heavy = []
            for j in js:
                name = f.gpu[j].name
                h = heavy_name.get(name)
                if h is None:
                    h = heavy_name[name] = bool(HEAVY_RE.search(name)) and not NOT_HEAVY_RE.search(name)
                if h:
                    heavy.append(j)
            if heavy:
                targets = heavy
                miss["extra kernel of a GEMM/conv/attention op (cost on its main kernel)"] += len(js) - len(
                    heavy
                )
        if len(targets) > 1:
            report.split_kernels += len(targets)
        n = len(targets)
        for j in targets:
            op = gpu_ops[j]
            op.flops = None if cost.flops is None else cost.flops / n
            op.bytes_read = cost.read // n
            op.bytes_written = cost.written // n
            op.dtype = cost.dtype
            if cost.dtype == "fp32" and cost.heavy and TF32_RE.search(f.gpu[j].name):
                op.dtype = "tf32"
            if cost.gemm is not None and n == 1:
                op.gemm_m, op.gemm_n, op.gemm_k = cost.gemm
            if cost.heavy or op.category not in GEMM_LIKE_CATEGORIES:
                op.category = cost.category
            report.costed += 1
