//! The binding of the Kineto JSON reader (`crate::kineto_json`).

use pyo3::prelude::*;
use pyo3_arrow::PyRecordBatch;

use super::errors::TraceError;
use crate::kineto_json::read_kineto;

/// (events as a pyarrow RecordBatch, `displayTimeUnit`, `distributedInfo` JSON text).
type KinetoJson<'py> = (Bound<'py, PyAny>, Option<String>, Option<String>);

/// Reads a Kineto Chrome-trace's JSON text into columns; a malformed file raises `TraceError`
/// naming `path`. `keep_args`: give the `args` JSON of every event, not only those the
/// ingester reads in full.
#[pyfunction]
#[pyo3(signature = (data, path, keep_args = false))]
pub fn read_kineto_json<'py>(py: Python<'py>, data: &[u8], path: &str, keep_args: bool) -> PyResult<KinetoJson<'py>> {
    let out = py
        .detach(|| read_kineto(data, path, keep_args))
        .map_err(|e| TraceError::new_err(e.0))?;
    Ok((
        PyRecordBatch::new(out.events).into_pyarrow(py)?,
        out.display_time_unit,
        out.distributed_info,
    ))
}
