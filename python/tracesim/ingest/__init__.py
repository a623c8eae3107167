"""Readers that turn traces from other tools into the canonical format (DESIGN.md §2, §6)."""

from tracesim.ingest.chakra import ChakraReport, ingest_chakra, ingest_pytorch_et
from tracesim.ingest.et_kineto import PairedReport, ingest_pytorch_et_kineto
from tracesim.ingest.kineto import IngestReport, ingest_kineto

__all__ = [
    "ChakraReport",
    "IngestReport",
    "PairedReport",
    "ingest_chakra",
    "ingest_kineto",
    "ingest_pytorch_et",
    "ingest_pytorch_et_kineto",
]
