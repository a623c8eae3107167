"""`simulate`: replay a trace on a system and collect the result (DESIGN.md §5)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl
import pyarrow as pa

from tracesim import _core
from tracesim._atomic import atomic_directory
from tracesim.exceptions import SystemConfigError, TraceError, TracesimError
from tracesim.system import System, load_system, preset_names
from tracesim.trace import Trace, read_trace

ComputeModelName = Literal["auto", "measured", "roofline", "retime"]
NetworkModelName = Literal["analytical", "flow"]
# Version of the result directory layout (summary.json `format_version`, docs/results.md).
# Results written before it was recorded are version 1; read_result refuses newer ones.
RESULT_FORMAT_VERSION = 1


@dataclass
class Result:
    """A replay's outcome: `timeline` has one row per op, `summary` the keys of DESIGN.md §5."""

    timeline: pl.DataFrame
    summary: dict[str, Any]
    memory: pl.DataFrame | None = None  # time_ns, rank, tier, used_bytes: occupancy over time
    links: pl.DataFrame | None = None  # rank, link, bytes, busy_ns, utilisation, energy_j

    @property
    def makespan_ns(self) -> int:
        return int(self.summary["makespan_ns"])

    def write(self, path: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
        """Writes timeline.parquet and summary.json; the directory appears whole or not at all."""
        root = Path(path)
        if root.exists() and not overwrite:
            raise FileExistsError(f"{root}: already exists")
        with atomic_directory(root) as tmp:
            self.timeline.write_parquet(tmp / "timeline.parquet")
            if self.memory is not None:
                self.memory.write_parquet(tmp / "memory.parquet")
            if self.links is not None:
                self.links.write_parquet(tmp / "links.parquet")
            summary = {"format_version": RESULT_FORMAT_VERSION, **self.summary}
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return root


def read_result(path: str | os.PathLike[str]) -> Result:
    """Reads a result directory written by `Result.write`; refuses one whose summary.json
    `format_version` is newer than RESULT_FORMAT_VERSION (a missing version is 1)."""
    root = Path(path)
    memory = root / "memory.parquet"
    links = root / "links.parquet"
    summary = json.loads((root / "summary.json").read_text())
    version = summary.get("format_version", 1) if isinstance(summary, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise TracesimError(
            f"{root / 'summary.json'}: field 'format_version': expected a positive integer, got {version!r}"
        )
    if version > RESULT_FORMAT_VERSION:
        raise TracesimError(
            f"{root / 'summary.json'}: field 'format_version': result format version {version} is "
            f"newer than tracesim {_core.__version__} can read (up to {RESULT_FORMAT_VERSION}); "
            "upgrade tracesim"
        )
    return Result(
        timeline=pl.read_parquet(root / "timeline.parquet"),
        summary=summary,
        memory=pl.read_parquet(memory) if memory.exists() else None,
        links=pl.read_parquet(links) if links.exists() else None,
    )


def _source_system(trace: Trace, name: str | System | None, warnings: list[str]) -> System | None:
    if isinstance(name, System):
        return name
    if name is not None:
        return load_system(name)
    recorded = trace.source_system
    if recorded is None:
        return None
    if recorded not in preset_names("systems"):
        warnings.append(
            f"trace.json source_system {recorded!r} is not a preset; pass --source-system to retime from it"
        )
        return None
    return load_system(recorded)


def op_times(
    ops: Trace | pa.Table,
    system: System | str | os.PathLike[str],
    *,
    compute_model: ComputeModelName = "roofline",
    source_system: str | System | None = None,
) -> pa.Int64Array:
    """Each op's duration from the compute model alone on `system` (null for collectives and
    send/recv, which the network model times). For calibrating and checking the compute model."""
    from tracesim import format as fmt

    table = ops.ops if isinstance(ops, Trace) else fmt.conform(ops, fmt.OPS, "ops")
    target = system if isinstance(system, System) else load_system(system)
    source = load_system(source_system) if isinstance(source_system, str) else source_system
    batch = _core.op_times(
        table, target.engine_json(), None if source is None else source.engine_json(), compute_model
    )
    column: pa.Int64Array = batch.column(0)
    return column


def simulate(
    trace: Trace | str | os.PathLike[str],
    system: System | str | os.PathLike[str] = "dgx-h100",
    *,
    compute_model: ComputeModelName = "auto",
    network: NetworkModelName = "analytical",
    nodes: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    source_system: str | System | None = None,
    allow_oom: bool = False,
) -> Result:
    """Replays `trace` on `system` (a preset name, a TOML path or a System).

    With tensors in the trace, they are placed in memory tiers by the system's placement policy;
    a tensor that fits no allowed tier raises SimulationError, or with `allow_oom` is placed over
    capacity and reported in the summary's warnings."""
    if not isinstance(trace, Trace):
        trace = read_trace(trace, validate=False)
    if not isinstance(system, System) or nodes is not None or overrides:
        system = load_system(system, nodes=nodes, overrides=overrides)
    if nodes is None and trace.ranks > system.devices:
        # Scale out to fit the trace, as a user replaying an N-rank job on a preset expects.
        needed = -(-trace.ranks // system.devices_per_node)
        system = load_system(system, nodes=needed)
    warnings: list[str] = []
    source = _source_system(trace, source_system, warnings)
    where = str(trace.path) if trace.path is not None else "<trace>"
    if trace.ranks < 1:
        raise TraceError(
            f"{where}/trace.json: field 'ranks': a trace needs at least 1 rank, got {trace.ranks}"
        )
    if trace.groups is None and trace.num_ops:
        trace.validate()  # names the missing groups.parquet when there are collectives
    try:
        batch, memory_batch, links_batch, summary_json, compute_name, network_name = _core.simulate(
            trace.ops,
            trace.groups,
            trace.tensors,
            trace.accesses,
            trace.ranks,
            system.engine_json(),
            None if source is None else source.engine_json(),
            compute_model,
            network,
            allow_oom,
        )
    except TraceError as e:
        raise TraceError(f"{where}/{e}") from None
    except SystemConfigError as e:
        raise SystemConfigError(f"{system.name}: {e}") from None
    timeline = pl.DataFrame(pa.Table.from_batches([batch]))
    memory = pl.DataFrame(pa.Table.from_batches([memory_batch])) if trace.tensors is not None else None
    summary: dict[str, Any] = {"format_version": RESULT_FORMAT_VERSION, **json.loads(summary_json)}
    links = pl.DataFrame(pa.Table.from_batches([links_batch]))
    per_level = links.group_by("link").agg(
        pl.col("bytes").sum(),
        pl.col("energy_j").sum(),
        pl.col("utilisation").max().alias("max_utilisation"),
        pl.col("utilisation").mean().alias("mean_utilisation"),
    )
    summary["network"] = {row.pop("link"): row for row in per_level.sort("link", descending=True).to_dicts()}
    exposure = system.link_exposure()
    for level, info in exposure.items():
        summary["network"].setdefault(level, {}).update(info)
    known = [info["failures_per_year"] for info in exposure.values() if info["failures_per_year"] is not None]
    summary["link_failures_per_year"] = sum(known) if known else None
    if system.device.static_power_w == 0:
        warnings.append(f"device {system.device.name} has no static_power_w; energy excludes static power")
    summary["warnings"] = summary.get("warnings", []) + warnings
    summary["system"] = system.model_dump(mode="json")
    summary["compute_model"] = compute_name
    summary["network_model"] = network_name
    summary["source_system"] = None if source is None else source.name
    path = None if trace.path is None else str(trace.path.resolve())
    summary["trace"] = {"path": path, "ranks": trace.ranks}
    if isinstance(trace.meta.get("serving"), dict):  # request bookkeeping of `synth infer`
        from tracesim.synth.infer import serving_metrics

        try:
            summary["serving"] = serving_metrics(timeline, trace)
        except TraceError as e:
            summary["warnings"].append(f"{where}/{e}; no serving metrics")
    return Result(timeline=timeline, summary=summary, memory=memory, links=links)
