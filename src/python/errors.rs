//! The one mapping from [`crate::Error`] to Python exceptions, re-exported by
//! `tracesim.exceptions`. To add one: a variant in `crate::Error`, an exception here, an arm
//! in `to_py`, and the name in `python/tracesim/exceptions.py`.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use crate::Error;

create_exception!(tracesim, TracesimError, PyException, "Base of every tracesim error.");
create_exception!(
    tracesim,
    TraceError,
    TracesimError,
    "The trace breaks the format contract."
);
create_exception!(
    tracesim,
    SystemConfigError,
    TracesimError,
    "The system description or a model option is unusable."
);
create_exception!(
    tracesim,
    SimulationError,
    TracesimError,
    "The replay cannot complete, e.g. a deadlock."
);

pub fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::InvalidTrace { .. } => TraceError::new_err(msg),
        Error::Deadlock { .. } | Error::OutOfMemory(_) => SimulationError::new_err(msg),
        Error::Config(_) => SystemConfigError::new_err(msg),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("TracesimError", py.get_type::<TracesimError>())?;
    m.add("TraceError", py.get_type::<TraceError>())?;
    m.add("SystemConfigError", py.get_type::<SystemConfigError>())?;
    m.add("SimulationError", py.get_type::<SimulationError>())?;
    Ok(())
}
