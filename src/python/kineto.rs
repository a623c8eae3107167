//! The binding of the Kineto reader (`crate::kineto_json`, `crate::kineto_classes`).

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_arrow::PyRecordBatch;

use super::errors::TraceError;
use crate::kineto_classes::{split, TimeUnit};
use crate::kineto_json::read_kineto_file as read_file;

/// (time unit "us"/"ns", {class: pyarrow RecordBatch}, [(unmapped class, count)],
/// `distributedInfo` JSON text).
type KinetoFile<'py> = (&'static str, Bound<'py, PyDict>, Vec<(String, u64)>, Option<String>);

/// Reads a Kineto Chrome-trace file (plain or gzip), streaming, and splits its events by the
/// class the ingester maps them to (`tracesim.ingest.kineto`); a missing, unreadable or malformed
/// file raises `TraceError` naming `path`. `time_unit`: "auto", "us" or "ns". `keep_cpu`: also
/// every CPU operator and annotation (`cpu_all`), and whole `args` of recorded CPU ops.
#[pyfunction]
#[pyo3(signature = (path, time_unit = "auto", keep_cpu = false))]
pub fn read_kineto_file<'py>(
    py: Python<'py>,
    path: PathBuf,
    time_unit: &str,
    keep_cpu: bool,
) -> PyResult<KinetoFile<'py>> {
    let unit = match time_unit {
        "auto" => TimeUnit::Auto,
        "us" => TimeUnit::Us,
        "ns" => TimeUnit::Ns,
        other => {
            return Err(PyValueError::new_err(format!(
                "time_unit: '{other}' is not auto, us or ns"
            )))
        }
    };
    let name = path.display().to_string();
    let out = py
        .detach(|| read_file(&path, keep_cpu).and_then(|cols| split(cols, unit, keep_cpu, &name)))
        .map_err(|e| TraceError::new_err(e.0))?;
    let classes = PyDict::new(py);
    for (class, batch) in out.classes {
        classes.set_item(class, PyRecordBatch::new(batch).into_pyarrow(py)?)?;
    }
    Ok((out.unit, classes, out.unmapped, out.distributed_info))
}
