"""Identity replay of real Kineto traces (docs/ingest.md): ingest, replay in measured mode, and
compare each ProfilerStep's simulated GPU step time with the measured one.

Measured step time: first GPU op start to last GPU op end among the GPU ops (kernels, copies,
NCCL kernels) launched inside that ProfilerStep. Simulated: the same ops in the replay's
timeline (equal to `summary["iterations"][].step_ns` for a one-rank trace, since host ops carry
no iteration). A trace without ProfilerStep annotations counts as one step: its whole GPU span.

    python benches/identity_kineto.py                  # every multi-kernel single-file trace
    python benches/identity_kineto.py FILE.json.gz ...
"""

from __future__ import annotations

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


def step_errors(trace: tracesim.Trace) -> dict[tuple[int, int | None], tuple[int, int]]:
    """(rank, iteration) → (measured ns, simulated ns) of the GPU span of each step."""
    ops = pl.from_arrow(trace.ops)
    assert isinstance(ops, pl.DataFrame)
    result = tracesim.simulate(trace, "dgx-h100", compute_model="measured")
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


def main(argv: list[str]) -> None:
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
