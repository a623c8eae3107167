//! Metrics of a replay: per-rank time breakdown, iterations, energy and MFU (DESIGN.md §5).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::engine::Schedule;
use crate::graph::{Graph, NONE};
use crate::model::NetworkModel;
use crate::system::System;
use crate::trace::{CollKind, Dtype, OpKind, Trace};

#[derive(Debug, Clone, Serialize)]
pub struct RankSummary {
    pub rank: u32,
    pub end_ns: i64,
    /// Union of the rank's compute and memory op spans.
    pub compute_ns: i64,
    /// Union of its collective and send/recv spans, waits included.
    pub comm_ns: i64,
    /// Communication time not hidden under compute.
    pub exposed_comm_ns: i64,
    /// Time its collectives and send/recv spent waiting for other ranks.
    pub wait_ns: i64,
    /// Time within the makespan when no device op of the rank runs.
    pub idle_ns: i64,
    pub ops: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IterationSummary {
    pub iteration: u32,
    pub start_ns: i64,
    pub end_ns: i64,
    pub step_ns: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EnergyBreakdown {
    pub compute: f64,
    pub memory: f64,
    pub network: f64,
    #[serde(rename = "static")]
    pub static_: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub makespan_ns: i64,
    pub start_ns: i64,
    pub end_ns: i64,
    pub ops: u64,
    pub ranks: Vec<RankSummary>,
    pub iterations: Vec<IterationSummary>,
    pub energy_j: f64,
    pub energy_breakdown_j: EnergyBreakdown,
    pub total_flops: f64,
    pub mfu: Option<f64>,
    pub warnings: Vec<String>,
}

/// Per-op energy in joules, and the breakdown without static power.
pub fn op_energy(
    trace: &Trace,
    graph: &Graph,
    system: &System,
    network: &dyn NetworkModel,
) -> (Vec<f64>, EnergyBreakdown) {
    let ops = &trace.ops;
    let mut energy = vec![0.0; ops.len()];
    let mut total = EnergyBreakdown::default();
    let tier = system.primary_tier();
    let rdv = &graph.rendezvous;
    for (i, e) in energy.iter_mut().enumerate() {
        match ops.kind[i] {
            OpKind::Compute | OpKind::Memory => {
                let flops = ops.flops(i).filter(|f| f.is_finite() && *f > 0.0).unwrap_or(0.0);
                let compute = flops * system.energy_pj_per_flop(ops.dtype(i)) * 1e-12;
                let read = ops.bytes_read.as_ref().map_or(0, |a| arrow_value(a, i)) as f64;
                let written = ops.bytes_written.as_ref().map_or(0, |a| arrow_value(a, i)) as f64;
                let memory = tier.map_or(0.0, |t| {
                    (read * t.read_energy_pj_per_bit + written * t.write_energy_pj_per_bit) * 8.0 * 1e-12
                });
                total.compute += compute;
                total.memory += memory;
                *e = compute + memory;
            }
            OpKind::Collective | OpKind::Send | OpKind::Recv => {
                let c = graph.instance_of[i] as usize;
                let bytes = ops.comm_bytes(i).unwrap_or(0);
                let net = if rdv.group[c] == NONE {
                    // The sender pays for the message once.
                    if ops.kind[i] == OpKind::Send {
                        network.p2p_energy_j(bytes, ops.rank.value(i), ops.peer(i).unwrap_or(0))
                    } else {
                        0.0
                    }
                } else {
                    let ranks = &trace.groups[rdv.group[c] as usize].ranks;
                    network.collective_energy_j(ops.coll(i).unwrap_or(CollKind::Barrier), bytes, ranks)
                };
                total.network += net;
                *e = net;
            }
            OpKind::Host => {}
        }
    }
    (energy, total)
}

fn arrow_value(a: &arrow_array::UInt64Array, i: usize) -> u64 {
    use arrow_array::Array;
    if a.is_valid(i) {
        a.value(i)
    } else {
        0
    }
}

/// Length of a union of intervals that arrive sorted by start.
fn union_into(sorted: &[(i64, i64)], out: &mut Vec<(i64, i64)>) -> i64 {
    out.clear();
    for &(s, e) in sorted {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out.iter().map(|(s, e)| e - s).sum()
}

fn overlap(a: &[(i64, i64)], b: &[(i64, i64)]) -> i64 {
    let (mut i, mut j, mut total) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        let lo = a[i].0.max(b[j].0);
        let hi = a[i].1.min(b[j].1);
        if hi > lo {
            total += hi - lo;
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    total
}

pub fn summarize(
    trace: &Trace,
    graph: &Graph,
    system: &System,
    schedule: &Schedule,
    energy: EnergyBreakdown,
    mut warnings: Vec<String>,
) -> Summary {
    let ops = &trace.ops;
    let n = ops.len();
    let start_ns = schedule.start_ns.iter().copied().min().unwrap_or(0);
    let end_ns = schedule.end_ns.iter().copied().max().unwrap_or(0);
    let makespan = end_ns - start_ns;

    let mut ranks: Vec<RankSummary> = (0..trace.ranks)
        .map(|rank| RankSummary {
            rank,
            end_ns: start_ns,
            compute_ns: 0,
            comm_ns: 0,
            exposed_comm_ns: 0,
            wait_ns: 0,
            idle_ns: makespan,
            ops: 0,
        })
        .collect();
    // Streams are walked in execution order, so each stream contributes a sorted run and the
    // stable sort below only merges runs.
    let mut by_rank: Vec<Vec<u32>> = vec![Vec::new(); trace.ranks as usize];
    for &h in &graph.stream_heads {
        by_rank[ops.rank.value(h as usize) as usize].push(h);
    }
    let (mut compute, mut comm, mut busy) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cu, mut mu, mut bu) = (Vec::new(), Vec::new(), Vec::new());
    for (r, heads) in by_rank.iter().enumerate() {
        compute.clear();
        comm.clear();
        busy.clear();
        let rs = &mut ranks[r];
        for &h in heads {
            let mut i = h;
            while i != NONE {
                let k = i as usize;
                let span = (schedule.start_ns[k], schedule.end_ns[k]);
                rs.ops += 1;
                rs.end_ns = rs.end_ns.max(span.1);
                match ops.kind[k] {
                    OpKind::Compute | OpKind::Memory => {
                        compute.push(span);
                        busy.push(span);
                    }
                    OpKind::Collective | OpKind::Send | OpKind::Recv => {
                        comm.push(span);
                        busy.push(span);
                        rs.wait_ns += schedule.wait_ns[k];
                    }
                    OpKind::Host => {}
                }
                i = graph.stream_next[k];
            }
        }
        compute.sort_by_key(|s| s.0);
        comm.sort_by_key(|s| s.0);
        busy.sort_by_key(|s| s.0);
        rs.compute_ns = union_into(&compute, &mut cu);
        rs.comm_ns = union_into(&comm, &mut mu);
        rs.exposed_comm_ns = rs.comm_ns - overlap(&mu, &cu);
        rs.idle_ns = makespan - union_into(&busy, &mut bu);
    }

    let mut iterations: BTreeMap<u32, (i64, i64)> = BTreeMap::new();
    if ops.iteration.is_some() {
        for i in 0..n {
            if let Some(it) = ops.iteration(i) {
                let e = iterations.entry(it).or_insert((i64::MAX, i64::MIN));
                e.0 = e.0.min(schedule.start_ns[i]);
                e.1 = e.1.max(schedule.end_ns[i]);
            }
        }
    }
    let iterations = iterations
        .into_iter()
        .map(|(iteration, (s, e))| IterationSummary {
            iteration,
            start_ns: s,
            end_ns: e,
            step_ns: e - s,
        })
        .collect();

    // MFU against the peak of the dtype that carries most of the FLOPs.
    let mut flops_by_dtype: BTreeMap<Option<Dtype>, f64> = BTreeMap::new();
    for i in 0..n {
        if let Some(f) = ops.flops(i).filter(|f| f.is_finite() && *f > 0.0) {
            *flops_by_dtype.entry(ops.dtype(i)).or_default() += f;
        }
    }
    let total_flops: f64 = flops_by_dtype.values().sum();
    let main_dtype = flops_by_dtype
        .iter()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .and_then(|(d, _)| *d);
    let mfu = match system.peak_flops(main_dtype) {
        Some(peak) if total_flops > 0.0 && makespan > 0 => {
            Some(total_flops / (makespan as f64 * 1e-9 * peak * f64::from(trace.ranks)))
        }
        _ => None,
    };

    let static_j = system.device.static_power_w * f64::from(trace.ranks) * makespan as f64 * 1e-9;
    let energy = EnergyBreakdown {
        static_: static_j,
        ..energy
    };
    if schedule.untimed_ops > 0 {
        warnings.push(format!(
            "{} ops had no measured duration and no flops/bytes to model; they took 0 ns",
            schedule.untimed_ops
        ));
    }
    if schedule.unsized_comm_ops > 0 {
        warnings.push(format!(
            "{} communication ops had no comm_bytes and were modelled as moving 0 bytes",
            schedule.unsized_comm_ops
        ));
    }
    Summary {
        makespan_ns: makespan,
        start_ns,
        end_ns,
        ops: n as u64,
        ranks,
        iterations,
        energy_j: energy.compute + energy.memory + energy.network + energy.static_,
        energy_breakdown_j: energy,
        total_flops,
        mfu,
        warnings,
    }
}
