"""Memory hierarchy: placement with spill, capacity, out-of-memory, tier-bound op time, energy."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tracesim

TWO_TIERS = """
base = "dgx-h100"
name = "two-tier"

[device]
launch_overhead_ns = 0.0

[device.efficiency]
mem_max = 1.0
mem_half_bytes = 0.0

[device.memory.hbm]
capacity_bytes = 100.0
read_bw_bytes = 1e12
write_bw_bytes = 1e12

[device.memory.mrm]
tier = "mrm"
capacity_bytes = 1000.0
read_bw_bytes = 2e12
write_bw_bytes = 2e11
"""


def _system(tmp_path: Path, extra: str = "") -> tracesim.System:
    path = tmp_path / "two-tier.toml"
    path.write_text(TWO_TIERS + extra)
    return tracesim.load_system(path)


def _trace(tensors: list[tuple[int, str, int | None, int | None]], accesses: bool = False) -> tracesim.Trace:
    """Two compute ops on rank 0 (op 0 then op 1) and the given (bytes, class, alloc_op, free_op) tensors."""
    ops = {
        "op_id": [0, 1],
        "rank": [0, 0],
        "stream": [0, 0],
        "name": ["a", "b"],
        "kind": ["compute", "compute"],
        "duration_ns": [1000, 1000],
        "bytes_read": [10**9, 0],
    }
    table = {
        "tensor_id": list(range(len(tensors))),
        "rank": [0] * len(tensors),
        "bytes": [t[0] for t in tensors],
        "class": [t[1] for t in tensors],
        "alloc_op": [t[2] for t in tensors],
        "free_op": [t[3] for t in tensors],
    }
    acc = None
    if accesses:
        acc = {"op_id": [0], "tensor_id": [0], "mode": ["read"], "bytes": [10**9]}
    return tracesim.Trace.from_tables(ops, ranks=1, tensors=table, accesses=acc)


def test_tensors_spill_to_the_next_tier_when_one_is_full(tmp_path: Path) -> None:
    system = _system(tmp_path)
    # Two 60-byte weights: the first fits HBM (100 B), the second spills to MRM.
    trace = _trace([(60, "weight", None, None), (60, "weight", None, None)])
    result = tracesim.simulate(trace, system, compute_model="measured")
    assert result.summary["ranks"][0]["peak_memory_bytes"] == {"hbm": 60, "mrm": 60}
    assert result.memory is not None
    assert result.memory.to_dicts() == [
        {"time_ns": 0, "rank": 0, "tier": "hbm", "used_bytes": 60},
        {"time_ns": 0, "rank": 0, "tier": "mrm", "used_bytes": 60},
    ]


def test_placement_policy_puts_weights_in_mrm_first(tmp_path: Path) -> None:
    system = _system(tmp_path, '\n[placement]\nweight = ["mrm", "hbm"]\n')
    trace = _trace([(60, "weight", None, None), (30, "activation", 0, 1)])
    result = tracesim.simulate(trace, system, compute_model="measured")
    assert result.summary["ranks"][0]["peak_memory_bytes"] == {"hbm": 30, "mrm": 60}
    assert result.memory is not None
    hbm = (
        result.memory.filter(tracesim_tier="hbm")
        if False
        else result.memory.filter(result.memory["tier"] == "hbm")
    )
    # The activation lives from op 0's start (0 ns) to op 1's end (2000 ns).
    assert hbm.select("time_ns", "used_bytes").rows() == [(0, 30), (2000, 0)]


def test_out_of_memory_names_rank_tier_op_and_bytes(tmp_path: Path) -> None:
    system = _system(tmp_path, '\n[placement]\nactivation = ["hbm"]\n')
    trace = _trace([(80, "activation", 0, 1), (40, "activation", 1, 1)])
    with pytest.raises(tracesim.SimulationError) as e:
        tracesim.simulate(trace, system, compute_model="measured")
    msg = str(e.value)
    assert "out of memory on rank 0, tier hbm" in msg
    assert "40 bytes at op_id 1" in msg
    assert "80 of 100 bytes in use" in msg


def test_allow_oom_reports_instead_of_failing(tmp_path: Path) -> None:
    system = _system(tmp_path, '\n[placement]\nactivation = ["hbm"]\n')
    trace = _trace([(80, "activation", 0, 1), (40, "activation", 1, 1)])
    result = tracesim.simulate(trace, system, compute_model="measured", allow_oom=True)
    assert result.summary["ranks"][0]["peak_memory_bytes"] == {"hbm": 120}
    assert any("out of memory on rank 0, tier hbm" in w for w in result.summary["warnings"])


def test_op_memory_time_follows_the_tier_of_the_tensors_it_reads(tmp_path: Path) -> None:
    # Op 0 reads 1e9 bytes of tensor 0: 1 ms from HBM (1e12 B/s), 0.5 ms from MRM (2e12 B/s).
    in_hbm = _system(tmp_path, '\n[placement]\nweight = ["hbm"]\n')
    big = tracesim.load_system(in_hbm, overrides=["device.memory.hbm.capacity_bytes=1e10"])
    trace = _trace([(10**9, "weight", None, None)], accesses=True)
    t_hbm = tracesim.simulate(trace, big, compute_model="roofline").timeline.sort("op_id")
    assert t_hbm["end_ns"][0] - t_hbm["start_ns"][0] == 1_000_000
    in_mrm = tracesim.load_system(
        big, overrides=['placement.weight=["mrm"]', "device.memory.mrm.capacity_bytes=1e10"]
    )
    t_mrm = tracesim.simulate(trace, in_mrm, compute_model="roofline").timeline.sort("op_id")
    assert t_mrm["end_ns"][0] - t_mrm["start_ns"][0] == 500_000


def test_memory_energy_and_per_tier_traffic(tmp_path: Path) -> None:
    system = tracesim.load_system(
        _system(tmp_path, '\n[placement]\nweight = ["mrm"]\n'),
        overrides=["device.memory.mrm.capacity_bytes=1e10"],
    )
    trace = _trace([(10**9, "weight", None, None)], accesses=True)
    s = tracesim.simulate(trace, system, compute_model="measured").summary
    # 1e9 bytes read from MRM at 2.0 pJ/bit (tiers/mrm.toml): 8e9 bit × 2e-12 J = 16 mJ.
    assert s["energy_breakdown_j"]["memory"] == pytest.approx(0.016)
    (mrm,) = [t for t in s["memory_tiers"] if t["tier"] == "mrm"]
    assert mrm["bytes_read"] == 10**9
    assert mrm["bytes_written"] == 0
    assert mrm["read_write_ratio"] is None
    assert mrm["retention_s"] == 86400.0


def test_unknown_tier_in_placement_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(tracesim.SystemConfigError, match=r"placement\.weight names tier 'hbf'"):
        _system(tmp_path, '\n[placement]\nweight = ["hbf"]\n')


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 120), st.sampled_from(["weight", "activation", "kv_cache"])), max_size=6
    )
)
def test_no_tier_over_capacity_without_an_oom_report(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[tuple[int, str]]
) -> None:
    system = _system(tmp_path_factory.mktemp("sys"))
    trace = _trace([(b, c, 0, 1) for b, c in sizes])
    try:
        result = tracesim.simulate(trace, system, compute_model="measured")
    except tracesim.SimulationError as e:
        assert "out of memory" in str(e)
        return
    capacity = {"hbm": 100, "mrm": 1000}
    for tier, peak in result.summary["ranks"][0]["peak_memory_bytes"].items():
        assert peak <= capacity[tier]


def test_energy_is_additive_over_ops() -> None:
    trace = tracesim.read_trace(Path(__file__).resolve().parents[2] / "traces" / "dp2_allreduce")
    result = tracesim.simulate(trace, "dgx-h100", compute_model="roofline")
    s = result.summary
    per_op = float(result.timeline["energy_j"].sum())
    breakdown = s["energy_breakdown_j"]
    assert per_op == pytest.approx(breakdown["compute"] + breakdown["memory"] + breakdown["network"])
    assert s["energy_j"] == pytest.approx(per_op + breakdown["static"])


def test_placement_is_deterministic(tmp_path: Path) -> None:
    system = _system(tmp_path, '\n[placement]\nactivation = ["hbm", "mrm"]\n')
    trace = _trace([(70, "activation", 0, 1), (50, "activation", 0, 1), (40, "weight", None, None)])
    a = tracesim.simulate(trace, system, compute_model="measured")
    b = tracesim.simulate(trace, system, compute_model="measured")
    assert a.memory is not None and b.memory is not None
    assert a.memory.equals(b.memory)
    assert a.summary["ranks"] == b.summary["ranks"]
