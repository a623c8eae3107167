"""Seed scenario: decode on an H200-class device with weights in HBM, in MRM, and in HBF.

    python examples/decode_memory_tiers/run.py [--steps 8] [--out DIR]

Replays the same decode trace (tracesim.samples.decode_steps: a 70B-parameter model, FP8
weights, bf16 KV cache, batch 32, context 2048) in roofline mode on four memory
configurations and prints step time, energy per token, read:write ratio per tier and
projected endurance. The what-if systems are the TOML files beside this script.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import tracesim
from tracesim.samples import decode_steps

HERE = Path(__file__).parent

VARIANTS = [
    ("all in HBM (dgx-h200)", "dgx-h200", []),
    ("weights in MRM, KV in HBM", str(HERE / "h200-half-mrm.toml"), []),
    ("weights and KV in MRM", str(HERE / "h200-half-mrm.toml"), ['placement.kv_cache=["mrm", "hbm"]']),
    ("weights in HBF, KV in HBM", str(HERE / "h200-half-hbf.toml"), []),
]


def _fmt_years(years: float | None) -> str:
    return "unlimited" if years is None else f"{years:,.1f} y"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="write each variant's result here")
    args = parser.parse_args()
    trace = decode_steps(steps=args.steps)
    tokens = int(trace.meta["tokens"])
    batch = trace.meta["batch"]
    print(f"decode trace: {trace.num_ops} ops, {args.steps} steps × batch {batch} = {tokens} tokens\n")
    print("| placement | step time | energy / token | tier | read:write | writes/cell/day | endurance |")
    print("|---|---|---|---|---|---|---|")
    for label, system, overrides in VARIANTS:
        result = tracesim.simulate(trace, system, compute_model="roofline", overrides=overrides)
        s = result.summary
        step_ms = sum(i["step_ns"] for i in s["iterations"]) / len(s["iterations"]) / 1e6
        per_token = s["energy_j"] / tokens
        for k, tier in enumerate(s["memory_tiers"]):
            ratio = "no writes" if tier["read_write_ratio"] is None else f"{tier['read_write_ratio']:,.0f}:1"
            head = f"| {label} | {step_ms:.2f} ms | {per_token * 1e3:.1f} mJ |" if k == 0 else "| | | |"
            print(
                f"{head} {tier['tier']} ({tier['peak_bytes'] / 1e9:.1f} GB) | {ratio} | "
                f"{tier['writes_per_cell_per_day']:,.0f} | {_fmt_years(tier['endurance_years'])} |"
            )
        if args.out is not None:
            result.write(args.out / label.replace(" ", "_").replace(",", ""))


if __name__ == "__main__":
    main()
