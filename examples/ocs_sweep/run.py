"""Seed scenario S5 (hardware.md §1.5, §3.6): a training step on an optical circuit-switched
fabric, swept over reconfiguration delays from 1 µs to 30 ms.

    python examples/ocs_sweep/run.py [--out DIR] [--figures DIR]

Runs `scenario.toml` (GPT-3 1.7B, TP 8 × DP 4 on four DGX H100 nodes whose scale-out is an OCS
with two ports per GPU; delay × policy) with `tracesim.sweep`, and the same trace on the
electrical baseline (dgx-h100: one 400 Gb/s NDR rail per GPU on a fat tree), then prints the
step time, the exposed communication and the energy per policy and delay, and with --figures
writes `ocs_sweep.png`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import polars as pl

import tracesim
from tracesim.sweep import sweep

HERE = Path(__file__).parent
TRACE = HERE.parent.parent / "traces" / "gpt3-1.7b_tp8_dp4"
DELAY = "network.topology.reconfig_ns"
POLICY = "network.topology.policy"


def baseline_ms() -> tuple[float, float]:
    """(step ms, mean exposed communication ms) on the electrical fat tree, with collectives
    costed like the optical variants' (the fastest α-β algorithm, not NCCL's fitted model)."""
    h100 = tracesim.load_system("dgx-h100", nodes=4)
    system = h100.model_copy(update={"network": h100.network.model_copy(update={"nccl": None})})
    result = tracesim.simulate(TRACE, system, compute_model="roofline")
    ranks = result.summary["ranks"]
    return result.makespan_ns / 1e6, sum(r["exposed_comm_ns"] for r in ranks) / len(ranks) / 1e6


def run(out: Path) -> pl.DataFrame:
    table = sweep(HERE / "scenario.toml", out, workers=1, progress=False)
    failed = table.filter(pl.col("status") != "ok")
    if failed.height:
        raise SystemExit(f"{failed.height} variants failed: {failed['error'].to_list()}")
    return table.select(
        pl.col(POLICY).alias("policy"),
        pl.col(DELAY).alias("reconfig_ns"),
        (pl.col("makespan_ns") / 1e6).alias("step_ms"),
        (pl.col("mean_exposed_comm_ns") / 1e6).alias("exposed_comm_ms"),
        pl.col("energy_j"),
    ).sort("policy", "reconfig_ns")


def figure(table: pl.DataFrame, base_ms: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    for policy, marker in (("static", "s"), ("per_collective", "o"), ("per_step", "^")):
        rows = table.filter(pl.col("policy") == policy)
        ax.plot(rows["reconfig_ns"] / 1e3, rows["step_ms"], marker=marker, label=policy.replace("_", " "))
    ax.axhline(base_ms, color="grey", linestyle="--", label="electrical fat tree (dgx-h100)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("circuit reconfiguration delay (µs)")
    ax.set_ylabel("training step (ms)")
    ax.set_title("GPT-3 1.7B, TP 8 × DP 4, OCS with 2 ports per GPU")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="sweep directory (default: a temporary one)")
    parser.add_argument("--figures", type=Path, help="directory for ocs_sweep.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        table = run(args.out or Path(tmp) / "sweep")
    base_ms, base_exposed = baseline_ms()
    print(f"electrical fat tree: step {base_ms:.1f} ms, exposed communication {base_exposed:.1f} ms")
    print("| policy | reconfiguration delay | step | exposed communication | energy |")
    print("|---|---|---|---|---|")
    for row in table.iter_rows(named=True):
        print(
            f"| {row['policy']} | {row['reconfig_ns'] / 1e3:g} µs | {row['step_ms']:.1f} ms "
            f"| {row['exposed_comm_ms']:.1f} ms | {row['energy_j']:.0f} J |"
        )
    if args.figures:
        args.figures.mkdir(parents=True, exist_ok=True)
        figure(table, base_ms, args.figures / "ocs_sweep.png")


if __name__ == "__main__":
    main()
