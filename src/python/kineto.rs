//! The bindings of the streaming JSON readers: Kineto (`crate::kineto_json`,
//! `crate::kineto_classes`) and the list reader of execution traces (`crate::json_stream`).

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, LargeListBuilder};
use arrow_array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch};
use arrow_schema::{Field, Schema};
use pyo3::types::{PyDict, PyString};
use pyo3_arrow::PyRecordBatch;

use super::errors::TraceError;
use crate::json_stream::ListReader;
use crate::kineto_classes::{split, TimeUnit};
use crate::kineto_json::read_kineto_file as read_file;
use crate::kineto_map::{innermost, map_rank, Intervals, RankEvents};

/// (time unit "us"/"ns", {class: pyarrow RecordBatch}, [(unmapped class, count)],
/// `distributedInfo` JSON text).
type KinetoFile<'py> = (&'static str, Bound<'py, PyDict>, Vec<(String, u64)>, Option<String>);

/// Reads a Kineto Chrome-trace file (plain or gzip), streaming, and splits its events by the
/// class the ingester maps them to (`tracesim.ingest.kineto`); a missing, unreadable or malformed
/// file raises `TraceError` naming `path`. `time_unit`: "auto", "us" or "ns". `keep_cpu`: also
/// every CPU operator and annotation (`cpu_all`, with their whole `args`).
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

/// The values of an Int64 column without nulls (ValueError otherwise: the caller built it wrong).
fn ints<'b>(batch: &'b RecordBatch, name: &str) -> PyResult<&'b [i64]> {
    let col = batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        .ok_or_else(|| PyValueError::new_err(format!("no int64 column '{name}'")))?;
    if col.null_count() > 0 {
        return Err(PyValueError::new_err(format!("column '{name}' has nulls")));
    }
    Ok(col.values())
}

fn intervals<'b>(batch: &'b RecordBatch, thread: &str) -> PyResult<Intervals<'b>> {
    Ok(Intervals {
        ts: ints(batch, "ts")?,
        end: ints(batch, "end")?,
        thread: ints(batch, thread)?,
    })
}

fn batch_of(columns: Vec<(&str, ArrayRef)>) -> PyResult<RecordBatch> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|c| c.1).collect(),
    )
    .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// (ops, [(count name, count)]).
type MappedRank<'py> = (Bound<'py, PyAny>, Vec<(&'static str, u64)>);

/// One rank's Kineto events made into ops (`crate::kineto_map`; times in absolute ns).
/// `runtime`: ts, end, thread (0..threads), name (index into `names`); `gpu`: ts, end, stream
/// (0..streams), launch (row of `runtime`, -1: none), nccl (bool); `steps`: start, end, n,
/// sorted; `comms`: ts, end, thread; `extra_deps`: consumer, producer (GPU op rows).
/// Returns (ops, counts): ops has a row per op, GPU ops first (in input order) then host ops,
/// with start, dur, stream, name (host ops: `HostName` code), deps (keys = rows), iteration and
/// comms (GPU ops: the enclosing record_param_comms row, NCCL kernels only).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn map_kineto_rank<'py>(
    py: Python<'py>,
    runtime: PyRecordBatch,
    names: Vec<String>,
    threads: i64,
    gpu: PyRecordBatch,
    streams: i64,
    steps: PyRecordBatch,
    comms: PyRecordBatch,
    extra_deps: PyRecordBatch,
    base: i64,
) -> PyResult<MappedRank<'py>> {
    let (runtime, gpu, steps, comms, extra) = (
        runtime.into_inner(),
        gpu.into_inner(),
        steps.into_inner(),
        comms.into_inner(),
        extra_deps.into_inner(),
    );
    let nccl = gpu
        .column_by_name("nccl")
        .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
        .ok_or_else(|| PyValueError::new_err("no bool column 'nccl'"))?;
    let nccl: Vec<bool> = (0..nccl.len()).map(|i| nccl.is_valid(i) && nccl.value(i)).collect();
    let step_rows: Vec<(i64, i64, i64)> = {
        let (s, e, n) = (ints(&steps, "start")?, ints(&steps, "end")?, ints(&steps, "n")?);
        if s.len() != e.len() || s.len() != n.len() {
            return Err(PyValueError::new_err("steps: columns of unequal length"));
        }
        (0..s.len()).map(|i| (s[i], e[i], n[i])).collect()
    };
    let extra: Vec<(usize, usize)> = {
        let (c, p) = (ints(&extra, "consumer")?, ints(&extra, "producer")?);
        if c.len() != p.len() || c.iter().chain(p).any(|&x| x < 0) {
            return Err(PyValueError::new_err("extra_deps: unequal lengths or negative rows"));
        }
        c.iter().zip(p).map(|(&c, &p)| (c as usize, p as usize)).collect()
    };
    let ev = RankEvents {
        base,
        runtime: intervals(&runtime, "thread")?,
        runtime_name: ints(&runtime, "name")?,
        names: &names,
        threads,
        gpu_ts: ints(&gpu, "ts")?,
        gpu_end: ints(&gpu, "end")?,
        gpu_stream: ints(&gpu, "stream")?,
        gpu_launch: ints(&gpu, "launch")?,
        gpu_nccl: &nccl,
        streams,
        steps: &step_rows,
        comms: intervals(&comms, "thread")?,
        extra_deps: &extra,
    };
    let mut out = py.detach(|| map_rank(&ev)).map_err(PyValueError::new_err)?;
    let g = out.gpu_deps.len();
    let n = out.start.len();
    let mut deps = LargeListBuilder::new(Int64Builder::new());
    for j in 0..n {
        if j < g {
            deps.values().append_slice(&out.gpu_deps[j]);
        } else if out.host_dep[j - g] >= 0 {
            deps.values().append_value(out.host_dep[j - g]);
        }
        deps.append(true);
    }
    let gpu_only = |v: &dyn Fn(usize) -> Option<i64>| -> ArrayRef {
        Arc::new((0..n).map(|j| if j < g { v(j) } else { None }).collect::<Int64Array>())
    };
    let iteration = gpu_only(&|j| out.iteration[j]);
    let comms = gpu_only(&|j| (out.comms[j] >= 0).then_some(out.comms[j]));
    let batch = batch_of(vec![
        ("start", Arc::new(Int64Array::from(std::mem::take(&mut out.start)))),
        ("dur", Arc::new(Int64Array::from(std::mem::take(&mut out.dur)))),
        ("stream", Arc::new(Int64Array::from(std::mem::take(&mut out.stream)))),
        (
            "name",
            Arc::new(
                (0..n)
                    .map(|j| (j >= g).then(|| out.host_name[j - g]))
                    .collect::<Int64Array>(),
            ),
        ),
        ("deps", Arc::new(deps.finish())),
        ("iteration", iteration),
        ("comms", comms),
    ])?;
    let c = out.counts;
    let counts = vec![
        ("launch_deps", c.launch_deps),
        ("sync_deps", c.sync_deps),
        ("inferred_stream_deps", c.inferred_stream_deps),
        ("graph_node_waits", c.graph_node_waits),
        ("orphan_gpu_ops", c.orphan_gpu_ops),
        ("nested_runtime_calls", c.nested_runtime_calls),
    ];
    Ok((PyRecordBatch::new(batch).into_pyarrow(py)?, counts))
}

/// For each call (`calls`: ts, thread) the innermost of `events` (ts, end, thread) enclosing it
/// on its thread, and for each event the one enclosing it (`crate::kineto_map::innermost`; -1:
/// none): a RecordBatch (inner) and one (parent).
#[pyfunction]
pub fn kineto_innermost<'py>(
    py: Python<'py>,
    calls: PyRecordBatch,
    events: PyRecordBatch,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let (calls, events) = (calls.into_inner(), events.into_inner());
    let (call_ts, call_thread) = (ints(&calls, "ts")?, ints(&calls, "thread")?);
    let evs = intervals(&events, "thread")?;
    if call_ts.len() != call_thread.len() || evs.end.len() != evs.ts.len() || evs.thread.len() != evs.ts.len() {
        return Err(PyValueError::new_err("columns of unequal length"));
    }
    let (inner, parent) = py.detach(|| innermost(call_ts, call_thread, &evs));
    let inner = batch_of(vec![("inner", Arc::new(Int64Array::from(inner)))])?;
    let parent = batch_of(vec![("parent", Arc::new(Int64Array::from(parent)))])?;
    Ok((
        PyRecordBatch::new(inner).into_pyarrow(py)?,
        PyRecordBatch::new(parent).into_pyarrow(py)?,
    ))
}

/// (nodes, [(key, JSON text)]).
type EtNodes<'py> = (Bound<'py, PyAny>, Vec<(String, String)>);

/// The nodes of a PyTorch execution trace (`crate::pytorch_et`): (RecordBatch of id, name,
/// rf_id, dims, inputs, outputs; [(other top-level key, JSON text)]).
#[pyfunction]
pub fn read_et_nodes(py: Python<'_>, path: PathBuf) -> PyResult<EtNodes<'_>> {
    let et = py
        .detach(|| crate::pytorch_et::read_et_nodes(&path))
        .map_err(TraceError::new_err)?;
    Ok((PyRecordBatch::new(et.nodes).into_pyarrow(py)?, et.header))
}

/// An attribute value of a Chakra node as a Python value (None: a type unknown for its field).
fn attr_value<'py>(py: Python<'py>, v: &crate::chakra_pb::AttrValue) -> PyResult<Bound<'py, PyAny>> {
    use crate::chakra_pb::AttrValue;
    Ok(match v {
        AttrValue::Float(f) => f.into_pyobject(py)?.into_any(),
        AttrValue::Int(i) => i.into_pyobject(py)?.into_any(),
        AttrValue::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        AttrValue::Str(s) => PyString::new(py, s).into_any(),
        AttrValue::Bytes(b) => pyo3::types::PyBytes::new(py, b).into_any(),
        AttrValue::List(items) => {
            let items = items.iter().map(|x| attr_value(py, x)).collect::<PyResult<Vec<_>>>()?;
            pyo3::types::PyList::new(py, items)?.into_any()
        }
        AttrValue::Unknown => py.None().into_bound(py),
    })
}

fn attrs<'py>(py: Python<'py>, attrs: &[(String, crate::chakra_pb::AttrValue)]) -> PyResult<Bound<'py, PyAny>> {
    let pairs = attrs
        .iter()
        .map(|(k, v)| Ok((k.as_str(), attr_value(py, v)?)))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(pyo3::types::PyList::new(py, pairs)?.into_any())
}

/// (metadata or header, nodes, deps): see `decode_chakra`.
type ChakraNodes<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>);

/// The node columns as Python values: (RecordBatch, (ctrl offsets, ctrl, data offsets, data)).
fn node_columns<'py>(
    py: Python<'py>,
    mut c: crate::chakra_nodes::NodeColumns,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    c.shrink();
    use arrow_array::{BooleanArray as Bools, Float64Array, StringArray};
    let ints = |v: Vec<Option<i64>>| -> ArrayRef { Arc::new(Int64Array::from(v)) };
    let strs = |v: Vec<Option<String>>| -> ArrayRef { Arc::new(StringArray::from(v)) };
    let batch = batch_of(vec![
        ("id", Arc::new(Int64Array::from(c.id))),
        ("name", Arc::new(arrow_array::LargeStringArray::from(c.name))),
        ("node_type", Arc::new(Int64Array::from(c.node_type))),
        ("dur_ns", ints(c.dur_ns)),
        ("start_ns", ints(c.start_ns)),
        ("is_cpu", Arc::new(Bools::from(c.is_cpu))),
        ("thread", strs(c.thread)),
        ("flops", Arc::new(Float64Array::from(c.flops))),
        ("tensor_size", ints(c.tensor_size)),
        ("comm_size", ints(c.comm_size)),
        ("comm_type", ints(c.comm_type)),
        ("comm_dst", ints(c.comm_dst)),
        ("comm_src", ints(c.comm_src)),
        ("pg_name", strs(c.pg_name)),
        ("inputs", strs(c.inputs)),
    ])?;
    let deps = [c.ctrl.offsets, c.ctrl.values, c.data.offsets, c.data.values]
        .into_iter()
        .map(|v| int64_array(py, v))
        .collect::<PyResult<Vec<_>>>()?;
    Ok((
        PyRecordBatch::new(batch).into_pyarrow(py)?,
        pyo3::types::PyTuple::new(py, deps)?.into_any(),
    ))
}

/// Decodes a Chakra protobuf file's bytes (`crate::chakra_pb`) into node columns
/// (`crate::chakra_nodes`): ([(metadata attribute, value)], nodes RecordBatch, (ctrl offsets,
/// ctrl, data offsets, data) int64 pyarrow arrays: node i's ctrl deps are
/// `ctrl[ctrl_offsets[i]:ctrl_offsets[i + 1]]`). A malformed file raises TraceError naming `path`
/// and the byte offset; so does an id, a dep or a time beyond int64 (naming the node).
#[pyfunction]
pub fn decode_chakra<'py>(py: Python<'py>, data: &[u8], path: &str) -> PyResult<ChakraNodes<'py>> {
    let mut cols = crate::chakra_nodes::NodeColumns::new();
    let meta = py
        .detach(|| crate::chakra_pb::decode_each(data, |n| cols.push(n)))
        .map_err(|(at, what)| match at {
            Some(at) => TraceError::new_err(format!("{path}: byte offset {at}: {what}")),
            None => TraceError::new_err(format!("{path}: {what}")),
        })?;
    let meta = attrs(py, &meta)?;
    let (nodes, deps) = node_columns(py, cols)?;
    Ok((meta, nodes, deps))
}

/// The nodes of a Chakra JSON file (`workload_graph`), streamed into node columns: ([(other
/// top-level key, JSON text)], nodes, deps) as `decode_chakra` gives them.
#[pyfunction]
pub fn read_chakra_json(py: Python<'_>, path: PathBuf) -> PyResult<ChakraNodes<'_>> {
    let mut cols = crate::chakra_nodes::NodeColumns::new();
    let header = py
        .detach(|| crate::chakra_nodes::read_chakra_json(&path, |n| cols.push(n)))
        .map_err(TraceError::new_err)?;
    let (nodes, deps) = node_columns(py, cols)?;
    Ok((pyo3::types::PyList::new(py, header)?.into_any(), nodes, deps))
}

/// An int64 pyarrow array's values (no nulls), borrowed.
fn int64_values<'a>(a: &'a pyo3_arrow::PyArray, what: &str) -> PyResult<&'a [i64]> {
    let col = a
        .array()
        .as_any()
        .downcast_ref::<Int64Array>()
        .filter(|c| c.null_count() == 0)
        .ok_or_else(|| PyValueError::new_err(format!("{what}: not an int64 array without nulls")))?;
    Ok(col.values())
}

/// (offsets, deps as indices of the kept nodes, order (indices): int32 pyarrow arrays;
/// reconnected; outside) or, on a cycle, the sorted ids of the nodes stuck on or after it.
type ResolvedDeps<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>, u64, u64);

/// An int32 pyarrow array of `values`.
fn int32_array(py: Python<'_>, values: Vec<i32>) -> PyResult<Bound<'_, PyAny>> {
    let array = pyo3_arrow::PyArray::from_array_ref(Arc::new(arrow_array::Int32Array::from(values)));
    let exported = array.to_pyarrow(py)?.unbind();
    Ok(exported.into_bound(py))
}

/// An int64 pyarrow array of `values`.
fn int64_array(py: Python<'_>, values: Vec<i64>) -> PyResult<Bound<'_, PyAny>> {
    let array = pyo3_arrow::PyArray::from_array_ref(Arc::new(Int64Array::from(values)));
    let exported = array.to_pyarrow(py)?.unbind();
    Ok(exported.into_bound(py))
}

/// The deps of one rank's kept nodes resolved through its dropped ones, and their order
/// (`crate::chakra_deps`). Lists are (offsets, values) int64 arrays. Returns (the resolved deps
/// or None, the stuck node ids on a cycle).
#[pyfunction]
pub fn resolve_chakra_deps<'py>(
    py: Python<'py>,
    ids: pyo3_arrow::PyArray,
    dep_offsets: pyo3_arrow::PyArray,
    deps: pyo3_arrow::PyArray,
    dropped_ids: pyo3_arrow::PyArray,
    dropped_offsets: pyo3_arrow::PyArray,
    dropped_deps: pyo3_arrow::PyArray,
) -> PyResult<(Option<ResolvedDeps<'py>>, Vec<i64>)> {
    let ids = int64_values(&ids, "ids")?;
    let deps = crate::chakra_deps::Lists {
        offsets: int64_values(&dep_offsets, "dep_offsets")?,
        values: int64_values(&deps, "deps")?,
    };
    let dropped_ids = int64_values(&dropped_ids, "dropped_ids")?;
    let dropped = crate::chakra_deps::Lists {
        offsets: int64_values(&dropped_offsets, "dropped_offsets")?,
        values: int64_values(&dropped_deps, "dropped_deps")?,
    };
    let out = py.detach(|| crate::chakra_deps::resolve(ids, &deps, dropped_ids, &dropped));
    Ok(match out {
        Ok(r) => {
            let arrays = (
                int32_array(py, r.offsets)?,
                int32_array(py, r.deps)?,
                int32_array(py, r.order)?,
            );
            (
                Some((arrays.0, arrays.1, arrays.2, r.reconnected, r.outside)),
                Vec::new(),
            )
        }
        Err(stuck) => (None, stuck),
    })
}
