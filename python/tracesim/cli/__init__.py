"""The `tracesim` command line (DESIGN.md §6)."""

from tracesim.cli.main import app, main

__all__ = ["app", "main"]
