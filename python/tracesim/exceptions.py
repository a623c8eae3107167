"""tracesim's exceptions. They are defined next to the engine (src/python/errors.rs), which
raises them, and re-exported here:

    TracesimError            base of all
    ├── TraceError           the trace breaks the format contract (names file, column, op_id)
    ├── SystemConfigError    a system description, preset or model option is unusable
    └── SimulationError      the replay cannot complete (deadlock)
"""

from tracesim._core import SimulationError, SystemConfigError, TraceError, TracesimError

__all__ = ["SimulationError", "SystemConfigError", "TraceError", "TracesimError"]
