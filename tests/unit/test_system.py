"""System descriptions: presets, derivation, overrides, and clear errors for bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tracesim
from tests.strategies import traces
from tracesim.samples import single_collective
from tracesim.system import preset_names

DESIGN_PRESETS = {
    "systems": {"dgx-a100", "dgx-h100", "dgx-h200", "dgx-b200", "gb200-nvl72"},
    "devices": {"a100-sxm-80g", "h100-sxm", "h200-sxm", "b200", "gb200", "mi300x"},
    "tiers": {"hbm3", "hbm3e", "hbf", "mrm", "lpddr5x", "cxl-ddr5", "ddr5"},
}
PRESET_DIR = Path(tracesim.__file__).parent / "presets"


@pytest.mark.parametrize("kind", sorted(DESIGN_PRESETS))
def test_design_presets_exist(kind: str) -> None:
    assert DESIGN_PRESETS[kind] <= set(preset_names(kind))


@pytest.mark.parametrize("name", sorted(DESIGN_PRESETS["systems"]))
def test_every_system_preset_loads_and_scales(name: str) -> None:
    system = tracesim.load_system(name, nodes=4)
    assert system.nodes == 4 and system.devices == 4 * system.devices_per_node


@pytest.mark.parametrize("path", sorted(PRESET_DIR.glob("*/*.toml")), ids=lambda p: p.name)
def test_every_number_in_a_preset_cites_a_source(path: Path) -> None:
    """Each line that sets a number carries a comment, or sits in a table whose header has one."""
    header_cited = False
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            header_cited = "#" in stripped
            continue
        if "=" not in stripped or stripped.startswith("#"):
            continue
        value = stripped.split("=", 1)[1].split("#", 1)[0].strip()
        if value[:1].isdigit() or value[:1] == "-":
            assert "#" in stripped or header_cited, f"{path.name}: uncited number: {stripped}"


def test_derived_system_and_override(tmp_path: Path) -> None:
    p = tmp_path / "fast.toml"
    p.write_text('base = "dgx-h100"\nname = "fast"\n[device.memory.hbm]\nread_bw_bytes = 6e12\n')
    s = tracesim.load_system(p, overrides=["network.scale_up.bw_bytes=9e11"])
    assert s.device.memory["hbm"].read_bw_bytes == 6e12
    assert s.device.memory["hbm"].capacity_bytes == 80e9  # kept from the preset
    assert s.network.scale_up.bw_bytes == 9e11


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[network.scale_up]\nbandwidth = 1e9\n", "unknown key 'network.scale_up.bandwidth'"),
        ("[network.scale_up]\nbw_bytes = -1.0\n", "key 'network.scale_up.bw_bytes'"),
        ("[network.scale_out]\nbw_bytes = 0.0\n", "key 'network.scale_out.bw_bytes'"),
        ("[device.memory.hbm]\ncapacity_bytes = 0.0\n", "key 'device.memory.hbm.capacity_bytes'"),
        ("[device.peak_flops]\nbf16 = -5.0\n", "peak_flops.bf16 must be positive"),
        ("[device.peak_flops]\nfp6 = 1e15\n", "device.peak_flops.fp6"),
        ('[device.memory.extra]\ntier = "hbm9"\ncapacity_bytes = 1.0\n', "unknown tier preset 'hbm9'"),
        ('device = "h900"\n', "unknown device preset 'h900'"),
        ('base = "dgx-h900"\n', "unknown system preset 'dgx-h900'"),
        ("this is not toml\n", "not valid TOML"),
    ],
)
def test_bad_system_files_are_clear_errors(tmp_path: Path, toml: str, message: str) -> None:
    p = tmp_path / "bad.toml"
    text = toml if toml.startswith(("base", "this")) else 'base = "dgx-h100"\n' + toml
    p.write_text(text)
    with pytest.raises(tracesim.SystemConfigError) as e:
        tracesim.load_system(p)
    assert message in str(e.value)
    if "preset" not in message:
        assert str(p) in str(e.value)


def test_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(tracesim.SystemConfigError, match="dgx-h100"):
        tracesim.load_system("dgx-h900")


def test_bad_override_is_a_clear_error() -> None:
    with pytest.raises(tracesim.SystemConfigError, match=r"unknown key 'device\.memory\.hbm\.read_bw'"):
        tracesim.load_system("dgx-h100", overrides=["device.memory.hbm.read_bw=1"])
    with pytest.raises(tracesim.SystemConfigError, match=r"KEY\.PATH=VALUE"):
        tracesim.load_system("dgx-h100", overrides=["nonsense"])


def _one_op(**fields: object) -> tracesim.Trace:
    ops = {"op_id": [0], "rank": [0], "stream": [0], "name": ["op"], **{k: [v] for k, v in fields.items()}}
    return tracesim.Trace.from_tables(ops, ranks=1)


def test_roofline_golden_times() -> None:
    """Hand-computed on a plain roofline (efficiency 1, no launch overhead) of dgx-h100."""
    plain = tracesim.load_system(
        "dgx-h100",
        overrides=[
            "device.launch_overhead_ns=0",
            "device.sm_count=0",
            "device.efficiency.gemm_max=1",
            "device.efficiency.gemm_half_flops=0",
            "device.efficiency.mem_max=1",
            "device.efficiency.mem_half_bytes=0",
        ],
    )
    # 989.4e12 bf16 FLOP at 989.4 TFLOP/s: 1 s.
    gemm = _one_op(kind="compute", dtype="bf16", flops=989.4e12, bytes_read=1000)
    assert tracesim.op_times(gemm, plain).to_pylist() == [1_000_000_000]
    # 3.35e9 bytes read at 3.35 TB/s: 1 ms, whatever its few FLOPs.
    stream = _one_op(kind="compute", dtype="fp32", flops=1e6, bytes_read=3_350_000_000)
    assert tracesim.op_times(stream, plain).to_pylist() == [1_000_000]
    # A move of 1e9 bytes from hbm to hbm: the slower of read and write bandwidth, plus the tier latency.
    move = _one_op(kind="memory", bytes_read=1_000_000_000, src_tier="hbm", dst_tier="hbm")
    assert tracesim.op_times(move, plain).to_pylist() == [round(1e9 / 3.35e12 * 1e9 + 100)]


def test_unknown_tier_in_a_memory_op_names_the_op() -> None:
    trace = _one_op(kind="memory", bytes_read=10, src_tier="hbm", dst_tier="ssd", duration_ns=5)
    with pytest.raises(
        tracesim.TraceError, match=r"column 'dst_tier', op_id 0: tier \"ssd\" is not a memory tier"
    ):
        tracesim.simulate(trace, "dgx-h100")


def test_ops_without_costs_in_roofline_mode_are_counted_in_warnings() -> None:
    trace = _one_op(kind="compute")
    s = tracesim.simulate(trace, "dgx-h100", compute_model="roofline").summary
    assert any("1 ops had no measured duration and no flops/bytes" in w for w in s["warnings"])


@settings(max_examples=60, deadline=None)
@given(traces(), st.floats(1.0, 50.0))
def test_more_flops_or_memory_bandwidth_never_slower(trace: tracesim.Trace, factor: float) -> None:
    base = tracesim.load_system("dgx-h100", nodes=1)
    faster = tracesim.load_system(
        base,
        overrides=[
            f"device.peak_flops.fp32={base.device.peak_flops['fp32'] * factor}",
            f"device.memory.hbm.read_bw_bytes={base.device.memory['hbm'].read_bw_bytes * factor}",
            f"device.memory.hbm.write_bw_bytes={base.device.memory['hbm'].write_bw_bytes * factor}",
        ],
    )
    slow = tracesim.simulate(trace, base, compute_model="roofline").makespan_ns
    assert tracesim.simulate(trace, faster, compute_model="roofline").makespan_ns <= slow


def test_nccl_model_golden_large_all_reduce() -> None:
    """1 GiB all-reduce on 8 GPUs of one node, dgx-h100 (hopper, 16 channels × 24 GB/s): Ring
    Simple wins; busBw = 384 GB/s, algBw = busBw·8/14; latency = 8.4 + 14·3.4 µs."""
    nbytes = 2**30
    expected_us = 8.4 + 14 * 3.4 + nbytes / (1000 * 384 * 8 / 14)
    got = tracesim.simulate(single_collective(8, nbytes), "dgx-h100", compute_model="roofline").makespan_ns
    assert got == round(expected_us * 1000)


def test_nccl_model_small_all_reduce_uses_ll() -> None:
    """1 KiB on 8 GPUs: Ring LL, 6.6 + 14·0.6 µs plus bytes at min(141, 0.5·384) GB/s bus bandwidth."""
    expected_us = 6.6 + 14 * 0.6 + 1024 / (1000 * 141 * 8 / 14)
    got = tracesim.simulate(single_collective(8, 1024), "dgx-h100", compute_model="roofline").makespan_ns
    assert got == round(expected_us * 1000)


def test_bad_nccl_arch_is_a_clear_error() -> None:
    with pytest.raises(tracesim.SystemConfigError, match=r"network\.nccl\.arch"):
        tracesim.load_system("dgx-h100", overrides=["network.nccl.arch=kepler"])


def test_missing_dtype_falls_back_to_the_nearest_wider_one() -> None:
    """fp8 on an A100 (no fp8 peak) runs as bf16: 312e12 FLOP at 312 TFLOP/s on a plain roofline."""
    plain = tracesim.load_system(
        "dgx-a100",
        overrides=[
            "device.launch_overhead_ns=0",
            "device.efficiency.gemm_max=1",
            "device.efficiency.gemm_half_flops=0",
        ],
    )
    op = _one_op(kind="compute", dtype="fp8", flops=312e12)
    assert tracesim.op_times(op, plain).to_pylist() == [1_000_000_000]
