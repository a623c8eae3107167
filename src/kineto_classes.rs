//! Kineto events split by what the ingester makes of them (`tracesim.ingest.kineto`).
//!
//! The reader's columns ([`crate::kineto_json`]) hold every event; the ingester maps a few
//! classes (GPU ops, runtime calls, `record_param_comms`, CPU ops with recorded shapes,
//! ProfilerSteps) and counts the rest. Flow events only link launches to GPU ops, here. Classifying here and copying out each class
//! with only its columns means the whole-file columns never reach Python: they are freed before
//! the classes are handed over. Repeated strings (names, categories, threads) are dictionary
//! columns, each value held once.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, LargeStringBuilder, StringBuilder, StringDictionaryBuilder};
use arrow_array::types::Int32Type;
use arrow_array::{
    Array, ArrayRef, BooleanArray, Int64Array, LargeStringArray, RecordBatch, StringArray, StringViewArray,
};
use arrow_schema::{ArrowError, Field, Schema};

use crate::kineto_json::{KinetoColumns, KinetoJsonError};

/// Categories of GPU copies/fills, and of GPU ops (kernels and those).
const GPU_MEMORY_CATS: [&str; 4] = ["gpu_memcpy", "gpu_memset", "memcpy", "memset"];
const GPU_CATS: [&str; 5] = ["kernel", "gpu_memcpy", "gpu_memset", "memcpy", "memset"];
/// Categories of CUDA/HIP runtime and driver calls.
const RUNTIME_CATS: [&str; 3] = ["cuda_runtime", "runtime", "cuda_driver"];
/// Categories of CPU operators.
const CPU_OP_CATS: [&str; 2] = ["cpu_op", "operator"];
/// Phases of flow events.
const FLOW_PHASES: [&str; 3] = ["s", "f", "t"];

/// `gpu_kind` of GPU ops: a copy or fill (category), an NCCL kernel (name or category), else a
/// kernel.
const GPU_MEMORY: &str = "memory";
const GPU_NCCL: &str = "nccl";
const GPU_KERNEL: &str = "kernel";

/// The class an event is mapped to (`Other`: counted, not mapped).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Other,
    Gpu,
    Runtime,
    Comms,
    Recorded,
    Step,
    Flow,
}

/// A Kineto file's events by class, with what the ingester needs besides.
pub struct KinetoClasses {
    /// "us" or "ns": the unit of the file's `ts`/`dur`.
    pub unit: &'static str,
    /// (name, rows) per class: `gpu` (with `launch`, the row in `runtime` of the call that
    /// launched it, and `gpu_kind`: kernel, memory or nccl), `runtime`, `comms`, `recorded`,
    /// `steps`, and `cpu_all` when asked for (with `cpu_op`: an operator, not an annotation).
    /// Times (`ts`, `dur`) are absolute ns, `dur` clipped at 0.
    pub classes: Vec<(&'static str, RecordBatch)>,
    /// Events not mapped, counted by a description of their class, in order of first appearance.
    pub unmapped: Vec<(String, u64)>,
    pub distributed_info: Option<String>,
}

/// The time unit the ingester was told: `auto` reads `displayTimeUnit` and the times.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    Auto,
    Us,
    Ns,
}

/// Splits `cols` into classes (see [`KinetoClasses`]). `keep_cpu`: also every CPU operator and
/// annotation (`cpu_all`, in file order, with `has_dims` and the `rf_id`, `external_id` and
/// `concrete` args the reader kept for them).
pub fn split(
    cols: KinetoColumns,
    unit: TimeUnit,
    keep_cpu: bool,
    path: &str,
) -> Result<KinetoClasses, KinetoJsonError> {
    let err = |e: ArrowError| KinetoJsonError(format!("{path}: {e}"));
    let src = Source::new(&cols.events).map_err(err)?;
    let unit = match unit {
        TimeUnit::Us => "us",
        TimeUnit::Ns => "ns",
        // Kineto writes microseconds with decimals even when it displays nanoseconds.
        TimeUnit::Auto if cols.display_time_unit.as_deref() != Some("ns") => "us",
        TimeUnit::Auto => {
            let text = (0..src.rows).any(|r| src.ph.value(r) == "X" && (src.ts_text.value(r) || src.dur_text.value(r)));
            if text {
                "us"
            } else {
                "ns"
            }
        }
    };
    let (ts, dur) = if unit == "us" {
        (src.ts_us, src.dur_us)
    } else {
        (src.ts_ns, src.dur_ns)
    };

    // Per distinct category (there are a handful): its lowercase form's tests.
    let mut cat_flags: HashMap<&str, CatFlags> = HashMap::new();
    // Unmapped events grouped on what their description depends on, in order of first row.
    let mut groups: HashMap<(&str, &str, [bool; 5]), u64> = HashMap::new();
    let mut group_order: Vec<(&str, &str, [bool; 5])> = Vec::new();
    let mut class = Vec::with_capacity(src.rows);
    let mut keep_all = Vec::with_capacity(if keep_cpu { src.rows } else { 0 });
    let mut gpu_kind: Vec<&'static str> = Vec::new(); // of the GPU ops, in row order
    let mut cpu_op: Vec<bool> = Vec::new(); // of the rows of `cpu_all`, in row order
    for r in 0..src.rows {
        let (ph, name, cat) = (src.ph.value(r), src.name.value(r), src.cat.value(r));
        let cf = *cat_flags.entry(cat).or_insert_with(|| CatFlags::of(cat));
        let is_x = ph == "X";
        let is_flow = FLOW_PHASES.contains(&ph);
        let timed = is_x && ts.is_valid(r) && dur.is_valid(r);
        let is_nccl = name.starts_with("ncclKernel") || name.starts_with("ncclDevKernel") || cf.nccl;
        let is_gpu = timed && (cf.gpu || (is_nccl && !cf.runtime));
        let is_rt = timed && !is_gpu && cf.runtime;
        let other = timed && !is_gpu && !is_rt;
        let is_step = other && step_number(name).is_some() && !cf.gpu_prefix;
        let is_comms = other && !is_step && name == "record_param_comms";
        if keep_cpu {
            let keep = other && (cf.cpu_op || cf.annotation);
            keep_all.push(keep);
            if keep {
                cpu_op.push(cf.cpu_op);
            }
        }
        if is_gpu {
            gpu_kind.push(if cf.memory {
                GPU_MEMORY
            } else if is_nccl {
                GPU_NCCL
            } else {
                GPU_KERNEL
            });
        }
        let is_recorded = other && !is_step && !is_comms && cf.cpu_op && src.has_dims.value(r);
        class.push(if is_gpu {
            Class::Gpu
        } else if is_rt {
            Class::Runtime
        } else if is_comms {
            Class::Comms
        } else if is_recorded {
            Class::Recorded
        } else if is_step {
            Class::Step
        } else if is_flow && ts.is_valid(r) && src.id.is_valid(r) {
            Class::Flow
        } else {
            Class::Other
        });
        if !is_gpu && !is_rt {
            let g = (ph, cat, [is_flow, is_x, timed, is_step, is_comms]);
            match groups.get_mut(&g) {
                Some(n) => *n += 1,
                None => {
                    groups.insert(g, 1);
                    group_order.push(g);
                }
            }
        }
    }
    let mut unmapped = Unmapped::default();
    if cols.non_objects > 0 {
        unmapped.add("traceEvents element that is not an object".to_owned(), cols.non_objects);
    }
    for g in group_order {
        let n = groups.get(&g).copied().unwrap_or(0);
        let (ph, cat, [is_flow, is_x, timed, is_step, is_comms]) = g;
        let c_or = if cat.is_empty() { "no cat" } else { cat };
        let key = if is_flow {
            format!("flow event ({c_or})")
        } else if !is_x {
            if ph == "M" {
                "metadata event (ph M)".to_owned()
            } else {
                format!("ph {ph} event ({c_or})")
            }
        } else if !timed {
            format!("{c_or} (no ts/dur)")
        } else if is_step {
            format!("{cat} ProfilerStep (→ iteration column)")
        } else if is_comms {
            format!("{cat} record_param_comms (→ collective metadata)")
        } else {
            c_or.to_owned()
        };
        unmapped.add(key, n);
    }

    let rows_of = |c: Class| -> Vec<usize> { (0..src.rows).filter(|&r| class[r] == c).collect() };
    let (rt_rows, gpu_rows) = (rows_of(Class::Runtime), rows_of(Class::Gpu));
    let launch = launches(&src, ts, &rt_rows, &gpu_rows, &rows_of(Class::Flow));
    let ev = &["ts", "dur", "name", "cat", "pid", "tid"][..];
    let mut classes = vec![
        ("runtime", take(&src, ts, dur, &rt_rows, ev)),
        (
            "gpu",
            take(&src, ts, dur, &gpu_rows, &[ev, &["args", "stream", "bytes"]].concat()).and_then(|b| {
                let kind = dict_of(gpu_kind.iter().map(|k| Some(*k)));
                with_columns(
                    b,
                    vec![("launch", Arc::new(Int64Array::from(launch))), ("gpu_kind", kind)],
                )
            }),
        ),
        (
            "comms",
            take(&src, ts, dur, &rows_of(Class::Comms), &[ev, &["args"]].concat()),
        ),
        (
            "recorded",
            take(&src, ts, dur, &rows_of(Class::Recorded), &[ev, &["shapes"]].concat()),
        ),
        (
            "steps",
            take(&src, ts, dur, &rows_of(Class::Step), &["ts", "dur", "step_n"]),
        ),
    ];
    if keep_cpu {
        let rows: Vec<usize> = (0..src.rows).filter(|&r| keep_all[r]).collect();
        let batch = take(
            &src,
            ts,
            dur,
            &rows,
            &[ev, &["rf_id", "external_id", "concrete", "has_dims"]].concat(),
        )
        .and_then(|b| with_columns(b, vec![("cpu_op", Arc::new(BooleanArray::from(cpu_op)))]));
        classes.push(("cpu_all", batch));
    }
    let classes = classes
        .into_iter()
        .map(|(n, b)| b.map(|b| (n, b)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    Ok(KinetoClasses {
        unit,
        classes,
        unmapped: unmapped
            .order
            .into_iter()
            .map(|k| {
                let n = unmapped.count.get(&k).copied().unwrap_or(0);
                (k, n)
            })
            .collect(),
        distributed_info: cols.distributed_info,
    })
}

/// What the classes need of a category (compared lowercase).
#[derive(Clone, Copy)]
struct CatFlags {
    gpu: bool,
    memory: bool,
    runtime: bool,
    nccl: bool,
    cpu_op: bool,
    annotation: bool,
    gpu_prefix: bool,
}

impl CatFlags {
    fn of(cat: &str) -> Self {
        let lc = cat.to_lowercase();
        CatFlags {
            gpu: GPU_CATS.contains(&lc.as_str()),
            memory: GPU_MEMORY_CATS.contains(&lc.as_str()),
            runtime: RUNTIME_CATS.contains(&lc.as_str()),
            nccl: lc.contains("nccl"),
            cpu_op: CPU_OP_CATS.contains(&lc.as_str()),
            annotation: lc == "user_annotation",
            gpu_prefix: lc.starts_with("gpu_"),
        }
    }
}

/// Where an event is: (pid, tid, ts).
type At<'s> = (&'s str, &'s str, i64);
/// A flow's last `s` and last `f` event.
type FlowEnds<'s> = (Option<At<'s>>, Option<At<'s>>);

/// For each GPU op (of `gpu_rows`), the position in `rt_rows` of the runtime call that launched
/// it: the call with its `args.correlation` (the last such call), else the one at the start of a
/// flow (`s`/`f` events of one (cat, id); the last of each phase) that ends at the GPU op, a call
/// or GPU op at a flow end being the last one at that (pid, tid, ts); when several flows reach a
/// GPU op, the one whose (cat, id) came first in the file.
fn launches(
    src: &Source<'_>,
    ts: &Int64Array,
    rt_rows: &[usize],
    gpu_rows: &[usize],
    flow_rows: &[usize],
) -> Vec<Option<i64>> {
    let mut by_corr: HashMap<&str, usize> = HashMap::new();
    for (k, &r) in rt_rows.iter().enumerate() {
        if src.correlation.is_valid(r) {
            by_corr.insert(src.correlation.value(r), k);
        }
    }
    let mut launch: Vec<Option<usize>> = gpu_rows
        .iter()
        .map(|&r| {
            src.correlation
                .is_valid(r)
                .then(|| by_corr.get(src.correlation.value(r)).copied())
                .flatten()
        })
        .collect();
    if !flow_rows.is_empty() && launch.iter().any(Option::is_none) {
        let at = |r: usize| -> At<'_> { (src.pid.value(r), src.tid.value(r), ts.value(r)) };
        // (cat, id) → (s end, f end), in order of first appearance.
        let mut ends: HashMap<(&str, &str), FlowEnds<'_>> = HashMap::new();
        let mut order: Vec<(&str, &str)> = Vec::new();
        for &r in flow_rows {
            let key = (src.cat.value(r), src.id.value(r));
            let e = ends.entry(key).or_insert_with(|| {
                order.push(key);
                (None, None)
            });
            match src.ph.value(r) {
                "s" => e.0 = Some(at(r)),
                "f" => e.1 = Some(at(r)),
                _ => {}
            }
        }
        let mut rt_at: HashMap<At<'_>, usize> = HashMap::new();
        for (k, &r) in rt_rows.iter().enumerate() {
            rt_at.insert(at(r), k);
        }
        let mut gpu_at: HashMap<At<'_>, usize> = HashMap::new();
        for (j, &r) in gpu_rows.iter().enumerate() {
            gpu_at.insert(at(r), j);
        }
        let by_correlation: Vec<bool> = launch.iter().map(Option::is_some).collect();
        let mut by_flow = vec![false; launch.len()];
        for key in order {
            if let Some((Some(s), Some(f))) = ends.get(&key) {
                if let (Some(&k), Some(&j)) = (rt_at.get(s), gpu_at.get(f)) {
                    if !by_correlation[j] && !by_flow[j] {
                        launch[j] = Some(k);
                        by_flow[j] = true;
                    }
                }
            }
        }
    }
    launch
        .into_iter()
        .map(|k| k.and_then(|k| i64::try_from(k).ok()))
        .collect()
}

/// The N of `ProfilerStep#N` (ASCII digits), as its text.
fn step_number(name: &str) -> Option<&str> {
    let n = name.strip_prefix("ProfilerStep#")?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(n)
}

/// Counts by key, keys in order of first appearance.
#[derive(Default)]
struct Unmapped {
    order: Vec<String>,
    count: HashMap<String, u64>,
}

impl Unmapped {
    fn add(&mut self, key: String, n: u64) {
        match self.count.get_mut(&key) {
            Some(c) => *c += n,
            None => {
                self.count.insert(key.clone(), n);
                self.order.push(key);
            }
        }
    }
}

/// The reader's columns, typed.
struct Source<'a> {
    rows: usize,
    ph: &'a StringViewArray,
    name: &'a StringViewArray,
    cat: &'a StringViewArray,
    pid: &'a StringViewArray,
    tid: &'a StringViewArray,
    ts_us: &'a Int64Array,
    ts_ns: &'a Int64Array,
    ts_text: &'a BooleanArray,
    dur_us: &'a Int64Array,
    dur_ns: &'a Int64Array,
    dur_text: &'a BooleanArray,
    id: &'a StringArray,
    correlation: &'a StringArray,
    stream: &'a StringArray,
    bytes: &'a Int64Array,
    has_dims: &'a BooleanArray,
    args: &'a LargeStringArray,
    shapes: &'a StringViewArray,
    /// Of `args`, when the reader kept them (`keep_ids`): `rf_id`, `external_id`, `concrete`.
    ids: Option<[&'a StringArray; 3]>,
}

fn column<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T, ArrowError> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| ArrowError::SchemaError(format!("the reader gave no column '{name}' of the expected type")))
}

impl<'a> Source<'a> {
    fn new(b: &'a RecordBatch) -> Result<Self, ArrowError> {
        Ok(Source {
            rows: b.num_rows(),
            ph: column(b, "ph")?,
            name: column(b, "name")?,
            cat: column(b, "cat")?,
            pid: column(b, "pid")?,
            tid: column(b, "tid")?,
            ts_us: column(b, "ts_us")?,
            ts_ns: column(b, "ts_ns")?,
            ts_text: column(b, "ts_text")?,
            dur_us: column(b, "dur_us")?,
            dur_ns: column(b, "dur_ns")?,
            dur_text: column(b, "dur_text")?,
            id: column(b, "id")?,
            correlation: column(b, "correlation")?,
            stream: column(b, "stream")?,
            bytes: column(b, "bytes")?,
            has_dims: column(b, "has_dims")?,
            args: column(b, "args")?,
            shapes: column(b, "shapes")?,
            ids: match b.column_by_name("rf_id") {
                Some(_) => Some([column(b, "rf_id")?, column(b, "external_id")?, column(b, "concrete")?]),
                None => None,
            },
        })
    }
}

/// A dictionary column of `values`.
fn dict_of<'s>(values: impl Iterator<Item = Option<&'s str>>) -> ArrayRef {
    let mut b = StringDictionaryBuilder::<Int32Type>::new();
    for v in values {
        b.append_option(v);
    }
    Arc::new(b.finish())
}

/// `batch` with `extra` columns after its own.
fn with_columns(batch: RecordBatch, extra: Vec<(&str, ArrayRef)>) -> Result<RecordBatch, ArrowError> {
    let mut fields = batch.schema().fields().to_vec();
    let mut cols = batch.columns().to_vec();
    for (name, col) in extra {
        fields.push(Arc::new(Field::new(name, col.data_type().clone(), true)));
        cols.push(col);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
}

/// The rows `rows` of `src`, with the columns `names`: `ts`/`dur` in ns (`dur` ≥ 0), repeated
/// strings as dictionaries, `step_n` the N of `ProfilerStep#N`.
fn take(
    src: &Source<'_>,
    ts: &Int64Array,
    dur: &Int64Array,
    rows: &[usize],
    names: &[&str],
) -> Result<RecordBatch, ArrowError> {
    let dict = |a: &StringViewArray| dict_of(rows.iter().map(|&r| a.is_valid(r).then(|| a.value(r))));
    let dict_utf8 = |a: &StringArray| dict_of(rows.iter().map(|&r| a.is_valid(r).then(|| a.value(r))));
    let int = |a: &Int64Array, clip: bool| -> ArrayRef {
        let mut b = Int64Builder::with_capacity(rows.len());
        for &r in rows {
            b.append_option(a.is_valid(r).then(|| if clip { a.value(r).max(0) } else { a.value(r) }));
        }
        Arc::new(b.finish())
    };
    let mut fields = Vec::with_capacity(names.len());
    let mut arrays = Vec::with_capacity(names.len());
    for &n in names {
        let a: ArrayRef = match n {
            "ts" => int(ts, false),
            "dur" => int(dur, true),
            "name" => dict(src.name),
            "cat" => dict(src.cat),
            "pid" => dict(src.pid),
            "tid" => dict(src.tid),
            "shapes" => dict(src.shapes),
            "stream" => dict_utf8(src.stream),
            "args" => {
                let mut b = LargeStringBuilder::new();
                for &r in rows {
                    b.append_option(src.args.is_valid(r).then(|| src.args.value(r)));
                }
                Arc::new(b.finish())
            }
            "bytes" => int(src.bytes, false),
            "has_dims" => Arc::new(BooleanArray::from_iter(
                rows.iter().map(|&r| Some(src.has_dims.value(r))),
            )),
            "rf_id" | "external_id" | "concrete" => {
                let i = ["rf_id", "external_id", "concrete"]
                    .iter()
                    .position(|k| *k == n)
                    .unwrap_or(0);
                let mut b = StringBuilder::new();
                for &r in rows {
                    let col = src.ids.map(|ids| ids[i]);
                    b.append_option(col.and_then(|c| c.is_valid(r).then(|| c.value(r))));
                }
                Arc::new(b.finish())
            }
            "step_n" => {
                let mut b = StringBuilder::new();
                for &r in rows {
                    b.append_option(step_number(src.name.value(r)));
                }
                Arc::new(b.finish())
            }
            other => return Err(ArrowError::SchemaError(format!("no class column '{other}'"))),
        };
        fields.push(Field::new(n, a.data_type().clone(), true));
        arrays.push(a);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kineto_json::read_kineto;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;

    fn classes(text: &str, unit: TimeUnit) -> KinetoClasses {
        let cols = read_kineto(text.as_bytes(), "t.json", false).expect("reads");
        split(cols, unit, false, "t.json").expect("splits")
    }

    fn class<'c>(c: &'c KinetoClasses, name: &str) -> &'c RecordBatch {
        &c.classes.iter().find(|(n, _)| *n == name).expect("class").1
    }

    const TRACE: &str = r#"{"displayTimeUnit": "ns", "traceEvents": [
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": 10, "dur": 5, "args": {"correlation": 7}},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": 20, "dur": 5},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": 30, "dur": 5},
        {"ph": "X", "cat": "Kernel", "name": "a", "pid": 0, "tid": 7, "ts": 16, "dur": 3, "args": {"correlation": 7, "stream": 7}},
        {"ph": "X", "cat": "kernel", "name": "b", "pid": 0, "tid": 7, "ts": 26, "dur": -4},
        {"ph": "X", "cat": "gpu_user_annotation", "name": "ncclDevKernel_x", "pid": 0, "tid": 8, "ts": 40, "dur": 2},
        {"ph": "s", "cat": "ac2g", "id": 2, "pid": 1, "tid": 1, "ts": 30},
        {"ph": "f", "cat": "ac2g", "id": 2, "pid": 0, "tid": 7, "ts": 26},
        {"ph": "s", "cat": "ac2g", "id": 1, "pid": 1, "tid": 1, "ts": 20},
        {"ph": "f", "cat": "ac2g", "id": 1, "pid": 0, "tid": 7, "ts": 26},
        {"ph": "s", "cat": "ac2g", "id": 3, "pid": 1, "tid": 1, "ts": 30},
        {"ph": "f", "cat": "ac2g", "id": 3, "pid": 0, "tid": 7, "ts": 16},
        {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#12", "pid": 1, "tid": 1, "ts": 0, "dur": 50},
        {"ph": "X", "cat": "cpu_op", "name": "record_param_comms", "pid": 1, "tid": 1, "ts": 1, "dur": 2},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, "ts": 2, "dur": 2, "args": {"Input Dims": [[2, 2]]}},
        {"ph": "X", "cat": "cpu_op", "name": "aten::add", "pid": 1, "tid": 1, "ts": 3, "dur": 2},
        {"ph": "X", "cat": "", "name": "x", "pid": 1, "tid": 1, "ts": 3},
        {"ph": "X", "cat": "cpu_op", "name": "y", "pid": 1, "tid": 1},
        {"ph": "M", "name": "process_name"}, 5
    ]}"#;

    #[test]
    fn classes_launches_and_counts() {
        let c = classes(TRACE, TimeUnit::Auto);
        assert_eq!(c.unit, "ns"); // displayed in ns, integer times
        let gpu = class(&c, "gpu");
        assert_eq!(gpu.num_rows(), 3); // by category (any case), and an NCCL kernel by name
        let launch = gpu
            .column_by_name("launch")
            .expect("launch")
            .as_primitive::<Int64Type>();
        // `a` by correlation (its flow 3 is ignored); `b` by the flow whose id came first (2)
        assert_eq!((launch.value(0), launch.value(1)), (0, 2));
        assert!(launch.is_null(2));
        let kind = gpu
            .column_by_name("gpu_kind")
            .expect("gpu_kind")
            .as_dictionary::<Int32Type>();
        let words = kind.values().as_string::<i32>();
        let kinds: Vec<&str> = kind
            .keys()
            .iter()
            .map(|k| words.value(k.unwrap_or(0) as usize))
            .collect();
        assert_eq!(kinds, ["kernel", "kernel", "nccl"]);
        let dur = gpu.column_by_name("dur").expect("dur").as_primitive::<Int64Type>();
        assert_eq!(dur.value(1), 0); // clipped
        assert_eq!(class(&c, "runtime").num_rows(), 3);
        assert_eq!(class(&c, "steps").num_rows(), 1);
        assert_eq!(class(&c, "comms").num_rows(), 1);
        assert_eq!(class(&c, "recorded").num_rows(), 1);
        let keys: Vec<(&str, u64)> = c.unmapped.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        assert_eq!(
            keys,
            [
                ("traceEvents element that is not an object", 1),
                ("flow event (ac2g)", 6),
                ("user_annotation ProfilerStep (→ iteration column)", 1),
                ("cpu_op record_param_comms (→ collective metadata)", 1),
                ("cpu_op", 2),
                ("no cat", 1), // no dur: 0
                ("cpu_op (no ts/dur)", 1),
                ("metadata event (ph M)", 1),
            ]
        );
    }

    #[test]
    fn time_units() {
        let with_fraction = TRACE.replace("\"ts\": 16,", "\"ts\": 16.5,");
        assert_eq!(classes(&with_fraction, TimeUnit::Auto).unit, "us");
        assert_eq!(classes(&with_fraction, TimeUnit::Ns).unit, "ns");
        let us = classes(TRACE, TimeUnit::Us);
        let ts = class(&us, "gpu")
            .column_by_name("ts")
            .expect("ts")
            .as_primitive::<Int64Type>();
        assert_eq!(ts.value(0), 16_000);
        assert_eq!(classes(&TRACE.replace("\"ns\"", "\"ms\""), TimeUnit::Auto).unit, "us");
    }
}
