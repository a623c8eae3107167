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
import pyarrow.compute as pc

from tracesim._core import kineto_innermost, read_et_nodes
from tracesim.exceptions import TraceError
from tracesim.ingest._common import _codes, _counted, _counter_lines, _ints, _parse_json
from tracesim.ingest.chakra import ET_ROOTS, RANK_RE
from tracesim.ingest.kineto import (
    IngestReport,
    TimeUnit,
    _File,
    _ingest_kineto,
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


# An id as PyTorch writes it in `args`: a JSON integer, or a string holding one (its digits: `n`).
INT_TEXT = r'^(?:(?P<n>-?[0-9]{1,19})|"\s*(?P<q>[+-]?[0-9]{1,19})\s*")$'


def _ids(cpu: pa.RecordBatch, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `args` ids of the Kineto CPU ops (kept by the reader as JSON text in `column`):
    (values, present, rows whose value is not an integer of int64)."""
    raw = cpu.column(column)
    present = pc.is_valid(raw).to_numpy(zero_copy_only=False)
    ok = pc.fill_null(pc.match_substring_regex(raw, INT_TEXT), False)
    parts = pc.extract_regex(pc.if_else(ok, raw, None), INT_TEXT)
    digits = pc.replace_substring_regex(
        pc.binary_join_element_wise(parts.field("n"), parts.field("q"), ""), r"^\+", ""
    )
    try:
        values = pc.cast(digits, pa.int64())
    except pa.ArrowInvalid:  # 19 digits beyond int64: those rows are not ids
        fits = [not d or -(2**63) <= int(d) < 2**63 for d in digits.to_pylist()]
        ok = pc.and_(ok, pa.array(fits))
        values = pc.cast(pc.if_else(ok, digits, None), pa.int64())
    good = ok.to_numpy(zero_copy_only=False)
    return _ints(values), present & good, np.flatnonzero(present & ~good)


def _not_an_integer(cpu: pa.RecordBatch, row: int, column: str, key: str, path: Path) -> TraceError:
    cat, name, ts = (cpu.column(c)[row].as_py() for c in ("cat", "name", "ts"))
    return TraceError(
        f"{path}: {cat} '{name}' at ts {ts} ns: '{key}' is not an integer: {cpu.column(column)[row].as_py()}"
    )


def _read_et(path: Path) -> tuple[int | None, pa.RecordBatch]:
    """The ET's pid and its nodes (`tracesim._core.read_et_nodes`: id, name, rf_id, dims, inputs,
    outputs), by id."""
    nodes, header = read_et_nodes(path)
    pid = next((_parse_json(v, path, k) for k, v in header if k == "pid"), None)
    return _int_field(pid), nodes.sort_by("id")


@dataclass
class _RankLink:
    et_path: Path
    nodes: pa.RecordBatch
    node_of_row: np.ndarray  # per Kineto CPU op: the ET node matched with it (-1: none)
    events: np.ndarray  # the matched Kineto CPU ops (rows), in node order


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
        et_pid, nodes = _read_et(et_path)
        rep.et_nodes += nodes.num_rows
        cpu = r.cpu_all
        assert cpu is not None
        if et_pid is not None and cpu.num_rows:
            pid_idx, pid_words = _codes(cpu.column("pid"))
            kpid = pid_words[int(np.bincount(pid_idx).argmax())]  # the most common (first of ties)
            if _int_field(kpid) is not None and _int_field(kpid) != et_pid:
                raise TraceError(
                    f"{et_path}: pid {et_pid} is not the pid {kpid} of the CPU ops of {f.path}: "
                    "not traces of the same process"
                )
        rf = _ids(cpu, "rf_id")
        use_rf = bool((rf[1] & (rf[0] != 0)).any())
        key, column = (RF_KEY, "rf_id") if use_rf else (EXT_KEY, "external_id")
        rep.keys.append(key)
        ids, present, bad = rf if use_rf else _ids(cpu, column)
        if len(bad):
            raise _not_an_integer(cpu, int(bad[0]), column, key, f.path)
        # The first Kineto op of each id, and the one each ET node's rf_id names (-1: none).
        rows = np.flatnonzero(present)
        keys, first = np.unique(ids[rows], return_index=True)
        first_row = rows[first]
        node_rf = nodes.column("rf_id")
        has_rf = pc.fill_null(pc.not_equal(node_rf, 0), False).to_numpy(zero_copy_only=False)
        rf_val = _ints(node_rf)
        at = np.searchsorted(keys, rf_val)
        found = (
            has_rf & (at < len(keys)) & (keys[np.minimum(at, len(keys) - 1)] == rf_val)
            if len(keys)
            else has_rf & False
        )
        hit = np.where(found, first_row[np.minimum(at, len(keys) - 1)] if len(keys) else -1, -1)
        # Names: ET node names as codes of the Kineto names (-1: a name no Kineto op has).
        cname_idx, cnames = _codes(cpu.column("name"))
        nname_idx, nnames = _codes(nodes.column("name"))
        roots = np.array([w.startswith(ET_ROOTS) for w in nnames] + [False], bool)[nname_idx]
        found &= ~roots
        code_of = {w: i for i, w in enumerate(cnames)}
        ncode = np.array([code_of.get(w, -1) for w in nnames] + [-1], np.int64)[nname_idx]
        agree = found.copy()
        agree[found] = cname_idx[hit[found]] == ncode[found]
        first_hit = np.zeros(len(hit), bool)
        cand = np.flatnonzero(agree)
        first_hit[cand[np.unique(hit[cand], return_index=True)[1]]] = True
        n_found, n_agree = int(found.sum()), int(agree.sum())
        if n_agree == 0:
            raise TraceError(
                f"{et_path} and {f.path}: no ET operator's rf_id matches a Kineto CPU op's '{key}' "
                "with the same name: not traces of the same run (or the ET observer was not "
                "running while the profiler was)"
            )
        if n_agree < MIN_NAME_AGREEMENT * n_found:
            raise TraceError(
                f"{et_path} and {f.path}: only {n_agree:,} of the {n_found:,} ET operators whose rf_id is "
                f"a Kineto '{key}' have the same name there: not traces of the same run"
            )
        # The report: every ET node as matched or why not (by kind), in node order.
        kinds = sorted({_et_kind(w) for w in nnames})
        kind_of_name = np.array([kinds.index(_et_kind(w)) for w in nnames] + [0], np.int64)
        kind = kind_of_name[nname_idx]
        why = np.select([roots, ~has_rf, ~found, ~agree, ~first_hit], [0, 1, 2, 3, 4], 5)
        reasons = [
            "{} (no rf_id)",
            "{} (rf_id not in the Kineto trace)",
            "{} (Kineto op of that id has another name)",
            "{} (Kineto op already matched)",
        ]
        # Unmatched: code = reason × kinds + kind (roots: one text whatever their kind).
        words = ["ET process/thread root (not an operator)"] * len(kinds)
        words += [r.format(k) for r in reasons for k in kinds]
        unmatched = np.flatnonzero(why < 5)
        _counted(rep.et_unmatched, words, why[unmatched] * len(kinds) + kind[unmatched], unmatched)
        matched = np.flatnonzero(why == 5)
        _counted(rep.et_matched, kinds, kind[matched], matched)
        node_of_row = np.full(cpu.num_rows, -1, np.int64)
        node_of_row[hit[matched]] = matched
        self.links[rank] = _RankLink(et_path, nodes, node_of_row, hit[matched])
        # Kineto CPU ops not matched, by category and kind.
        cat_idx, cats = _codes(cpu.column("cat"))
        lone = np.flatnonzero(node_of_row < 0)
        pairs, pair_of = np.unique(cat_idx[lone] * max(len(cnames), 1) + cname_idx[lone], return_inverse=True)
        labels = [
            f"{cats[p // max(len(cnames), 1)]} {_et_kind(cnames[p % max(len(cnames), 1)])}"
            for p in pairs.tolist()
        ]
        _counted(rep.kineto_unmatched, labels, pair_of.reshape(-1), lone)

        # Recorded shapes from the ET where the Kineto trace has none (costs of the kernels).
        events = hit[matched]
        need = (
            cpu.column("cpu_op").to_numpy(zero_copy_only=False)[events]
            & ~cpu.column("has_dims").to_numpy(zero_copy_only=False)[events]
        )
        dims = nodes.column("dims").take(pa.array(matched[need]))
        have = pc.is_valid(dims).to_numpy(zero_copy_only=False)
        rows = events[need][have]
        if not len(rows):
            return None
        shapes = dims.filter(pa.array(have))
        concrete = cpu.column("concrete").take(pa.array(rows))
        if concrete.null_count < len(concrete):  # the Kineto op's Concrete Inputs, kept beside
            merged = []
            for d, c in zip(shapes.to_pylist(), concrete.to_pylist(), strict=True):
                if c is not None:
                    fields = json.loads(d)
                    fields[CONCRETE] = _parse_json(c, f.path, CONCRETE)
                    d = json.dumps(fields)
                merged.append(d)
            shapes = pa.array(merged, pa.string())
        rep.shapes_from_et += len(rows)
        take = pa.array(rows)
        return pa.record_batch(
            {
                "ts": cpu.column("ts").take(take),
                "end": cpu.column("end").take(take),
                "thread": cpu.column("thread").take(take),
                "name": cpu.column("name").take(take).cast(pa.string()),
                "shapes": shapes,
            }
        )

    def link(self, rank: int, f: _File, r: _Rank) -> list[tuple[int, int]]:
        rep = self.report
        link = self.links[rank]
        cpu = r.cpu_all
        assert cpu is not None
        gpu = r.gpu
        launch = _ints(gpu.column("launch"))
        # The innermost matched Kineto op enclosing each runtime call, as an ET node.
        events = pa.array(link.events, pa.int64())
        inner_b, _ = kineto_innermost(
            pa.record_batch({"ts": r.runtime.column("ts"), "thread": r.runtime.column("thread")}),
            pa.record_batch({c: cpu.column(c).take(events) for c in ("ts", "end", "thread")}),
        )
        node_of_event = np.append(link.node_of_row[link.events], -1)
        node_of_call = node_of_event[_ints(inner_b.column("inner"))]  # -1 → the appended -1
        node = np.full(len(launch), -1, np.int64)
        launched = launch >= 0
        node[launched] = node_of_call[launch[launched]]
        without = np.flatnonzero(node < 0)
        why = ["launch not in the trace", "launched outside any CPU op matched in the ET"]
        _counted(rep.gpu_without_et, why, launched[without].astype(np.int64), without)
        rep.gpu_with_et += int((node >= 0).sum())
        with_node = np.flatnonzero(node >= 0)
        by_node = with_node[np.argsort(node[with_node], kind="stable")]
        bounds = np.flatnonzero(np.diff(node[by_node])) + 1
        kernels: dict[int, list[int]] = {
            int(node[part[0]]): part.tolist() for part in np.split(by_node, bounds) if len(part)
        }
        # Data flow, over the nodes with GPU ops in id order: the last to write a storage produces it.
        ins, outs = link.nodes.column("inputs"), link.nodes.column("outputs")
        in_off, in_val = _ints(ins.offsets), _ints(ins.flatten())
        out_off, out_val = _ints(outs.offsets), _ints(outs.flatten())
        producer: dict[int, int] = {}
        pairs: list[tuple[int, int]] = []
        for i in sorted(kernels):
            seen: set[int] = set()
            for s in in_val[in_off[i] - in_off[0] : in_off[i + 1] - in_off[0]].tolist():
                p = producer.get(s)
                if p is not None and p != i and p not in seen:
                    seen.add(p)
                    pairs.append((p, i))
            for s in out_val[out_off[i] - out_off[0] : out_off[i + 1] - out_off[0]].tolist():
                producer[s] = i
        start = _ints(gpu.column("ts")).tolist()
        end = _ints(gpu.column("end")).tolist()
        stream = _ints(gpu.column("stream")).tolist()
        last: dict[int, int] = {}  # node → its GPU op that ends last
        firsts: dict[int, list[int]] = {}  # node → its first GPU op on each stream

        def first_per_stream(node: int) -> list[int]:
            by_stream: dict[int, int] = {}
            for j in kernels[node]:
                if stream[j] not in by_stream or start[j] < start[by_stream[stream[j]]]:
                    by_stream[stream[j]] = j
            return list(by_stream.values())

        deps: list[tuple[int, int]] = []
        added: set[tuple[int, int]] = set()
        for p, c in pairs:
            if p not in last:
                last[p] = max(kernels[p], key=lambda j: (end[j], j))
            src = last[p]
            if c not in firsts:
                firsts[c] = first_per_stream(c)
            for j in firsts[c]:
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
