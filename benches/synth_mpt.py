"""Replays llm-foundry's published MPT training throughput (PyTorch FSDP, MosaicML platform) with
`tracesim synth train` and compares predicted tokens/s per GPU and MFU with the table
(docs/synth.md, "Validation against llm-foundry MPT").

    python benches/synth_mpt.py [--section a100-80gb ...] [--model 7b ...] [--max-ops 5000000]

Every row uses the same settings, no per-row tuning: zoo model mpt-<size> with seq = SeqLen, tp 1,
pp 1, dp = # GPUs, ZeRO 3 for FULL_SHARD and 2 for SHARD_GRAD_OP, recompute full when Activation
Checkpointing is True (none otherwise), flash attention, micro-batch = MicroBatchSize, global batch
= GlobalBatchSize (so micro-batches per step = GradAccum), bf16 (fp8 GEMMs for amp_fp8), replayed on
dgx-h100 or dgx-a100 (both A100 sections; the preset is the 80 GB part, and its 8 × 200 Gb/s
scale-out is the table's 1600 Gbps) with nodes = GPUs / 8 and compute_model="roofline".

MFU is llm-foundry's: (6·NumParams·s + 12·layers·d_model·s²) FLOPs per sequence × sequences/s /
(GPUs · peak), peak 312 TFLOP/s (A100 bf16), 989 (H100 bf16), 1979 (H100 fp8) — the peaks the
table's own Model TFLOP / MFU ratios imply. "exposed comm" is the mean over ranks of the
communication time not hidden behind compute, as a share of the step. Rows whose trace would exceed
--max-ops are synthesised with --granularity block ("blk"), and skipped when still too large (at the
default 5 M ops every row fits at op granularity; the whole table takes about 15 s).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import tracesim
from tracesim.synth import synth_train
from tracesim.synth.models import load_model

CSV = Path(__file__).resolve().parents[2] / "shared/data/published/llm_foundry_mpt_throughput.csv"

# Short names for the table's sections (the `section` column), in the table's order.
SECTIONS = {
    "H100 80GB BF16 (Large Scale, >= 128 GPUs)": "h100-large",
    "H100 80GB BF16": "h100-bf16",
    "H100 80GB FP8": "h100-fp8",
    "A100 80GB with 1600 Gbps node-node interconnect (RoCE)": "a100-80gb",
    "A100 40GB with 1600 Gbps node-node interconnect (RoCE)": "a100-40gb",
}
PEAK_TFLOPS = {("a100", "bf16"): 312.0, ("h100", "bf16"): 989.0, ("h100", "fp8"): 1979.0}
PRESET = {"a100": "dgx-a100", "h100": "dgx-h100"}
ZERO = {"FULL_SHARD": 3, "SHARD_GRAD_OP": 2}
# Ops per rank per layer and micro-batch at tp 1 under ZeRO 2/3 (forward, backward, the parameter
# gathers and gradient reduce-scatters); a full recompute re-runs the forward. Measured on mpt-7b;
# used only to decide what fits under --max-ops. Block granularity keeps about a seventh at tp 1
# (mpt-70b on 512 GPUs: 210,432 of 1,523,712 ops; mpt-1b without recompute: 840 of 5,104); 0.2 errs
# on the large side.
OPS_PER_LAYER_MB = 28
OPS_PER_LAYER_MB_RECOMPUTE = 40
BLOCK_FRACTION = 0.2


@dataclass(frozen=True)
class Row:
    """One row of the published table, with the units normalised."""

    section: str  # short name, see SECTIONS
    model: str  # size as printed: "7b", "760m"
    seq: int
    gpus: int
    gpu: str  # "a100" | "h100"
    mfu: float  # percent
    hfu: float  # percent
    model_tflops: float  # achieved model TFLOP/s per GPU (the table prints FLOP/s on H100, TFLOP/s on A100)
    micro_batch: int
    grad_accum: int
    global_batch: int
    tokens_per_s_per_gpu: float
    dtype: str  # "bf16" | "fp8"
    zero: int
    recompute: str  # "full" | "none"
    num_params: int

    @property
    def zoo_name(self) -> str:
        return f"mpt-{self.model}"

    @property
    def peak_tflops(self) -> float:
        return PEAK_TFLOPS[(self.gpu, self.dtype)]


def _tflops(text: str) -> float:
    """The "Model TFLOP" column: FLOP/s (e.g. 4.212583E+14, H100 sections of the README) or TFLOP/s
    (e.g. 166, A100 sections). No GPU reaches 10⁶ TFLOP/s, so a value above that is FLOP/s."""
    value = float(text)
    return value / 1e12 if value >= 1e6 else value


def parse_rows(lines: Iterable[str]) -> list[Row]:
    """Rows of llm_foundry_mpt_throughput.csv (comment lines starting with # are skipped)."""
    rows = []
    for r in csv.DictReader(line for line in lines if not line.startswith("#")):
        section = r["section"].strip()
        if section not in SECTIONS:
            raise ValueError(f"unknown section {section!r}; known: {', '.join(SECTIONS)}")
        precision = r["Precision"].strip()
        if precision not in ("bf16", "amp_bf16", "amp_fp8"):
            raise ValueError(f"unknown Precision {precision!r}")
        ckpt = r["Activation Checkpointing"].strip()
        if ckpt not in ("True", "False"):
            raise ValueError(f"Activation Checkpointing: expected True or False, got {ckpt!r}")
        rows.append(
            Row(
                section=SECTIONS[section],
                model=r["Model"].strip(),
                seq=int(r["SeqLen (T)"]),
                gpus=int(r["# GPUs"]),
                gpu=r["GPU"].strip().split("_")[0],
                mfu=float(r["MFU"]),
                hfu=float(r["HFU"]),
                model_tflops=_tflops(r["Model TFLOP"]),
                micro_batch=int(r["MicroBatchSize"]),
                grad_accum=int(r["GradAccum"]),
                global_batch=int(r["GlobalBatchSize"]),
                tokens_per_s_per_gpu=float(r["Throughput (T/s/GPU)"]),
                dtype="fp8" if precision == "amp_fp8" else "bf16",
                zero=ZERO[r["Sharding Strategy"].strip()],
                recompute="full" if ckpt == "True" else "none",
                num_params=int(r["NumParams"]),
            )
        )
    return rows


def mfu(row: Row, layers: int, hidden: int, tokens_per_s_per_gpu: float) -> float:
    """llm-foundry's MFU in percent (scripts/train/benchmarking/README.md, "MFU"):
    (3·2·N·s + 3·4·layers·d_model·s²) FLOPs per sequence, with N the table's NumParams."""
    flops_per_seq = 6.0 * row.num_params * row.seq + 12.0 * layers * hidden * row.seq**2
    return 100.0 * flops_per_seq * tokens_per_s_per_gpu / row.seq / (row.peak_tflops * 1e12)


def estimated_ops(row: Row, layers: int) -> int:
    per = OPS_PER_LAYER_MB_RECOMPUTE if row.recompute == "full" else OPS_PER_LAYER_MB
    return row.gpus * (row.grad_accum * layers * per + 100)


def p90(values: list[float]) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


@dataclass(frozen=True)
class Prediction:
    ops: int
    granularity: str  # "op" | "block"
    step_s: float
    exposed_comm: float  # mean over ranks of exposed communication time, as a share of the step
    tokens_per_s_per_gpu: float
    mfu: float  # percent, llm-foundry's definition

    def error(self, row: Row) -> float:
        """Relative throughput error against the published row (positive: predicted too fast)."""
        return (self.tokens_per_s_per_gpu - row.tokens_per_s_per_gpu) / row.tokens_per_s_per_gpu


def predict(row: Row, *, max_ops: int = 5_000_000, block: bool = True) -> Prediction | str:
    """Synthesise and replay one step of `row`; a string says why the row was skipped."""
    spec = load_model(row.zoo_name, seq=row.seq)
    est = estimated_ops(row, spec.layers)
    granularity = "op"
    if est > max_ops and block:
        granularity, est = "block", int(est * BLOCK_FRACTION)
    if est > max_ops:
        return f"~{est / 1e6:.0f}M ops over --max-ops {max_ops:,}"
    trace = synth_train(
        spec,
        gpus=row.gpus,
        tp=1,
        pp=1,
        micro_batch=row.micro_batch,
        global_batch=row.global_batch,
        seq=row.seq,
        dtype=row.dtype,
        recompute=row.recompute,
        attention="flash",
        zero=row.zero,
        granularity=granularity,
        validate=False,
    )
    result = tracesim.simulate(trace, PRESET[row.gpu], compute_model="roofline", nodes=-(-row.gpus // 8))
    step_s = result.summary["makespan_ns"] / 1e9
    exposed = statistics.fmean(tracesim.breakdown(result)["exposed_comm_ns"].to_list()) / 1e9 / step_s
    tps = row.global_batch * row.seq / step_s / row.gpus
    return Prediction(
        ops=trace.num_ops,
        granularity=granularity,
        step_s=step_s,
        exposed_comm=exposed,
        tokens_per_s_per_gpu=tps,
        mfu=mfu(row, spec.layers, spec.hidden, tps),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", type=Path, default=CSV)
    ap.add_argument("--max-ops", type=int, default=5_000_000)
    ap.add_argument(
        "--section",
        action="append",
        choices=list(SECTIONS.values()),
        help="only these sections (repeatable; default all)",
    )
    ap.add_argument("--model", action="append", help="only these sizes, e.g. 7b (repeatable; default all)")
    ap.add_argument("--no-block", action="store_true", help="skip rows that need --granularity block")
    args = ap.parse_args()
    with args.csv.open() as f:
        rows = parse_rows(f)
    if args.section:
        rows = [r for r in rows if r.section in args.section]
    if args.model:
        rows = [r for r in rows if r.model in args.model]

    print(
        "| section | model | seq | GPUs | mb | accum | ZeRO | recompute | ops | exposed comm | "
        "predicted tok/s/GPU | published | error | predicted MFU | published MFU | Δ MFU (points) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    errors: dict[str, list[tuple[float, float]]] = {}
    skipped = []
    t_start = time.perf_counter()
    for r in rows:
        p = predict(r, max_ops=args.max_ops, block=not args.no_block)
        if isinstance(p, str):
            skipped.append(f"{r.section} {r.model} s{r.seq} ×{r.gpus} ({p})")
            continue
        err, d_mfu = p.error(r), p.mfu - r.mfu
        errors.setdefault(r.section, []).append((err, d_mfu))
        ops = f"{p.ops:,}" + (" blk" if p.granularity == "block" else "")
        print(
            f"| {r.section} | {r.model} | {r.seq} | {r.gpus} | {r.micro_batch} | {r.grad_accum} | {r.zero} | "
            f"{r.recompute} | {ops} | {p.exposed_comm:.1%} | {p.tokens_per_s_per_gpu:,.0f} | "
            f"{r.tokens_per_s_per_gpu:,.0f} | {err:+.1%} | {p.mfu:.1f} | {r.mfu:.1f} | {d_mfu:+.1f} |",
            flush=True,
        )
    print()
    print(
        "| section | rows | median error | median abs. error | p90 abs. error | "
        "median abs. Δ MFU (points) | p90 abs. Δ MFU |"
    )
    print("|---|---|---|---|---|---|---|")
    for section in SECTIONS.values():
        if section not in errors:
            continue
        errs = [e for e, _ in errors[section]]
        abs_errs = [abs(e) for e in errs]
        abs_mfu = [abs(d) for _, d in errors[section]]
        med = statistics.median
        print(
            f"| {section} | {len(errs)} | {med(errs):+.1%} | {med(abs_errs):.1%} | {p90(abs_errs):.1%} | "
            f"{med(abs_mfu):.1f} | {p90(abs_mfu):.1f} |"
        )
    print(f"\n{sum(len(v) for v in errors.values())} rows in {time.perf_counter() - t_start:.0f} s")
    if skipped:
        print("skipped: " + "; ".join(skipped))


if __name__ == "__main__":
    main()
