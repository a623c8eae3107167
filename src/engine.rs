//! The replay engine (DESIGN.md §3): a discrete-event walk of the op graph in time order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::error::{BlockedOp, Error, Result};
use crate::graph::{cycle_error, find_cycle, Graph, NONE};
use crate::memory::MemoryState;
use crate::model::flow::FlowSim;
use crate::model::nmc;
use crate::model::{ComputeModel, NetworkModel, TimeSource};
use crate::system::System;
use crate::trace::{CollKind, OpKind, Trace};

/// Per-op times of one replay, indexed like the trace's rows.
pub struct Schedule {
    /// When each op started, which is when it became ready, except for ops that queue for a
    /// near-memory compute unit (see `ready_ns`). Collectives and send/recv then spend `wait_ns` of their span waiting for
    /// the other participants, so the timeline's `ready_ns` is this same column.
    pub start_ns: Vec<i64>,
    pub end_ns: Vec<i64>,
    pub wait_ns: Vec<i64>,
    /// Ops that had neither a measured duration nor FLOPs/bytes and were timed as zero.
    pub untimed_ops: u64,
    /// Collectives and sends whose size was unknown when the network model needed it.
    pub unsized_comm_ops: u64,
    /// Flow-level model only: time each fabric link carried at least one flow.
    pub link_busy_ns: Option<Vec<f64>>,
    /// When ops can queue for an NMC unit: when each op became ready (`start_ns` is then when
    /// it started); otherwise every op starts when it is ready.
    pub ready_ns: Option<Vec<i64>>,
}

pub struct Models<'a> {
    pub compute: &'a dyn ComputeModel,
    pub network: &'a dyn NetworkModel,
    pub system: &'a System,
    /// Flow-level network: transfers the network times share links with whatever else is in
    /// flight, so their times depend on the schedule.
    pub flow: bool,
    /// Device kind of every op (0: GPU, k + 1: NMC unit k) when the system offloads ops.
    pub placement: Option<&'a [u8]>,
}

/// `transfer` of a rendezvous the flow-level model times as it runs.
const FLOW_TIMED: i64 = -1;

/// Completions waiting to be processed. Time order matters only when the state an op meets
/// depends on what ran before it in time (memory placement); otherwise every op's times are a
/// fixed function of its predecessors', and a stack walks the graph at a fraction of the cost.
enum Events {
    TimeOrdered(BinaryHeap<Reverse<(i64, u32)>>),
    AnyOrder(Vec<(i64, u32)>),
}

impl Events {
    #[inline]
    fn push(&mut self, time: i64, op: u32) {
        match self {
            Events::TimeOrdered(h) => h.push(Reverse((time, op))),
            Events::AnyOrder(v) => v.push((time, op)),
        }
    }

    fn peek_time(&self) -> Option<i64> {
        match self {
            Events::TimeOrdered(h) => h.peek().map(|Reverse((t, _))| *t),
            Events::AnyOrder(v) => v.last().map(|&(t, _)| t),
        }
    }

    #[inline]
    fn pop(&mut self) -> Option<(i64, u32)> {
        match self {
            Events::TimeOrdered(h) => h.pop().map(|Reverse(e)| e),
            Events::AnyOrder(v) => v.pop(),
        }
    }
}

/// Replays `trace` over `graph` (from [`crate::graph::validate`] or [`Graph::build`]); with
/// `memory`, tensors are placed and freed as ops start and end.
pub fn replay(trace: &Trace, graph: &Graph, models: &Models, mut memory: Option<&mut MemoryState>) -> Result<Schedule> {
    let ops = &trace.ops;
    let n = ops.len();
    let rdv = &graph.rendezvous;
    let mut untimed_ops = 0u64;
    let mut unsized_comm_ops = 0u64;

    // Transfer times of rendezvous do not depend on the schedule in these models, so they are
    // computed once up front; plain ops are timed as they start.
    let mut transfer = crate::bulk::filled(rdv.len(), 0i64);
    let mut flow_bytes = if models.flow { vec![0u64; rdv.len()] } else { Vec::new() };
    for (c, t) in transfer.iter_mut().enumerate() {
        let members = rdv.members_of(c);
        let measured = if models.compute.uses_measured_comm() {
            members.iter().filter_map(|&m| ops.duration(m as usize)).min()
        } else {
            None
        };
        *t = match measured {
            Some(ns) => ns,
            None => {
                let first = members[0] as usize;
                let bytes = ops.comm_bytes(first).unwrap_or_else(|| {
                    if ops.coll(first) != Some(CollKind::Barrier) {
                        unsized_comm_ops += members.len() as u64;
                    }
                    0
                });
                if models.flow {
                    flow_bytes[c] = bytes;
                    FLOW_TIMED
                } else if rdv.group[c] == NONE {
                    let (src, dst) = (ops.rank.value(first), ops.rank.value(members[1] as usize));
                    models.network.p2p_ns(bytes, src, dst)
                } else {
                    let coll = ops.coll(first).unwrap_or(CollKind::Barrier);
                    models
                        .network
                        .collective_ns(coll, bytes, &trace.groups[rdv.group[c] as usize].ranks)
                }
            }
        };
    }

    let mut pending = crate::bulk::copied(&graph.pending);
    let mut ready = crate::bulk::filled(n, 0i64);
    let mut end = crate::bulk::filled(n, 0i64);
    let mut wait = crate::bulk::filled(n, 0i64);
    let mut arrived = crate::bulk::filled(rdv.len(), 0u32);
    let mut last_ready = crate::bulk::filled(rdv.len(), 0i64);
    let mut sim = models.flow.then(|| FlowSim::new(models.network.fabric(), rdv.len()));
    let units = models.system.nmc.len();
    let mut unit_free = match models.placement {
        Some(_) => vec![0i64; trace.ranks as usize * units],
        None => Vec::new(),
    };
    let mut queued = match models.placement {
        Some(_) => crate::bulk::filled(n, 0i64),
        None => Vec::new(),
    };
    let mut heap = if memory.is_some() || sim.is_some() || models.placement.is_some() {
        Events::TimeOrdered(BinaryHeap::new())
    } else {
        Events::AnyOrder(Vec::new())
    };
    let mut done = 0usize;

    let overflow = |i: usize| Error::ops("duration_ns", Some(ops.id(i)), "end time overflows int64 nanoseconds");

    // Starts op `i`, now ready at `ready[i]`; rendezvous members start when the last one arrives.
    let mut on_ready = |i: usize,
                        ready: &[i64],
                        heap: &mut Events,
                        end: &mut [i64],
                        wait: &mut [i64],
                        memory: &mut Option<&mut MemoryState>,
                        sim: &mut Option<FlowSim>|
     -> Result<()> {
        if let Some(mem) = memory.as_deref_mut() {
            for &t in mem.plan.allocs_at(i) {
                mem.allocate(t, ready[i], Some(ops.id(i)), models.system)?;
            }
        }
        let c = graph.instance_of[i];
        if let Some(kind) = models.placement.map(|p| p[i]).filter(|&k| k != 0) {
            // On a near-memory unit: one op at a time per rank and unit, in ready order.
            let unit = &models.system.nmc[kind as usize - 1];
            let cost = nmc::cost(ops, i, unit, models.system, memory.as_deref());
            let slot = ops.rank.value(i) as usize * units + kind as usize - 1;
            let start = ready[i].max(unit_free[slot]);
            let e = start.checked_add(cost.ns).ok_or_else(|| overflow(i))?;
            unit_free[slot] = e;
            queued[i] = start - ready[i];
            end[i] = e;
            heap.push(e, i as u32);
            return Ok(());
        }
        if c == NONE {
            // With memory placement, an op's memory time follows where its tensors live now.
            let placed = memory.as_deref().and_then(|m| m.memory_seconds(i, models.system));
            let t = models.compute.op_time(ops, i, placed);
            if t.source == TimeSource::Unknown {
                untimed_ops += 1;
            }
            let e = ready[i].checked_add(t.ns).ok_or_else(|| overflow(i))?;
            end[i] = e;
            heap.push(e, i as u32);
            return Ok(());
        }
        let c = c as usize;
        arrived[c] += 1;
        last_ready[c] = last_ready[c].max(ready[i]);
        let members = rdv.members_of(c);
        if arrived[c] as usize == members.len() {
            if transfer[c] == FLOW_TIMED {
                for &m in members {
                    wait[m as usize] = last_ready[c] - ready[m as usize];
                }
                if let Some(sim) = sim.as_mut() {
                    let first = members[0] as usize;
                    let plan = if rdv.group[c] == NONE {
                        let (src, dst) = (ops.rank.value(first), ops.peer(first).unwrap_or(0));
                        let (src, dst) = if ops.kind[first] == OpKind::Send {
                            (src, dst)
                        } else {
                            (dst, src)
                        };
                        std::sync::Arc::new(models.network.p2p_plan(src, dst))
                    } else {
                        let coll = ops.coll(first).unwrap_or(CollKind::Barrier);
                        let ranks = &trace.groups[rdv.group[c] as usize].ranks;
                        models.network.collective_plan(coll, flow_bytes[c], ranks)
                    };
                    sim.start(c as u32, last_ready[c] as f64, plan, flow_bytes[c]);
                }
                return Ok(());
            }
            let e = last_ready[c].checked_add(transfer[c]).ok_or_else(|| overflow(i))?;
            for &m in members {
                let m = m as usize;
                wait[m] = last_ready[c] - ready[m];
                end[m] = e;
                heap.push(e, m as u32);
            }
        }
        Ok(())
    };

    if let Some(mem) = memory.as_deref_mut() {
        for &t in &mem.plan.resident {
            mem.allocate(t, 0, None, models.system)?;
        }
    }
    for i in 0..n {
        if pending[i] == 0 {
            on_ready(i, &ready, &mut heap, &mut end, &mut wait, &mut memory, &mut sim)?;
        }
    }
    loop {
        // Flow-level: network events due no later than the next op completion go first.
        if let Some(s) = sim.as_mut() {
            loop {
                for (c, t) in s.take_finished() {
                    let c = c as usize;
                    let e = t.ceil() as i64;
                    for &m in rdv.members_of(c) {
                        end[m as usize] = e;
                        heap.push(e, m);
                    }
                }
                let next_op = heap.peek_time();
                match s.next_time() {
                    Some(tf) if next_op.is_none_or(|to| tf <= to as f64) => s.advance(tf),
                    _ => break,
                }
            }
        }
        let Some((t, i)) = heap.pop() else {
            if sim.as_ref().is_some_and(|s| s.next_time().is_some()) {
                continue;
            }
            break;
        };
        done += 1;
        let i = i as usize;
        if let Some(mem) = memory.as_deref_mut() {
            for &tensor in mem.plan.frees_at(i) {
                mem.free(tensor, t);
            }
        }
        let next = graph.stream_next[i];
        if next != NONE {
            let s = next as usize;
            ready[s] = ready[s].max(t);
            pending[s] -= 1;
            if pending[s] == 0 {
                on_ready(s, &ready, &mut heap, &mut end, &mut wait, &mut memory, &mut sim)?;
            }
        }
        for &s in graph.successors(i) {
            let s = s as usize;
            ready[s] = ready[s].max(t);
            pending[s] -= 1;
            if pending[s] == 0 {
                on_ready(s, &ready, &mut heap, &mut end, &mut wait, &mut memory, &mut sim)?;
            }
        }
    }
    if done < n {
        if let Some(cycle) = find_cycle(trace, graph) {
            return Err(cycle_error(&cycle));
        }
        return Err(deadlock(trace, graph, &pending, &arrived, n - done));
    }
    let (start_ns, ready_ns) = if models.placement.is_some() {
        let mut start = crate::bulk::copied(&ready);
        for (s, q) in start.iter_mut().zip(&queued) {
            *s += q;
        }
        (start, Some(ready))
    } else {
        (ready, None)
    };
    Ok(Schedule {
        start_ns,
        ready_ns,
        end_ns: end,
        wait_ns: wait,
        untimed_ops,
        unsized_comm_ops,
        link_busy_ns: sim.map(|s| s.busy_ns),
    })
}

/// Reports the first unfinished op of every stuck stream and what it waits for.
fn deadlock(trace: &Trace, graph: &Graph, pending: &[u32], arrived: &[u32], stuck: usize) -> Error {
    let ops = &trace.ops;
    let rdv = &graph.rendezvous;
    // An op finished iff every predecessor released it and it was scheduled; ops still
    // pending, and rendezvous members whose peers never arrived, are the unfinished ones.
    let unfinished = |i: usize| {
        pending[i] > 0 || {
            let c = graph.instance_of[i];
            c != NONE && (arrived[c as usize] as usize) < rdv.members_of(c as usize).len()
        }
    };
    let mut blocked = Vec::new();
    for &head in &graph.stream_heads {
        let mut i = head as usize;
        while !unfinished(i) {
            let next = graph.stream_next[i];
            if next == NONE {
                break;
            }
            i = next as usize;
        }
        if !unfinished(i) {
            continue;
        }
        let waiting_for = if pending[i] > 0 {
            let deps: Vec<String> = ops.deps_of(i).iter().take(4).map(|d| format!("op_id {d}")).collect();
            if deps.is_empty() {
                "its stream predecessor".to_owned()
            } else {
                format!("its deps ({})", deps.join(", "))
            }
        } else {
            let c = graph.instance_of[i] as usize;
            let missing: Vec<u32> = rdv
                .members_of(c)
                .iter()
                .filter(|&&m| pending[m as usize] > 0)
                .map(|&m| ops.rank.value(m as usize))
                .collect();
            match ops.kind[i] {
                OpKind::Collective => format!(
                    "{} group {} coll_seq {} to be reached by ranks {missing:?}",
                    ops.coll(i).map_or("collective", CollKind::as_str),
                    ops.group_id(i).unwrap_or(0),
                    ops.coll_seq(i).unwrap_or(0)
                ),
                kind => format!(
                    "its peer rank {} ({} p2p_seq {})",
                    ops.peer(i).unwrap_or(0),
                    if kind == OpKind::Send { "recv of" } else { "send of" },
                    ops.p2p_seq(i).unwrap_or(0)
                ),
            }
        };
        blocked.push(BlockedOp {
            rank: ops.rank.value(i),
            stream: ops.stream.value(i),
            op_id: ops.id(i),
            waiting_for,
        });
    }
    blocked.sort_by_key(|b| (b.rank, b.stream));
    Error::Deadlock { stuck, blocked }
}
