"""The shipped near-memory-compute decode scenario (examples/nmc_decode) runs and keeps the
relations its README section states."""

from __future__ import annotations

from tests.examples import load_example


def test_nmc_decode_scenario() -> None:
    rows = load_example("nmc_decode").run(steps=1)
    gqa, mha = ({r["variant"]: r for r in rs} for rs in rows.values())
    gpu, pim = "GPU only, all in HBM", "HBM-PIM"
    # GQA's decode attention does 8 FLOPs per KV byte: compute-bound on the PIM units, slower.
    assert gqa[pim]["attention_ms"] > gqa[gpu]["attention_ms"]
    # MHA's does 1: bandwidth-bound, and the PIM units' 4× internal bandwidth wins.
    assert mha[pim]["attention_ms"] < mha[gpu]["attention_ms"] / 2
    assert mha[pim]["energy_per_token_j"] < mha[gpu]["energy_per_token_j"]
    for rs in (gqa, mha):
        # The KV cache lives where the attention runs: nothing crosses the units' links.
        assert all(r["nmc_moved_gb"] == 0 for r in rs.values())
        # Offloading moves work, not bytes: each tier sees the same traffic with or without it.
        for tier in ("mrm", "hbf"):
            on_gpu = rs[f"KV in {tier.upper()}, GPU only"]["tier_gb"]
            on_nmc = rs[f"KV in {tier.upper()}, attention on {tier.upper()}-NMC"]["tier_gb"]
            assert on_gpu == on_nmc
