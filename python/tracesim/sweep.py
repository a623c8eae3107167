"""Scenarios and sweeps (DESIGN.md §6, `tracesim sweep`): one TOML file names a trace or a
sample, a system, what-if transforms and a grid (or list) of variants; `sweep` runs every
variant on all cores (or on a Ray cluster) and collects one table.

A scenario file::

    trace = "../../traces/dp2_allreduce"       # relative to this file; or a [sample] table
    system = "dgx-h100"                         # preset name or system TOML (relative to this file)
    compute_model = "roofline"                  # auto, measured, roofline, retime
    network = "analytical"
    nodes = 2                                   # optional
    allow_oom = false

    [sample]                                    # instead of `trace`
    name = "data_parallel_step"                 # data_parallel_step, pipeline_step, decode_steps
    ranks = 8                                   # the sample function's keyword arguments

    [transforms]
    set = ["device.memory.hbm.read_bw_bytes=6e12"]   # system overrides, as `--set`
    scale_dp = 2                                # replicate the trace's ranks (see `scale_dp`)
    dtype = "fp8"                               # rewrite the dtype of compute ops
    remap = "round_robin"                       # or [3, 2, 1, 0]: renumber ranks (see `remap_ranks`)

    [grid]                                      # cartesian product of these values
    "device.memory.hbm.read_bw_bytes" = [3.35e12, 4.8e12, 6e12]
    nodes = [1, 2]

or, instead of `[grid]`, a list of variants: ``[[variants]]`` tables of the same keys.

Variant keys are system override paths (as `--set`) or the special keys `system`, `nodes`,
`compute_model`, `network`, `scale_dp` and `dtype`, which replace the scenario's values.
Overrides in a variant are applied after `transforms.set`. Transforms apply in the order
scale_dp, dtype, remap; `remap` is set in `[transforms]` only. The engine places rank r on node
r // devices_per_node, so `remap` moves ranks between nodes: "round_robin" spreads consecutive
ranks over the nodes the trace needs, a list gives the new rank of each old rank (a permutation
of 0..R-1, R being the ranks after scale_dp).

Each variant's id is the SHA-256 of the canonical JSON of the scenario (without its grid or
variants, plus the text of a system TOML file and the trace's trace.json and file sizes it
names) and the variant's values: adding values to a grid keeps the ids of the variants already
run. Results go to `OUT/variants/<id>/` (timeline.parquet, summary.json, written atomically by
`Result.write`, then variant.json, written atomically last, which marks the directory
complete); a variant whose variant.json exists is not run again, so an interrupted sweep
resumes where it stopped. A failing variant is recorded (status "failed" and its error, in
its variant.json and its row) and the sweep goes on; failed variants are retried only with
`retry_failed=True`. `OUT/results.parquet` has one row per variant of the scenario.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import fcntl
import functools
import hashlib
import inspect
import itertools
import json
import multiprocessing
import os
import shutil
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tracesim import format as fmt
from tracesim import samples
from tracesim.exceptions import TracesimError
from tracesim.format import Dtype
from tracesim.simulate import ComputeModelName, NetworkModelName, simulate
from tracesim.system import _describe, load_system
from tracesim.trace import Trace, read_trace

Executor = Literal["local", "ray"]

SAMPLES: dict[str, Callable[..., Trace]] = {
    "data_parallel_step": samples.data_parallel_step,
    "pipeline_step": samples.pipeline_step,
    "decode_steps": samples.decode_steps,
}
SPECIAL_KEYS = ("system", "nodes", "compute_model", "network", "scale_dp", "dtype")
_COMPUTE_MODELS = ("auto", "measured", "roofline", "retime")
_NETWORK_MODELS = ("analytical", "flow")
RESULT_COLUMNS: dict[str, Any] = {
    "status": pl.String,
    "error": pl.String,
    "makespan_ns": pl.Int64,
    "energy_j": pl.Float64,
    "mfu": pl.Float64,
    "mean_exposed_comm_ns": pl.Float64,
    "peak_memory_bytes": pl.Int64,
    "system_name": pl.String,
    "ranks": pl.Int64,
    "elapsed_s": pl.Float64,
}


class ScenarioError(TracesimError):
    """A scenario file is unusable: unknown keys, bad values, a missing trace."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SampleSpec(BaseModel):
    """`[sample]`: a generator of tracesim.samples and its keyword arguments."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: Literal["data_parallel_step", "pipeline_step", "decode_steps"]


class Transforms(_Strict):
    set: list[str] = Field(default_factory=list)
    scale_dp: int = Field(default=1, ge=1)
    dtype: Dtype | None = None
    remap: Literal["round_robin"] | list[int] | None = None


class Scenario(_Strict):
    name: str = ""
    description: str = ""
    trace: str | None = None
    sample: SampleSpec | None = None
    system: str = "dgx-h100"
    compute_model: ComputeModelName = "auto"
    network: NetworkModelName = "analytical"
    nodes: int | None = Field(default=None, ge=1)
    allow_oom: bool = False
    transforms: Transforms = Field(default_factory=Transforms)
    grid: dict[str, list[Any]] | None = None
    variants: list[dict[str, Any]] | None = None


def load_scenario(path: str | os.PathLike[str]) -> tuple[Scenario, dict[str, Any]]:
    """Reads and validates a scenario file; returns the model and the raw TOML table."""
    p = Path(path)
    if not p.is_file():
        raise ScenarioError(f"{p}: no such scenario file")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{p}: not valid TOML: {e}") from None
    try:
        sc = Scenario.model_validate(raw)
    except ValidationError as e:
        raise ScenarioError(_describe(e, str(p))) from None
    if (sc.trace is None) == (sc.sample is None):
        raise ScenarioError(f"{p}: give either key 'trace' or a [sample] table, not both or neither")
    if sc.grid is not None and sc.variants is not None:
        raise ScenarioError(f"{p}: give either [grid] or [[variants]], not both")
    if sc.sample is not None:
        params = inspect.signature(SAMPLES[sc.sample.name]).parameters
        for key in sc.sample.model_extra or {}:
            if key not in params:
                raise ScenarioError(
                    f"{p}: unknown key 'sample.{key}' (arguments of {sc.sample.name}: {', '.join(params)})"
                )
    if sc.trace is not None and not (p.parent / sc.trace).is_dir():
        raise ScenarioError(f"{p}: key 'trace': {p.parent / sc.trace} is not a trace directory")
    remap = sc.transforms.remap
    if isinstance(remap, list) and sorted(remap) != list(range(len(remap))):
        raise ScenarioError(
            f"{p}: key 'transforms.remap': {_short(remap)} is not a permutation of 0..{len(remap) - 1}"
        )
    return sc, raw


def _short(values: list[int]) -> str:
    return repr(values) if len(values) <= 16 else repr(values[:16])[:-1] + ", ...]"


def _check_special(key: str, value: Any, where: str) -> None:
    ok = {
        "system": isinstance(value, str),
        "nodes": isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        "scale_dp": isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        "compute_model": value in _COMPUTE_MODELS,
        "network": value in _NETWORK_MODELS,
        "dtype": value in fmt.DTYPES,
    }[key]
    if not ok:
        expected = {
            "system": "a preset name or system TOML path",
            "nodes": "a positive integer",
            "scale_dp": "a positive integer",
            "compute_model": ", ".join(_COMPUTE_MODELS),
            "network": ", ".join(_NETWORK_MODELS),
            "dtype": ", ".join(fmt.DTYPES),
        }[key]
        raise ScenarioError(f"{where}: key '{key}': value {value!r} is not valid; expected {expected}")


def expand(sc: Scenario, where: str = "<scenario>") -> list[dict[str, Any]]:
    """The variants of a scenario, in order: the cartesian product of `[grid]` (keys in file
    order, the last varying fastest), the `[[variants]]` list, or one empty variant."""
    if sc.grid is not None:
        for key, values in sc.grid.items():
            if not values:
                raise ScenarioError(f"{where}: key 'grid.{key}': empty list of values")
        keys = list(sc.grid)
        out = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*sc.grid.values())]
        prefix = "grid."
    elif sc.variants is not None:
        out = [dict(v) for v in sc.variants]
        prefix = "variants."
    else:
        return [{}]
    for variant in out:
        for key, value in variant.items():
            if key in SPECIAL_KEYS:
                _check_special(key, value, where)
            elif isinstance(value, dict):
                raise ScenarioError(f"{where}: key '{prefix}{key}': a value must not be a table")
    return out


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _fingerprint(sc: Scenario, raw: dict[str, Any], base: Path, variant: dict[str, Any]) -> dict[str, Any]:
    """What a variant's result depends on, besides tracesim itself."""
    content = {k: v for k, v in raw.items() if k not in ("grid", "variants", "name", "description")}
    files: dict[str, Any] = {}
    system = variant.get("system", sc.system)
    if isinstance(system, str) and (base / system).is_file():
        files["system"] = (base / system).read_text()
    if sc.trace is not None:
        root = base / sc.trace
        meta = root / "trace.json"
        files["trace.json"] = meta.read_text() if meta.is_file() else None
        files["trace_sizes"] = {p.name: p.stat().st_size for p in sorted(root.glob("*.parquet"))}
    return {"scenario": content, "files": files, "variant": variant}


def variant_id(sc: Scenario, raw: dict[str, Any], base: Path, variant: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of the scenario content and the variant's values."""
    return hashlib.sha256(_canonical(_fingerprint(sc, raw, base, variant)).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Transforms


def _max(series: pl.Series) -> int:
    top = series.max()
    return int(top) if isinstance(top, int) else 0


def _offset(col: str, by: int) -> pl.Expr:
    return pl.col(col) + by if by else pl.col(col)  # a Python int keeps the column type


def scale_dp(trace: Trace, factor: int) -> Trace:
    """Replicates the trace's R ranks `factor` times, as data parallelism would.

    Replica k (0 ≤ k < factor) is a copy of every table with rank r → r + k·R, op_id → op_id +
    k·M (M = 1 + the largest op_id), deps, alloc_op, free_op and accesses' op_id shifted by the
    same k·M, tensor_id → tensor_id + k·T, and send/recv peer → peer + k·R. Every group g is
    duplicated per replica as g + k·G (G = 1 + the largest group_id), its ranks shifted by k·R.
    A group that contains every one of the R original ranks is taken to be the data-parallel
    group: its collectives are moved to a new, widened group (ids from factor·G on) that holds
    all factor·R ranks, with comm_bytes and coll_seq kept (each rank still reduces the same
    gradient bytes, now over factor times as many ranks). Collectives of any other group stay
    inside their replica. A trace whose "all ranks" group is not data parallel (e.g. pure tensor
    parallelism over all ranks) is therefore not scaled as its job would be."""
    if factor == 1:
        return trace
    R = trace.ranks
    ops = pl.DataFrame(trace.ops)
    M = _max(ops["op_id"]) + 1 if ops.height else 0
    groups = pl.DataFrame(trace.groups) if trace.groups is not None else None
    G = _max(groups["group_id"]) + 1 if groups is not None and groups.height else 0
    world: dict[int, int] = {}  # original group id → widened group id
    if groups is not None:
        for row in groups.iter_rows(named=True):
            if set(row["ranks"] or []) >= set(range(R)):
                world[int(row["group_id"])] = factor * G + len(world)
    tensors = pl.DataFrame(trace.tensors) if trace.tensors is not None else None
    T = _max(tensors["tensor_id"]) + 1 if tensors is not None and tensors.height else 0
    accesses = pl.DataFrame(trace.accesses) if trace.accesses is not None else None

    op_parts, group_parts, tensor_parts, access_parts = [], [], [], []
    for k in range(factor):
        exprs = [_offset("op_id", k * M), _offset("rank", k * R)]
        if "deps" in ops.columns:
            exprs.append(pl.col("deps").list.eval(pl.element() + k * M))
        if "peer" in ops.columns:
            exprs.append(_offset("peer", k * R))
        if "group_id" in ops.columns:
            gid = pl.col("group_id").cast(pl.Int64)
            if world:
                widened = gid.replace_strict(list(world), list(world.values()), default=None)
                gid = pl.when(gid.is_in(list(world))).then(widened).otherwise(gid + k * G)
            else:
                gid = gid + k * G
            exprs.append(gid.alias("group_id"))
        op_parts.append(ops.with_columns(exprs))
        if groups is not None:
            group_parts.append(
                groups.with_columns(
                    _offset("group_id", k * G),
                    pl.col("ranks").list.eval(pl.element() + k * R),
                )
            )
        if tensors is not None:
            t_exprs = [_offset("tensor_id", k * T), _offset("rank", k * R)]
            t_exprs += [_offset(c, k * M) for c in ("alloc_op", "free_op") if c in tensors.columns]
            tensor_parts.append(tensors.with_columns(t_exprs))
        if accesses is not None:
            access_parts.append(accesses.with_columns(_offset("op_id", k * M), _offset("tensor_id", k * T)))
    if groups is not None and world:
        names = (
            dict(zip(groups["group_id"].to_list(), groups["name"].to_list(), strict=True))
            if ("name" in groups.columns)
            else {}
        )
        rows = {
            "group_id": list(world.values()),
            "ranks": [list(range(factor * R))] * len(world),
        }
        if "name" in groups.columns:
            rows["name"] = [f"{names.get(g) or 'group'}_x{factor}" for g in world]
        group_parts.append(pl.DataFrame(rows).cast({"group_id": groups.schema["group_id"]}))

    def table(parts: list[pl.DataFrame], columns: dict[str, fmt.Column], name: str) -> pa.Table:
        return fmt.conform(pl.concat(parts, how="diagonal_relaxed").to_arrow(), columns, name)

    meta = dict(trace.meta)
    meta["ranks"] = factor * R
    meta["transforms"] = [*meta.get("transforms", []), {"scale_dp": factor}]
    return Trace(
        ops=table(op_parts, fmt.OPS, "ops"),
        ranks=factor * R,
        groups=table(group_parts, fmt.GROUPS, "groups") if group_parts else None,
        tensors=table(tensor_parts, fmt.TENSORS, "tensors") if tensor_parts else None,
        accesses=table(access_parts, fmt.ACCESSES, "accesses") if access_parts else None,
        meta=meta,
        path=None,
    )


def set_dtype(trace: Trace, dtype: str) -> Trace:
    """Sets the dtype of every compute op (kind "compute") to `dtype`. Only the dtype changes,
    which selects the device's peak FLOP/s and energy per FLOP: bytes and measured durations
    stay, so use the roofline or retime compute model to see the effect."""
    if dtype not in fmt.DTYPES:
        raise ScenarioError(f"dtype {dtype!r}: expected one of {', '.join(fmt.DTYPES)}")
    ops = trace.ops
    is_compute = pc.equal(ops.column("kind"), "compute")
    old = ops.column("dtype") if "dtype" in ops.column_names else pa.nulls(ops.num_rows, pa.string())
    new = pc.if_else(is_compute, pa.scalar(dtype, pa.string()), old)
    if "dtype" in ops.column_names:
        ops = ops.set_column(ops.column_names.index("dtype"), "dtype", new)
    else:
        ops = ops.append_column("dtype", new)
    meta = dict(trace.meta)
    meta["transforms"] = [*meta.get("transforms", []), {"dtype": dtype}]
    return Trace(
        ops=ops,
        ranks=trace.ranks,
        groups=trace.groups,
        tensors=trace.tensors,
        accesses=trace.accesses,
        meta=meta,
        path=None,
    )


def round_robin(ranks: int, devices_per_node: int) -> list[int]:
    """The "round_robin" remap: new rank of each old rank r, so that consecutive ranks go to
    different nodes. With N = ceil(ranks / devices_per_node) nodes, r → (r mod N)·devices_per_node
    + r div N; when `ranks` is not a multiple of devices_per_node these values are renumbered
    0..ranks-1 in the same order (the last node stays the partly filled one)."""
    if ranks < 1 or devices_per_node < 1:
        raise ScenarioError(
            f"round_robin: needs ranks ≥ 1 and devices_per_node ≥ 1, got {ranks}, {devices_per_node}"
        )
    nodes = -(-ranks // devices_per_node)
    keys = [(r % nodes) * devices_per_node + r // nodes for r in range(ranks)]
    order = sorted(range(ranks), key=keys.__getitem__)
    new = [0] * ranks
    for i, r in enumerate(order):
        new[r] = i
    return new


def remap_ranks(trace: Trace, perm: list[int]) -> Trace:
    """Renumbers the trace's ranks: old rank r becomes `perm[r]` (a permutation of
    0..R-1) in ops.rank, ops.peer, groups.ranks (each group keeps its order of members, mapped)
    and tensors.rank; op_ids, tensor_ids and everything else stay. Since the engine places rank r
    on node r // devices_per_node, this moves ranks between nodes."""
    R = trace.ranks
    if len(perm) != R or sorted(perm) != list(range(R)):
        raise ScenarioError(
            f"remap {_short(list(perm))}: expected a permutation of 0..{R - 1} (the trace has {R} ranks)"
        )
    old, new = list(range(R)), list(perm)

    def mapped(col: str) -> pl.Expr:
        return pl.col(col).replace_strict(old, new, return_dtype=pl.Int64)

    ops = pl.DataFrame(trace.ops)
    exprs = [mapped("rank")]
    if "peer" in ops.columns:
        exprs.append(mapped("peer"))
    new_ops = fmt.conform(ops.with_columns(exprs).to_arrow(), fmt.OPS, "ops")
    groups = None
    if trace.groups is not None:
        g = pl.DataFrame(trace.groups).with_columns(
            pl.col("ranks").list.eval(pl.element().replace_strict(old, new, return_dtype=pl.Int64))
        )
        groups = fmt.conform(g.to_arrow(), fmt.GROUPS, "groups")
    tensors = None
    if trace.tensors is not None:
        t = pl.DataFrame(trace.tensors).with_columns(mapped("rank"))
        tensors = fmt.conform(t.to_arrow(), fmt.TENSORS, "tensors")
    meta = dict(trace.meta)
    meta["transforms"] = [*meta.get("transforms", []), {"remap": new}]
    return Trace(
        ops=new_ops,
        ranks=R,
        groups=groups,
        tensors=tensors,
        accesses=trace.accesses,
        meta=meta,
        path=None,
    )


# ---------------------------------------------------------------------------------------------
# Running one variant (in a worker process)


@functools.lru_cache(maxsize=4)
def _base_trace(trace_path: str | None, sample_json: str | None) -> Trace:
    if trace_path is not None:
        return read_trace(trace_path, validate=False)
    spec = json.loads(sample_json or "{}")
    return SAMPLES[spec.pop("name")](**spec)


@functools.lru_cache(maxsize=4)
def _trace_for(trace_path: str | None, sample_json: str | None, factor: int, dtype: str | None) -> Trace:
    trace = _base_trace(trace_path, sample_json)
    if factor != 1:
        trace = scale_dp(trace, factor)
    if dtype is not None:
        trace = set_dtype(trace, dtype)
    return trace


def _metrics(summary: dict[str, Any]) -> dict[str, Any]:
    ranks = summary.get("ranks", [])
    exposed = [r["exposed_comm_ns"] for r in ranks]
    peaks = [sum(r.get("peak_memory_bytes", {}).values()) for r in ranks]
    return {
        "makespan_ns": summary["makespan_ns"],
        "energy_j": summary.get("energy_j"),
        "mfu": summary.get("mfu"),
        "mean_exposed_comm_ns": sum(exposed) / len(exposed) if exposed else None,
        "peak_memory_bytes": max(peaks) if peaks else None,
        "system_name": summary.get("system", {}).get("name"),
        "ranks": len(ranks),
    }


def _write_json_atomic(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def run_variant(task: dict[str, Any]) -> dict[str, Any]:
    """Runs one variant and writes its directory; returns its record (variant.json's content).
    Never raises for a failing simulation: the error is recorded with status "failed"."""
    root = Path(task["dir"])
    values: dict[str, Any] = task["values"]
    started = time.perf_counter()
    record: dict[str, Any] = {"id": task["id"], "values": values}
    try:
        factor = int(values.get("scale_dp", task["scale_dp"]))
        dtype = values.get("dtype", task["dtype"])
        trace = _trace_for(task["trace_path"], task["sample_json"], factor, dtype)
        system = values.get("system", task["system"])
        if isinstance(system, str) and (Path(task["base"]) / system).is_file():
            system = str(Path(task["base"]) / system)
        overrides = list(task["set"]) + [
            f"{k}={json.dumps(v)}" for k, v in values.items() if k not in SPECIAL_KEYS
        ]
        remap = task.get("remap")
        if remap == "round_robin":
            per_node = load_system(system, overrides=overrides).devices_per_node
            trace = remap_ranks(trace, round_robin(trace.ranks, per_node))
        elif remap is not None:
            trace = remap_ranks(trace, list(remap))
        result = simulate(
            trace,
            system,
            compute_model=values.get("compute_model", task["compute_model"]),
            network=values.get("network", task["network"]),
            nodes=values.get("nodes", task["nodes"]),
            overrides=overrides,
            allow_oom=task["allow_oom"],
        )
        result.write(root)
        record.update(status="ok", error=None, **_metrics(result.summary))
    except Exception as e:
        record.update(status="failed", error=f"{type(e).__name__}: {e}")
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
    record["elapsed_s"] = time.perf_counter() - started
    _write_json_atomic(root / "variant.json", record)
    return record


def _ray_run(task: dict[str, Any]) -> dict[str, Any]:
    return run_variant(task)


# ---------------------------------------------------------------------------------------------
# The sweep


def _done(root: Path, retry_failed: bool) -> dict[str, Any] | None:
    """The record of a complete variant directory, or None to (re)run it."""
    try:
        record: dict[str, Any] = json.loads((root / "variant.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("status") == "ok" and not (root / "summary.json").is_file():
        return None
    if record.get("status") == "failed" and retry_failed:
        return None
    return record


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".sweep.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ScenarioError(f"{out}: another sweep is writing to this directory") from None
        yield


def _progress(enabled: bool, total: int, done: int) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
    return progress


def _results_frame(rows: list[dict[str, Any]], keys: list[str]) -> pl.DataFrame:
    data: dict[str, list[Any]] = {"id": [r["id"] for r in rows]}
    for key in keys:
        data[key] = [r["values"].get(key) for r in rows]
    for col in RESULT_COLUMNS:
        data[col] = [r.get(col) for r in rows]
    columns = []
    for name, values in data.items():
        dtype = RESULT_COLUMNS.get(name, pl.String if name == "id" else None)
        try:
            columns.append(pl.Series(name, values, dtype=dtype, strict=False))
        except (TypeError, pl.exceptions.PolarsError):  # mixed types in one variant key
            columns.append(pl.Series(name, [None if v is None else str(v) for v in values], pl.String))
    return pl.DataFrame(columns)


def sweep(
    scenario_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    executor: Executor = "local",
    workers: int | None = None,
    progress: bool = True,
    *,
    address: str | None = None,
    retry_failed: bool = False,
) -> pl.DataFrame:
    """Runs every variant of a scenario not already done under `out_dir` and writes
    `out_dir/results.parquet` (one row per variant: id, the variant's values, status, error,
    makespan_ns, energy_j, mfu, mean_exposed_comm_ns, peak_memory_bytes (largest over ranks,
    all tiers), system_name, ranks, elapsed_s); returns that table.

    `executor="local"` runs `workers` processes (default: all cores; 1 runs in this process);
    `executor="ray"` runs the variants as Ray tasks on the cluster at `address` (default: a
    cluster already connected to, else a local one); the workers write the result directories,
    so on a multi-machine cluster `out_dir` and the trace must be on a shared filesystem."""
    path = Path(scenario_path)
    where = str(path)
    sc, raw = load_scenario(path)
    base = path.resolve().parent
    variants = expand(sc, where)
    keys: list[str] = []
    for v in variants:
        keys.extend(k for k in v if k not in keys)
    if executor not in ("local", "ray"):
        raise ScenarioError(f"executor {executor!r}: expected local or ray")
    if workers is not None and workers < 1:
        raise ScenarioError(f"workers: expected a positive number, got {workers}")
    _check_override_paths(sc, variants, base, where)
    _check_remap(sc, variants, base, where)
    if executor == "ray":
        _import_ray()  # fail before anything runs

    out = Path(out_dir)
    with _lock(out):
        vdir = out / "variants"
        vdir.mkdir(parents=True, exist_ok=True)
        for stale in [*vdir.glob(".*"), *out.glob(".results.*")]:  # temporaries of an interrupted run
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        common = {
            "base": str(base),
            "trace_path": None if sc.trace is None else str(base / sc.trace),
            "sample_json": None if sc.sample is None else _canonical(sc.sample.model_dump()),
            "system": sc.system,
            "compute_model": sc.compute_model,
            "network": sc.network,
            "nodes": sc.nodes,
            "allow_oom": sc.allow_oom,
            "set": list(sc.transforms.set),
            "scale_dp": sc.transforms.scale_dp,
            "dtype": sc.transforms.dtype,
            "remap": sc.transforms.remap,
        }
        records: dict[str, dict[str, Any]] = {}
        ids: list[str] = []
        unique: set[str] = set()
        tasks: list[dict[str, Any]] = []
        for v in variants:
            vid = variant_id(sc, raw, base, v)
            seen = vid in unique  # the same values twice: run once
            unique.add(vid)
            ids.append(vid)
            if seen:
                continue
            record = _done(vdir / vid, retry_failed)
            if record is not None:
                records[vid] = record
            else:
                tasks.append({**common, "id": vid, "values": v, "dir": str(vdir / vid)})
        (out / "scenario.toml").write_text(path.read_text())
        failed = sum(1 for r in records.values() if r.get("status") != "ok")
        with _progress(progress, len(unique), len(records)) as bar:
            task_id = bar.add_task("sweep", total=len(unique), completed=len(records), failed=failed)

            def finished(record: dict[str, Any]) -> None:
                nonlocal failed
                records[record["id"]] = record
                failed += record.get("status") != "ok"
                bar.update(task_id, advance=1, failed=failed)

            if executor == "ray":
                _run_ray(tasks, address, finished)
            else:
                _run_local(tasks, workers, finished)
        rows = [records[i] for i in dict.fromkeys(ids)]
        df = _results_frame(rows, keys)
        fd, tmp = tempfile.mkstemp(prefix=".results.", suffix=".parquet", dir=out)
        os.close(fd)
        try:
            df.write_parquet(tmp)
            os.replace(tmp, out / "results.parquet")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return df


def _run_local(
    tasks: list[dict[str, Any]], workers: int | None, finished: Callable[[dict[str, Any]], None]
) -> None:
    n = workers or os.cpu_count() or 1
    if n == 1 or len(tasks) <= 1:
        for t in tasks:
            finished(run_variant(t))
        return
    ctx = multiprocessing.get_context("spawn")  # polars' thread pool and fork do not mix
    with cf.ProcessPoolExecutor(max_workers=min(n, len(tasks)), mp_context=ctx) as pool:
        futures = {pool.submit(run_variant, t): t for t in tasks}
        for fut in cf.as_completed(futures):
            t = futures[fut]
            try:
                finished(fut.result())
            except cf.process.BrokenProcessPool as e:
                # The worker died (killed, out of memory): recorded in this run's table but not
                # in the variant's directory, so the next run tries it again.
                finished(
                    {"id": t["id"], "values": t["values"], "status": "failed", "error": f"worker died: {e}"}
                )


def _import_ray() -> Any:
    try:
        import ray  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise ScenarioError(
            "executor 'ray' needs Ray, which is not installed: pip install 'tracesim[ray]'"
        ) from None
    return ray


def _run_ray(
    tasks: list[dict[str, Any]], address: str | None, finished: Callable[[dict[str, Any]], None]
) -> None:
    ray = _import_ray()
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(_ray_run)
    pending = {remote.remote(t): t for t in tasks}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            t = pending.pop(ref)
            try:
                finished(ray.get(ref))
            except Exception as e:  # the task itself died
                finished(
                    {"id": t["id"], "values": t["values"], "status": "failed", "error": f"ray task: {e}"}
                )


def _check_override_paths(sc: Scenario, variants: list[dict[str, Any]], base: Path, where: str) -> None:
    """Each override path is tried once, on the system of the first variant that uses it: a path
    that names no field of the system is an error of the scenario; a value the system refuses is
    left to the variants (recorded in their rows)."""
    tried: set[str] = set()
    candidates: list[tuple[str, str, dict[str, Any]]] = [
        (a.partition("=")[0].strip(), a, {}) for a in sc.transforms.set
    ]
    candidates += [
        (k, f"{k}={json.dumps(val)}", v) for v in variants for k, val in v.items() if k not in SPECIAL_KEYS
    ]
    for key, assignment, v in candidates:
        if key in tried:
            continue
        tried.add(key)
        name = v.get("system", sc.system)
        spec = str(base / name) if (base / name).is_file() else name
        try:
            load_system(spec, overrides=[assignment])
        except TracesimError as e:
            if "unknown key" in str(e):
                raise ScenarioError(
                    f"{where}: override '{key}' names no field of system {name}: {e}"
                ) from None


def _check_remap(sc: Scenario, variants: list[dict[str, Any]], base: Path, where: str) -> None:
    """An explicit remap list must have one entry per rank of every variant's trace."""
    remap = sc.transforms.remap
    if not isinstance(remap, list):
        return
    sample_json = None if sc.sample is None else _canonical(sc.sample.model_dump())
    trace_path = None if sc.trace is None else str(base / sc.trace)
    ranks = _base_trace(trace_path, sample_json).ranks
    for factor in sorted({int(v.get("scale_dp", sc.transforms.scale_dp)) for v in variants}):
        if len(remap) != ranks * factor:
            raise ScenarioError(
                f"{where}: key 'transforms.remap': has {len(remap)} entries but the trace has "
                f"{ranks * factor} ranks (scale_dp = {factor}); "
                f"expected a permutation of 0..{ranks * factor - 1}"
            )
