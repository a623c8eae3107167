"""`tracesim report`: an HTML report of a result or sweep directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer) -> None:
    """Adds the `report` command to `app`."""

    @app.command(name="report")
    def report_cmd(
        path: Annotated[
            Path, typer.Argument(help="result directory (tracesim simulate --out) or sweep directory")
        ],
        out: Annotated[
            Path | None, typer.Option("--out", help="HTML file to write (default: PATH/report.html)")
        ] = None,
    ) -> None:
        """Write a self-contained HTML report (figures and tables) of a result or a sweep."""
        from tracesim.report import report

        written = report(path, out)
        console.print(f"wrote {written}", highlight=False)
