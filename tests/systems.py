"""System files written by tests: a preset plus the TOML a test adds to it."""

from __future__ import annotations

from pathlib import Path

import tracesim


def derived_system_file(tmp_path: Path, base: str, body: str, name: str) -> Path:
    """tmp_path/NAME: `base = BASE`, named after the file, then `body`."""
    path = tmp_path / name
    path.write_text(f'base = "{base}"\nname = "{path.stem}"\n{body}')
    return path


def derived_system(tmp_path: Path, base: str, body: str, name: str) -> tracesim.System:
    return tracesim.load_system(derived_system_file(tmp_path, base, body, name))
