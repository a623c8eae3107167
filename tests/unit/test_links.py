"""Link-technology presets (presets/links/): resolution of `link = "NAME"` in a network level,
explicit keys and overrides winning, bad input, and failure exposure in the summary."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

import tracesim
from tests.cli import run_cli
from tests.systems import derived_system_file
from tracesim.samples import single_collective
from tracesim.system import LinkPreset, load_link, preset_names

H100_NVLINK_LATENCY_NS = 936.25  # presets/systems/dgx-h100.toml scale_up


def _system_file(tmp_path: Path, body: str) -> Path:
    return derived_system_file(tmp_path, "dgx-h100", body, "linked.toml")


def test_link_presets_ship_and_load() -> None:
    assert {"copper", "pluggable-optics", "cpo", "microled"} <= set(preset_names("links"))
    cpo = load_link("cpo")
    assert cpo.gbps == 1600 and cpo.pj_per_bit == 11.25 and cpo.fit == 370
    # The optical presets' energy per bit is their power at both ends over the link rate (hardware.md §2.5).
    for name in ("pluggable-optics", "cpo", "microled"):
        tech = load_link(name)
        assert tech.w_per_end is not None
        assert tech.pj_per_bit == pytest.approx(2 * tech.w_per_end / (tech.gbps * 1e9) * 1e12)


def test_link_resolves_bandwidth_energy_latency_and_fit(tmp_path: Path) -> None:
    p = _system_file(tmp_path, '[network.scale_up]\nlink = "cpo"\nlinks_per_device = 2\n')
    up = tracesim.load_system(p).network.scale_up
    assert up.bw_bytes == 2 * 1600e9 / 8
    assert up.energy_pj_per_bit == 11.25
    assert up.fit_per_link == 370
    assert up.latency_ns == H100_NVLINK_LATENCY_NS  # CPO adds no DSP latency and no length was given
    assert up.link == "cpo" and up.links_per_device == 2


def test_link_latency_adds_serdes_and_propagation(tmp_path: Path) -> None:
    p = _system_file(tmp_path, '[network.scale_out]\nlink = "pluggable-optics"\nlength_m = 30\n')
    out = tracesim.load_system(p).network.scale_out
    assert out.link_latency_ns == 100 + 5 * 30
    assert out.latency_ns == 1500 + 100 + 5 * 30  # dgx-h100's NIC latency + the link's
    assert out.bw_bytes == 200e9 and out.energy_pj_per_bit == 37.5


def test_explicit_keys_next_to_link_win(tmp_path: Path) -> None:
    p = _system_file(
        tmp_path,
        '[network.scale_up]\nlink = "copper"\nlinks_per_device = 18\nbw_bytes = 450e9\n'
        "latency_ns = 900.0\nfit_per_link = 1.0\n",
    )
    up = tracesim.load_system(p).network.scale_up
    assert up.bw_bytes == 450e9 and up.latency_ns == 900.0 and up.fit_per_link == 1.0
    assert up.energy_pj_per_bit == 1.5  # not given: from the preset


def test_latency_written_next_to_a_link_excludes_the_link(tmp_path: Path) -> None:
    p = _system_file(
        tmp_path, '[network.scale_out]\nlink = "pluggable-optics"\nlength_m = 10\nlatency_ns = 1000.0\n'
    )
    assert tracesim.load_system(p).network.scale_out.latency_ns == 1000 + 100 + 50


def test_overrides_relink_and_replace_the_previous_link_latency(tmp_path: Path) -> None:
    p = _system_file(tmp_path, '[network.scale_out]\nlink = "pluggable-optics"\nlength_m = 10\n')
    base = tracesim.load_system(p)
    assert base.network.scale_out.latency_ns == 1500 + 150
    cpo = tracesim.load_system(base, overrides=["network.scale_out.link=cpo"])
    assert cpo.network.scale_out.latency_ns == 1500 + 50  # the pluggable DSP's 100 ns is gone
    assert cpo.network.scale_out.energy_pj_per_bit == 11.25
    wider = tracesim.load_system(base, overrides=["network.scale_out.links_per_device=4"])
    assert wider.network.scale_out.bw_bytes == 4 * 200e9
    kept = tracesim.load_system(
        "dgx-h100", overrides=["network.scale_up.link=microled", "network.scale_up.bw_bytes=1e11"]
    )
    assert kept.network.scale_up.bw_bytes == 1e11 and kept.network.scale_up.energy_pj_per_bit == 10.5
    final = tracesim.load_system(
        base, overrides=["network.scale_out.link=cpo", "network.scale_out.latency_ns=777"]
    )
    assert final.network.scale_out.latency_ns == 777  # a latency given with --set is the total


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[network.scale_up]\nlink = "cpo2"\n', "key 'network.scale_up.link': unknown link preset 'cpo2'"),
        ("[network.scale_up]\nlink = 3\n", "key 'network.scale_up.link': expected a link preset name"),
        (
            '[network.scale_up]\nlink = "copper"\nlength_m = 5\n',
            "key 'network.scale_up.length_m': 5 m is beyond the reach of link 'copper' (2 m)",
        ),
        (
            '[network.scale_up]\nlink = "cpo"\nlinks_per_device = 0\n',
            "key 'network.scale_up.links_per_device': expected a positive integer",
        ),
        ('[network.scale_up]\nlink = "cpo"\nlanes = 4\n', "unknown key 'network.scale_up.lanes'"),
    ],
)
def test_bad_link_input_names_the_file_and_key(tmp_path: Path, body: str, message: str) -> None:
    p = _system_file(tmp_path, body)
    with pytest.raises(tracesim.SystemConfigError) as e:
        tracesim.load_system(p)
    assert message in str(e.value) and str(p) in str(e.value)


def test_unknown_link_in_an_override_lists_the_presets() -> None:
    with pytest.raises(
        tracesim.SystemConfigError, match=r"--set: key 'network.scale_up.link'.*presets: copper"
    ):
        tracesim.load_system("dgx-h100", overrides=["network.scale_up.link=fibre"])


def test_failure_exposure_in_the_summary(tmp_path: Path) -> None:
    p = _system_file(tmp_path, '[network.scale_up]\nlink = "cpo"\nlinks_per_device = 2\n')
    s = tracesim.simulate(single_collective(8, 1 << 20), p, compute_model="roofline").summary
    up, out = s["network"]["scale_up"], s["network"]["scale_out"]
    assert up["link"] == "cpo" and up["links"] == 16
    assert up["failures_per_year"] == pytest.approx(16 * 370 * 8766 / 1e9)
    assert out["link"] is None and out["failures_per_year"] is None
    assert s["link_failures_per_year"] == pytest.approx(up["failures_per_year"])
    plain = tracesim.simulate(single_collective(8, 1 << 20), "dgx-h100", compute_model="roofline").summary
    assert plain["link_failures_per_year"] is None


def test_a_faster_link_makes_a_ring_collective_faster(tmp_path: Path) -> None:
    """The resolved bandwidth reaches the engine (ring α-β: a system without [network.nccl])."""
    p = tmp_path / "ring.toml"
    p.write_text(
        'name = "ring"\ndevice = "h100-sxm"\ndevices_per_node = 8\n'
        '[network.scale_up]\nlink = "copper"\n[network.scale_out]\nlink = "pluggable-optics"\n'
    )
    trace = single_collective(8, 1 << 28)
    one = tracesim.simulate(trace, p, compute_model="roofline").makespan_ns
    four = tracesim.simulate(
        trace, p, compute_model="roofline", overrides=["network.scale_up.links_per_device=4"]
    ).makespan_ns
    assert four < one / 3


def test_systems_command_lists_link_presets() -> None:
    proc = run_cli("systems")
    assert proc.returncode == 0, proc.stderr
    assert "link technologies" in proc.stdout
    for name in preset_names("links"):
        assert name in proc.stdout


def test_link_preset_energy_and_fit_forms() -> None:
    per_lane = LinkPreset(
        name="x", lanes=4, gbps_per_lane=100.0, reach_m=10.0, w_per_end=2.0, fit_per_lane=5.0
    )
    assert per_lane.fit == 20.0  # 4 lanes × 5 FIT
    assert per_lane.pj_per_bit == pytest.approx(2 * 2.0 / 400e9 * 1e12)  # both ends over 400 Gb/s
    with pytest.raises(ValidationError, match="give energy_pj_per_bit or w_per_end"):
        LinkPreset(name="x", lanes=1, gbps_per_lane=1.0, reach_m=1.0)
    with pytest.raises(ValidationError, match="fit_per_link or fit_per_lane, not both"):
        LinkPreset(
            name="x",
            lanes=1,
            gbps_per_lane=1.0,
            reach_m=1.0,
            w_per_end=1.0,
            fit_per_link=1.0,
            fit_per_lane=1.0,
        )
