"""The seed scenario of examples/lite_gpu, at a tiny size so the example cannot silently break:
a 32-Lite-GPU CPO cluster vs a DGX H100 serving the same requests."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import tracesim
from tests.examples import load_example

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lite_gpu"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return load_example("lite_gpu")


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lite_gpu")
    return root / "out", root / "figures"


@pytest.fixture(scope="module")
def rows(example: ModuleType, run_dirs: tuple[Path, Path]) -> dict[str, dict[str, Any]]:
    out, figures = run_dirs
    result = example.run(layers=4, batch=4, prompt=64, output=3, out=out, figures=figures)
    return {r["slug"]: r for r in result}


def test_lite_cluster_matches_one_dgx_h100_in_total() -> None:
    h100 = tracesim.load_system(EXAMPLE / "dgx-h100-copper.toml")
    lite = tracesim.load_system(EXAMPLE / "lite-h100-x32.toml")
    assert lite.devices == 4 * h100.devices
    for dtype, peak in h100.device.peak_flops.items():
        assert lite.devices * lite.device.peak_flops[dtype] == pytest.approx(h100.devices * peak)
    for key in ("capacity_bytes", "read_bw_bytes", "write_bw_bytes"):
        lite_total = lite.devices * getattr(lite.device.memory["hbm"], key)
        assert lite_total == pytest.approx(h100.devices * getattr(h100.device.memory["hbm"], key))
    assert lite.network.scale_up.link == "cpo" and lite.network.scale_up.bw_bytes == 200e9
    # The copper annotation changes nothing that times the replay: dgx-h100's numbers are kept.
    plain = tracesim.load_system("dgx-h100")
    assert h100.engine_json() == plain.engine_json()


def test_every_variant_runs_on_its_layout(rows: dict[str, dict[str, Any]]) -> None:
    assert [r["devices"] for r in rows.values()] == [8, 32, 32, 32]
    for r in rows.values():
        assert r["tpot_ms"] > 0 and r["tokens_per_s"] > 0 and r["energy_per_token_j"] > 0
        assert r["compute_share"] + r["exposed_comm_share"] + r["idle_share"] == pytest.approx(1, abs=0.02)


def test_splitting_the_gpu_costs_communication(rows: dict[str, dict[str, Any]]) -> None:
    h100, lite, lite2 = rows["h100_tp8"], rows["lite_tp32"], rows["lite_tp32_2cpo"]
    assert lite["exposed_comm_share"] > h100["exposed_comm_share"]
    assert lite["energy_breakdown_j"]["network"] > h100["energy_breakdown_j"]["network"]
    # Twice the optics per Lite-GPU: the TP all-reduces get faster and so does the replay.
    assert lite2["makespan_ms"] < lite["makespan_ms"]
    # 32 optical links (370 FIT each) against 144 copper NVLinks (3.7 FIT each).
    assert lite["link_failures_per_year"] == pytest.approx(32 * 370 * 8766 / 1e9)
    assert h100["link_failures_per_year"] == pytest.approx(8 * 18 * 3.7 * 8766 / 1e9)
    assert lite2["link_failures_per_year"] == pytest.approx(2 * lite["link_failures_per_year"])


def test_outputs_are_written(rows: dict[str, dict[str, Any]], run_dirs: tuple[Path, Path]) -> None:
    out, figures = run_dirs
    for slug in rows:
        assert (out / slug / "summary.json").is_file() and (out / slug / "report.html").is_file()
        assert tracesim.read_result(out / slug).summary["system"]["network"]["scale_up"]["link"] in (
            "copper",
            "cpo",
        )
    assert "| Lite ×32, TP 32 (1 CPO) |" in (out / "results.md").read_text()
    pngs = sorted(figures.glob("*.png"))
    assert [p.name for p in pngs] == ["lite_gpu_energy.png", "lite_gpu_time.png"]
    assert all(0 < p.stat().st_size < 200_000 for p in pngs)
