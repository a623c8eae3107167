import os
from typing import Any

import pyarrow as pa

__all__ = [
    "SimulationError",
    "SystemConfigError",
    "TraceError",
    "TracesimError",
    "__version__",
    "op_times",
    "read_kineto_file",
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
def op_times(
    ops: Any, system_json: str, source_system_json: str | None, compute_model: str
) -> pa.RecordBatch: ...
