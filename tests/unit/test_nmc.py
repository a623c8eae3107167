"""Near-memory compute units and op placement across device kinds (docs/heterogeneous.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tracesim
from tests.systems import derived_system
from tracesim.samples import decode_steps
from tracesim.trace import Trace

UNIT = """
[[nmc]]
name = "pim"
tier = "hbm"
internal_bw_bytes = 2e13
link_bw_bytes = 1e12
link_latency_ns = 500.0
launch_overhead_ns = 1000.0
energy_pj_per_flop = 0.5
energy_pj_per_bit = 1.0
peak_flops = { fp16 = 1e13, bf16 = 1e13 }
"""
ATTENTION_TO_PIM = """
[[offload]]
device = "pim"
category = "attention"
phase = "decode"
"""


def _system(tmp_path: Path, body: str, name: str = "nmc.toml") -> tracesim.System:
    return derived_system(tmp_path, "dgx-h200", body, name)


def _ops(rows: list[dict[str, Any]]) -> Trace:
    keys = sorted({k for r in rows for k in r})
    table = {k: [r.get(k) for r in rows] for k in keys}
    return Trace.from_tables(table, ranks=1, source="test")


def _attention(
    op_id: int, stream: int = 0, flops: float = 1e9, nbytes: int = 10**9, **kw: Any
) -> dict[str, Any]:
    return {
        "op_id": op_id,
        "rank": 0,
        "stream": stream,
        "name": f"attn{op_id}",
        "kind": "compute",
        "category": "attention",
        "phase": "decode",
        "dtype": "bf16",
        "flops": flops,
        "bytes_read": nbytes,
        "bytes_written": 0,
        "deps": [],
        **kw,
    }


def test_offloaded_op_is_a_roofline_on_the_unit(tmp_path: Path) -> None:
    system = _system(tmp_path, UNIT + ATTENTION_TO_PIM)
    result = tracesim.simulate(_ops([_attention(0)]), system, compute_model="roofline")
    # 1 µs launch, then max(1e9 FLOP / 1e13, 1e9 B / 2e13 B/s) = max(100, 50) µs.
    assert result.makespan_ns == 1000 + 100_000
    assert result.timeline["device"].cast(pl.Utf8).to_list() == ["pim"]
    devices = {d["device"]: d for d in result.summary["devices"]}
    assert devices["pim"]["ops"] == 1 and devices["gpu"]["ops"] == 0
    assert devices["pim"]["local_bytes"] == 10**9 and devices["pim"]["moved_bytes"] == 0
    # 1e9 FLOP × 0.5 pJ + 8e9 bit × 1 pJ, plus static power over the makespan.
    breakdown = result.summary["energy_breakdown_j"]
    assert breakdown["compute"] == pytest.approx(1e9 * 0.5e-12)
    assert breakdown["memory"] == pytest.approx(8e9 * 1e-12)


def test_bytes_outside_the_units_tier_cross_its_link(tmp_path: Path) -> None:
    hbf_unit = UNIT.replace('tier = "hbm"', 'tier = "hbf"')
    hbf = (
        '[device.memory.hbf]\ntier = "hbf"\n'
        "capacity_bytes = 1e12\nread_bw_bytes = 2e12\nwrite_bw_bytes = 1e11\n"
    )
    system = _system(tmp_path, hbf + hbf_unit + ATTENTION_TO_PIM)
    result = tracesim.simulate(_ops([_attention(0)]), system, compute_model="roofline")
    # No accesses: the op's bytes are on the primary tier (HBM), not the unit's (HBF): 1 µs
    # launch + 100 µs compute + 0.5 µs link latency + 1e9 B at 1 TB/s.
    assert result.makespan_ns == 1000 + 100_000 + 500 + 1_000_000
    pim = next(d for d in result.summary["devices"] if d["device"] == "pim")
    assert pim["moved_bytes"] == 10**9 and pim["local_bytes"] == 0


def test_gpu_and_unit_work_overlap_and_the_unit_runs_one_op_at_a_time(tmp_path: Path) -> None:
    system = _system(tmp_path, UNIT + ATTENTION_TO_PIM)
    gemm = {
        "op_id": 0,
        "rank": 0,
        "stream": 0,
        "name": "gemm",
        "kind": "compute",
        "category": "gemm",
        "dtype": "bf16",
        "duration_ns": 150_000,
        "deps": [],
    }
    trace = _ops([gemm, _attention(1, stream=1), _attention(2, stream=2)])
    result = tracesim.simulate(trace, system, compute_model="measured")
    tl = result.timeline.sort("op_id")
    # The GEMM runs on the GPU while the unit takes the two attention ops one after the other.
    assert tl["start_ns"].to_list() == [0, 0, 101_000]
    assert tl["ready_ns"].to_list() == [0, 0, 0]
    assert tl["end_ns"].to_list() == [150_000, 101_000, 202_000]
    pim = next(d for d in result.summary["devices"] if d["device"] == "pim")
    assert pim["queued_ns"] == 101_000


def test_total_bytes_are_conserved_across_placements(tmp_path: Path) -> None:
    trace = decode_steps(layers=4, steps=2)
    gpu = tracesim.simulate(trace, "dgx-h200", compute_model="roofline")
    pim = tracesim.simulate(trace, _system(tmp_path, UNIT + ATTENTION_TO_PIM), compute_model="roofline")

    def per_tier(r: tracesim.Result) -> dict[str, tuple[int, int]]:
        return {t["tier"]: (t["bytes_read"], t["bytes_written"]) for t in r.summary["memory_tiers"]}

    assert per_tier(gpu) == per_tier(pim)
    devices = {d["device"]: d for d in pim.summary["devices"]}
    attention = pl.DataFrame(trace.ops).filter(pl.col("category") == "attention")
    moved_or_local = devices["pim"]["local_bytes"] + devices["pim"]["moved_bytes"]
    assert moved_or_local == (attention["bytes_read"] + attention["bytes_written"]).sum()


@settings(max_examples=40, deadline=None)
@given(
    nbytes=st.integers(min_value=10**6, max_value=10**10),
    intensity=st.floats(min_value=0.0, max_value=0.4),
    speedup=st.floats(min_value=1.0, max_value=8.0),
)
def test_a_memory_bound_op_never_slows_on_a_unit_with_more_bandwidth(
    tmp_path_factory: pytest.TempPathFactory, nbytes: int, intensity: float, speedup: float
) -> None:
    """With the data local (no transfers) and the unit's internal bandwidth at least the tier's,
    an op that is memory-bound on the unit takes no longer there than on the GPU."""
    tmp = tmp_path_factory.mktemp("nmc")
    h200 = tracesim.load_system("dgx-h200")
    bw = h200.device.memory["hbm"].read_bw_bytes * speedup
    unit = UNIT.replace("internal_bw_bytes = 2e13", f"internal_bw_bytes = {bw}").replace(
        "launch_overhead_ns = 1000.0", f"launch_overhead_ns = {h200.device.launch_overhead_ns}"
    )
    # Unit peak 1e13 FLOP/s against ≥ 4.8e12 B/s: intensity ≤ 0.4 FLOP/B keeps it memory-bound.
    op = _attention(0, flops=intensity * nbytes, nbytes=nbytes)
    gpu = tracesim.simulate(_ops([op]), h200, compute_model="roofline").makespan_ns
    nmc = tracesim.simulate(
        _ops([op]), _system(tmp, unit + ATTENTION_TO_PIM), compute_model="roofline"
    ).makespan_ns
    assert nmc <= gpu


def test_rules_match_by_tensor_class_and_first_rule_wins(tmp_path: Path) -> None:
    trace = decode_steps(layers=2, steps=1)
    rules = (
        '[[offload]]\ndevice = "gpu"\ncategory = "gemm"\n'
        '[[offload]]\ndevice = "pim"\ntensor_class = "kv_cache"\n'
    )
    result = tracesim.simulate(trace, _system(tmp_path, UNIT + rules), compute_model="roofline")
    placed = result.timeline.join(pl.DataFrame(trace.ops).select("op_id", "category"), on="op_id").select(
        "category", pl.col("device").cast(pl.Utf8)
    )
    assert set(placed.unique().iter_rows()) == {("gemm", "gpu"), ("attention", "pim")}


def test_bad_nmc_configuration_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(tracesim.SystemConfigError, match=r"offload\[0\]\.device 'npu' is not a device kind"):
        _system(tmp_path, UNIT + '[[offload]]\ndevice = "npu"\n', "a.toml")
    with pytest.raises(
        tracesim.SystemConfigError, match=r"sits on tier 'cxl', which device .* does not have"
    ):
        _system(tmp_path, UNIT.replace('tier = "hbm"', 'tier = "cxl"'), "b.toml")
    with pytest.raises(tracesim.SystemConfigError, match=r"offload\.0\.category"):
        _system(tmp_path, UNIT + '[[offload]]\ndevice = "pim"\ncategory = "convolution"\n', "c.toml")
    with pytest.raises(tracesim.SystemConfigError, match="unknown nmc unit preset 'tpu'"):
        _system(tmp_path, '[[nmc]]\nunit = "tpu"\n', "d.toml")


def test_presets_load_and_offload(tmp_path: Path) -> None:
    system = _system(tmp_path, '[[nmc]]\nunit = "hbm-pim"\n' + ATTENTION_TO_PIM.replace('"pim"', '"hbm-pim"'))
    assert system.nmc[0].name == "hbm-pim" and system.nmc[0].tier == "hbm"
    result = tracesim.simulate(decode_steps(layers=2, steps=1), system, compute_model="roofline")
    assert {d["device"] for d in result.summary["devices"]} == {"gpu", "hbm-pim"}
