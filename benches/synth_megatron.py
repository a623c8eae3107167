"""Replays the Megatron-LM SC21 Table 1 configurations with `tracesim synth train` and compares
predicted per-GPU throughput with the published one (docs/synth.md).

    python benches/synth_megatron.py [--max-ops 5000000] [--no-fold] [--no-interleave]

Every row uses the same settings: dgx-a100 preset (nodes to fit), compute_model="roofline",
fp16, full recompute, unfused attention (Megatron-LM 2021 materialised the attention scores;
--attention flash to compare), the row's tp/pp/micro-batch/global batch, and the row's
interleaved schedule where the table used one (layers per virtual stage → --vp; --no-interleave
for plain 1F1B everywhere). Rows whose full trace would exceed --max-ops are replayed with data
parallelism folded to 2 replicas (same micro-batches per replica; only the DP all-reduce group
shrinks), marked "dp→2"; rows still too large are synthesised with --granularity block (compute
ops between two communication ops merged), marked "+blk"; rows still too large are skipped.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import tracesim
from tracesim.synth import synth_train

CSV = Path(__file__).resolve().parents[2] / "shared/data/published/megatron_sc21_table1_a100.csv"
OPS_PER_LAYER_MB = 50  # forward + recompute + backward ops of one layer and micro-batch (tp > 1)
OPS_PER_LAYER_MB_BLOCK = 16  # the same with --granularity block


def paper_flops(batch: int, seq: int, layers: int, hidden: int, vocab: int) -> float:
    """SC21 paper FLOP count per iteration (with recompute): 96·B·s·l·h²·(1 + s/6h + V/16lh)."""
    return 96.0 * batch * seq * layers * hidden**2 * (1 + seq / (6 * hidden) + vocab / (16 * layers * hidden))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-ops", type=int, default=5_000_000)
    ap.add_argument("--no-fold", action="store_true", help="skip rows that do not fit instead of folding dp")
    ap.add_argument(
        "--no-interleave", action="store_true", help="plain 1F1B even where the table interleaved"
    )
    ap.add_argument("--no-block", action="store_true", help="skip rows that need --granularity block")
    ap.add_argument("--csv", type=Path, default=CSV)
    ap.add_argument(
        "--attention",
        default="unfused",
        choices=["unfused", "flash"],
        help="attention kernels: unfused (materialised scores, as Megatron-LM in 2021) or flash",
    )
    args = ap.parse_args()
    rows = [r for r in csv.DictReader(line for line in args.csv.open() if not line.startswith("#"))]
    seq, vocab = 2048, 51200
    print(
        f"{'model':>6} {'gpus':>5} {'tp':>2} {'pp':>2} {'vp':>2} {'dp':>3} {'m':>4} {'mode':>9} {'ops':>10} "
        f"{'synth s':>7} {'ops/s':>9} {'replay s':>8} {'iter s':>7} {'pub s':>6} "
        f"{'TFLOP/s':>7} {'pub':>4} {'error':>7}"
    )
    skipped = []
    for r in rows:
        name = "gpt3-" + r["model"].lower()
        gpus, tp, pp = int(r["num_gpus"]), int(r["tp"]), int(r["pp"])
        mb, gb, layers, hidden = (
            int(r["micro_batch"]),
            int(r["global_batch"]),
            int(r["layers"]),
            int(r["hidden"]),
        )
        dp = gpus // (tp * pp)
        m = gb // (dp * mb)
        lvs = r["layers_per_virtual_stage"]
        vp = 1 if args.no_interleave or not lvs else layers // (pp * int(lvs))
        per_rank = m * (layers // pp) * OPS_PER_LAYER_MB
        mode, run_gpus, run_gb, granularity = "full", gpus, gb, "op"
        if gpus * per_rank > args.max_ops and not args.no_fold and dp > 2:
            mode, run_gpus, run_gb = "dp→2", 2 * tp * pp, 2 * m * mb
        if run_gpus * per_rank > args.max_ops and not args.no_block:
            granularity = "block"
            mode += "+blk"
            per_rank = m * (layers // pp) * OPS_PER_LAYER_MB_BLOCK
        if run_gpus * per_rank > args.max_ops:
            skipped.append(f"{name} (~{gpus * per_rank / 1e6:.0f}M ops)")
            continue
        t0 = time.perf_counter()
        trace = synth_train(
            name,
            gpus=run_gpus,
            tp=tp,
            pp=pp,
            micro_batch=mb,
            global_batch=run_gb,
            seq=seq,
            dtype="fp16",
            recompute="full",
            schedule="1f1b",
            attention=args.attention,
            vp=vp,
            granularity=granularity,
            validate=False,
        )
        synth_s = time.perf_counter() - t0
        trace.validate()
        t1 = time.perf_counter()
        result = tracesim.simulate(trace, "dgx-a100", compute_model="roofline", nodes=-(-run_gpus // 8))
        replay_s = time.perf_counter() - t1
        iter_s = result.summary["makespan_ns"] / 1e9
        flops = paper_flops(gb, seq, layers, hidden, vocab)
        tflops = flops / (iter_s * gpus) / 1e12
        pub = float(r["achieved_tflops_per_gpu"])
        err = (tflops - pub) / pub
        print(
            f"{r['model']:>6} {gpus:>5} {tp:>2} {pp:>2} {vp:>2} {dp:>3} {m:>4} {mode:>9} "
            f"{trace.num_ops:>10,} {synth_s:>7.2f} {trace.num_ops / synth_s:>9,.0f} {replay_s:>8.2f} "
            f"{iter_s:>7.2f} "
            f"{float(r['derived_iter_time_s']):>6.2f} {tflops:>7.1f} {pub:>4.0f} {err:>+7.1%}",
            flush=True,
        )
    if skipped:
        print("skipped (too many ops for this machine even with dp folded): " + ", ".join(skipped))


if __name__ == "__main__":
    main()
