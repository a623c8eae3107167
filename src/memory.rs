//! The memory hierarchy during a replay: tensors placed in tiers by class (spilling to the
//! next tier when one is full), capacity tracked over time, and per-tier traffic.

use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{Array, RecordBatch, UInt32Array, UInt64Array};

use crate::error::{Error, Result, Table};
use crate::graph::IdMap;
use crate::system::System;
use crate::trace::Ops;

macro_rules! tensor_class {
    ($($variant:ident => $s:literal),+ $(,)?) => {
        /// What a tensor holds (DESIGN.md §2 `tensors.class`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum TensorClass { $($variant),+ }

        impl TensorClass {
            pub const ALL: &'static [TensorClass] = &[$(TensorClass::$variant),+];

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(TensorClass::$variant),)+ _ => None }
            }

            pub fn as_str(self) -> &'static str {
                match self { $(TensorClass::$variant => $s),+ }
            }
        }
    };
}

tensor_class!(
    Weight => "weight",
    Gradient => "gradient",
    OptimizerState => "optimizer_state",
    Activation => "activation",
    KvCache => "kv_cache",
    Workspace => "workspace",
    Input => "input",
    Other => "other",
);

fn tensors_error(column: &str, reason: impl std::fmt::Display) -> Error {
    Error::InvalidTrace {
        table: Table::Tensors,
        column: column.to_owned(),
        op_id: None,
        reason: reason.to_string(),
    }
}

fn accesses_error(column: &str, op_id: Option<u64>, reason: impl std::fmt::Display) -> Error {
    Error::InvalidTrace {
        table: Table::Accesses,
        column: column.to_owned(),
        op_id,
        reason: reason.to_string(),
    }
}

/// Tensors and accesses resolved to row indices of the ops table.
pub struct MemoryPlan {
    pub rank: Vec<u32>,
    pub bytes: Vec<u64>,
    pub class: Vec<TensorClass>,
    /// Tensors allocated when each op starts / freed when it ends, as compressed rows by op.
    alloc_offsets: Vec<u32>,
    alloc_list: Vec<u32>,
    free_offsets: Vec<u32>,
    free_list: Vec<u32>,
    /// Tensors resident from time 0.
    pub resident: Vec<u32>,
    /// Accesses by op: (tensor index, is_write, bytes).
    access_offsets: Vec<u32>,
    access_list: Vec<(u32, bool, u64)>,
}

fn csr(n: usize, pairs: &[(u32, u32)]) -> (Vec<u32>, Vec<u32>) {
    let mut offsets = vec![0u32; n + 1];
    for &(op, _) in pairs {
        offsets[op as usize + 1] += 1;
    }
    for i in 0..n {
        offsets[i + 1] += offsets[i];
    }
    let mut fill = offsets.clone();
    let mut list = vec![0u32; pairs.len()];
    for &(op, t) in pairs {
        list[fill[op as usize] as usize] = t;
        fill[op as usize] += 1;
    }
    (offsets, list)
}

fn u64_col<'a>(batch: &'a RecordBatch, name: &str, table: Table) -> Result<Option<&'a UInt64Array>> {
    let err = |reason: String| match table {
        Table::Accesses => accesses_error(name, None, reason),
        _ => tensors_error(name, reason),
    };
    match batch.column_by_name(name) {
        None => Ok(None),
        Some(a) => a
            .as_primitive_opt::<UInt64Type>()
            .map(Some)
            .ok_or_else(|| err(format!("has type {}, expected uint64", a.data_type()))),
    }
}

fn string_values(batch: &RecordBatch, name: &str, table: Table) -> Result<Vec<String>> {
    let col = batch.column_by_name(name).ok_or_else(|| match table {
        Table::Accesses => accesses_error(name, None, "missing required column"),
        _ => tensors_error(name, "missing required column"),
    })?;
    let s = col
        .as_string_opt::<i32>()
        .ok_or_else(|| tensors_error(name, "expected a string column"))?;
    Ok(s.iter().map(|v| v.unwrap_or_default().to_owned()).collect())
}

impl MemoryPlan {
    /// Resolves `tensors` and `accesses` (canonical schema, checked by the Python reader) against `ops`.
    pub fn build(ops: &Ops, ranks: u32, tensors: &[RecordBatch], accesses: &[RecordBatch]) -> Result<MemoryPlan> {
        let n = ops.len();
        let mut index: IdMap<u64, u32> = IdMap::default();
        index.reserve(n);
        for i in 0..n {
            index.insert(ops.id(i), i as u32);
        }
        let mut plan = MemoryPlan {
            rank: Vec::new(),
            bytes: Vec::new(),
            class: Vec::new(),
            alloc_offsets: vec![0; n + 1],
            alloc_list: Vec::new(),
            free_offsets: vec![0; n + 1],
            free_list: Vec::new(),
            resident: Vec::new(),
            access_offsets: vec![0; n + 1],
            access_list: Vec::new(),
        };
        let mut tensor_index: IdMap<u64, u32> = IdMap::default();
        let (mut allocs, mut frees) = (Vec::new(), Vec::new());
        for batch in tensors {
            let missing = |c: &str| tensors_error(c, "missing required column");
            let ids = u64_col(batch, "tensor_id", Table::Tensors)?.ok_or_else(|| missing("tensor_id"))?;
            let bytes = u64_col(batch, "bytes", Table::Tensors)?.ok_or_else(|| missing("bytes"))?;
            let rank_col = batch.column_by_name("rank").ok_or_else(|| missing("rank"))?;
            let rank: &UInt32Array = rank_col
                .as_primitive_opt()
                .ok_or_else(|| tensors_error("rank", format!("has type {}, expected uint32", rank_col.data_type())))?;
            let class = string_values(batch, "class", Table::Tensors)?;
            let alloc = u64_col(batch, "alloc_op", Table::Tensors)?;
            let free = u64_col(batch, "free_op", Table::Tensors)?;
            for row in 0..batch.num_rows() {
                let t = plan.rank.len() as u32;
                let id = ids.value(row);
                if tensor_index.insert(id, t).is_some() {
                    return Err(tensors_error("tensor_id", format!("duplicate tensor_id {id}")));
                }
                let r = rank.value(row);
                if r >= ranks {
                    return Err(tensors_error(
                        "rank",
                        format!("tensor_id {id}: rank {r} is outside 0..{}", ranks - 1),
                    ));
                }
                let c = TensorClass::parse(&class[row])
                    .ok_or_else(|| tensors_error("class", format!("tensor_id {id}: unknown class {:?}", class[row])))?;
                plan.rank.push(r);
                plan.bytes.push(bytes.value(row));
                plan.class.push(c);
                let lookup = |col: Option<&UInt64Array>, name: &str| -> Result<Option<u32>> {
                    match col {
                        Some(a) if a.is_valid(row) => {
                            let op = a.value(row);
                            index.get(&op).copied().map(Some).ok_or_else(|| {
                                tensors_error(name, format!("tensor_id {id}: op_id {op} is not in the trace"))
                            })
                        }
                        _ => Ok(None),
                    }
                };
                match lookup(alloc, "alloc_op")? {
                    Some(op) => allocs.push((op, t)),
                    None => plan.resident.push(t),
                }
                if let Some(op) = lookup(free, "free_op")? {
                    frees.push((op, t));
                }
            }
        }
        (plan.alloc_offsets, plan.alloc_list) = csr(n, &allocs);
        (plan.free_offsets, plan.free_list) = csr(n, &frees);

        let mut per_op: Vec<(u32, (u32, bool, u64))> = Vec::new();
        for batch in accesses {
            let missing = |c: &str| accesses_error(c, None, "missing required column");
            let op_ids = u64_col(batch, "op_id", Table::Accesses)?.ok_or_else(|| missing("op_id"))?;
            let tids = u64_col(batch, "tensor_id", Table::Accesses)?.ok_or_else(|| missing("tensor_id"))?;
            let modes = string_values(batch, "mode", Table::Accesses)?;
            let nbytes = u64_col(batch, "bytes", Table::Accesses)?;
            for row in 0..batch.num_rows() {
                let op_id = op_ids.value(row);
                let op = *index
                    .get(&op_id)
                    .ok_or_else(|| accesses_error("op_id", Some(op_id), "op is not in the trace"))?;
                let tid = tids.value(row);
                let t = *tensor_index.get(&tid).ok_or_else(|| {
                    accesses_error(
                        "tensor_id",
                        Some(op_id),
                        format!("tensor_id {tid} is not in tensors.parquet"),
                    )
                })?;
                let write = match modes[row].as_str() {
                    "read" => false,
                    "write" => true,
                    other => return Err(accesses_error("mode", Some(op_id), format!("unknown mode {other:?}"))),
                };
                let b = nbytes
                    .filter(|a| a.is_valid(row))
                    .map_or(plan.bytes[t as usize], |a| a.value(row));
                per_op.push((op, (t, write, b)));
            }
        }
        per_op.sort_by_key(|(op, _)| *op);
        let mut offsets = vec![0u32; n + 1];
        for (op, _) in &per_op {
            offsets[*op as usize + 1] += 1;
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        plan.access_offsets = offsets;
        plan.access_list = per_op.into_iter().map(|(_, a)| a).collect();
        Ok(plan)
    }

    pub fn tensors(&self) -> usize {
        self.rank.len()
    }

    pub fn allocs_at(&self, op: usize) -> &[u32] {
        &self.alloc_list[self.alloc_offsets[op] as usize..self.alloc_offsets[op + 1] as usize]
    }

    pub fn frees_at(&self, op: usize) -> &[u32] {
        &self.free_list[self.free_offsets[op] as usize..self.free_offsets[op + 1] as usize]
    }

    pub fn accesses_of(&self, op: usize) -> &[(u32, bool, u64)] {
        &self.access_list[self.access_offsets[op] as usize..self.access_offsets[op + 1] as usize]
    }

    pub fn has_accesses(&self) -> bool {
        !self.access_list.is_empty()
    }
}

/// One change of a tier's occupancy on a rank (a row of memory.parquet).
#[derive(Debug, Clone, Copy)]
pub struct MemoryEvent {
    pub time_ns: i64,
    pub rank: u32,
    pub tier: u8,
    pub used_bytes: u64,
}

/// Occupancy of every (rank, tier) as the replay runs.
pub struct MemoryState<'a> {
    pub plan: &'a MemoryPlan,
    tiers: usize,
    capacity: Vec<u64>,
    placement: Vec<Vec<u8>>,
    used: Vec<u64>,
    pub peak: Vec<u64>,
    pub tier_of: Vec<u8>,
    pub alloc_time: Vec<i64>,
    pub free_time: Vec<i64>,
    pub events: Vec<MemoryEvent>,
    allow_oom: bool,
    pub oom_warnings: Vec<String>,
}

impl<'a> MemoryState<'a> {
    pub fn new(plan: &'a MemoryPlan, system: &System, ranks: u32, allow_oom: bool) -> Result<MemoryState<'a>> {
        let tiers = system.device.memory.len();
        let capacity = system.device.memory.values().map(|t| t.capacity_bytes as u64).collect();
        let placement = TensorClass::ALL
            .iter()
            .map(|c| system.placement_of(*c))
            .collect::<Result<Vec<_>>>()?;
        let cells = ranks as usize * tiers;
        Ok(MemoryState {
            plan,
            tiers,
            capacity,
            placement,
            used: vec![0; cells],
            peak: vec![0; cells],
            tier_of: vec![u8::MAX; plan.tensors()],
            alloc_time: vec![0; plan.tensors()],
            free_time: vec![i64::MAX; plan.tensors()],
            events: Vec::new(),
            allow_oom,
            oom_warnings: Vec::new(),
        })
    }

    /// Places tensor `t` at `time`, allocated by op `op_id` (None: resident from the start).
    pub fn allocate(&mut self, t: u32, time: i64, op_id: Option<u64>, system: &System) -> Result<()> {
        let t_us = t as usize;
        let rank = self.plan.rank[t_us];
        let bytes = self.plan.bytes[t_us];
        let class = self.plan.class[t_us];
        let prefs = &self.placement[class as usize];
        let cell = |tier: u8| rank as usize * self.tiers + tier as usize;
        let fits = prefs
            .iter()
            .copied()
            .find(|&tier| self.used[cell(tier)] + bytes <= self.capacity[tier as usize]);
        let tier = match fits {
            Some(tier) => tier,
            None => {
                let tier = prefs[0];
                let name = system.tier_name(tier);
                let msg = format!(
                    "out of memory on rank {rank}, tier {name}: {} {} bytes at {} ({} of {} bytes in use; tiers tried: {})",
                    class.as_str(),
                    bytes,
                    op_id.map_or_else(|| "start (resident tensor)".to_owned(), |id| format!("op_id {id}")),
                    self.used[cell(tier)],
                    self.capacity[tier as usize],
                    prefs.iter().map(|&p| system.tier_name(p)).collect::<Vec<_>>().join(", ")
                );
                if !self.allow_oom {
                    return Err(Error::OutOfMemory(msg));
                }
                if self.oom_warnings.len() < 16 {
                    self.oom_warnings.push(msg);
                }
                tier
            }
        };
        let c = cell(tier);
        self.used[c] += bytes;
        self.peak[c] = self.peak[c].max(self.used[c]);
        self.tier_of[t_us] = tier;
        self.alloc_time[t_us] = time;
        self.events.push(MemoryEvent {
            time_ns: time,
            rank,
            tier,
            used_bytes: self.used[c],
        });
        Ok(())
    }

    pub fn free(&mut self, t: u32, time: i64) {
        let t_us = t as usize;
        let tier = self.tier_of[t_us];
        if tier == u8::MAX || self.free_time[t_us] != i64::MAX {
            return;
        }
        let rank = self.plan.rank[t_us];
        let c = rank as usize * self.tiers + tier as usize;
        self.used[c] -= self.plan.bytes[t_us];
        self.free_time[t_us] = time;
        self.events.push(MemoryEvent {
            time_ns: time,
            rank,
            tier,
            used_bytes: self.used[c],
        });
    }

    /// Seconds op `i` spends on memory given where its tensors live: tiers work in parallel,
    /// so the slowest tier bounds it. None when the op has no recorded accesses.
    pub fn memory_seconds(&self, op: usize, system: &System) -> Option<(f64, u64)> {
        let accesses = self.plan.accesses_of(op);
        if accesses.is_empty() {
            return None;
        }
        let mut per_tier = [0.0f64; 16];
        let mut total = 0u64;
        for &(t, write, bytes) in accesses {
            let tier = self.tier_of[t as usize];
            let tier = if tier == u8::MAX { system.primary_index() } else { tier };
            let spec = system.tier(tier);
            let bw = if write { spec.write_bw_bytes } else { spec.read_bw_bytes };
            if let Some(slot) = per_tier.get_mut(tier as usize) {
                *slot += bytes as f64 / bw;
            }
            total += bytes;
        }
        Some((per_tier.iter().copied().fold(0.0, f64::max), total))
    }

    pub fn tiers(&self) -> usize {
        self.tiers
    }

    pub fn peak_of(&self, rank: u32, tier: usize) -> u64 {
        self.peak[rank as usize * self.tiers + tier]
    }
}
