//! Metrics of a replay: per-rank time breakdown, iterations, energy and MFU (DESIGN.md §5).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::engine::Schedule;
use crate::graph::{Graph, NONE};
use crate::memory::MemoryState;
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
    /// Peak bytes resident per memory tier (from tensors.parquet).
    pub peak_memory_bytes: BTreeMap<String, u64>,
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
    pub memory_tiers: Vec<TierSummary>,
    /// Per device kind (the GPU and each near-memory unit) when the system offloads ops.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceSummary>,
    pub warnings: Vec<String>,
}

/// Work one device kind did over all ranks.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceSummary {
    pub device: String,
    pub ops: u64,
    /// Sum of the op durations it ran.
    pub busy_ns: i64,
    /// Sum of the time its ops waited for the unit after they were ready.
    pub queued_ns: i64,
    pub energy_j: f64,
    /// Bytes its ops touched in the unit's own tier, and bytes they moved over its link.
    pub local_bytes: u64,
    pub moved_bytes: u64,
}

/// Per-op energy in joules, and the breakdown without static power.
pub fn op_energy(
    trace: &Trace,
    graph: &Graph,
    system: &System,
    network: &dyn NetworkModel,
    memory: Option<&MemoryState>,
    placement: Option<&[u8]>,
) -> (Vec<f64>, EnergyBreakdown) {
    let ops = &trace.ops;
    let mut energy = crate::bulk::filled(ops.len(), 0.0);
    let mut total = EnergyBreakdown::default();
    let memory_state = memory;
    let rdv = &graph.rendezvous;
    // Per-dtype energy per FLOP, indexed by dtype (last slot: unknown dtype).
    let mut pj_per_flop = [0.0; Dtype::ALL.len() + 1];
    for (k, d) in Dtype::ALL.iter().enumerate() {
        pj_per_flop[k] = system.energy_pj_per_flop(Some(*d));
    }
    pj_per_flop[Dtype::ALL.len()] = system.energy_pj_per_flop(None);
    // Wire energy per participant, once per collective instance (it depends on the group only).
    let instance_energy: Vec<f64> = (0..rdv.len())
        .map(|c| {
            let first = rdv.members_of(c)[0] as usize;
            let bytes = ops.comm_bytes(first).unwrap_or(0);
            if rdv.group[c] == NONE {
                network.p2p_energy_j(bytes, ops.rank.value(first), ops.peer(first).unwrap_or(0))
            } else {
                let ranks = &trace.groups[rdv.group[c] as usize].ranks;
                network.collective_energy_j(ops.coll(first).unwrap_or(CollKind::Barrier), bytes, ranks)
            }
        })
        .collect();
    let mut traffic = Vec::new();
    for (i, e) in energy.iter_mut().enumerate() {
        match ops.kind[i] {
            OpKind::Compute | OpKind::Memory if placement.is_some_and(|p| p[i] != 0) => {
                let kind = placement.map_or(0, |p| p[i]) as usize;
                let unit = &system.nmc[kind - 1];
                let (compute, memory, link) = crate::model::nmc::energy_j(ops, i, unit, system, memory_state);
                total.compute += compute;
                // The link to the unit moves memory traffic, so it counts as memory energy.
                total.memory += memory + link;
                *e = compute + memory + link;
            }
            OpKind::Compute | OpKind::Memory => {
                let flops = ops.flops(i).filter(|f| f.is_finite() && *f > 0.0).unwrap_or(0.0);
                let compute = flops * pj_per_flop[ops.dtype(i).map_or(Dtype::ALL.len(), |d| d as usize)] * 1e-12;
                let mut memory = 0.0;
                op_traffic(ops, i, system, memory_state, &mut traffic);
                for &(tier, read, written) in &traffic {
                    let t = system.tier(tier);
                    memory += (read as f64 * t.read_energy_pj_per_bit + written as f64 * t.write_energy_pj_per_bit)
                        * 8.0
                        * 1e-12;
                }
                total.compute += compute;
                total.memory += memory;
                *e = compute + memory;
            }
            OpKind::Collective | OpKind::Send | OpKind::Recv => {
                let c = graph.instance_of[i] as usize;
                // The sender pays for a message once; every participant for its share of a collective.
                let net = if ops.kind[i] == OpKind::Recv {
                    0.0
                } else {
                    instance_energy[c]
                };
                total.network += net;
                *e = net;
            }
            OpKind::Host => {}
        }
    }
    (energy, total)
}

/// Work per device kind: the GPU and every near-memory unit.
pub fn device_summary(
    trace: &Trace,
    system: &System,
    schedule: &Schedule,
    energy_j: &[f64],
    placement: &[u8],
    memory: Option<&MemoryState>,
) -> Vec<DeviceSummary> {
    let ops = &trace.ops;
    let mut out: Vec<DeviceSummary> = (0..=system.nmc.len())
        .map(|k| DeviceSummary {
            device: system.device_kind_name(k as u8).to_string(),
            ops: 0,
            busy_ns: 0,
            queued_ns: 0,
            energy_j: 0.0,
            local_bytes: 0,
            moved_bytes: 0,
        })
        .collect();
    for i in 0..ops.len() {
        if !matches!(ops.kind[i], OpKind::Compute | OpKind::Memory) {
            continue;
        }
        let k = placement[i] as usize;
        let d = &mut out[k];
        d.ops += 1;
        d.busy_ns += schedule.end_ns[i] - schedule.start_ns[i];
        d.queued_ns += schedule.ready_ns.as_ref().map_or(0, |r| schedule.start_ns[i] - r[i]);
        d.energy_j += energy_j[i];
        if k > 0 {
            let cost = crate::model::nmc::cost(ops, i, &system.nmc[k - 1], system, memory);
            d.local_bytes += cost.local_bytes;
            d.moved_bytes += cost.moved_bytes;
        }
    }
    out
}

/// Traffic of every fabric link over the replay.
#[derive(Debug, Clone, Default)]
pub struct LinkTraffic {
    pub rows: Vec<LinkRow>,
}

#[derive(Debug, Clone)]
pub struct LinkRow {
    /// The device the link leaves, if it leaves one.
    pub rank: Option<u32>,
    pub level: &'static str,
    pub src: String,
    pub dst: String,
    pub bytes: f64,
    /// Time the link carried traffic: bytes over bandwidth in the analytical model, time
    /// with at least one flow in the flow-level model.
    pub busy_ns: i64,
    pub energy_j: f64,
}

/// Bytes on every fabric link from every collective instance and send/recv pair; `busy_ns`
/// per link where the flow-level model measured it.
pub fn link_traffic(
    trace: &Trace,
    graph: &Graph,
    system: &System,
    network: &dyn NetworkModel,
    busy_ns: Option<&[f64]>,
) -> LinkTraffic {
    let ops = &trace.ops;
    let rdv = &graph.rendezvous;
    let fabric = network.fabric();
    let mut bytes = vec![0.0; fabric.links.len()];
    for c in 0..rdv.len() {
        let first = rdv.members_of(c)[0] as usize;
        let n = ops.comm_bytes(first).unwrap_or(0);
        if rdv.group[c] == NONE {
            let (src, dst) = (ops.rank.value(first), ops.peer(first).unwrap_or(0));
            let (src, dst) = if ops.kind[first] == OpKind::Send {
                (src, dst)
            } else {
                (dst, src)
            };
            network.add_p2p_traffic(n, src, dst, &mut bytes);
        } else {
            let ranks = &trace.groups[rdv.group[c] as usize].ranks;
            network.add_collective_traffic(ops.coll(first).unwrap_or(CollKind::Barrier), n, ranks, &mut bytes);
        }
    }
    // The rank on each device (network.rank_to_device), for labelling device links.
    let mut rank_of_device: Vec<Option<u32>> = (0..fabric.devices).map(Some).collect();
    if let Some(map) = &system.network.rank_to_device {
        rank_of_device.iter_mut().for_each(|r| *r = None);
        for (r, &d) in map.iter().enumerate() {
            if let Some(slot) = rank_of_device.get_mut(d as usize) {
                *slot = Some(r as u32);
            }
        }
    }
    let rank_on = |device: u32| rank_of_device.get(device as usize).copied().flatten();
    let rows = fabric
        .links
        .iter()
        .zip(bytes)
        .enumerate()
        .map(|(k, (l, b))| LinkRow {
            rank: if l.src < fabric.devices { rank_on(l.src) } else { None },
            level: l.level,
            src: fabric.node_name(l.src).to_string(),
            dst: fabric.node_name(l.dst).to_string(),
            bytes: b,
            busy_ns: busy_ns.map_or(b / l.bw_bytes * 1e9, |busy| busy[k]).round() as i64,
            energy_j: b * 8.0 * l.energy_pj_per_bit * 1e-12,
        })
        .collect();
    LinkTraffic { rows }
}

/// (tier, bytes read, bytes written) of a compute or memory op: from its accesses and the
/// tiers their tensors live in when known, else its bytes_read/bytes_written on the primary tier.
fn op_traffic(
    ops: &crate::trace::Ops,
    i: usize,
    system: &System,
    memory: Option<&MemoryState>,
    out: &mut Vec<(u8, u64, u64)>,
) {
    out.clear();
    if let Some(m) = memory {
        let accesses = m.plan.accesses_of(i);
        if !accesses.is_empty() {
            for &(t, write, bytes) in accesses {
                let tier = m.tier_of[t as usize];
                let tier = if tier == u8::MAX { system.primary_index() } else { tier };
                let slot = match out.iter_mut().position(|x| x.0 == tier) {
                    Some(p) => p,
                    None => {
                        out.push((tier, 0, 0));
                        out.len() - 1
                    }
                };
                if write {
                    out[slot].2 += bytes;
                } else {
                    out[slot].1 += bytes;
                }
            }
            return;
        }
    }
    let read = ops.bytes_read.as_ref().map_or(0, |a| arrow_value(a, i));
    let written = ops.bytes_written.as_ref().map_or(0, |a| arrow_value(a, i));
    if read == 0 && written == 0 {
        return;
    }
    if let Some((src, dst)) = ops.tier_move(i) {
        if let (Some(src), Some(dst)) = (system.tier_index(src), system.tier_index(dst)) {
            let moved = read.max(written);
            out.extend([(src, moved, 0), (dst, 0, moved)]);
            return;
        }
    }
    out.push((system.primary_index(), read, written));
}

/// Traffic, occupancy, endurance and retention of one memory tier over the replay.
#[derive(Debug, Clone, Serialize)]
pub struct TierSummary {
    pub tier: String,
    pub capacity_bytes: f64,
    /// Largest occupancy on any rank.
    pub peak_bytes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// bytes_read / bytes_written; null when nothing was written.
    pub read_write_ratio: Option<f64>,
    /// Writes per cell per day at this step's rate with ideal wear-levelling over the occupied
    /// region (bytes written per day / peak occupancy), on the busiest rank.
    pub writes_per_cell_per_day: f64,
    pub write_endurance: Option<f64>,
    /// Years until `write_endurance` is reached at that rate; null when unlimited or unknown.
    pub endurance_years: Option<f64>,
    /// Longest time any tensor stayed in the tier.
    pub max_data_lifetime_s: f64,
    pub retention_s: Option<f64>,
}

/// Adds per-rank peak memory per tier and per-tier traffic, endurance and retention.
pub fn add_memory(summary: &mut Summary, trace: &Trace, system: &System, state: &MemoryState) {
    let tiers = state.tiers();
    for r in summary.ranks.iter_mut() {
        for t in 0..tiers {
            let peak = state.peak_of(r.rank, t);
            if peak > 0 {
                r.peak_memory_bytes.insert(system.tier_name(t as u8).to_owned(), peak);
            }
        }
    }
    let ranks = trace.ranks as usize;
    let mut read = vec![0u64; tiers];
    let mut written = vec![0u64; ranks * tiers];
    let ops = &trace.ops;
    let mut traffic = Vec::new();
    for i in 0..ops.len() {
        if matches!(ops.kind[i], OpKind::Compute | OpKind::Memory) {
            let rank = ops.rank.value(i) as usize;
            op_traffic(ops, i, system, Some(state), &mut traffic);
            for &(tier, r, w) in &traffic {
                read[tier as usize] += r;
                written[rank * tiers + tier as usize] += w;
            }
        }
    }
    let end = summary.end_ns;
    let seconds = (summary.makespan_ns.max(1)) as f64 * 1e-9;
    let mut lifetime = vec![0i64; tiers];
    for (t, &tier) in state.tier_of.iter().enumerate() {
        if tier != u8::MAX {
            let freed = if state.free_time[t] == i64::MAX {
                end
            } else {
                state.free_time[t]
            };
            lifetime[tier as usize] = lifetime[tier as usize].max(freed - state.alloc_time[t]);
        }
    }
    for t in 0..tiers {
        let spec = system.tier(t as u8);
        let name = system.tier_name(t as u8).to_owned();
        let peak = (0..trace.ranks).map(|r| state.peak_of(r, t)).max().unwrap_or(0);
        let total_written: u64 = (0..ranks).map(|r| written[r * tiers + t]).sum();
        let per_cell_per_day = (0..ranks)
            .map(|r| {
                let region = state.peak_of(r as u32, t);
                if region == 0 {
                    0.0
                } else {
                    written[r * tiers + t] as f64 / region as f64 * 86_400.0 / seconds
                }
            })
            .fold(0.0, f64::max);
        let endurance_years = spec
            .write_endurance
            .filter(|_| per_cell_per_day > 0.0)
            .map(|e| e / per_cell_per_day / 365.0);
        let max_life_s = lifetime[t] as f64 * 1e-9;
        if let Some(ret) = spec.retention_s {
            if max_life_s > ret {
                summary.warnings.push(format!(
                    "tier {name}: data stays {max_life_s:.3} s, longer than its retention of {ret} s; it needs refresh"
                ));
            }
        }
        if read[t] == 0 && total_written == 0 && peak == 0 {
            continue;
        }
        summary.memory_tiers.push(TierSummary {
            tier: name,
            capacity_bytes: spec.capacity_bytes,
            peak_bytes: peak,
            bytes_read: read[t],
            bytes_written: total_written,
            read_write_ratio: (total_written > 0).then(|| read[t] as f64 / total_written as f64),
            writes_per_cell_per_day: per_cell_per_day,
            write_endurance: spec.write_endurance,
            endurance_years,
            max_data_lifetime_s: max_life_s,
            retention_s: spec.retention_s,
        });
    }
    summary.warnings.extend(state.oom_warnings.iter().cloned());
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
            peak_memory_bytes: BTreeMap::new(),
        })
        .collect();
    // Each rank's compute spans and communication spans go to its own slices of one flat
    // buffer (counted first, so nothing reallocates). Rows list a rank's ops roughly in time
    // order, so the stable sorts below mostly merge runs.
    let r_count = trace.ranks as usize;
    let mut counts = vec![(0u32, 0u32); r_count];
    for k in 0..n {
        let r = ops.rank.value(k) as usize;
        match ops.kind[k] {
            OpKind::Compute | OpKind::Memory => counts[r].0 += 1,
            OpKind::Collective | OpKind::Send | OpKind::Recv => counts[r].1 += 1,
            OpKind::Host => {}
        }
    }
    let mut cursor = Vec::with_capacity(r_count);
    let mut bounds = Vec::with_capacity(r_count);
    let mut at = 0usize;
    for &(c, m) in &counts {
        let (c, m) = (c as usize, m as usize);
        cursor.push((at, at + c));
        bounds.push((at, at + c, at + c + m));
        at += c + m;
    }
    let mut flat = crate::bulk::filled(at, (0i64, 0i64));
    for k in 0..n {
        let r = ops.rank.value(k) as usize;
        let span = (schedule.start_ns[k], schedule.end_ns[k]);
        let rs = &mut ranks[r];
        rs.ops += 1;
        rs.end_ns = rs.end_ns.max(span.1);
        match ops.kind[k] {
            OpKind::Compute | OpKind::Memory => {
                flat[cursor[r].0] = span;
                cursor[r].0 += 1;
            }
            OpKind::Collective | OpKind::Send | OpKind::Recv => {
                flat[cursor[r].1] = span;
                cursor[r].1 += 1;
                rs.wait_ns += schedule.wait_ns[k];
            }
            OpKind::Host => {}
        }
    }
    let (mut cu, mut mu) = (Vec::new(), Vec::new());
    for (r, &(lo, mid, hi)) in bounds.iter().enumerate() {
        let rs = &mut ranks[r];
        let (compute, comm) = flat[lo..hi].split_at_mut(mid - lo);
        compute.sort_by_key(|s| s.0);
        comm.sort_by_key(|s| s.0);
        rs.compute_ns = union_into(compute, &mut cu);
        rs.comm_ns = union_into(comm, &mut mu);
        let hidden = overlap(&mu, &cu);
        rs.exposed_comm_ns = rs.comm_ns - hidden;
        // Busy time is the union of compute and communication.
        rs.idle_ns = makespan - (rs.compute_ns + rs.comm_ns - hidden);
    }
    drop(flat);

    let mut iterations: Vec<(i64, i64)> = Vec::new();
    let mut sparse_iterations: BTreeMap<u32, (i64, i64)> = BTreeMap::new();
    if ops.iteration.is_some() {
        for i in 0..n {
            if let Some(it) = ops.iteration(i) {
                let e = if (it as usize) < n.max(1024) {
                    let k = it as usize;
                    if k >= iterations.len() {
                        iterations.resize(k + 1, (i64::MAX, i64::MIN));
                    }
                    &mut iterations[k]
                } else {
                    sparse_iterations.entry(it).or_insert((i64::MAX, i64::MIN))
                };
                e.0 = e.0.min(schedule.start_ns[i]);
                e.1 = e.1.max(schedule.end_ns[i]);
            }
        }
    }
    let iterations = iterations
        .into_iter()
        .enumerate()
        .filter(|(_, (s, _))| *s != i64::MAX)
        .map(|(k, span)| (k as u32, span))
        .chain(sparse_iterations)
        .map(|(iteration, (s, e))| IterationSummary {
            iteration,
            start_ns: s,
            end_ns: e,
            step_ns: e - s,
        })
        .collect();

    // MFU against the peak of the dtype that carries most of the FLOPs.
    let mut flops_by_dtype = [0.0f64; Dtype::ALL.len() + 1];
    for i in 0..n {
        if let Some(f) = ops.flops(i).filter(|f| f.is_finite() && *f > 0.0) {
            flops_by_dtype[ops.dtype(i).map_or(Dtype::ALL.len(), |d| d as usize)] += f;
        }
    }
    let total_flops: f64 = flops_by_dtype.iter().sum();
    let main_dtype = (0..flops_by_dtype.len())
        .filter(|&k| flops_by_dtype[k] > 0.0)
        .max_by(|&a, &b| flops_by_dtype[a].total_cmp(&flops_by_dtype[b]))
        .and_then(|k| Dtype::ALL.get(k).copied());
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
        memory_tiers: Vec::new(),
        devices: Vec::new(),
        warnings,
    }
}
