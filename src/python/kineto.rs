//! The bindings of the streaming JSON readers: Kineto (`crate::kineto_json`,
//! `crate::kineto_classes`) and the list reader of execution traces (`crate::json_stream`).

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use pyo3_arrow::PyRecordBatch;

use super::errors::TraceError;
use crate::json_stream::ListReader;
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

/// The elements of one top-level list of a JSON object file (plain or gzip), one at a time, as
/// JSON text (str) to parse; the object's other fields as (key, JSON text) in `header()`, once
/// the list is read. `key`: which of `keys` was found holding a list (None: none).
#[pyclass(unsendable)]
pub struct JsonListReader {
    inner: ListReader,
}

#[pymethods]
impl JsonListReader {
    #[new]
    fn new(path: PathBuf, keys: Vec<String>) -> PyResult<Self> {
        let inner = ListReader::open(&path, keys).map_err(TraceError::new_err)?;
        Ok(JsonListReader { inner })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyString>>> {
        match self.inner.next_element() {
            Ok(Some(e)) => match std::str::from_utf8(e) {
                Ok(text) => Ok(Some(PyString::new(py, text))),
                Err(err) => Err(TraceError::new_err(self.inner.utf8_error(&err))),
            },
            Ok(None) => Ok(None),
            Err(e) => Err(TraceError::new_err(e)),
        }
    }

    #[getter]
    fn key(&mut self) -> PyResult<Option<String>> {
        self.inner.begin().map_err(TraceError::new_err)?;
        Ok(self.inner.found.clone())
    }

    /// Whether the file holds a JSON object (False: another JSON value).
    #[getter]
    fn is_object(&mut self) -> PyResult<bool> {
        self.inner.begin().map_err(TraceError::new_err)?;
        Ok(self.inner.object)
    }

    fn header(&self) -> Vec<(String, String)> {
        self.inner.header.clone()
    }
}
