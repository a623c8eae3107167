"""Golden end-to-end runs on the sample traces in traces/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tracesim
from tests.reference import reference_schedule

TRACES = Path(__file__).resolve().parents[2] / "traces"
SAMPLES = sorted(p.name for p in TRACES.iterdir() if (p / "trace.json").exists())


def _fully_measured(name: str) -> bool:
    ops = tracesim.read_trace(TRACES / name).ops
    return "duration_ns" in ops.column_names and ops.column("duration_ns").null_count == 0


# Samples whose every op has a duration: the reference scheduler replays those exactly.
MEASURED_SAMPLES = [name for name in SAMPLES if _fully_measured(name)]
SUMMARY_KEYS = {
    "makespan_ns",
    "ranks",
    "iterations",
    "energy_j",
    "energy_breakdown_j",
    "mfu",
    "warnings",
    "system",
    "compute_model",
    "network_model",
}
RANK_KEYS = {
    "rank",
    "end_ns",
    "compute_ns",
    "comm_ns",
    "exposed_comm_ns",
    "wait_ns",
    "idle_ns",
    "peak_memory_bytes",
}


def test_samples_exist() -> None:
    assert {"dp2_allreduce", "pp8_gpipe", "dp16_two_nodes"} <= set(MEASURED_SAMPLES)
    assert "gpt3-1.7b_tp8_dp4" in SAMPLES


@pytest.mark.parametrize("name", MEASURED_SAMPLES)
def test_sample_replays_like_the_reference_scheduler(name: str) -> None:
    trace = tracesim.read_trace(TRACES / name)
    result = tracesim.simulate(trace, "dgx-h100", compute_model="measured")
    expected = reference_schedule(trace)
    tl = result.timeline
    got = {
        int(o): (int(s), int(e)) for o, s, e in zip(tl["op_id"], tl["start_ns"], tl["end_ns"], strict=True)
    }
    assert got == expected
    assert result.makespan_ns == max(e for _, e in expected.values())


@pytest.mark.parametrize("name", SAMPLES)
def test_simulate_writes_the_result_contract(name: str, tmp_path: Path) -> None:
    result = tracesim.simulate(TRACES / name, "dgx-h100")
    out = result.write(tmp_path / "result")
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS
    assert set(summary["energy_breakdown_j"]) == {"compute", "memory", "network", "static"}
    for r in summary["ranks"]:
        assert set(r) >= RANK_KEYS
        assert r["compute_ns"] + r["idle_ns"] <= summary["makespan_ns"] + r["comm_ns"]
    assert tracesim.read_result(out).timeline.height == tracesim.read_trace(TRACES / name).num_ops
    assert summary["compute_model"] == "measured"  # auto on the trace's own system


def test_dp2_hand_checked_figures() -> None:
    """Figures checked by hand from traces/dp2_allreduce (2 ranks, 4 layers, hidden 4096, 8192 tokens)."""
    result = tracesim.simulate(TRACES / "dp2_allreduce", "dgx-h100")
    s = result.summary
    # Each fwd GEMM: 2·8192·4096² FLOP = 274.9 GFLOP; bwd twice that; Adam 12·4·4096² = 0.805 GFLOP.
    # Total per rank = 4·(1+2)·274.88e9 + 0.805e9 = 3299.3 GFLOP; two ranks.
    assert s["total_flops"] == pytest.approx(2 * (12 * 2 * 8192 * 4096**2 + 12 * 4 * 4096**2))
    # Weights (4 × 4096² bf16) stay resident; all four activations (8192·4096 bf16 each) are live
    # at the turn from forward to backward.
    peak = s["ranks"][0]["peak_memory_bytes"]["hbm"]
    assert peak == 4 * 4096 * 4096 * 2 + 4 * 8192 * 4096 * 2
    assert s["iterations"] == [
        {"iteration": 0, "start_ns": 0, "end_ns": s["makespan_ns"], "step_ns": s["makespan_ns"]}
    ]


def _ring_alpha_beta(system: tracesim.System) -> tracesim.System:
    """The system without its NCCL cost model: collectives as ring α-β over the links."""
    return system.model_copy(
        update={"network": system.network.model_copy(update={"nccl": None, "algorithm": "ring"})}
    )


def test_two_node_allreduce_is_bound_by_scale_out() -> None:
    """Same step on 16 ranks, ring α-β: its all-reduce crosses nodes and slows down."""
    two = tracesim.simulate(
        TRACES / "dp16_two_nodes",
        _ring_alpha_beta(tracesim.load_system("dgx-h100", nodes=2)),
        compute_model="roofline",
    )
    assert two.summary["system"]["nodes"] == 2
    one_node = tracesim.simulate(
        TRACES / "dp16_two_nodes",
        _ring_alpha_beta(tracesim.load_system("dgx-h100", overrides=["devices_per_node=16"])),
        compute_model="roofline",
    )
    comm_two = two.summary["ranks"][0]["comm_ns"]
    comm_one = one_node.summary["ranks"][0]["comm_ns"]
    # Ring all-reduce of 32 MiB over 16 ranks: 2·15/16·32 MiB at 50 GB/s vs 450 GB/s, per layer.
    assert comm_two > 5 * comm_one


def test_links_carry_the_ring_bytes() -> None:
    """dp2: each layer's 32 MiB all-reduce over 2 ranks puts 2·(1/2)·32 MiB on each rank's
    scale-up link; 4 layers. Nothing crosses nodes."""
    result = tracesim.simulate(TRACES / "dp2_allreduce", "dgx-h100")
    assert result.links is not None
    per_rank = 4 * (2 * 0.5 * 4096 * 4096 * 2)
    scale_up = result.links.filter(result.links["link"] == "scale_up")
    # Rows are directed links; `rank` is set on the link that leaves a device.
    up = scale_up.filter(scale_up["rank"].is_not_null()).sort("rank")
    assert up["bytes"].to_list() == [per_rank, per_rank] + [0.0] * 6
    down = scale_up.filter(scale_up["dst"].is_in(["gpu0", "gpu1"]))
    assert down["bytes"].to_list() == [per_rank, per_rank]
    assert result.links.filter(result.links["link"] == "scale_out")["bytes"].sum() == 0
    busy = up["busy_ns"][0]
    assert busy == round(per_rank / 450e9 * 1e9)
    assert result.summary["network"]["scale_up"]["max_utilisation"] == pytest.approx(
        busy / result.makespan_ns
    )


def test_ring_crosses_nodes_at_two_ranks() -> None:
    """dp16 on two DGX nodes: in ring order 0..15 only ranks 7 and 15 send to the other node."""
    system = tracesim.load_system("dgx-h100", overrides=["network.algorithm=ring"])
    result = tracesim.simulate(TRACES / "dp16_two_nodes", system)
    assert result.links is not None
    links = result.links
    out = links.filter((links["link"] == "scale_out") & (links["bytes"] > 0) & links["rank"].is_not_null())
    assert out["rank"].to_list() == [7, 15]
