"""Readers that turn traces from other tools into the canonical format (DESIGN.md §2, §6)."""

from tracesim.ingest.kineto import IngestReport, ingest_kineto

__all__ = ["IngestReport", "ingest_kineto"]
