"""PyTorch execution trace + Kineto trace of the same run → canonical trace
(`tracesim ingest pytorch-et ET... --kineto KINETO... --out TRACE`).

The Kineto trace gives what ran on the GPU and for how long; the execution trace (ET) gives the
operator graph with its data flow (the tensors each operator reads and writes) and every
operator's input shapes and types. One ET and one Kineto file per rank.

The trace is the Kineto ingest (`tracesim.ingest.kineto`: kernels, copies, NCCL collectives,
runtime calls and CPU gaps, launch and sync deps, ProfilerStep iterations), plus:

- **Pairing.** An ET node and a Kineto CPU op (`cpu_op`, `user_annotation`) are the same
  operator when the node's `rf_id` equals the Kineto op's `Record function id` (newer PyTorch,
  when the ET observer ran) or, in traces without that field, its `External id` (older PyTorch,
  where both count the same record functions: HTA's join), and their names agree.
- **Kernels → ET operators.** A GPU op belongs to the innermost matched Kineto CPU op that
  encloses its launch call on the launching thread (the launch → kernel link is the Kineto
  ingester's, by correlation id or flow events).
- **Data-flow deps.** Walking the ET nodes in id order (the order operators were entered), the
  last operator with GPU ops that output a tensor storage is its producer; an operator with GPU
  ops that reads that storage depends on it: the first GPU op of the consumer on each stream
  depends on the producer's last-ending GPU op. Deps on the same stream are implied by stream
  order and not added; deps the measured times contradict (the consumer started before the
  producer ended) are not added. Both are counted.
- **Shapes.** A matched Kineto CPU op without recorded shapes gets the ET node's input shapes
  and types, so the Kineto ingester's cost rules (FLOPs, bytes, dtype, GEMM shape) apply to its
  kernels.

Every ET node and Kineto CPU op is counted as matched or not, by kind, in the `PairedReport`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tracesim._core import kineto_innermost
from tracesim.exceptions import TraceError
from tracesim.ingest._common import _counter_lines, _JsonList
from tracesim.ingest.chakra import ET_ROOTS, RANK_RE, _et_attrs
from tracesim.ingest.kineto import (
    IngestReport,
    TimeUnit,
    _args,
    _counted,
    _File,
    _ingest_kineto,
    _ints,
    _Rank,
)
from tracesim.trace import Trace

RF_KEY = "Record function id"
EXT_KEY = "External id"
CONCRETE = "Concrete Inputs"
# Of the ET nodes whose id is found in the Kineto trace, at least this share must agree on the
# name, else the two files are not of the same run (and matching by id would be wrong).
MIN_NAME_AGREEMENT = 0.5


@dataclass
class PairedReport:
    """What `ingest_pytorch_et_kineto` made of its input: the Kineto ingest's report plus pairing."""

    kineto: IngestReport
    et_files: list[str] = field(default_factory=list)  # per trace rank
    keys: list[str] = field(default_factory=list)  # per rank: the Kineto arg matched with rf_id
    et_nodes: int = 0
    et_matched: Counter[str] = field(default_factory=Counter)  # ET nodes by kind
    et_unmatched: Counter[str] = field(default_factory=Counter)  # ET nodes by kind and reason
    kineto_unmatched: Counter[str] = field(default_factory=Counter)  # Kineto CPU ops not in the ET
    gpu_with_et: int = 0  # GPU ops attributed to an ET operator
    gpu_without_et: Counter[str] = field(default_factory=Counter)  # by reason
    shapes_from_et: int = 0  # Kineto CPU ops that got their input shapes from the ET
    data_deps: int = 0  # added: producer's GPU op → consumer's GPU op, across streams
    data_deps_same_stream: int = 0  # implied by stream order (not added)
    data_deps_contradicted: int = 0  # consumer started before the producer ended (not added)

    def lines(self) -> list[str]:
        """A one-screen text rendering (the CLI prints it)."""
        out = [
            f"ET files {len(self.et_files)} paired with Kineto files by rank "
            f"(source ranks {self.kineto.source_ranks}); rf_id matched with Kineto "
            + ", ".join(f"'{k}'" for k in sorted(set(self.keys))),
            f"ET nodes {self.et_nodes:,}: matched {sum(self.et_matched.values()):,}, "
            f"not matched {sum(self.et_unmatched.values()):,}",
        ]
        out.extend(f"  {v:>9,}  matched: {k}" for k, v in self.et_matched.most_common())
        out.extend(f"  {v:>9,}  not matched: {k}" for k, v in self.et_unmatched.most_common())
        out.append(f"Kineto CPU ops not in the ET: {sum(self.kineto_unmatched.values()):,}")
        out.extend(_counter_lines(self.kineto_unmatched))
        out.append(
            f"GPU ops attributed to an ET operator: {self.gpu_with_et:,}; "
            f"not: {sum(self.gpu_without_et.values()):,}"
        )
        out.extend(_counter_lines(self.gpu_without_et))
        out.append(
            f"data-flow deps (tensor producer → consumer): {self.data_deps:,} added across streams, "
            f"{self.data_deps_same_stream:,} implied by stream order, "
            f"{self.data_deps_contradicted:,} contradicted by the measured times (not added)"
        )
        out.append(f"Kineto CPU ops given input shapes from the ET: {self.shapes_from_et:,}")
        out.append("Kineto ingest:")
        out.extend("  " + line for line in self.kineto.lines())
        return out


def _et_kind(name: str) -> str:
    """A coarse kind of an ET node or Kineto CPU op, for the report."""
    if name.startswith("ProfilerStep#"):
        return "ProfilerStep"
    if name.startswith("aten::"):
        return "aten operator"
    if name == "record_param_comms" or name.startswith(("nccl:", "c10d::")):
        return "communication operator"
    if name.startswith("autograd::") or "Backward" in name:
        return "autograd function"
    if name.startswith(("[", "Optimizer.", "##")) or "|" in name:
        return "annotation"
    return "other operator"


def _int_field(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            return None
    return None


def _et_type(t: Any) -> str:
    """An ET input type (`Tensor(c10::Half)`) as Kineto writes it (`c10::Half`); '' if no tensor."""
    if isinstance(t, str) and t.startswith("Tensor(") and t.endswith(")"):
        return t[7:-1]
    return ""


def _storages(v: Any, into: list[tuple[Any, Any]]) -> None:
    """The (storage id, device) of every tensor 6-tuple [id, storage, offset, numel, elem, dev] in v."""
    if type(v) is list:
        if len(v) == 6 and type(v[5]) is str and type(v[0]) is int and type(v[1]) is int:
            into.append((v[1], v[5]))
            return
        for x in v:
            if type(x) is list:
                _storages(x, into)


@dataclass(slots=True)
class _Node:
    nid: int
    name: str
    rf: int | None
    shapes: Any
    types: Any
    inputs: Any
    outputs: Any


def _read_et(path: Path) -> tuple[dict[str, Any], list[_Node]]:
    """The ET's header and its nodes (id, name, rf_id, input shapes/types, inputs, outputs),
    streamed node by node: only these fields of each are kept."""
    stream = _JsonList(path, ["nodes"])
    if stream.key is None:
        raise TraceError(f"{path}: not a PyTorch execution trace (no 'nodes' list)")
    nodes: list[_Node] = []
    seen: set[int] = set()
    for i, d in enumerate(stream):
        if not isinstance(d, dict):
            raise TraceError(f"{path}: nodes[{i}] is not an object")
        nid = _int_field(d.get("id"))
        if nid is None:
            raise TraceError(f"{path}: nodes[{i}]: 'id' is missing or not an integer")
        if nid in seen:
            raise TraceError(f"{path}: nodes[{i}]: duplicate node id {nid}")
        seen.add(nid)
        name = d.get("name")
        if not isinstance(name, str):
            raise TraceError(f"{path}: node {nid}: 'name' is missing or not a string")
        attrs = _et_attrs(d)
        rf_raw = attrs.get("rf_id")
        rf = _int_field(rf_raw)
        if rf_raw is not None and rf is None:
            raise TraceError(f"{path}: node {nid} ({name}): 'rf_id' is not an integer: {rf_raw!r}")
        inp, outp = d.get("inputs"), d.get("outputs")
        if isinstance(inp, dict):  # schema 1.1: {"values", "shapes", "types"}
            shapes, types, inp = inp.get("shapes"), inp.get("types"), inp.get("values")
        else:  # schema 1.0: input_shapes, input_types at the top level
            shapes, types = d.get("input_shapes"), d.get("input_types")
        if isinstance(outp, dict):
            outp = outp.get("values")
        nodes.append(_Node(nid, name, rf, shapes, types, inp, outp))
    nodes.sort(key=lambda n: n.nid)
    return stream.header(), nodes


def _kineto_dims(shapes: Any, types: Any) -> tuple[list[Any], list[str]] | None:
    """ET input shapes and types as Kineto's `Input Dims` / `Input type`; None if unreadable."""
    if not isinstance(shapes, list) or not isinstance(types, list) or len(shapes) != len(types):
        return None
    return list(shapes), [_et_type(t) for t in types]


@dataclass
class _RankLink:
    et_path: Path
    nodes: list[_Node] = field(default_factory=list)
    matched: dict[int, int] = field(default_factory=dict)  # row of the Kineto CPU op → index into nodes
    events: list[int] = field(default_factory=list)  # rows of the matched Kineto CPU ops, in node order


class _Pairing:
    """The hook `tracesim.ingest.kineto` calls: pairs files, matches ops, adds shapes and deps."""

    def __init__(self, et_paths: list[Path], kineto_paths: list[Path], report: PairedReport) -> None:
        self.et_paths = et_paths
        self.kineto_paths = kineto_paths
        self.report = report
        self.et_of_rank: dict[int, Path] = {}
        self.links: dict[int, _RankLink] = {}

    def begin(self, files: list[_File]) -> None:
        """Which ET goes with which Kineto file: by the rank in the ET's file name, else by position."""
        named = [(p, RANK_RE.search(p.name)) for p in self.et_paths]
        if all(m is not None for _, m in named):
            by_rank: dict[int, Path] = {}
            for p, m in named:
                assert m is not None
                r = int(m.group(1))
                if r in by_rank:
                    raise TraceError(f"{p}: rank {r} (from the file name) is also the rank of {by_rank[r]}")
                by_rank[r] = p
            kranks = [f.source_rank for f in files]
            for r, p in by_rank.items():
                if r not in kranks:
                    raise TraceError(
                        f"{p}: rank {r} (from the file name) has no Kineto trace of that rank "
                        f"(--kineto ranks: {', '.join(map(str, kranks))})"
                    )
            for rank, f in enumerate(files):
                self.et_of_rank[rank] = by_rank[f.source_rank]
        else:
            free = list(range(len(self.kineto_paths)))  # positions not yet paired (a file may repeat)
            for rank, f in enumerate(files):
                i = next(i for i in free if self.kineto_paths[i] == f.path)
                free.remove(i)
                self.et_of_rank[rank] = self.et_paths[i]
        self.report.et_files = [str(self.et_of_rank[r]) for r in range(len(files))]

    def prepare(self, rank: int, f: _File, r: _Rank) -> pa.RecordBatch | None:
        et_path = self.et_of_rank[rank]
        rep = self.report
        header, nodes = _read_et(et_path)
        link = _RankLink(et_path, nodes)
        self.links[rank] = link
        rep.et_nodes += len(nodes)
        cpu = r.cpu_all
        assert cpu is not None
        names = cpu.column("name").to_pylist()
        cats = cpu.column("cat").to_pylist()
        ts = cpu.column("ts").to_pylist()
        # Of each CPU op's args, only what the pairing reads.
        wanted: dict[str, list[Any]] = {RF_KEY: [], EXT_KEY: [], "dims": [], CONCRETE: []}
        for text in cpu.column("args").to_pylist():
            a = _args(text, f.path)
            wanted[RF_KEY].append(a.get(RF_KEY))
            wanted[EXT_KEY].append(a.get(EXT_KEY))
            wanted["dims"].append("Input Dims" in a or "Input dims" in a)
            wanted[CONCRETE].append(a.get(CONCRETE))
        pids = Counter(cpu.column("pid").to_pylist())
        et_pid = _int_field(header.get("pid"))
        if et_pid is not None and pids:
            kpid = pids.most_common(1)[0][0]
            if _int_field(kpid) is not None and _int_field(kpid) != et_pid:
                raise TraceError(
                    f"{et_path}: pid {et_pid} is not the pid {kpid} of the CPU ops of {f.path}: "
                    "not traces of the same process"
                )
        use_rf = any(_int_field(v) not in (None, 0) for v in wanted[RF_KEY])
        key = RF_KEY if use_rf else EXT_KEY
        rep.keys.append(key)
        by_key: dict[int, int] = {}
        for row, raw in enumerate(wanted[key]):
            if raw is None:
                continue
            k = _int_field(raw)
            if k is None:
                raise TraceError(
                    f"{f.path}: {cats[row]} '{names[row]}' at ts {ts[row]} ns: "
                    f"'{key}' is not an integer: {raw!r}"
                )
            by_key.setdefault(k, row)
        found = agree = 0
        for i, n in enumerate(nodes):
            kind = _et_kind(n.name)
            if n.name.startswith(ET_ROOTS):
                rep.et_unmatched["ET process/thread root (not an operator)"] += 1
                continue
            if n.rf is None or n.rf == 0:
                rep.et_unmatched[f"{kind} (no rf_id)"] += 1
                continue
            hit = by_key.get(n.rf)
            if hit is None:
                rep.et_unmatched[f"{kind} (rf_id not in the Kineto trace)"] += 1
                continue
            found += 1
            if names[hit] != n.name:
                rep.et_unmatched[f"{kind} (Kineto op of that id has another name)"] += 1
                continue
            agree += 1
            if hit in link.matched:
                rep.et_unmatched[f"{kind} (Kineto op already matched)"] += 1
                continue
            rep.et_matched[kind] += 1
            link.matched[hit] = i
            link.events.append(hit)
        if agree == 0:
            raise TraceError(
                f"{et_path} and {f.path}: no ET operator's rf_id matches a Kineto CPU op's '{key}' "
                "with the same name: not traces of the same run (or the ET observer was not "
                "running while the profiler was)"
            )
        if agree < MIN_NAME_AGREEMENT * found:
            raise TraceError(
                f"{et_path} and {f.path}: only {agree:,} of the {found:,} ET operators whose rf_id is "
                f"a Kineto '{key}' have the same name there: not traces of the same run"
            )
        for row in range(cpu.num_rows):
            if row not in link.matched:
                rep.kineto_unmatched[f"{cats[row]} {_et_kind(names[row])}"] += 1
        # Recorded shapes from the ET where the Kineto trace has none (costs of the kernels).
        is_op = cpu.column("cpu_op").to_pylist()
        rows: list[int] = []
        shapes: list[str] = []
        for row in link.events:
            if not is_op[row] or wanted["dims"][row]:
                continue
            n = nodes[link.matched[row]]
            dims = _kineto_dims(n.shapes, n.types)
            if dims is None:
                continue
            fields: dict[str, Any] = {"Input Dims": dims[0], "Input type": dims[1]}
            if wanted[CONCRETE][row] is not None:
                fields[CONCRETE] = wanted[CONCRETE][row]
            rows.append(row)
            shapes.append(json.dumps(fields))
            rep.shapes_from_et += 1
        if not rows:
            return None
        take = pa.array(rows, pa.int64())
        return pa.record_batch(
            {
                "ts": cpu.column("ts").take(take),
                "end": cpu.column("end").take(take),
                "thread": cpu.column("thread").take(take),
                "name": cpu.column("name").take(take).cast(pa.string()),
                "shapes": pa.array(shapes, pa.string()),
            }
        )

    def link(self, rank: int, f: _File, r: _Rank) -> list[tuple[int, int]]:
        rep = self.report
        link = self.links[rank]
        cpu = r.cpu_all
        assert cpu is not None
        gpu = r.gpu
        launch = _ints(gpu.column("launch"))
        # The innermost matched Kineto op enclosing each runtime call, as an index into the ET nodes.
        events = pa.array(link.events, pa.int64())
        inner_b, _ = kineto_innermost(
            pa.record_batch({"ts": r.runtime.column("ts"), "thread": r.runtime.column("thread")}),
            pa.record_batch({c: cpu.column(c).take(events) for c in ("ts", "end", "thread")}),
        )
        node_of_event = np.array([link.matched[row] for row in link.events] + [-1], np.int64)
        node_of_call = node_of_event[_ints(inner_b.column("inner"))]  # -1 → the appended -1
        node = np.where(launch >= 0, node_of_call[np.maximum(launch, 0)] if len(node_of_call) else -1, -1)
        reason = np.where(launch < 0, 0, 1)[node < 0]
        why = ["launch not in the trace", "launched outside any CPU op matched in the ET"]
        _counted(
            rep.gpu_without_et,
            np.flatnonzero(node < 0),
            [why[c] for c in reason.tolist()],
            np.ones(len(reason), np.int64),
        )
        rep.gpu_with_et += int((node >= 0).sum())
        with_node = np.flatnonzero(node >= 0)
        by_node = with_node[np.argsort(node[with_node], kind="stable")]
        bounds = np.flatnonzero(np.diff(node[by_node])) + 1
        kernels: dict[int, list[int]] = {
            int(node[part[0]]): part.tolist() for part in np.split(by_node, bounds) if len(part)
        }
        # Data flow: the last operator with GPU ops that wrote a storage produces it.
        producer: dict[tuple[Any, Any], int] = {}
        pairs: list[tuple[int, int]] = []
        for i, n in enumerate(link.nodes):
            if i not in kernels:
                continue
            ins: list[tuple[Any, Any]] = []
            _storages(n.inputs, ins)
            seen: set[int] = set()
            for s in ins:
                p = producer.get(s)
                if p is not None and p != i and p not in seen:
                    seen.add(p)
                    pairs.append((p, i))
            outs: list[tuple[Any, Any]] = []
            _storages(n.outputs, outs)
            for s in outs:
                producer[s] = i
        start = _ints(gpu.column("ts"))
        end = _ints(gpu.column("end"))
        stream = _ints(gpu.column("stream"))
        deps: list[tuple[int, int]] = []
        added: set[tuple[int, int]] = set()
        for p, c in pairs:
            src = max(kernels[p], key=lambda j: (end[j], j))
            firsts: dict[int, int] = {}
            for j in kernels[c]:
                sj = int(stream[j])
                if sj not in firsts or start[j] < start[firsts[sj]]:
                    firsts[sj] = j
            for j in firsts.values():
                if stream[j] == stream[src]:
                    rep.data_deps_same_stream += 1
                elif end[src] <= start[j] and (start[src], stream[src]) < (start[j], stream[j]):
                    if (j, src) not in added:
                        added.add((j, src))
                        deps.append((j, src))
                        rep.data_deps += 1
                else:
                    rep.data_deps_contradicted += 1
        return deps


def ingest_pytorch_et_kineto(
    et_paths: Sequence[str | Path], kineto_paths: Sequence[str | Path], *, time_unit: TimeUnit = "auto"
) -> tuple[Trace, PairedReport]:
    """PyTorch ET files and the Kineto traces of the same run (one each per rank), paired.

    Pairing by rank: an ET named `<prefix>.<rank>.json[.gz]` goes with the Kineto file of that
    `distributedInfo.rank`; otherwise the i-th ET goes with the i-th Kineto file."""
    ets, kins = [Path(p) for p in et_paths], [Path(p) for p in kineto_paths]
    if not ets:
        raise TraceError("ingest pytorch-et: no execution-trace files")
    if len(ets) != len(kins):
        raise TraceError(
            f"ingest pytorch-et: {len(ets)} execution-trace file(s) but {len(kins)} --kineto file(s): "
            "give one Kineto trace per ET, of the same rank"
        )
    for p in (*ets, *kins):
        if not p.is_file():
            raise TraceError(f"{p}: no such file")
    report = PairedReport(IngestReport())
    pairing = _Pairing(ets, kins, report)
    trace, report.kineto = _ingest_kineto(kins, time_unit, pairing)
    return trace, report
