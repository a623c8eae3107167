//! The binding of the Kineto JSON reader (`crate::kineto_json`).

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3_arrow::PyRecordBatch;

use super::errors::TraceError;
use crate::kineto_json::read_kineto_file as read_file;

/// (events as a pyarrow RecordBatch, `displayTimeUnit`, `distributedInfo` JSON text, number of
/// `traceEvents` elements that are not objects).
type KinetoJson<'py> = (Bound<'py, PyAny>, Option<String>, Option<String>, u64);

/// Reads a Kineto Chrome-trace file (plain or gzip) into columns, streaming; a missing,
/// unreadable or malformed file raises `TraceError` naming `path`. `keep_args`: give the `args`
/// JSON of every event, not only those the ingester reads in full.
#[pyfunction]
#[pyo3(signature = (path, keep_args = false))]
pub fn read_kineto_file<'py>(py: Python<'py>, path: PathBuf, keep_args: bool) -> PyResult<KinetoJson<'py>> {
    let out = py
        .detach(|| read_file(&path, keep_args))
        .map_err(|e| TraceError::new_err(e.0))?;
    Ok((
        PyRecordBatch::new(out.events).into_pyarrow(py)?,
        out.display_time_unit,
        out.distributed_info,
        out.non_objects,
    ))
}
