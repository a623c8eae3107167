"""Running the `tracesim` command line in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.tracedirs import REPO_ROOT


def run_cli(*args: str | Path, debug: bool = False) -> subprocess.CompletedProcess[str]:
    """`tracesim ARGS...` from the repository root; the traceback only with `debug`."""
    env = {k: v for k, v in os.environ.items() if k != "TRACESIM_DEBUG"}
    env.update({"NO_COLOR": "1", "COLUMNS": "200"})
    if debug:
        env["TRACESIM_DEBUG"] = "1"
    return subprocess.run(
        [sys.executable, "-c", "from tracesim.cli import main; main()", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
