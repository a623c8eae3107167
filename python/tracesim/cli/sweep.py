"""`tracesim sweep SCENARIO.toml --out DIR`: run every variant of a scenario (tracesim.sweep)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tracesim.exceptions import TracesimError

console = Console()


def register(app: typer.Typer) -> None:
    """Adds the `sweep` command to `app`."""

    @app.command(name="sweep")
    def sweep_cmd(
        scenario: Annotated[Path, typer.Argument(help="scenario TOML file")],
        out: Annotated[Path, typer.Option("--out", help="sweep directory (created; resumed if it exists)")],
        executor: Annotated[str, typer.Option(help="local (processes on this machine) or ray")] = "local",
        workers: Annotated[
            int | None, typer.Option(help="worker processes for the local executor (default: all cores)")
        ] = None,
        address: Annotated[
            str | None, typer.Option(help="Ray cluster address (default: start or join a local one)")
        ] = None,
        retry_failed: Annotated[
            bool, typer.Option(help="run variants that failed in an earlier run again")
        ] = False,
        quiet: Annotated[bool, typer.Option(help="no progress bar and no table")] = False,
    ) -> None:
        """Run every variant of a scenario (a grid or list of what-ifs) and write results.parquet."""
        from tracesim.sweep import sweep

        if executor not in ("local", "ray"):
            raise TracesimError(f"--executor: expected local or ray, got {executor!r}")
        df = sweep(
            scenario,
            out,
            "ray" if executor == "ray" else "local",
            workers,
            not quiet,
            address=address,
            retry_failed=retry_failed,
        )
        if quiet:
            return
        failed = df.filter(df["status"] != "ok")
        keys = [c for c in df.columns[1 : df.columns.index("status")]]
        table = Table("id", *keys, "status", "step time", "energy", "MFU")
        for row in df.head(30).iter_rows(named=True):
            ok = row["status"] == "ok"
            mfu = row["mfu"]
            table.add_row(
                row["id"][:12],
                *(str(row[k]) for k in keys),
                row["status"],
                f"{row['makespan_ns'] / 1e6:,.3f} ms" if ok else "-",
                f"{row['energy_j']:.3f} J" if ok and row["energy_j"] is not None else "-",
                f"{mfu * 100:.1f}%" if ok and mfu is not None else "-",
            )
        console.print(table)
        if df.height > 30:
            console.print(f"  ... {df.height - 30} more variants in results.parquet")
        for row in failed.head(10).iter_rows(named=True):
            console.print(
                f"  [red]failed[/red] {row['id'][:12]}: {row['error']}", highlight=False, markup=False
            )
        console.print(
            f"{df.height} variants, {failed.height} failed; wrote {out}/results.parquet", highlight=False
        )
