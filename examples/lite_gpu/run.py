"""Seed scenario S2 (hardware.md §1.2): a Lite-GPU cluster vs a DGX H100 for LLM inference.

    python examples/lite_gpu/run.py [--out DIR] [--model gpt3-39b] [--batch 32] [--prompt 1024]
                                    [--output 32] [--figures DIR]

One H100 is split into four Lite-GPUs (presets/devices/lite-h100.toml: 1/4 of its FLOP/s, HBM
capacity and HBM bandwidth), each with one 1.6T co-packaged-optics link (presets/links/cpo.toml),
32 of them in one optical scale-up domain (lite-h100-x32.toml): the same total FLOP/s and memory
as one DGX H100 (dgx-h100-copper.toml, dgx-h100 with its NVLink marked as copper links). The same
serving workload (`tracesim.synth.infer.synth_infer`: a static batch of requests, prefill then
decode under continuous batching) is synthesised for each parallel layout, replayed in roofline
mode, and compared on decode step time (TPOT), time to first token, tokens/s, energy per output
token, where the time goes, and link failures per year. With --out, each variant's result
directory is written under DIR with its HTML report (`tracesim report`); with --figures, two PNGs.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tracesim
from tracesim.report import report
from tracesim.synth.infer import serving_metrics, synth_infer
from tracesim.synth.models import load_model

HERE = Path(__file__).parent
H100 = HERE / "dgx-h100-copper.toml"
LITE = HERE / "lite-h100-x32.toml"


@dataclass(frozen=True)
class Variant:
    label: str
    slug: str
    system: Path
    tp: int
    pp: int
    overrides: tuple[str, ...] = ()


VARIANTS = (
    Variant("H100 ×8, TP 8 (NVLink)", "h100_tp8", H100, 8, 1),
    Variant("Lite ×32, TP 32 (1 CPO)", "lite_tp32", LITE, 32, 1),
    # Twice the optics per Lite-GPU: 400 GB/s per direction, and NCCL's per-channel bandwidth with it.
    Variant(
        "Lite ×32, TP 32 (2 CPO)",
        "lite_tp32_2cpo",
        LITE,
        32,
        1,
        ("network.scale_up.links_per_device=2", "network.nccl.bw_intra_gbps=21.333"),
    ),
    Variant("Lite ×32, TP 8 × PP 4 (1 CPO)", "lite_tp8_pp4", LITE, 8, 4),
)


def run_variant(variant: Variant, model: Any, batch: int, prompt: int, output: int) -> dict[str, Any]:
    """Synthesises and replays one variant; returns its row of figures and the result."""
    system = tracesim.load_system(variant.system, overrides=list(variant.overrides))
    trace = synth_infer(
        model, system=system, tp=variant.tp, pp=variant.pp, batch=batch, prompt=prompt, output=output
    )
    result = tracesim.simulate(trace, system, compute_model="roofline")
    s = result.summary
    serving = serving_metrics(result.timeline, trace)
    makespan = s["makespan_ns"]
    ranks = s["ranks"]

    def share(key: str) -> float:
        return float(sum(r[key] for r in ranks) / (len(ranks) * makespan))

    return {
        "variant": variant.label,
        "slug": variant.slug,
        "devices": trace.ranks,
        "ops": trace.num_ops,
        "makespan_ms": makespan / 1e6,
        "tpot_ms": serving["tpot_ms"]["mean"],
        "ttft_ms": serving["ttft_ms"]["mean"],
        "tokens_per_s": serving["tokens_per_s"],
        "energy_j": s["energy_j"],
        "energy_per_token_j": s["energy_j"] / serving["output_tokens"],
        "energy_breakdown_j": s["energy_breakdown_j"],
        # Shares of device time (mean over ranks): compute and memory ops, communication not under
        # compute, and nothing running. Waits for other ranks are inside exposed communication.
        "compute_share": share("compute_ns"),
        "exposed_comm_share": share("exposed_comm_ns"),
        "idle_share": share("idle_ns"),
        "wait_share": share("wait_ns"),
        "scale_up_bw_gbs": system.network.scale_up.bw_bytes / 1e9,
        "link_failures_per_year": s["link_failures_per_year"],
        "result": result,
        "trace": trace,
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | scale-up GB/s per device | decode step (TPOT) | TTFT | tokens/s | energy / token "
        "| compute | exposed comm (waits incl.) | idle | link failures / year |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        failures = r["link_failures_per_year"]
        lines.append(
            f"| {r['variant']} | {r['scale_up_bw_gbs']:.0f} | {r['tpot_ms']:.1f} ms | "
            f"{r['ttft_ms']:.0f} ms | "
            f"{r['tokens_per_s']:.0f} | {r['energy_per_token_j']:.2f} J | {r['compute_share']:.0%} | "
            f"{r['exposed_comm_share']:.0%} | {r['idle_share']:.0%} | "
            f"{'n/a' if failures is None else f'{failures:.3f}'} |"
        )
    return "\n".join(lines)


def write_figures(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Two small PNGs: where device time goes, and energy per output token by component."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    labels = [r["variant"].replace(" (", "\n(") for r in rows]
    paths = []

    fig, ax = plt.subplots(figsize=(7.0, 3.5), dpi=100)
    left = [0.0] * len(rows)
    for key, name, colour in (
        ("compute_share", "compute + memory", "#4c72b0"),
        ("exposed_comm_share", "exposed communication (incl. waits)", "#dd8452"),
        ("idle_share", "idle", "#bbbbbb"),
    ):
        widths = [r[key] * r["makespan_ms"] for r in rows]
        ax.barh(labels, widths, left=left, color=colour, label=name)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("replay time per device, ms (mean over ranks)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.4, -0.2), ncol=3, fontsize=8, frameon=False)
    ax.set_title("Where the time goes", fontsize=10)
    fig.tight_layout()
    paths.append(out / "lite_gpu_time.png")
    fig.savefig(paths[-1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.0, 3.5), dpi=100)
    left = [0.0] * len(rows)
    for key, colour in (
        ("compute", "#4c72b0"),
        ("memory", "#55a868"),
        ("network", "#dd8452"),
        ("static", "#bbbbbb"),
    ):
        widths = [r["energy_breakdown_j"][key] / r["energy_j"] * r["energy_per_token_j"] for r in rows]
        ax.barh(labels, widths, left=left, color=colour, label=key)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("energy per output token, J (prefill included)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.4, -0.2), ncol=4, fontsize=8, frameon=False)
    ax.set_title("Energy per output token", fontsize=10)
    fig.tight_layout()
    paths.append(out / "lite_gpu_energy.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths


def run(
    *,
    model: str = "gpt3-39b",
    batch: int = 32,
    prompt: int = 1024,
    output: int = 32,
    layers: int | None = None,
    out: Path | None = None,
    figures: Path | None = None,
    variants: tuple[Variant, ...] = VARIANTS,
) -> list[dict[str, Any]]:
    """Runs every variant; writes result directories and reports under `out` and figures
    under `figures` when given. `layers` shrinks the model (for quick checks)."""
    spec = load_model(model, layers=layers)
    rows = [run_variant(v, spec, batch, prompt, output) for v in variants]
    if out is not None:
        for r in rows:
            root = r["result"].write(out / r["slug"])
            report(root)
        table = [{k: v for k, v in r.items() if k not in ("result", "trace")} for r in rows]
        (out / "results.json").write_text(json.dumps(table, indent=2) + "\n")
        (out / "results.md").write_text(markdown_table(rows) + "\n")
    if figures is not None:
        write_figures(rows, figures)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="gpt3-39b", help="zoo model (heads and KV heads divisible by 32)")
    parser.add_argument("--batch", type=int, default=32, help="requests, all arriving at 0")
    parser.add_argument("--prompt", type=int, default=1024, help="prompt tokens per request")
    parser.add_argument("--output", type=int, default=32, help="output tokens per request")
    parser.add_argument("--layers", type=int, default=None, help="override the model's layers")
    parser.add_argument("--out", type=Path, default=None, help="write results and reports here")
    parser.add_argument("--figures", type=Path, default=None, help="write the two PNG figures here")
    args = parser.parse_args()
    rows = run(
        model=args.model,
        batch=args.batch,
        prompt=args.prompt,
        output=args.output,
        layers=args.layers,
        out=args.out,
        figures=args.figures,
    )
    print(
        f"{args.model}, batch {args.batch}, prompt {args.prompt}, output {args.output}; "
        f"roofline compute model, NCCL network model\n"
    )
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
