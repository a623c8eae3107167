//! The PyO3 extension `tracesim._core`: converts Arrow in and out and maps errors.
//! The engine runs with the GIL released.

mod errors;
mod kineto;

use std::sync::Arc;

use arrow_array::{Float64Array, Int64Array, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema};
use pyo3::prelude::*;
use pyo3_arrow::{PyRecordBatch, PyTable};

use crate::memory::MemoryPlan;
use crate::model::ComputeMode;
use crate::{Group, Ops, SimOptions, System, Trace};

/// The table's batches; a table without rows may have none, so give it one empty batch.
fn batches_of(table: PyTable) -> Vec<RecordBatch> {
    let (batches, schema) = table.into_inner();
    if batches.is_empty() {
        vec![RecordBatch::new_empty(schema)]
    } else {
        batches
    }
}

fn load_trace(ops: PyTable, groups: Option<PyTable>, ranks: u32) -> crate::Result<Trace> {
    let ops = Ops::from_batches(&batches_of(ops))?;
    let groups: Vec<Group> = match groups {
        Some(g) => crate::trace::groups_from_batches(&batches_of(g))?,
        None => Vec::new(),
    };
    Ok(Trace { ranks, ops, groups })
}

/// Validates a trace: types, ids, deps, groups, collectives, send/recv and cycles.
#[pyfunction]
#[pyo3(signature = (ops, groups, ranks))]
fn validate(py: Python<'_>, ops: PyTable, groups: Option<PyTable>, ranks: u32) -> PyResult<()> {
    py.detach(|| {
        let trace = load_trace(ops, groups, ranks)?;
        crate::graph::validate(&trace).map(|_| ())
    })
    .map_err(errors::to_py)
}

/// (timeline, memory events, links, summary JSON, compute model name, network model name).
type SimulateOutput<'py> = (
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    String,
    String,
    String,
);

/// Replays a trace; returns (timeline, memory events, summary JSON, compute model, network model).
#[pyfunction]
#[pyo3(signature = (ops, groups, tensors, accesses, ranks, system_json, source_system_json, compute_model, network, allow_oom))]
#[allow(clippy::too_many_arguments)]
fn simulate<'py>(
    py: Python<'py>,
    ops: PyTable,
    groups: Option<PyTable>,
    tensors: Option<PyTable>,
    accesses: Option<PyTable>,
    ranks: u32,
    system_json: &str,
    source_system_json: Option<&str>,
    compute_model: &str,
    network: &str,
    allow_oom: bool,
) -> PyResult<SimulateOutput<'py>> {
    let system_json = system_json.to_owned();
    let source_json = source_system_json.map(str::to_owned);
    let options = SimOptions {
        compute: ComputeMode::parse(compute_model).map_err(errors::to_py)?,
        network: network.to_owned(),
    };
    let (batch, memory, links, summary, cm, nm) = py
        .detach(move || -> crate::Result<_> {
            let system = System::from_json(&system_json)?;
            let source = source_json.as_deref().map(System::from_json).transpose()?;
            let trace = load_trace(ops, groups, ranks)?;
            let plan = match tensors {
                Some(t) => {
                    let accesses = accesses.map(batches_of).unwrap_or_default();
                    Some(MemoryPlan::build(&trace.ops, trace.ranks, &batches_of(t), &accesses)?)
                }
                None => None,
            };
            let out =
                crate::simulate_with_memory(&trace, plan.as_ref(), &system, source.as_ref(), &options, allow_oom)?;
            let summary = serde_json::to_string(&out.summary).map_err(|e| crate::Error::Config(e.to_string()))?;
            let memory = memory_batch(&system, &out.memory_events)?;
            let links = links_batch(&out.links, out.summary.makespan_ns)?;
            let batch = timeline_batch(&trace, &system, out.schedule, out.energy_j, out.placement)?;
            Ok((batch, memory, links, summary, out.compute_model, out.network_model))
        })
        .map_err(errors::to_py)?;
    Ok((
        PyRecordBatch::new(batch).into_pyarrow(py)?,
        PyRecordBatch::new(memory).into_pyarrow(py)?,
        PyRecordBatch::new(links).into_pyarrow(py)?,
        summary,
        cm.to_owned(),
        nm.to_owned(),
    ))
}

/// Per-op durations from the compute model alone (null for collectives and send/recv).
#[pyfunction]
#[pyo3(signature = (ops, system_json, source_system_json, compute_model))]
fn op_times<'py>(
    py: Python<'py>,
    ops: PyTable,
    system_json: &str,
    source_system_json: Option<&str>,
    compute_model: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let system_json = system_json.to_owned();
    let source_json = source_system_json.map(str::to_owned);
    let mode = ComputeMode::parse(compute_model).map_err(errors::to_py)?;
    let times = py
        .detach(move || -> crate::Result<Vec<Option<i64>>> {
            let system = System::from_json(&system_json)?;
            let source = source_json.as_deref().map(System::from_json).transpose()?;
            let (batches, _) = ops.into_inner();
            let trace = Trace {
                ranks: 1,
                ops: Ops::from_batches(&batches)?,
                groups: Vec::new(),
            };
            crate::op_times(&trace, &system, source.as_ref(), mode)
        })
        .map_err(errors::to_py)?;
    let schema = Schema::new(vec![Field::new("duration_ns", DataType::Int64, true)]);
    let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(Int64Array::from(times))])
        .map_err(|e| errors::to_py(crate::Error::Config(e.to_string())))?;
    PyRecordBatch::new(batch).into_pyarrow(py)
}

/// memory.parquet: each change of a (rank, tier)'s occupancy, in replay order.
fn memory_batch(system: &System, events: &[crate::memory::MemoryEvent]) -> crate::Result<RecordBatch> {
    let schema = Schema::new(vec![
        Field::new("time_ns", DataType::Int64, false),
        Field::new("rank", DataType::UInt32, false),
        Field::new("tier", DataType::Utf8, false),
        Field::new("used_bytes", DataType::UInt64, false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.time_ns))),
            Arc::new(UInt32Array::from_iter_values(events.iter().map(|e| e.rank))),
            Arc::new(StringArray::from_iter_values(
                events.iter().map(|e| system.tier_name(e.tier)),
            )),
            Arc::new(arrow_array::UInt64Array::from_iter_values(
                events.iter().map(|e| e.used_bytes),
            )),
        ],
    )
    .map_err(|e| crate::Error::Config(format!("building the memory table: {e}")))
}

/// links.parquet: one row per directed fabric link.
fn links_batch(links: &crate::summary::LinkTraffic, makespan_ns: i64) -> crate::Result<RecordBatch> {
    let rows = &links.rows;
    let schema = Schema::new(vec![
        Field::new("rank", DataType::UInt32, true),
        Field::new("link", DataType::Utf8, false),
        Field::new("src", DataType::Utf8, false),
        Field::new("dst", DataType::Utf8, false),
        Field::new("bytes", DataType::Float64, false),
        Field::new("busy_ns", DataType::Int64, false),
        Field::new("utilisation", DataType::Float64, false),
        Field::new("energy_j", DataType::Float64, false),
    ]);
    let utilisation = |busy: i64| {
        if makespan_ns > 0 {
            busy as f64 / makespan_ns as f64
        } else {
            0.0
        }
    };
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.rank))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.level))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.src.as_str()))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.dst.as_str()))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.bytes))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.busy_ns))),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| utilisation(r.busy_ns)),
            )),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.energy_j))),
        ],
    )
    .map_err(|e| crate::Error::Config(format!("building the links table: {e}")))
}

/// The timeline table (DESIGN.md §5); schedule vectors become Arrow buffers without a copy.
fn timeline_batch(
    trace: &Trace,
    system: &System,
    s: crate::Schedule,
    energy_j: Vec<f64>,
    placement: Option<Vec<u8>>,
) -> crate::Result<RecordBatch> {
    let mut fields = vec![
        Field::new("op_id", DataType::UInt64, false),
        Field::new("rank", DataType::UInt32, false),
        Field::new("stream", DataType::UInt32, false),
        Field::new("start_ns", DataType::Int64, false),
        Field::new("end_ns", DataType::Int64, false),
        Field::new("ready_ns", DataType::Int64, false),
        Field::new("wait_ns", DataType::Int64, false),
        Field::new("energy_j", DataType::Float64, false),
    ];
    let strip = |a: &UInt32Array| UInt32Array::new(a.values().clone(), None);
    let start: arrow_array::ArrayRef = Arc::new(Int64Array::from(s.start_ns));
    // Without near-memory units every op starts when it is ready: ready_ns shares start_ns's
    // buffer (see Schedule).
    let ready: arrow_array::ArrayRef = match s.ready_ns {
        Some(r) => Arc::new(Int64Array::from(r)),
        None => start.clone(),
    };
    let mut columns: Vec<arrow_array::ArrayRef> = vec![
        Arc::new(arrow_array::UInt64Array::new(trace.ops.op_id.values().clone(), None)),
        Arc::new(strip(&trace.ops.rank)),
        Arc::new(strip(&trace.ops.stream)),
        start,
        Arc::new(Int64Array::from(s.end_ns)),
        ready,
        Arc::new(Int64Array::from(s.wait_ns)),
        Arc::new(Float64Array::from(energy_j)),
    ];
    if let Some(kinds) = placement {
        // Where each op ran: the GPU or a near-memory unit, one byte per op.
        let names = StringArray::from_iter_values((0..=system.nmc.len()).map(|k| system.device_kind_name(k as u8)));
        let keys = arrow_array::UInt8Array::from(kinds);
        let device = arrow_array::DictionaryArray::<arrow_array::types::UInt8Type>::try_new(keys, Arc::new(names))
            .map_err(|e| crate::Error::Config(format!("building the timeline's device column: {e}")))?;
        fields.push(Field::new(
            "device",
            DataType::Dictionary(Box::new(DataType::UInt8), Box::new(DataType::Utf8)),
            false,
        ));
        columns.push(Arc::new(device));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| crate::Error::Config(format!("building the timeline: {e}")))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(validate, m)?)?;
    m.add_function(wrap_pyfunction!(simulate, m)?)?;
    m.add_function(wrap_pyfunction!(op_times, m)?)?;
    m.add_function(wrap_pyfunction!(kineto::read_kineto_file, m)?)?;
    m.add_function(wrap_pyfunction!(kineto::map_kineto_rank, m)?)?;
    m.add_function(wrap_pyfunction!(kineto::kineto_innermost, m)?)?;
    m.add_function(wrap_pyfunction!(kineto::read_et_nodes, m)?)?;
    m.add_function(wrap_pyfunction!(kineto::decode_chakra, m)?)?;
    m.add_function(wrap_pyfunction!(kineto::read_chakra_json, m)?)?;
    m.add_function(wrap_pyfunction!(kineto::resolve_chakra_deps, m)?)?;
    m.add_class::<kineto::JsonListReader>()?;
    errors::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
