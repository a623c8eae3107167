"""Shared fixtures; the helpers behind them are in tests/tracedirs.py."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tests.tracedirs import Row, base_groups, base_ops, write_trace_dir

TraceWriter = Callable[..., Path]


@pytest.fixture
def make_trace(tmp_path: Path) -> TraceWriter:
    """`make_trace(ops, ranks=2, groups=None, meta=None, name="trace")` writes a trace directory
    under tmp_path and returns its path."""

    def make(
        ops: Iterable[Row] | pa.Table | None,
        *,
        ranks: int = 2,
        groups: Iterable[Row] | pa.Table | None = None,
        meta: dict[str, Any] | None = None,
        name: str = "trace",
    ) -> Path:
        return write_trace_dir(tmp_path / name, ops, ranks=ranks, groups=groups, meta=meta)

    return make


@pytest.fixture
def valid_ops() -> list[Row]:
    return copy.deepcopy(base_ops())


@pytest.fixture
def valid_groups() -> list[Row]:
    return copy.deepcopy(base_groups())
