"""`tracesim report` (tracesim.report): self-contained HTML reports of a replay result (the
dp2_allreduce sample, with its trace; the decode_memory_tiers example, without one but with
memory) and of a sweep directory (a hand-written results.parquet), the CLI round trip, bad
input, and rendering in headless Chromium where one is installed."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest

import tracesim
from tests.cli import run_cli
from tests.tracedirs import REPO_ROOT, SAMPLE_TRACES
from tracesim import TracesimError
from tracesim.report import SWEEP_FIXED, report, sweep_parameters
from tracesim.samples import decode_steps

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def dp2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dp2") / "result"
    tracesim.simulate(SAMPLE_TRACES / "dp2_allreduce").write(out)
    return out


@pytest.fixture(scope="module")
def decode_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A variant of examples/decode_memory_tiers (weights in MRM, KV cache in HBM), 2 steps."""
    system = REPO_ROOT / "examples" / "decode_memory_tiers" / "h200-half-mrm.toml"
    out = tmp_path_factory.mktemp("decode") / "result"
    tracesim.simulate(decode_steps(steps=2), str(system), compute_model="roofline").write(out)
    return out


DELAY = "network.ocs.reconfig_delay_ns"


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """What `tracesim sweep` writes: one row per variant, id, then the swept parameters, then
    the outcome columns (a 3 × 2 grid over a reconfiguration delay and the system, plus one
    failed variant)."""
    rows = []
    for i, (delay, system) in enumerate(
        (d, s) for s in ("dgx-h100", "dgx-b200") for d in (1_000, 1_000_000, 30_000_000)
    ):
        base = 10e6 if system == "dgx-h100" else 6e6
        rows.append(
            {
                "id": f"v{i:02d}",
                DELAY: delay,
                "system": system,
                "status": "ok",
                "error": None,
                "makespan_ns": int(base + delay),
                "energy_j": 5.0 + delay / 1e7,
                "mfu": 0.5 - delay / 1e8,
                "mean_exposed_comm_ns": delay / 2,
                "peak_memory_bytes": 2**30,
                "system_name": system,
                "ranks": 8,
                "elapsed_s": 0.25,
            }
        )
    rows.append(
        {
            "id": "v06",
            DELAY: 5,
            "system": "nope",
            "status": "failed",
            "error": "nope: no such system preset",
            **dict.fromkeys(
                ("makespan_ns", "energy_j", "mfu", "mean_exposed_comm_ns", "peak_memory_bytes"), None
            ),
            "system_name": None,
            "ranks": None,
            "elapsed_s": 0.01,
        }
    )
    root = tmp_path / "sweep"
    root.mkdir()
    pl.DataFrame(rows).write_parquet(root / "results.parquet")
    return root


def sections(text: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)">', text)


def check_self_contained(text: str) -> list[bytes]:
    """No external resource (no src/href to a URL, no script or stylesheet link); returns the
    decoded PNG figures."""
    assert text.startswith("<!DOCTYPE html>")
    for attr in re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', text, flags=re.IGNORECASE):
        assert not attr.lower().startswith(("http", "//")), attr
        assert attr.startswith("data:image/png;base64,"), attr[:60]
    assert "<script" not in text.lower()
    assert "<link" not in text.lower()
    pngs = [base64.b64decode(m) for m in IMG.findall(text)]
    assert all(p.startswith(PNG_MAGIC) for p in pngs)
    return pngs


def test_result_report_with_trace(dp2_dir: Path) -> None:
    path = report(dp2_dir)
    assert path == dp2_dir / "report.html"
    text = path.read_text()
    assert sections(text) == [
        "summary",
        "timeline",
        "breakdown",
        "categories",
        "critical-path",
        "memory",
        "memory-tiers",
        "warnings",
    ]
    assert len(check_self_contained(text)) == 3  # timeline, breakdown, memory
    assert "Ops coloured by kind." in text
    assert "allreduce" in text or "collective" in text  # the category table
    summary = tracesim.read_result(dp2_dir).summary
    assert f"{summary['makespan_ns'] / 1e6:,.3f} ms" in text


def test_result_report_without_trace_colours_by_stream(decode_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "decode.html"
    assert report(decode_dir, out) == out
    assert not (decode_dir / "report.html").exists()
    text = out.read_text()
    assert sections(text) == [
        "summary",
        "timeline",
        "breakdown",
        "categories",
        "memory",
        "memory-tiers",
        "warnings",
    ]
    assert len(check_self_contained(text)) == 3
    assert "coloured by stream (summary.json records no trace path)" in text
    assert "Not available: summary.json records no trace path." in text
    for tier in ("hbm", "mrm"):
        assert f'<td class="l">{tier}</td>' in text


def test_result_report_with_a_trace_that_moved(dp2_dir: Path, tmp_path: Path) -> None:
    moved = tmp_path / "result"
    shutil.copytree(dp2_dir, moved)
    summary = (moved / "summary.json").read_text()
    (moved / "summary.json").write_text(summary.replace(str(SAMPLE_TRACES), "/nonexistent/traces"))
    text = report(moved).read_text()
    assert "does not exist here" in text
    assert len(check_self_contained(text)) == 3


def test_sweep_report(sweep_dir: Path) -> None:
    results = pl.read_parquet(sweep_dir / "results.parquet")
    assert sweep_parameters(results) == [DELAY, "system"]
    text = report(sweep_dir).read_text()
    assert sections(text) == ["sweep-curves", "best", "results"]
    assert len(check_self_contained(text)) == 1  # one numeric swept parameter
    assert "7 variants, 6 with results, 1 failed or pending" in text
    assert f"makespan and energy vs {DELAY}" in text
    assert "nope: no such system preset" in text
    assert "v03: makespan 6.001 ms" in text  # fastest: dgx-b200 at 1 µs
    for i in range(7):
        assert f"v{i:02d}" in text


def test_sweep_outcome_columns_are_not_parameters() -> None:
    from tracesim.sweep import RESULT_COLUMNS

    assert set(RESULT_COLUMNS) <= SWEEP_FIXED


def test_sweep_report_without_numeric_parameters(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    root.mkdir()
    pl.DataFrame(
        {"id": ["a", "b"], "status": ["ok", "ok"], "makespan_ns": [2, 1], "energy_j": [1.0, 2.0]}
    ).write_parquet(root / "results.parquet")
    text = report(root).read_text()
    assert not check_self_contained(text)
    assert "No swept numeric parameter" in text


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(TracesimError, match="not a result directory"):
        report(tmp_path)
    with pytest.raises(TracesimError, match="not a directory"):
        report(tmp_path / "missing")
    (tmp_path / "results.parquet").write_text("not parquet")
    with pytest.raises(TracesimError, match=r"results\.parquet: cannot be read"):
        report(tmp_path)


def test_cli_round_trip(dp2_dir: Path, sweep_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "dp2.html"
    done = run_cli("report", dp2_dir, "--out", out)
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout.replace("\n", "")
    assert len(check_self_contained(out.read_text())) == 3
    done = run_cli("report", sweep_dir)
    assert done.returncode == 0, done.stderr
    assert (sweep_dir / "report.html").is_file()


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    done = run_cli("report", tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("tracesim: error: ") and "not a result directory" in lines[0]
    assert not (tmp_path / "report.html").exists()


def test_renders_in_headless_chromium(dp2_dir: Path, sweep_dir: Path, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no headless Chromium installed")
    for name, src in (("result", dp2_dir), ("sweep", sweep_dir)):
        page = report(src, tmp_path / f"{name}.html")
        shot = tmp_path / f"{name}.png"
        done = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--window-size=1280,2000",
                f"--screenshot={shot}",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert shot.is_file() and shot.read_bytes().startswith(PNG_MAGIC)
