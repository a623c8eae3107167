"""Identity replay of real Kineto traces (docs/ingest.md): ingest, replay in measured mode, and
compare each ProfilerStep's simulated GPU step time with the measured one.

Measured step time: first GPU op start to last GPU op end among the GPU ops (kernels, copies,
NCCL kernels) launched inside that ProfilerStep. Simulated: the same ops in the replay's
timeline (equal to `summary["iterations"][].step_ns` for a one-rank trace, since host ops carry
no iteration). A trace without ProfilerStep annotations counts as one step: its whole GPU span.

    python benches/identity_kineto.py                  # every multi-kernel single-file trace
    python benches/identity_kineto.py FILE.json.gz ...
    python benches/identity_kineto.py --roofline [FILE.json.gz ...]

`--roofline`: roofline vs measured on the ops that got FLOPs/bytes from recorded shapes (see
`roofline()`); the traces are those of TRACES plus the second trace_filter rank.
"""

from __future__ import annotations

import gzip
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

import tracesim
from tracesim.ingest import ingest_kineto

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Multi-kernel single-file Kineto traces under ../shared/data (SOURCES.md). The tiny HTA
# critical-path / triton / cpu-only / simple-add traces have < 10 kernels and are left out.
TRACES = [
    "hta/tests/data/negative_queue_length_values_check/rank0.json.gz",
    "hta/tests/data/critical_path/alexnet/benchmark_result_2869224_1695835535_trace.json.gz",
    "hta/tests/data/critical_path/simple_add/benchmark_result_493459_1694039959_trace.json.gz",
    "hta/tests/data/trace_filter/sampled_rank-0.json.gz",
    "hta/tests/data/nccl_parser_config/nccl_data.json.gz",
    "hta/tests/data/trace_diff/test/test.json.gz",
    "hta/tests/data/trace_diff/control/control.json.gz",
    "hta/tests/data/ns_resolution_trace/rank-0.Apr_03_18_51_38.1102.pt.trace.json.gz",
    "hta/tests/data/df_index_resolver/df_index_resolver.json.gz",
    "hta/tests/data/amd_trace/mi250_minitoy_train_ROCm6_2_kineto.json.gz",
    "param/et_replay/tests/inputs/linear_kineto.json.gz",
    "param/et_replay/tests/inputs/resnet_kineto.json.gz",
    "kineto/tb_plugin/samples/resnet50_num_workers_0/worker0.1623143089861.pt.trace.json.gz",
    "kineto/tb_plugin/samples/resnet50_num_workers_4/worker0.1623212756351.pt.trace.json.gz",
    "tracelens/tests/traces/b200/eager_trace.json.gz",
    "tracelens/tests/traces/inference/sglang_decode/sglang_Qwen3-8B_decode.json.gz",
    "tracelens/tests/traces/mi300/resnet_act_checkpoint.json.gz",
]


@dataclass
class Row:
    trace: str
    rank: int
    steps: int  # 0: no ProfilerStep, the whole GPU span is compared
    median_err: float  # relative, e.g. 0.012 = 1.2 %
    worst_err: float
    measured_ms: float  # median measured step
    ingest_s: float
    replay_s: float


def step_errors(
    trace: tracesim.Trace, system: str = "dgx-h100", compute_model: str = "measured"
) -> dict[tuple[int, int | None], tuple[int, int]]:
    """(rank, iteration) → (measured ns, simulated ns) of the GPU span of each step.

    `compute_model="retime"` replays with `source_system=system`."""
    ops = pl.from_arrow(trace.ops)
    assert isinstance(ops, pl.DataFrame)
    if compute_model == "retime":
        result = tracesim.simulate(trace, system, compute_model="retime", source_system=system)
    else:
        assert compute_model == "measured"
        result = tracesim.simulate(trace, system, compute_model="measured")
    tl = result.timeline.select("op_id", "start_ns", "end_ns").rename(
        {"start_ns": "sim_start", "end_ns": "sim_end"}
    )
    gpu = (
        ops.filter(pl.col("kind") != "host")
        .select("op_id", "rank", "iteration", "start_ns", "duration_ns")
        .join(tl, on="op_id")
    )
    if gpu.get_column("iteration").null_count() == gpu.height:
        gpu = gpu.with_columns(pl.lit(None, pl.UInt32).alias("iteration"))
    else:
        gpu = gpu.filter(pl.col("iteration").is_not_null())
    spans = gpu.group_by("rank", "iteration").agg(
        (
            pl.max_horizontal(pl.col("start_ns") + pl.col("duration_ns")).max() - pl.col("start_ns").min()
        ).alias("measured"),
        (pl.col("sim_end").max() - pl.col("sim_start").min()).alias("simulated"),
    )
    return {
        (int(r["rank"]), r["iteration"]): (int(r["measured"]), int(r["simulated"]))
        for r in spans.iter_rows(named=True)
    }


def identity(path: Path, label: str | None = None) -> list[Row]:
    t0 = time.perf_counter()
    trace, _ = ingest_kineto([path])
    t1 = time.perf_counter()
    spans = step_errors(trace)
    t2 = time.perf_counter()
    rows = []
    for rank in sorted({r for r, _ in spans}):
        pairs = [v for (r, _), v in spans.items() if r == rank]
        errs = [abs(s - m) / m for m, s in pairs if m > 0]
        has_steps = any(it is not None for (r, it) in spans if r == rank)
        rows.append(
            Row(
                label or path.name,
                rank,
                len(pairs) if has_steps else 0,
                statistics.median(errs),
                max(errs),
                statistics.median(m for m, _ in pairs) / 1e6,
                t1 - t0,
                t2 - t1,
            )
        )
    return rows


# GPU (deviceProperties name) → the preset of the system it was measured on. V100, RTX 2080 Ti,
# MI250/MI300X and traces without deviceProperties have no preset: coverage only.
PRESET_OF_GPU = {"A100": "dgx-a100", "H100": "dgx-h100", "H200": "dgx-h200", "B200": "dgx-b200"}
ROOFLINE_EXTRA = ["hta/tests/data/trace_filter/sampled_rank-1.json.gz"]
MEMORY_BOUND = ("elementwise", "norm", "reduction", "copy")


def gpu_name(path: Path) -> str | None:
    raw = path.read_bytes()
    data = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    props = data.get("deviceProperties") if isinstance(data, dict) else None
    if isinstance(props, list) and props and isinstance(props[0], dict):
        return str(props[0].get("name", "")) or None
    return None


def preset_for(gpu: str | None) -> str | None:
    for key, preset in PRESET_OF_GPU.items():
        if gpu is not None and key in gpu:
            return preset
    return None


@dataclass
class RooflineRow:
    trace: str
    gpu: str | None
    system: str | None  # None: no matching preset, coverage only
    kernels: int  # GPU ops (kernels, copies, NCCL kernels)
    costed: int  # of which got FLOPs and/or bytes
    costed_time_share: float  # share of the GPU time (sum of durations) in costed ops
    costed_compute_share: float  # the same without NCCL kernels (not costed: the network times them)
    gemm: tuple[int, float, float] | None  # (n, median, p90) of measured / roofline, GEMM + conv + attention
    memory: tuple[int, float, float] | None  # same for elementwise, norm, reduction, copy
    retime_exact: tuple[int, int] | None  # (costed ops where op_times(retime) == measured, costed ops)
    retime_step_err: tuple[float, float] | None  # (median, worst) step error, retime on the source system


def _ratio_stats(df: pl.DataFrame) -> tuple[int, float, float] | None:
    r = (df.get_column("duration_ns") / df.get_column("predicted")).drop_nulls().drop_nans().to_list()
    if not r:
        return None
    return (
        len(r),
        statistics.median(r),
        statistics.quantiles(r, n=10, method="inclusive")[-1] if len(r) > 1 else r[0],
    )


def roofline(path: Path, label: str | None = None) -> RooflineRow:
    """Coverage of the recorded-shape costs and roofline / retime against the measured durations.

    For each GPU op with costs: ratio = measured duration / `tracesim.op_times(trace, system,
    compute_model="roofline")` on the preset of the GPU the trace was taken on; reported as the
    median and p90 for GEMM-like ops (category gemm or attention with FLOPs) and for memory-bound
    ones (elementwise, norm, reduction, copy). Then `retime` on its own system
    (`source_system = system`) should give back the measured duration of every costed op
    (`retime_exact`) and the measured step times (`retime_step_err`)."""
    trace, _ = ingest_kineto([path])
    ops = pl.from_arrow(trace.ops)
    assert isinstance(ops, pl.DataFrame)
    gpu_name_ = gpu_name(path)
    system = preset_for(gpu_name_)
    has_cost = (
        pl.col("flops").is_not_null()
        | pl.col("bytes_read").is_not_null()
        | pl.col("bytes_written").is_not_null()
    )
    gpu = ops.with_row_index("row").filter(pl.col("kind") != "host")
    costed = gpu.filter(has_cost)
    total = int(gpu.get_column("duration_ns").sum())
    share = int(costed.get_column("duration_ns").sum()) / total if total else 0.0
    comp = int(gpu.filter(pl.col("category") != "communication").get_column("duration_ns").sum())
    comp_share = int(costed.get_column("duration_ns").sum()) / comp if comp else 0.0
    gemm = memory = None
    exact = None
    step = None
    if system is not None:
        pred = tracesim.op_times(trace, system, compute_model="roofline").to_pylist()
        ret = tracesim.op_times(trace, system, compute_model="retime", source_system=system).to_pylist()
        rows = costed.get_column("row").to_list()
        c = costed.with_columns(
            pl.Series("predicted", [pred[i] for i in rows], pl.Float64),
            pl.Series("retimed", [ret[i] for i in rows], pl.Int64),
        ).filter(pl.col("predicted") > 0)
        gemm = _ratio_stats(
            c.filter(pl.col("category").is_in(["gemm", "attention"]) & pl.col("flops").is_not_null())
        )
        memory = _ratio_stats(c.filter(pl.col("category").is_in(MEMORY_BOUND) | (pl.col("kind") == "memory")))
        exact = (c.filter(pl.col("retimed") == pl.col("duration_ns")).height, c.height)
        spans = step_errors(trace, system, "retime")
        errs = [abs(s - m) / m for m, s in spans.values() if m > 0]
        step = (statistics.median(errs), max(errs)) if errs else None
    return RooflineRow(
        label or path.name,
        gpu_name_,
        system,
        gpu.height,
        costed.height,
        share,
        comp_share,
        gemm,
        memory,
        exact,
        step,
    )


def _fmt(x: tuple[int, float, float] | None) -> str:
    return "-" if x is None else f"{x[1]:.2f} / {x[2]:.2f} (n={x[0]})"


def main_roofline(argv: list[str]) -> None:
    paths = [Path(a) for a in argv] or [DATA / t for t in [*TRACES, *ROOFLINE_EXTRA]]
    for p in paths:
        label = str(p.relative_to(DATA)) if p.is_relative_to(DATA) else p.name
        r = roofline(p, label)
        retime = (
            "-"
            if r.retime_exact is None
            else f"{r.retime_exact[0]}/{r.retime_exact[1]} ops exact"
            + (
                ""
                if r.retime_step_err is None
                else f", step err {r.retime_step_err[0] * 100:.2f}% / {r.retime_step_err[1] * 100:.2f}%"
            )
        )
        print(
            f"{label}\n    {r.gpu or 'GPU not recorded'} → {r.system or 'no preset'}; "
            f"costed {r.costed}/{r.kernels} GPU ops, {r.costed_time_share * 100:.1f}% of GPU time "
            f"({r.costed_compute_share * 100:.1f}% without NCCL); "
            f"measured/roofline median/p90: GEMM {_fmt(r.gemm)}, memory-bound {_fmt(r.memory)}; "
            f"retime: {retime}",
            flush=True,
        )


def main(argv: list[str]) -> None:
    if argv[:1] == ["--roofline"]:
        main_roofline(argv[1:])
        return
    paths = [Path(a) for a in argv] or [DATA / t for t in TRACES]
    print(f"{'trace':<58} {'rank':>4} {'steps':>5} {'step ms':>9} {'median err':>10} {'worst err':>9}")
    all_rows: list[Row] = []
    for p in paths:
        label = str(p.relative_to(DATA)) if p.is_relative_to(DATA) else p.name
        for row in identity(p, label):
            all_rows.append(row)
            print(
                f"{row.trace[-58:]:<58} {row.rank:>4} {row.steps or 'all':>5} {row.measured_ms:>9.3f} "
                f"{row.median_err * 100:>9.2f}% {row.worst_err * 100:>8.2f}%",
                flush=True,
            )
    if all_rows:
        print(
            f"over {len(all_rows)} traces: median of medians "
            f"{statistics.median(r.median_err for r in all_rows) * 100:.2f}%, "
            f"worst {max(r.worst_err for r in all_rows) * 100:.2f}%"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
