//! Column views of the canonical trace (DESIGN.md §2) over Arrow arrays, without copying
//! the numeric columns. String enum columns are parsed once into one byte per op.

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, ListArray, RecordBatch};
use arrow_array::{PrimitiveArray, UInt32Array, UInt64Array};
use std::sync::Arc;

use arrow_schema::DataType;

use crate::error::{Error, Result};

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$variant),)+ _ => None }
            }

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }

            fn allowed() -> String {
                [$($s),+].join(", ")
            }
        }
    };
}

string_enum!(
    /// What an op does, which decides how the engine schedules it.
    OpKind {
        Compute => "compute",
        Memory => "memory",
        Collective => "collective",
        Send => "send",
        Recv => "recv",
        Host => "host",
    }
);

string_enum!(
    CollKind {
        AllReduce => "all_reduce",
        AllGather => "all_gather",
        ReduceScatter => "reduce_scatter",
        AllToAll => "all_to_all",
        Broadcast => "broadcast",
        Reduce => "reduce",
        Barrier => "barrier",
    }
);

string_enum!(
    Dtype {
        Fp32 => "fp32",
        Tf32 => "tf32",
        Bf16 => "bf16",
        Fp16 => "fp16",
        Fp8 => "fp8",
        Fp4 => "fp4",
        Int8 => "int8",
    }
);

string_enum!(
    Category {
        Gemm => "gemm",
        Attention => "attention",
        Elementwise => "elementwise",
        Reduction => "reduction",
        Norm => "norm",
        Embedding => "embedding",
        Optimizer => "optimizer",
        Communication => "communication",
        Copy => "copy",
        Other => "other",
    }
);

string_enum!(
    Phase {
        Fwd => "fwd",
        Bwd => "bwd",
        Optim => "optim",
        Prefill => "prefill",
        Decode => "decode",
    }
);

/// A communicator: the ranks that take part in its collectives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub group_id: u32,
    pub ranks: Vec<u32>,
}

/// The ops table of a trace, as typed views over its Arrow columns.
pub struct Ops {
    pub op_id: UInt64Array,
    pub rank: UInt32Array,
    pub stream: UInt32Array,
    pub kind: Vec<OpKind>,
    pub category: Option<Vec<Option<Category>>>,
    pub dtype: Option<Vec<Option<Dtype>>>,
    pub flops: Option<Float64Array>,
    pub bytes_read: Option<UInt64Array>,
    pub bytes_written: Option<UInt64Array>,
    pub duration_ns: Option<Int64Array>,
    pub deps: Option<ListArray>,
    pub coll: Option<Vec<Option<CollKind>>>,
    pub group_id: Option<UInt32Array>,
    pub coll_seq: Option<UInt64Array>,
    pub comm_bytes: Option<UInt64Array>,
    pub peer: Option<UInt32Array>,
    pub p2p_seq: Option<UInt64Array>,
    pub iteration: Option<UInt32Array>,
    pub gemm_m: Option<UInt64Array>,
    pub gemm_n: Option<UInt64Array>,
    pub src_tier: Option<arrow_array::StringArray>,
    pub dst_tier: Option<arrow_array::StringArray>,
    /// The `phase` column as given, one array per batch: parsed only by what needs it
    /// ([`Ops::phases`]), so replays that do not pay nothing for it.
    pub phase: Option<Vec<ArrayRef>>,
}

/// A trace ready for validation and replay.
pub struct Trace {
    pub ranks: u32,
    pub ops: Ops,
    pub groups: Vec<Group>,
}

fn get<T: arrow_array::ArrowPrimitiveType>(a: &Option<PrimitiveArray<T>>, i: usize) -> Option<T::Native> {
    a.as_ref().and_then(|a| a.is_valid(i).then(|| a.value(i)))
}

impl Ops {
    pub fn len(&self) -> usize {
        self.op_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.op_id.is_empty()
    }

    pub fn id(&self, i: usize) -> u64 {
        self.op_id.value(i)
    }

    pub fn duration(&self, i: usize) -> Option<i64> {
        get(&self.duration_ns, i)
    }

    pub fn flops(&self, i: usize) -> Option<f64> {
        get(&self.flops, i)
    }

    pub fn bytes(&self, i: usize) -> Option<u64> {
        let r = get(&self.bytes_read, i);
        let w = get(&self.bytes_written, i);
        match (r, w) {
            (None, None) => None,
            (r, w) => Some(r.unwrap_or(0).saturating_add(w.unwrap_or(0))),
        }
    }

    pub fn bytes_read(&self, i: usize) -> Option<u64> {
        get(&self.bytes_read, i)
    }

    pub fn bytes_written(&self, i: usize) -> Option<u64> {
        get(&self.bytes_written, i)
    }

    pub fn dtype(&self, i: usize) -> Option<Dtype> {
        self.dtype.as_ref().and_then(|d| d[i])
    }

    pub fn category(&self, i: usize) -> Option<Category> {
        self.category.as_ref().and_then(|c| c[i])
    }

    /// The parsed `phase` column, if the trace has one.
    pub fn phases(&self) -> Result<Option<Vec<Option<Phase>>>> {
        match &self.phase {
            Some(chunks) => Ok(Some(parse_enum(
                &self.op_id,
                chunks,
                "phase",
                Phase::parse,
                Phase::allowed,
            )?)),
            None => Ok(None),
        }
    }

    pub fn coll(&self, i: usize) -> Option<CollKind> {
        self.coll.as_ref().and_then(|c| c[i])
    }

    pub fn group_id(&self, i: usize) -> Option<u32> {
        get(&self.group_id, i)
    }

    pub fn coll_seq(&self, i: usize) -> Option<u64> {
        get(&self.coll_seq, i)
    }

    pub fn comm_bytes(&self, i: usize) -> Option<u64> {
        get(&self.comm_bytes, i)
    }

    pub fn peer(&self, i: usize) -> Option<u32> {
        get(&self.peer, i)
    }

    pub fn p2p_seq(&self, i: usize) -> Option<u64> {
        get(&self.p2p_seq, i)
    }

    pub fn iteration(&self, i: usize) -> Option<u32> {
        get(&self.iteration, i)
    }

    /// The tiers a memory op moves bytes between, where both are given.
    pub fn tier_move(&self, i: usize) -> Option<(&str, &str)> {
        Some((tier_at(&self.src_tier, i)?, tier_at(&self.dst_tier, i)?))
    }

    /// Output shape (M, N) of a GEMM, 0 where unknown.
    pub fn gemm_mn(&self, i: usize) -> (u64, u64) {
        (get(&self.gemm_m, i).unwrap_or(0), get(&self.gemm_n, i).unwrap_or(0))
    }

    /// The op_ids this op depends on (nulls inside the list are rejected by validation).
    pub fn deps_of(&self, i: usize) -> &[u64] {
        match &self.deps {
            Some(list) if list.is_valid(i) => {
                let offsets = list.value_offsets();
                let (lo, hi) = (offsets[i] as usize, offsets[i + 1] as usize);
                let values = list.values().as_primitive::<UInt64Type>().values();
                &values[lo..hi]
            }
            _ => &[],
        }
    }

    /// Reads the ops table from Arrow record batches (concatenated when there are several).
    pub fn from_batches(batches: &[RecordBatch]) -> Result<Ops> {
        let batch = single_batch(batches)?;
        let op_id = required::<UInt64Type>(&batch, "op_id")?;
        if op_id.null_count() > 0 {
            let row = (0..op_id.len()).find(|&i| op_id.is_null(i)).unwrap_or(0);
            return Err(Error::ops("op_id", None, format!("null op_id in row {row}")));
        }
        let rank = required::<UInt32Type>(&batch, "rank")?;
        let stream = required::<UInt32Type>(&batch, "stream")?;
        no_nulls(&op_id, &rank, "rank")?;
        no_nulls(&op_id, &stream, "stream")?;
        // Enum columns are parsed batch by batch, never joined.
        let chunks =
            |name: &str| -> Option<Vec<ArrayRef>> { batches.iter().map(|b| b.column_by_name(name).cloned()).collect() };
        let kind_col = chunks("kind").ok_or_else(|| Error::ops("kind", None, "missing required column"))?;
        let kind = parse_enum(&op_id, &kind_col, "kind", OpKind::parse, OpKind::allowed)?;
        let mut kinds = Vec::with_capacity(kind.len());
        for (i, k) in kind.into_iter().enumerate() {
            kinds.push(k.ok_or_else(|| Error::ops("kind", Some(op_id.value(i)), "null in a required column"))?);
        }
        if find(&batch, "name").is_none() && batches.len() == 1 {
            return Err(Error::ops("name", None, "missing required column"));
        }
        let opt_enum = |name: &str| -> Result<Option<Vec<ArrayRef>>> { Ok(chunks(name)) };
        let category = match opt_enum("category")? {
            Some(a) => Some(parse_enum(&op_id, &a, "category", Category::parse, Category::allowed)?),
            None => None,
        };
        let dtype = match opt_enum("dtype")? {
            Some(a) => Some(parse_enum(&op_id, &a, "dtype", Dtype::parse, Dtype::allowed)?),
            None => None,
        };
        let coll = match opt_enum("coll")? {
            Some(a) => Some(parse_enum(&op_id, &a, "coll", CollKind::parse, CollKind::allowed)?),
            None => None,
        };
        let deps = match find(&batch, "deps") {
            None => None,
            Some(a) => {
                let list = a.as_list_opt::<i32>().ok_or_else(|| {
                    Error::ops(
                        "deps",
                        None,
                        format!("has type {}, expected list<uint64>", a.data_type()),
                    )
                })?;
                if list.values().data_type() != &DataType::UInt64 {
                    return Err(Error::ops(
                        "deps",
                        None,
                        format!("has type {}, expected list<uint64>", a.data_type()),
                    ));
                }
                if list.values().null_count() > 0 {
                    let offsets = list.value_offsets();
                    let values = list.values();
                    let row = (0..list.len())
                        .find(|&i| (offsets[i] as usize..offsets[i + 1] as usize).any(|j| values.is_null(j)))
                        .unwrap_or(0);
                    return Err(Error::ops(
                        "deps",
                        Some(op_id.value(row)),
                        "null inside the dependency list",
                    ));
                }
                Some(list.clone())
            }
        };
        Ok(Ops {
            rank,
            stream,
            kind: kinds,
            category,
            dtype,
            flops: optional::<Float64Type>(&batch, "flops")?,
            bytes_read: optional::<UInt64Type>(&batch, "bytes_read")?,
            bytes_written: optional::<UInt64Type>(&batch, "bytes_written")?,
            duration_ns: optional::<Int64Type>(&batch, "duration_ns")?,
            deps,
            coll,
            group_id: optional::<UInt32Type>(&batch, "group_id")?,
            coll_seq: optional::<UInt64Type>(&batch, "coll_seq")?,
            comm_bytes: optional::<UInt64Type>(&batch, "comm_bytes")?,
            peer: optional::<UInt32Type>(&batch, "peer")?,
            p2p_seq: optional::<UInt64Type>(&batch, "p2p_seq")?,
            iteration: optional::<UInt32Type>(&batch, "iteration")?,
            gemm_m: optional::<UInt64Type>(&batch, "gemm_m")?,
            gemm_n: optional::<UInt64Type>(&batch, "gemm_n")?,
            src_tier: string_column(&batch, "src_tier")?,
            dst_tier: string_column(&batch, "dst_tier")?,
            phase: chunks("phase"),
            op_id,
        })
    }
}

/// Reads the groups table: `group_id` uint32, `ranks` list<uint32>.
pub fn groups_from_batches(batches: &[RecordBatch]) -> Result<Vec<Group>> {
    let mut groups = Vec::new();
    for batch in batches {
        let ids = batch
            .column_by_name("group_id")
            .ok_or_else(|| Error::groups("group_id", "missing required column"))?;
        let ids = ids
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(|| Error::groups("group_id", format!("has type {}, expected uint32", ids.data_type())))?;
        let ranks = batch
            .column_by_name("ranks")
            .ok_or_else(|| Error::groups("ranks", "missing required column"))?;
        let mistyped = || {
            Error::groups(
                "ranks",
                format!("has type {}, expected list<uint32>", ranks.data_type()),
            )
        };
        let list = ranks.as_list_opt::<i32>().ok_or_else(mistyped)?;
        let values = list.values().as_primitive_opt::<UInt32Type>().ok_or_else(mistyped)?;
        for i in 0..batch.num_rows() {
            if ids.is_null(i) {
                return Err(Error::groups("group_id", format!("null group_id in row {i}")));
            }
            let gid = ids.value(i);
            if list.is_null(i) {
                return Err(Error::groups("ranks", format!("group {gid} has no rank list")));
            }
            let offsets = list.value_offsets();
            let (lo, hi) = (offsets[i] as usize, offsets[i + 1] as usize);
            if (lo..hi).any(|j| values.is_null(j)) {
                return Err(Error::groups("ranks", format!("group {gid} has a null rank")));
            }
            groups.push(Group {
                group_id: gid,
                ranks: values.values()[lo..hi].to_vec(),
            });
        }
    }
    Ok(groups)
}

fn single_batch(batches: &[RecordBatch]) -> Result<RecordBatch> {
    match batches {
        [] => Err(Error::ops("op_id", None, "the ops table has no record batches")),
        [one] => Ok(one.clone()),
        many => arrow_select_concat(many),
    }
}

/// Columns the engine reads as arrays; only these are joined when the table arrives in several
/// batches (enum columns are parsed batch by batch).
const ENGINE_COLUMNS: &[&str] = &[
    "op_id",
    "rank",
    "stream",
    "flops",
    "bytes_read",
    "bytes_written",
    "duration_ns",
    "deps",
    "coll",
    "group_id",
    "coll_seq",
    "comm_bytes",
    "peer",
    "p2p_seq",
    "iteration",
    "gemm_m",
    "gemm_n",
    "src_tier",
    "dst_tier",
];

fn arrow_select_concat(batches: &[RecordBatch]) -> Result<RecordBatch> {
    let full = batches[0].schema();
    if full.column_with_name("name").is_none() {
        return Err(Error::ops("name", None, "missing required column"));
    }
    let keep: Vec<usize> = (0..full.fields().len())
        .filter(|&c| ENGINE_COLUMNS.contains(&full.field(c).name().as_str()))
        .collect();
    let schema = Arc::new(full.project(&keep).map_err(|e| Error::ops("op_id", None, e))?);
    let mut columns = Vec::with_capacity(keep.len());
    for &c in &keep {
        let parts: Vec<&dyn Array> = batches.iter().map(|b| b.column(c).as_ref()).collect();
        let joined = arrow_select::concat::concat(&parts).map_err(|e| Error::ops(full.field(c).name(), None, e))?;
        columns.push(joined);
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| Error::ops("op_id", None, e))
}

fn find<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a ArrayRef> {
    batch.column_by_name(name)
}

fn type_name<T: arrow_array::ArrowPrimitiveType>() -> String {
    T::DATA_TYPE.to_string().to_lowercase()
}

fn required<T: arrow_array::ArrowPrimitiveType>(batch: &RecordBatch, name: &str) -> Result<PrimitiveArray<T>> {
    optional::<T>(batch, name)?.ok_or_else(|| Error::ops(name, None, "missing required column"))
}

fn optional<T: arrow_array::ArrowPrimitiveType>(batch: &RecordBatch, name: &str) -> Result<Option<PrimitiveArray<T>>> {
    match find(batch, name) {
        None => Ok(None),
        Some(a) => a.as_primitive_opt::<T>().cloned().map(Some).ok_or_else(|| {
            Error::ops(
                name,
                None,
                format!("has type {}, expected {}", a.data_type(), type_name::<T>()),
            )
        }),
    }
}

fn tier_at(a: &Option<arrow_array::StringArray>, i: usize) -> Option<&str> {
    a.as_ref().and_then(|a| a.is_valid(i).then(|| a.value(i)))
}

fn string_column(batch: &RecordBatch, name: &str) -> Result<Option<arrow_array::StringArray>> {
    match find(batch, name) {
        None => Ok(None),
        Some(a) => a
            .as_string_opt::<i32>()
            .cloned()
            .map(Some)
            .ok_or_else(|| Error::ops(name, None, format!("has type {}, expected string", a.data_type()))),
    }
}

fn no_nulls(op_id: &UInt64Array, col: &UInt32Array, name: &str) -> Result<()> {
    if col.null_count() == 0 {
        return Ok(());
    }
    let row = (0..col.len()).find(|&i| col.is_null(i)).unwrap_or(0);
    Err(Error::ops(name, Some(op_id.value(row)), "null in a required column"))
}

/// Parses a string column, given as one array per record batch, into enum values.
fn parse_enum<T: Copy>(
    op_id: &UInt64Array,
    chunks: &[ArrayRef],
    name: &str,
    parse: fn(&str) -> Option<T>,
    allowed: fn() -> String,
) -> Result<Vec<Option<T>>> {
    let mut out = Vec::with_capacity(op_id.len());
    for array in chunks {
        parse_enum_chunk(op_id, array, name, parse, allowed, &mut out)?;
    }
    Ok(out)
}

fn parse_enum_chunk<T: Copy>(
    op_id: &UInt64Array,
    array: &ArrayRef,
    name: &str,
    parse: fn(&str) -> Option<T>,
    allowed: fn() -> String,
    out: &mut Vec<Option<T>>,
) -> Result<()> {
    let offset = out.len();
    let mut push = |i: usize, s: Option<&str>| -> Result<()> {
        match s {
            None => out.push(None),
            Some(s) => match parse(s) {
                Some(v) => out.push(Some(v)),
                None => {
                    return Err(Error::ops(
                        name,
                        Some(op_id.value(offset + i)),
                        format!("unknown value {s:?}; expected one of: {}", allowed()),
                    ))
                }
            },
        }
        Ok(())
    };
    if let Some(a) = array.as_string_opt::<i32>() {
        for (i, s) in a.iter().enumerate() {
            push(i, s)?;
        }
    } else if let Some(a) = array.as_string_opt::<i64>() {
        for (i, s) in a.iter().enumerate() {
            push(i, s)?;
        }
    } else if let Some(a) = array.as_string_view_opt() {
        for (i, s) in a.iter().enumerate() {
            push(i, s)?;
        }
    } else if let Some(dict) = array.as_any_dictionary_opt() {
        // Dictionary-encoded strings (how Parquet stores them): parse each distinct value once.
        let values = dict.values();
        let Some(strings) = values.as_string_opt::<i32>() else {
            return Err(Error::ops(
                name,
                None,
                format!("has type {}, expected string", array.data_type()),
            ));
        };
        let parsed: Vec<Option<T>> = strings.iter().map(|v| v.and_then(parse)).collect();
        let keys = dict.normalized_keys();
        for (i, &k) in keys.iter().enumerate() {
            if array.is_null(i) {
                out.push(None);
                continue;
            }
            match parsed.get(k).copied().flatten() {
                Some(v) => out.push(Some(v)),
                None => {
                    let s = if k < strings.len() && strings.is_valid(k) {
                        strings.value(k)
                    } else {
                        ""
                    };
                    return Err(Error::ops(
                        name,
                        Some(op_id.value(offset + i)),
                        format!("unknown value {s:?}; expected one of: {}", allowed()),
                    ));
                }
            }
        }
    } else {
        return Err(Error::ops(
            name,
            None,
            format!("has type {}, expected string", array.data_type()),
        ));
    }
    Ok(())
}
