"""Exports of replay results to other tools' formats."""

from tracesim.export.chrome import to_chrome, write_chrome

__all__ = ["to_chrome", "write_chrome"]
