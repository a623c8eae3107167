"""Collective times against NCCL measurements: vidur's all_reduce.csv on DGX A100 and H100.

    python benches/network_accuracy.py [--data ../shared/data/vidur] [--fit]

Replays one all-reduce of each measured size on the matching preset (roofline mode, so the
network model times it) and prints the median and p90 absolute relative error against the
measured median, per GPU count, for NCCL's cost model (the presets' `[network.nccl]`) and for
plain ring α-β over the links, and for the fastest α-β algorithm on the fabric. With --fit it
also searches the channel count and per-channel bandwidth on the 8-GPU rows, as the presets
were fitted.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

import tracesim
from tracesim.samples import single_collective

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vidur"
CASES = [("h100_dgx", "dgx-h100", "hopper"), ("a100_dgx", "dgx-a100", "ampere")]


def _rows(data: Path, device: str) -> list[dict[str, str]]:
    with open(data / "data" / "profiling" / "network" / device / "all_reduce.csv") as f:
        return [r for r in csv.DictReader(f) if r["rank"] == "0"]


def errors(system: tracesim.System, rows: list[dict[str, str]]) -> tuple[float, float, int]:
    e = []
    for r in rows:
        p, n = int(r["num_workers"]), int(r["size"])
        measured = float(r["time_stats.all_reduce.median"]) * 1e6
        predicted = tracesim.simulate(single_collective(p, n), system, compute_model="roofline").makespan_ns
        e.append(abs(predicted - measured) / measured)
    e.sort()
    return statistics.median(e), e[int(0.9 * len(e))], len(e)


def _without_nccl(system: tracesim.System, algorithm: str) -> tracesim.System:
    """The system's fabric without NCCL's model: `algorithm` ("ring", or "auto" for the fastest
    α-β algorithm on the topology)."""
    network = system.network.model_copy(update={"nccl": None, "algorithm": algorithm})
    return system.model_copy(update={"network": network})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--fit", action="store_true")
    args = parser.parse_args()
    print(
        "| device | GPUs (nodes) | sizes | NCCL model median / p90 | ring α-β median / p90 "
        "| fastest α-β algorithm median / p90 |"
    )
    print("|---|---|---|---|---|---|")
    for device, preset, arch in CASES:
        rows = _rows(args.data, device)
        for workers, per_node in sorted({(int(r["num_workers"]), int(r["devices_per_node"])) for r in rows}):
            sub = [
                r for r in rows if (int(r["num_workers"]), int(r["devices_per_node"])) == (workers, per_node)
            ]
            nodes = max(1, workers // per_node)
            system = tracesim.load_system(preset, nodes=nodes, overrides=[f"devices_per_node={per_node}"])
            m, p90, n = errors(system, sub)
            rm, rp90, _ = errors(_without_nccl(system, "ring"), sub)
            am, ap90, _ = errors(_without_nccl(system, "auto"), sub)
            print(
                f"| {device} | {workers} ({nodes}) | {n} | {m * 100:.1f}% / {p90 * 100:.1f}% "
                f"| {rm * 100:.1f}% / {rp90 * 100:.1f}% | {am * 100:.1f}% / {ap90 * 100:.1f}% |"
            )
        if args.fit:
            fit_rows = [r for r in rows if r["num_workers"] == "8" and r["devices_per_node"] == "8"][::2]
            best: tuple[float, int, float] | None = None
            for channels in (8, 16, 24, 32):
                for bw in (5.0, 8.0, 10.0, 12.0, 15.0, 18.0, 20.0, 24.0, 28.0):
                    fields = f'arch="{arch}", channels={channels}, bw_intra_gbps={bw}, bw_inter_gbps={bw}'
                    nccl = f"network.nccl={{{fields}}}"
                    m, p90, _ = errors(tracesim.load_system(preset, overrides=[nccl]), fit_rows)
                    score = m + 0.1 * p90
                    if best is None or score < best[0]:
                        best = (score, channels, bw)
            print(
                f"fit {device}: channels={best[1] if best else '?'} bw_intra_gbps={best[2] if best else '?'}"
            )


if __name__ == "__main__":
    main()
