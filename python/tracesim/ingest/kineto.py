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

Everything else (CPU operators, Python functions, annotations, flows, metadata, instants) is
counted by class in the `IngestReport`.

Times: Chrome-trace `ts`/`dur` are microseconds; they are read exactly (as decimal text, not
floats) into integer nanoseconds. A trace with `displayTimeUnit: "ns"` whose times are all
integers is taken to be in nanoseconds already; Kineto's own "ns" traces write microseconds with
three decimals and are read as microseconds (`time_unit` overrides the guess).
"""

from __future__ import annotations

import bisect
import gzip
import json
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from tracesim.exceptions import TraceError
from tracesim.trace import Trace

TimeUnit = Literal["auto", "us", "ns"]

GPU_KERNEL_CATS = {"kernel"}
GPU_MEMORY_CATS = {"gpu_memcpy", "gpu_memset", "memcpy", "memset"}
RUNTIME_CATS = {"cuda_runtime", "runtime", "cuda_driver"}
FLOW_PHASES = {"s", "f", "t"}
BLOCKING_CALLS = {"cudaMemcpy", "cudaMemcpy2D", "hipMemcpy", "hipMemcpy2D"}
STEP_RE = re.compile(r"^ProfilerStep#(\d+)$")

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
    orphan_gpu_ops: int = 0  # GPU ops whose launching runtime call is not in the trace
    unmapped: Counter[str] = field(default_factory=Counter)

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
        if self.orphan_gpu_ops:
            out.append(
                f"GPU ops without a launch in the trace: {self.orphan_gpu_ops:,} "
                "(released at their measured start)"
            )
        out.append(f"collectives matched across ranks: {self.collectives_matched:,}")
        for k, v in sorted(self.collective_problems.items()):
            out.append(f"  kept as compute/communication: {v:,} {k}")
        total = sum(self.unmapped.values())
        out.append(f"events not mapped to ops: {total:,}")
        for k, v in self.unmapped.most_common():
            out.append(f"  {v:>9,}  {k}")
        return out


@dataclass(slots=True)
class _Ev:
    ts: int  # absolute ns
    end: int
    name: str
    cat: str
    thread: tuple[Any, Any]
    args: dict[str, Any]


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


def _read_json(path: Path) -> Any:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise TraceError(f"{path}: not a readable gzip file: {e}") from None
    try:
        # Floats as text: a microsecond timestamp of 1.7e15 loses its nanoseconds in a float64.
        return json.loads(raw, parse_float=str)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TraceError(f"{path}: not valid JSON: {e}") from None


def _num_ns(v: Any, scale: int) -> int | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        return v * scale
    if isinstance(v, str):
        try:
            return int((Decimal(v) * scale).to_integral_value())
        except ArithmeticError:
            return None
    if isinstance(v, float):
        return round(v * scale)
    return None


def _time_unit(data: dict[str, Any], events: list[dict[str, Any]], override: TimeUnit) -> str:
    if override != "auto":
        return override
    if data.get("displayTimeUnit") != "ns":
        return "us"
    # Kineto writes microseconds with decimals even when it displays nanoseconds.
    for e in events:
        if e.get("ph") == "X" and (isinstance(e.get("ts"), str) or isinstance(e.get("dur"), str)):
            return "us"
    return "ns"


def _category(name: str) -> str:
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


def _is_nccl(name: str, cat: str) -> bool:
    return name.startswith(("ncclKernel", "ncclDevKernel")) or "nccl" in cat


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
    if isinstance(vals, list) and vals and all(isinstance(x, int) and not isinstance(x, bool) for x in vals):
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


class _File:
    """One Kineto file, parsed into events; times in absolute ns."""

    def __init__(self, path: Path, order: int, time_unit: TimeUnit, report: IngestReport) -> None:
        data = _read_json(path)
        if isinstance(data, list):
            data = {"traceEvents": data}
        if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
            raise TraceError(f"{path}: not a Chrome trace (no 'traceEvents' list)")
        self.path = path
        events: list[dict[str, Any]] = [e for e in data["traceEvents"] if isinstance(e, dict)]
        self.unit = _time_unit(data, events, time_unit)
        scale = 1000 if self.unit == "us" else 1
        dist = data.get("distributedInfo")
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
        self.runtime: list[_Ev] = []
        self.comms_ops: list[_Ev] = []  # record_param_comms
        self.steps: list[tuple[int, int, int]] = []  # (start, end, N)
        self.flows: dict[Any, dict[str, tuple[Any, Any, int]]] = defaultdict(dict)
        self.unmapped: Counter[str] = Counter()
        for e in events:
            ph = e.get("ph")
            cat = str(e.get("cat", ""))
            name = str(e.get("name", ""))
            if ph in FLOW_PHASES:
                ts = _num_ns(e.get("ts"), scale)
                if ts is not None and "id" in e:
                    self.flows[(cat, e["id"])][str(ph)] = (e.get("pid"), e.get("tid"), ts)
                self.unmapped[f"flow event ({cat or 'no cat'})"] += 1
                continue
            if ph != "X":
                self.unmapped[
                    "metadata event (ph M)" if ph == "M" else f"ph {ph} event ({cat or 'no cat'})"
                ] += 1
                continue
            ts = _num_ns(e.get("ts"), scale)
            dur = _num_ns(e.get("dur", 0), scale)
            if ts is None or dur is None:
                self.unmapped[f"{cat or 'no cat'} (no ts/dur)"] += 1
                continue
            dur = max(dur, 0)
            args = e.get("args")
            ev = _Ev(
                ts, ts + dur, name, cat, (e.get("pid"), e.get("tid")), args if isinstance(args, dict) else {}
            )
            lc = cat.lower()
            if (
                lc in GPU_KERNEL_CATS
                or lc in GPU_MEMORY_CATS
                or (_is_nccl(name, lc) and lc not in RUNTIME_CATS)
            ):
                self.gpu.append(ev)
            elif lc in RUNTIME_CATS:
                self.runtime.append(ev)
            else:
                m = STEP_RE.match(name)
                if m and not lc.startswith("gpu_"):
                    self.steps.append((ev.ts, ev.end, int(m.group(1))))
                    self.unmapped[f"{cat} ProfilerStep (→ iteration column)"] += 1
                    continue
                if name == "record_param_comms":
                    self.comms_ops.append(ev)
                    self.unmapped[f"{cat} record_param_comms (→ collective metadata)"] += 1
                    continue
                self.unmapped[cat or "no cat"] += 1
        self.steps.sort()


def _launchers(f: _File) -> dict[int, int]:
    """GPU op index → runtime event index, by correlation id, else by flow events."""
    by_corr: dict[Any, int] = {}
    for i, ev in enumerate(f.runtime):
        c = ev.args.get("correlation")
        if c is not None:
            by_corr[c] = i
    out: dict[int, int] = {}
    missing: list[int] = []
    for j, ev in enumerate(f.gpu):
        c = ev.args.get("correlation")
        if c is not None and c in by_corr:
            out[j] = by_corr[c]
        else:
            missing.append(j)
    if missing and f.flows:
        rt_at = {(ev.thread[0], ev.thread[1], ev.ts): i for i, ev in enumerate(f.runtime)}
        gpu_at = {(ev.thread[0], ev.thread[1], ev.ts): j for j, ev in enumerate(f.gpu)}
        for ends in f.flows.values():
            if "s" in ends and "f" in ends:
                src = rt_at.get(ends["s"])
                dst = gpu_at.get(ends["f"])
                if src is not None and dst is not None and dst not in out:
                    out[dst] = src
    return out


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
    return coll, (pg_name, ranks), nbytes, FORMAT_DTYPE.get(dt), None


def ingest_kineto(paths: Sequence[str | Path], *, time_unit: TimeUnit = "auto") -> tuple[Trace, IngestReport]:
    """Reads Kineto Chrome-trace files (one per rank) into a validated trace and a report."""
    if not paths:
        raise TraceError("ingest kineto: no input files")
    report = IngestReport()
    files = [_File(Path(p), i, time_unit, report) for i, p in enumerate(paths)]
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
    all_starts = [ev.ts for f in files for ev in (*f.gpu, *f.runtime)]
    if not all_starts:
        raise TraceError(f"{files[0].path}: no GPU kernels, copies or runtime calls to ingest")
    base = min(all_starts)

    ops: list[_Op] = []

    def new_op(rank: int, stream: int, name: str, kind: str, start: int, dur: int, **kw: Any) -> _Op:
        op = _Op(len(ops), rank, stream, name, kind, start - base, max(dur, 0), **kw)
        ops.append(op)
        return op

    for rank, f in enumerate(files):
        report.unmapped.update(f.unmapped)
        launcher = _launchers(f)
        launched: dict[int, list[int]] = defaultdict(list)
        for j, i in launcher.items():
            launched[i].append(j)
        gpu_streams = sorted({str(ev.args.get("stream", ev.thread[1])) for ev in f.gpu}, key=_natural)
        gstream = {s: k for k, s in enumerate(gpu_streams)}
        threads = sorted(
            {ev.thread for ev in f.runtime}, key=lambda t: (_natural(str(t[0])), _natural(str(t[1])))
        )
        hstream = {t: len(gpu_streams) + k for k, t in enumerate(threads)}
        step_starts = [s[0] for s in f.steps]
        comm_by_thread: dict[Any, list[_Ev]] = defaultdict(list)
        for ev in f.comms_ops:
            comm_by_thread[ev.thread].append(ev)
        comm_starts = {t: [e.ts for e in sorted(v, key=lambda e: e.ts)] for t, v in comm_by_thread.items()}
        for t in comm_by_thread:
            comm_by_thread[t].sort(key=lambda e: e.ts)

        # GPU ops first (their host deps are filled in once the host ops exist).
        gpu_ops: list[_Op] = []
        for j, ev in enumerate(f.gpu):
            lc = ev.cat.lower()
            stream = gstream[str(ev.args.get("stream", ev.thread[1]))]
            li = launcher.get(j)
            when = f.runtime[li].ts if li is not None else ev.ts
            it = _step_of(f.steps, step_starts, when)
            if lc in GPU_MEMORY_CATS:
                op = new_op(
                    rank, stream, ev.name, "memory", ev.ts, ev.end - ev.ts, category="copy", iteration=it
                )
            elif _is_nccl(ev.name, lc):
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
                    category=_category(ev.name),
                    iteration=it,
                )
            gpu_ops.append(op)

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
                    new_op(rank, stream, "cpu_gap", "host", cursor, s - cursor)
                own = sorted(launched.get(i, []) + children.get(i, []))
                blocking = "Synchronize" in ev.name or ev.name in BLOCKING_CALLS
                prev_end = s
                launch_op: _Op | None = None
                if own:
                    g = min(f.gpu[j].ts for j in own)
                    p = min(t, max(s, g))
                    launch_op = new_op(rank, stream, ev.name, "host", s, p - s)
                    for j in own:
                        gpu_ops[j].deps.append(launch_op.key)
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
                    new_op(
                        rank,
                        stream,
                        ev.name if launch_op is None else f"{ev.name} [wait]",
                        "host",
                        start,
                        t - start,
                        deps=[gpu_ops[wait].key],
                    )
                    report.sync_deps += 1
                elif launch_op is None:
                    new_op(rank, stream, ev.name, "host", s, t - s)
                elif prev_end < t:
                    new_op(rank, stream, f"{ev.name} [after launch]", "host", prev_end, t - prev_end)
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
                    new_op(rank, stream, "cpu_gap", "host", cursor, ts - cursor)
                    cursor = ts
                marker = new_op(rank, stream, "launch not in trace", "host", cursor, 0)
                gpu_ops[j].deps.append(marker.key)
            report.orphan_gpu_ops += len(orphans)
        report.inferred_stream_deps += _infer_stream_waits(gpu_ops, ops)
        report.iterations.extend(n for _, _, n in f.steps)

    groups_by_id = _match_collectives(ops, files, rank_of, report)
    report.iterations = sorted(set(report.iterations))
    for op in ops:
        report.ops_by_kind[op.kind] += 1
    trace = _build(ops, files, groups_by_id)
    return trace, report


STREAM_WAIT_WINDOW_NS = 20_000
STREAM_WAIT_SLACK_NS = 1_000


def _infer_stream_waits(gpu_ops: list[_Op], ops: list[_Op]) -> int:
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
        bound = max([prev_end.get(op.stream, -(2**62))] + [ops[d].start + ops[d].dur for d in op.deps])
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
            report.collective_problems["collective without its peer ranks (their files absent)"] += 1
            continue
        if files[op.rank].source_rank not in ranks:
            report.collective_problems["collective on a rank outside its process group"] += 1
            continue
        gid = group_ids.setdefault(op.group_key, len(group_ids))
        op.group_id = gid
        per[(gid, op.rank)].append(op)
    members: dict[int, list[int]] = {g: sorted(rank_of[r] for r in k[1]) for k, g in group_ids.items()}
    for (_gid, _rank), lst in per.items():
        for seq, op in enumerate(lst):
            op.coll_seq = seq
    # Keep only the (group, seq) that every member has, with agreeing type and size.
    for gid, member_ranks in members.items():
        seqs: dict[int, list[_Op]] = defaultdict(list)
        for r in member_ranks:
            for op in per.get((gid, r), []):
                assert op.coll_seq is not None
                seqs[op.coll_seq].append(op)
        for parts in seqs.values():
            problem = None
            if len(parts) != len(member_ranks):
                problem = "collective without its peer ranks (no matching op in a peer's file)"
            elif len({(p.coll, p.comm_bytes) for p in parts}) != 1:
                problem = "collective whose participants disagree on type or size"
            for p in parts:
                if problem is None:
                    p.kind = "collective"
                    report.collectives_matched += 1
                else:
                    p.group_id = p.coll_seq = None
                    report.collective_problems[problem] += 1
    return {gid: (k[0], [rank_of[r] for r in k[1]]) for k, gid in group_ids.items()}


def _build(ops: list[_Op], files: list[_File], groups_by_id: dict[int, tuple[str, list[int]]]) -> Trace:
    order = sorted(ops, key=lambda o: (o.start, o.rank, o.stream, o.key))
    op_id = {o.key: k for k, o in enumerate(order)}
    coll_ops = [o for o in order if o.kind == "collective"]
    cols: dict[str, list[Any]] = {
        "op_id": list(range(len(order))),
        "rank": [o.rank for o in order],
        "stream": [o.stream for o in order],
        "name": [o.name for o in order],
        "kind": [o.kind for o in order],
        "category": [o.category for o in order],
        "dtype": [o.dtype if o.kind == "collective" else None for o in order],
        "duration_ns": [o.dur for o in order],
        "start_ns": [o.start for o in order],
        "deps": [[op_id[d] for d in o.deps] for o in order],
        "coll": [o.coll if o.kind == "collective" else None for o in order],
        "group_id": [o.group_id if o.kind == "collective" else None for o in order],
        "coll_seq": [o.coll_seq if o.kind == "collective" else None for o in order],
        "comm_bytes": [o.comm_bytes if o.kind == "collective" else None for o in order],
        "iteration": [o.iteration for o in order],
    }
    table = pa.table(
        {
            "op_id": pa.array(cols["op_id"], pa.uint64()),
            "rank": pa.array(cols["rank"], pa.uint32()),
            "stream": pa.array(cols["stream"], pa.uint32()),
            "name": pa.array(cols["name"], pa.string()),
            "kind": pa.array(cols["kind"], pa.string()),
            "category": pa.array(cols["category"], pa.string()),
            "dtype": pa.array(cols["dtype"], pa.string()),
            "duration_ns": pa.array(cols["duration_ns"], pa.int64()),
            "start_ns": pa.array(cols["start_ns"], pa.int64()),
            "deps": pa.array(cols["deps"], pa.list_(pa.uint64())),
            "coll": pa.array(cols["coll"], pa.string()),
            "group_id": pa.array(cols["group_id"], pa.uint32()),
            "coll_seq": pa.array(cols["coll_seq"], pa.uint64()),
            "comm_bytes": pa.array(cols["comm_bytes"], pa.uint64()),
            "iteration": pa.array(cols["iteration"], pa.uint32()),
        }
    )
    used = sorted({o.group_id for o in coll_ops if o.group_id is not None})
    groups = None
    if used:
        groups = pa.table(
            {
                "group_id": pa.array(used, pa.uint32()),
                "ranks": pa.array([groups_by_id[g][1] for g in used], pa.list_(pa.uint32())),
                "name": pa.array([groups_by_id[g][0] or None for g in used], pa.string()),
            }
        )
    return Trace.from_tables(
        table,
        ranks=len(files),
        groups=groups,
        source="tracesim.ingest.kineto: " + ", ".join(f.path.name for f in files),
        source_system=None,
        validate=True,
        source_ranks=[f.source_rank for f in files],
    )
