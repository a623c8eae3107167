"""tracesim: replay AI training and inference traces on hardware that does not exist yet."""

from tracesim._core import __version__
from tracesim.analysis import breakdown, category_summary, compare, critical_path, critical_path_summary
from tracesim.exceptions import SimulationError, SystemConfigError, TraceError, TracesimError
from tracesim.simulate import Result, op_times, read_result, simulate
from tracesim.system import System, load_system
from tracesim.trace import Trace, read_trace, write_trace

__all__ = [
    "Result",
    "SimulationError",
    "System",
    "SystemConfigError",
    "Trace",
    "TraceError",
    "TracesimError",
    "__version__",
    "breakdown",
    "category_summary",
    "compare",
    "critical_path",
    "critical_path_summary",
    "load_system",
    "op_times",
    "read_result",
    "read_trace",
    "simulate",
    "write_trace",
]
