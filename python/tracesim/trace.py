"""Reading, writing and validating traces in the canonical format (DESIGN.md §2)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tracesim import _core, format
from tracesim._atomic import atomic_directory
from tracesim.exceptions import TraceError

TableLike = Any  # pyarrow.Table, polars.DataFrame, or a mapping of column name to values


def _to_table(data: TableLike, where: str) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, dict):
        return pa.table(data)
    if hasattr(data, "to_arrow"):  # polars
        table = data.to_arrow()
        return table if isinstance(table, pa.Table) else pa.table(table)
    if hasattr(data, "__arrow_c_stream__"):
        return pa.table(data)
    raise TraceError(f"{where}: cannot read a table from {type(data).__name__}")


@dataclass
class Trace:
    """A trace in memory: its tables (canonical Arrow schema) and trace.json metadata."""

    ops: pa.Table
    ranks: int
    groups: pa.Table | None = None
    tensors: pa.Table | None = None
    accesses: pa.Table | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def from_tables(
        cls,
        ops: TableLike,
        *,
        ranks: int | None = None,
        groups: TableLike | None = None,
        tensors: TableLike | None = None,
        accesses: TableLike | None = None,
        source: str = "python",
        source_system: str | None = None,
        validate: bool = True,
        **meta: Any,
    ) -> Trace:
        """Builds a trace from tables; `ranks` defaults to 1 + the largest rank."""
        ops_t = format.conform(_to_table(ops, "ops"), format.OPS, "ops")
        if ranks is None:
            top = pc.max(ops_t.column("rank")).as_py()
            ranks = 0 if top is None else int(top) + 1
        trace = cls(
            ops=ops_t,
            ranks=ranks,
            groups=None
            if groups is None
            else format.conform(_to_table(groups, "groups"), format.GROUPS, "groups"),
            tensors=None
            if tensors is None
            else format.conform(_to_table(tensors, "tensors"), format.TENSORS, "tensors"),
            accesses=None
            if accesses is None
            else format.conform(_to_table(accesses, "accesses"), format.ACCESSES, "accesses"),
            meta={
                "format": format.FORMAT_NAME,
                "version": format.FORMAT_VERSION,
                "ranks": ranks,
                "source": source,
                "source_system": source_system,
                **meta,
            },
        )
        if validate:
            trace.validate()
        return trace

    @property
    def source_system(self) -> str | None:
        value = self.meta.get("source_system")
        return value if isinstance(value, str) else None

    @property
    def num_ops(self) -> int:
        return int(self.ops.num_rows)

    def _where(self) -> str:
        return str(self.path) if self.path is not None else "<trace>"

    def validate(self) -> None:
        """Checks the whole contract of DESIGN.md §2; raises TraceError naming file, column and op_id."""
        where = self._where()
        if self.ranks < 1:
            raise TraceError(
                f"{where}/trace.json: field 'ranks': a trace needs at least 1 rank, got {self.ranks}"
            )
        if (
            self.groups is None
            and self.num_ops
            and pc.any(pc.equal(self.ops.column("kind"), "collective")).as_py()
        ):
            row = int(pc.indices_nonzero(pc.equal(self.ops.column("kind"), "collective"))[0].as_py())
            op_id = self.ops.column("op_id")[row].as_py()
            raise TraceError(
                f"{where}/groups.parquet: missing, but the trace has collectives "
                f"(op_id {op_id} in ops.parquet)"
            )
        try:
            _core.validate(self.ops, self.groups, self.ranks)
        except TraceError as e:
            raise TraceError(f"{where}/{e}") from None
        self._validate_memory(where)

    def _validate_memory(self, where: str) -> None:
        if self.tensors is not None:
            ids = self.tensors.column("tensor_id")
            if pc.count_distinct(ids).as_py() != len(ids):
                counts = pc.value_counts(ids)
                dup = next(v["values"] for v in counts.to_pylist() if v["counts"] > 1)
                raise TraceError(f"{where}/tensors.parquet: column 'tensor_id': duplicate tensor_id {dup}")
            bad = pc.greater_equal(self.tensors.column("rank"), self.ranks)
            if pc.any(bad).as_py():
                row = int(pc.indices_nonzero(bad)[0].as_py())
                raise TraceError(
                    f"{where}/tensors.parquet: column 'rank', tensor_id {ids[row].as_py()}: rank "
                    f"{self.tensors.column('rank')[row].as_py()} is outside 0..{self.ranks - 1}"
                )
            op_ids = self.ops.column("op_id")
            for col in ("alloc_op", "free_op"):
                refs = self.tensors.column(col)
                bad = pc.and_(pc.is_valid(refs), pc.invert(pc.is_in(refs, value_set=op_ids)))
                if pc.any(bad).as_py():
                    row = int(pc.indices_nonzero(bad)[0].as_py())
                    raise TraceError(
                        f"{where}/tensors.parquet: column '{col}', op_id {refs[row].as_py()}: tensor_id "
                        f"{ids[row].as_py()} names an op that is not in the trace"
                    )
        if self.accesses is not None:
            refs = self.accesses.column("op_id")
            bad = pc.invert(pc.is_in(refs, value_set=self.ops.column("op_id")))
            if pc.any(bad).as_py():
                row = int(pc.indices_nonzero(bad)[0].as_py())
                raise TraceError(
                    f"{where}/accesses.parquet: column 'op_id', op_id {refs[row].as_py()}: not in the trace"
                )
            tids = self.accesses.column("tensor_id")
            known = (
                self.tensors.column("tensor_id") if self.tensors is not None else pa.array([], pa.uint64())
            )
            bad = pc.invert(pc.is_in(tids, value_set=known))
            if pc.any(bad).as_py():
                row = int(pc.indices_nonzero(bad)[0].as_py())
                raise TraceError(
                    f"{where}/accesses.parquet: column 'tensor_id', op_id {refs[row].as_py()}: tensor_id "
                    f"{tids[row].as_py()} is not in tensors.parquet"
                )


# Batches as large as Arrow allows: a table then has one chunk per Parquet row group, and the
# engine reads a single-chunk column without copying it (write_trace writes one row group).
_WHOLE_ROW_GROUPS = 2**31 - 1


def _read_parquet(path: Path, columns: dict[str, format.Column]) -> pa.Table:
    try:
        table = ds.dataset(path, format="parquet").to_table(batch_size=_WHOLE_ROW_GROUPS)
    except (pa.ArrowException, OSError) as e:
        raise TraceError(f"{path}: not a readable Parquet file: {e}") from None
    return format.conform(table, columns, str(path))


def read_trace(path: str | os.PathLike[str], *, validate: bool = True) -> Trace:
    """Reads a trace directory; validates it unless `validate=False`."""
    root = Path(path)
    if not root.is_dir():
        raise TraceError(
            f"{root}: not a trace directory (expected a directory with trace.json and ops.parquet)"
        )
    meta_path = root / "trace.json"
    if not meta_path.is_file():
        raise TraceError(f"{meta_path}: missing; every trace directory needs trace.json")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TraceError(f"{meta_path}: not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise TraceError(f"{meta_path}: expected a JSON object")
    if meta.get("format") != format.FORMAT_NAME:
        raise TraceError(
            f"{meta_path}: field 'format': expected {format.FORMAT_NAME!r}, got {meta.get('format')!r}"
        )
    if meta.get("version") != format.FORMAT_VERSION:
        raise TraceError(
            f"{meta_path}: field 'version': this tracesim reads version {format.FORMAT_VERSION}, "
            f"got {meta.get('version')!r}"
        )
    ranks = meta.get("ranks")
    if not isinstance(ranks, int) or isinstance(ranks, bool) or ranks < 1:
        raise TraceError(f"{meta_path}: field 'ranks': expected a positive integer, got {ranks!r}")
    ops_path = root / "ops.parquet"
    if not ops_path.exists():
        raise TraceError(f"{ops_path}: missing; every trace directory needs ops.parquet")

    def optional(name: str, columns: dict[str, format.Column]) -> pa.Table | None:
        p = root / f"{name}.parquet"
        return _read_parquet(p, columns) if p.exists() else None

    trace = Trace(
        ops=_read_parquet(ops_path, format.OPS),
        ranks=ranks,
        groups=optional("groups", format.GROUPS),
        tensors=optional("tensors", format.TENSORS),
        accesses=optional("accesses", format.ACCESSES),
        meta=meta,
        path=root,
    )
    if validate:
        trace.validate()
    return trace


def write_trace(trace: Trace, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Writes `trace` as a directory. The directory appears whole or not at all."""
    root = Path(path)
    if root.exists() and not overwrite:
        raise TraceError(f"{root}: already exists (pass overwrite=True to replace it)")
    with atomic_directory(root) as tmp:
        meta = {
            **trace.meta,
            "format": format.FORMAT_NAME,
            "version": format.FORMAT_VERSION,
            "ranks": trace.ranks,
        }
        (tmp / "trace.json").write_text(json.dumps(meta, indent=2) + "\n")
        ops = format.conform(trace.ops, format.OPS, "ops")
        pq.write_table(ops, tmp / "ops.parquet", row_group_size=max(1, ops.num_rows))
        for name, table, cols in (
            ("groups", trace.groups, format.GROUPS),
            ("tensors", trace.tensors, format.TENSORS),
            ("accesses", trace.accesses, format.ACCESSES),
        ):
            if table is not None:
                pq.write_table(format.conform(table, cols, name), tmp / f"{name}.parquet")
    return root
