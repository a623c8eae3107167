import os
from typing import Any, final

import pyarrow as pa

__all__ = [
    "JsonListReader",
    "SimulationError",
    "SystemConfigError",
    "TraceError",
    "TracesimError",
    "__version__",
    "decode_chakra",
    "kineto_innermost",
    "map_kineto_rank",
    "op_times",
    "read_chakra_json",
    "read_et_nodes",
    "read_kineto_file",
    "resolve_chakra_deps",
    "simulate",
    "validate",
]

__version__: str

class TracesimError(Exception): ...
class TraceError(TracesimError): ...
class SystemConfigError(TracesimError): ...
class SimulationError(TracesimError): ...

def validate(ops: Any, groups: Any | None, ranks: int) -> None: ...
def simulate(
    ops: Any,
    groups: Any | None,
    tensors: Any | None,
    accesses: Any | None,
    ranks: int,
    system_json: str,
    source_system_json: str | None,
    compute_model: str,
    network: str,
    allow_oom: bool,
) -> tuple[pa.RecordBatch, pa.RecordBatch, pa.RecordBatch, str, str, str]: ...
def read_kineto_file(
    path: str | os.PathLike[str], time_unit: str = "auto", keep_cpu: bool = False
) -> tuple[str, dict[str, pa.RecordBatch], list[tuple[str, int]], str | None]: ...
def map_kineto_rank(
    runtime: pa.RecordBatch,
    names: list[str],
    threads: int,
    gpu: pa.RecordBatch,
    streams: int,
    steps: pa.RecordBatch,
    comms: pa.RecordBatch,
    extra_deps: pa.RecordBatch,
    base: int,
) -> tuple[pa.RecordBatch, list[tuple[str, int]]]: ...
def decode_chakra(
    data: bytes, path: str
) -> tuple[list[tuple[str, Any]], pa.RecordBatch, tuple[pa.Array, pa.Array, pa.Array, pa.Array]]: ...
def read_chakra_json(
    path: str | os.PathLike[str],
) -> tuple[list[tuple[str, str]], pa.RecordBatch, tuple[pa.Array, pa.Array, pa.Array, pa.Array]]: ...
def resolve_chakra_deps(
    ids: pa.Array,
    dep_offsets: pa.Array,
    deps: pa.Array,
    dropped_ids: pa.Array,
    dropped_offsets: pa.Array,
    dropped_deps: pa.Array,
) -> tuple[tuple[pa.Array, pa.Array, pa.Array, int, int] | None, list[int]]: ...
def read_et_nodes(path: str | os.PathLike[str]) -> tuple[pa.RecordBatch, list[tuple[str, str]]]: ...
def kineto_innermost(
    calls: pa.RecordBatch, events: pa.RecordBatch
) -> tuple[pa.RecordBatch, pa.RecordBatch]: ...

@final
class JsonListReader:
    def __new__(cls, path: str | os.PathLike[str], keys: list[str]) -> JsonListReader: ...
    def __iter__(self) -> JsonListReader: ...
    def __next__(self) -> str: ...
    @property
    def key(self) -> str | None: ...
    @property
    def is_object(self) -> bool: ...
    def header(self) -> list[tuple[str, str]]: ...

def op_times(
    ops: Any, system_json: str, source_system_json: str | None, compute_model: str
) -> pa.RecordBatch: ...
