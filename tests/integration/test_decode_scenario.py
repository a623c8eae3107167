"""The seed scenario of examples/decode_memory_tiers: decode with weights in HBM, MRM or HBF."""

from __future__ import annotations

from pathlib import Path

import pytest

import tracesim
from tracesim.samples import decode_steps

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "decode_memory_tiers"


@pytest.fixture(scope="module")
def trace() -> tracesim.Trace:
    return decode_steps(steps=2)


def test_read_write_ratio_matches_the_hand_formula(trace: tracesim.Trace) -> None:
    # hardware.md §1.1: reads per step = W + k·B·ctx, writes = k·B, k = 2·layers·kv_heads·d·2 bytes.
    s = tracesim.simulate(trace, "dgx-h200", compute_model="roofline").summary
    (hbm,) = s["memory_tiers"]
    k_layer = 2 * 8 * 128 * 2
    reads = sum(70e9 + 80 * k_layer * 32 * (2048 + step) for step in range(2))
    writes = 2 * 80 * k_layer * 32
    assert hbm["bytes_read"] == pytest.approx(reads, rel=1e-6)
    assert hbm["bytes_written"] == writes
    assert hbm["read_write_ratio"] == pytest.approx(reads / writes, rel=1e-6)


def test_weights_in_mrm_save_energy_and_never_wear_it(trace: tracesim.Trace) -> None:
    hbm = tracesim.simulate(trace, "dgx-h200", compute_model="roofline").summary
    mrm = tracesim.simulate(trace, EXAMPLE / "h200-half-mrm.toml", compute_model="roofline").summary
    assert mrm["energy_breakdown_j"]["memory"] < hbm["energy_breakdown_j"]["memory"]
    tiers = {t["tier"]: t for t in mrm["memory_tiers"]}
    assert tiers["mrm"]["bytes_written"] == 0
    assert tiers["mrm"]["peak_bytes"] == pytest.approx(70e9, rel=1e-6)
    # Half the stacks serve the weights: the weight stream takes twice as long as on all six.
    assert mrm["makespan_ns"] > 1.5 * hbm["makespan_ns"]


def test_kv_in_mrm_reports_endurance(trace: tracesim.Trace) -> None:
    s = tracesim.simulate(
        trace,
        EXAMPLE / "h200-half-mrm.toml",
        compute_model="roofline",
        overrides=['placement.kv_cache=["mrm", "hbm"]'],
    ).summary
    (mrm,) = [t for t in s["memory_tiers"] if t["tier"] == "mrm"]
    assert mrm["writes_per_cell_per_day"] > 0
    assert mrm["endurance_years"] == pytest.approx(1e9 / mrm["writes_per_cell_per_day"] / 365)
