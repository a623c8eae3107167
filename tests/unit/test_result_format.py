"""Result directories record their format version (summary.json `format_version`); read_result
accepts older or unversioned ones and refuses newer ones with an error naming file and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tracesim
from tests.cli import run_cli
from tracesim.samples import single_collective
from tracesim.simulate import RESULT_FORMAT_VERSION


@pytest.fixture
def result_dir(tmp_path: Path) -> Path:
    result = tracesim.simulate(single_collective(2, 1024), "dgx-h100", compute_model="roofline")
    return result.write(tmp_path / "result")


def _set_version(root: Path, version: object) -> None:
    path = root / "summary.json"
    summary = json.loads(path.read_text())
    if version is None:
        del summary["format_version"]
    else:
        summary["format_version"] = version
    path.write_text(json.dumps(summary))


def test_written_results_record_the_version(result_dir: Path) -> None:
    summary = json.loads((result_dir / "summary.json").read_text())
    assert summary["format_version"] == RESULT_FORMAT_VERSION
    assert tracesim.read_result(result_dir).summary["format_version"] == RESULT_FORMAT_VERSION


def test_missing_version_is_read_as_version_1(result_dir: Path) -> None:
    _set_version(result_dir, None)
    assert tracesim.read_result(result_dir).makespan_ns > 0


def test_newer_version_is_refused(result_dir: Path) -> None:
    _set_version(result_dir, RESULT_FORMAT_VERSION + 1)
    with pytest.raises(tracesim.TracesimError) as e:
        tracesim.read_result(result_dir)
    message = str(e.value)
    assert str(result_dir / "summary.json") in message and "field 'format_version'" in message
    assert f"version {RESULT_FORMAT_VERSION + 1} is newer" in message


@pytest.mark.parametrize("bad", ["1", 0, 1.5, True])
def test_bad_version_is_refused(result_dir: Path, bad: object) -> None:
    _set_version(result_dir, bad)
    with pytest.raises(tracesim.TracesimError, match="field 'format_version': expected a positive integer"):
        tracesim.read_result(result_dir)


def test_cli_refuses_a_newer_result_in_one_line(result_dir: Path, tmp_path: Path) -> None:
    _set_version(result_dir, RESULT_FORMAT_VERSION + 1)
    proc = run_cli("report", result_dir, "--out", tmp_path / "r.html")
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "format_version" in lines[0] and "summary.json" in lines[0], proc.stderr
