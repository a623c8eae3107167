"""Seed scenario: LLM decode with attention on near-memory compute (docs/heterogeneous.md).

    python examples/nmc_decode/run.py [--steps 4] [--figures DIR]

Replays the same decode traces (tracesim.samples.decode_steps: a 70B-parameter model, FP8
weights, bf16 KV cache) in roofline mode on an H200 with everything on the GPU, and on what-if
H200s whose decode attention runs on compute units in the memory that holds the KV cache: PIM
in the HBM stacks (h200-hbm-pim.toml), logic beside MRM stacks and beside HBF stacks that hold
the KV cache (h200-mrm-nmc.toml, h200-hbf-nmc.toml; each also without the offload, to separate
the tier from the compute). Two attention shapes: grouped-query attention as in Llama-2-70B
(8 KV heads for 64 query heads, batch 32, context 2048) and multi-head attention (64 KV heads,
batch 8, context 2048), whose decode attention does 8× fewer FLOPs per byte of KV cache. Prints
step time, energy per token, attention time, and bytes per device and tier; --figures writes
nmc_decode.png.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

import tracesim
from tracesim.samples import decode_steps
from tracesim.trace import Trace

HERE = Path(__file__).parent


@dataclass(frozen=True)
class Variant:
    label: str
    system: str
    offload: bool = True


VARIANTS = (
    Variant("GPU only, all in HBM", "dgx-h200"),
    Variant("HBM-PIM", str(HERE / "h200-hbm-pim.toml")),
    Variant("KV in MRM, GPU only", str(HERE / "h200-mrm-nmc.toml"), offload=False),
    Variant("KV in MRM, attention on MRM-NMC", str(HERE / "h200-mrm-nmc.toml")),
    Variant("KV in HBF, GPU only", str(HERE / "h200-hbf-nmc.toml"), offload=False),
    Variant("KV in HBF, attention on HBF-NMC", str(HERE / "h200-hbf-nmc.toml")),
)

WORKLOADS = {
    "GQA (8 KV heads, batch 32)": {"kv_heads": 8, "batch": 32},
    "MHA (64 KV heads, batch 8)": {"kv_heads": 64, "batch": 8},
}


def _system(variant: Variant) -> tracesim.System:
    system = tracesim.load_system(variant.system)
    return system if variant.offload else system.model_copy(update={"offload": []})


def run_variant(variant: Variant, trace: Trace, steps: int) -> dict[str, Any]:
    system = _system(variant)
    result = tracesim.simulate(trace, system, compute_model="roofline")
    s = result.summary
    tokens = trace.meta["tokens"]
    ops = pl.DataFrame(trace.ops).select("op_id", "category")
    tl = result.timeline.join(ops, on="op_id")
    attention_ms = (
        tl.filter(pl.col("category") == "attention")
        .select((pl.col("end_ns") - pl.col("start_ns")).sum() / 1e6)
        .item()
    )
    devices = {d["device"]: d for d in s.get("devices", [])}
    nmc = next((d for name, d in devices.items() if name != "gpu"), None)
    nmc_tier = next((u.tier for u in system.nmc if nmc is not None and u.name == nmc["device"]), None)
    tiers = {t["tier"]: t["bytes_read"] + t["bytes_written"] for t in s["memory_tiers"]}
    return {
        "variant": variant.label,
        "step_ms": result.makespan_ns / 1e6 / steps,
        "attention_ms": attention_ms / steps,
        "energy_per_token_j": s["energy_j"] / tokens,
        "memory_j_per_token": s["energy_breakdown_j"]["memory"] / tokens,
        "nmc_local_gb": 0.0 if nmc is None else nmc["local_bytes"] / 1e9 / steps,
        "nmc_moved_gb": 0.0 if nmc is None else nmc["moved_bytes"] / 1e9 / steps,
        "tier_gb": {k: v / 1e9 / steps for k, v in tiers.items()},
        "nmc_tier": nmc_tier,
    }


def _tiers(row: dict[str, Any]) -> str:
    """Bytes each tier served per step, split into what the GPU read and wrote there and what
    the near-memory unit on it did."""
    local = row["nmc_local_gb"]
    parts = []
    for tier, gb in sorted(row["tier_gb"].items()):
        nmc = local if local and tier == row["nmc_tier"] else 0.0
        parts.append(f"{tier} {gb - nmc:.1f} + {nmc:.1f} GB")
    return ", ".join(parts)


def run(steps: int) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name, shape in WORKLOADS.items():
        trace = decode_steps(steps=steps, **shape)
        out[name] = [run_variant(v, trace, steps) for v in VARIANTS]
    return out


def figure(rows: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for ax, key, label in (
        (axes[0], "step_ms", "decode step (ms)"),
        (axes[1], "energy_per_token_j", "energy per token (J)"),
    ):
        names = [r["variant"] for r in next(iter(rows.values()))]
        width = 0.38
        for k, (workload, rs) in enumerate(rows.items()):
            xs = [i + (k - 0.5) * width for i in range(len(names))]
            ax.bar(xs, [r[key] for r in rs], width, label=workload)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("70B decode on an H200: attention on the GPU or on near-memory compute", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--figures", type=Path, help="directory for nmc_decode.png")
    args = parser.parse_args()
    rows = run(args.steps)
    for workload, rs in rows.items():
        print(f"\n{workload}\n")
        print(
            "| variant | step | attention | energy / token | memory energy / token "
            "| tier bytes per step (to GPU + to NMC) | NMC moved per step |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in rs:
            print(
                f"| {r['variant']} | {r['step_ms']:.1f} ms | {r['attention_ms']:.1f} ms "
                f"| {r['energy_per_token_j'] * 1e3:.0f} mJ | {r['memory_j_per_token'] * 1e3:.0f} mJ "
                f"| {_tiers(r)} | {r['nmc_moved_gb']:.1f} GB |"
            )
    if args.figures:
        args.figures.mkdir(parents=True, exist_ok=True)
        figure(rows, args.figures / "nmc_decode.png")


if __name__ == "__main__":
    main()
