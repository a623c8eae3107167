//! One rank's Kineto events made into ops (`tracesim.ingest.kineto`; the rules are in its module
//! doc and docs/ingest.md): GPU ops with their iteration and deps, and the host ops of the
//! runtime calls, the gaps between them, blocking waits, launches not in the trace and waits
//! inside CUDA/HIP graphs. Inputs and outputs are plain columns (times in absolute ns, strings as
//! indices the caller resolves), so that no event becomes a Python object.
//!
//! Ops are numbered by creation (their key): the rank's GPU ops in input order, then its host ops
//! in the order they are made. Ties of time are broken by that key downstream.

use std::collections::{HashMap, HashSet};

/// A GPU op that starts more than this after what it visibly waits for waited on something else.
pub const STREAM_WAIT_SLACK_NS: i64 = 1_000;
/// How far back a cross-stream wait is looked for.
pub const STREAM_WAIT_WINDOW_NS: i64 = 20_000;

/// Times (ns) lie in `[-TIME_BOUND, TIME_BOUND)`, so that no difference of two overflows.
pub const TIME_BOUND: i64 = 1 << 62;

/// Calls that block the host until the GPU has finished earlier work, besides `*Synchronize*`.
const BLOCKING_CALLS: [&str; 4] = ["cudaMemcpy", "cudaMemcpy2D", "hipMemcpy", "hipMemcpy2D"];

/// Time intervals on CPU threads (`thread`: any id, compared for equality).
pub struct Intervals<'a> {
    pub ts: &'a [i64],
    pub end: &'a [i64],
    pub thread: &'a [i64],
}

/// One rank's events.
pub struct RankEvents<'a> {
    /// The trace's first instant (all ranks): host streams start there.
    pub base: i64,
    /// Runtime calls; `thread` in `0..threads`, threads in host stream order.
    pub runtime: Intervals<'a>,
    /// Per runtime call: its name, an index into `names`.
    pub runtime_name: &'a [i64],
    pub names: &'a [String],
    pub threads: i64,
    /// GPU ops: start, end, stream (in `0..streams`), the runtime call that launched it (-1:
    /// not in the trace), whether it is an NCCL kernel.
    pub gpu_ts: &'a [i64],
    pub gpu_end: &'a [i64],
    pub gpu_stream: &'a [i64],
    pub gpu_launch: &'a [i64],
    pub gpu_nccl: &'a [bool],
    pub streams: i64,
    /// ProfilerSteps (start, end, N), sorted.
    pub steps: &'a [(i64, i64, i64)],
    /// `record_param_comms` CPU ops.
    pub comms: Intervals<'a>,
    /// (consumer, producer) GPU op deps another ingester adds (PyTorch ET data flow).
    pub extra_deps: &'a [(usize, usize)],
}

/// What host op names are: an index into `names`, or one of these past `3 * names.len()`.
pub enum HostName {
    /// The call's own name.
    Call(usize),
    /// `<call> [wait]`: the part of a launching call spent waiting for the GPU.
    Wait(usize),
    /// `<call> [after launch]`.
    AfterLaunch(usize),
    CpuGap,
    LaunchNotInTrace,
    GraphNodeWait,
}

impl HostName {
    /// The code of the name among `n` call names: call c is c, its `[wait]` n + 2c, its
    /// `[after launch]` n + 2c + 1, then `cpu_gap`, `launch not in trace`, `graph node wait`.
    pub fn code(&self, n: usize) -> i64 {
        let c = match *self {
            HostName::Call(c) => c,
            HostName::Wait(c) => n + 2 * c,
            HostName::AfterLaunch(c) => n + 2 * c + 1,
            HostName::CpuGap => 3 * n,
            HostName::LaunchNotInTrace => 3 * n + 1,
            HostName::GraphNodeWait => 3 * n + 2,
        };
        c as i64
    }
}

/// The rank's ops: GPU ops (keys `0..G`, in input order) then host ops (keys `G..`).
#[derive(Debug, Default)]
pub struct RankOps {
    pub start: Vec<i64>,
    pub dur: Vec<i64>,
    pub stream: Vec<i64>,
    /// Per host op: its name code (`HostName::code`) and its one dep (-1: none).
    pub host_name: Vec<i64>,
    pub host_dep: Vec<i64>,
    /// Per GPU op: its deps (keys), its iteration, the `record_param_comms` row enclosing its
    /// launch (NCCL kernels; -1: none).
    pub gpu_deps: Vec<Vec<i64>>,
    pub iteration: Vec<Option<i64>>,
    pub comms: Vec<i64>,
    pub counts: Counts,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub launch_deps: u64,
    pub sync_deps: u64,
    pub inferred_stream_deps: u64,
    pub graph_node_waits: u64,
    pub orphan_gpu_ops: u64,
    pub nested_runtime_calls: u64,
}

impl RankOps {
    fn end(&self, key: i64) -> i64 {
        let k = key as usize;
        self.start[k] + self.dur[k]
    }

    fn host(&mut self, stream: i64, name: i64, start: i64, dur: i64, dep: i64) -> i64 {
        let key = self.start.len() as i64;
        self.start.push(start);
        self.dur.push(dur.max(0));
        self.stream.push(stream);
        self.host_name.push(name);
        self.host_dep.push(dep);
        key
    }
}

/// Checks that the columns agree in length and that every index is in range, so that the
/// mapping can index without failing.
fn check(ev: &RankEvents<'_>) -> Result<(), String> {
    let n_rt = ev.runtime.ts.len();
    let g = ev.gpu_ts.len();
    let lens_ok = ev.runtime.end.len() == n_rt
        && ev.runtime.thread.len() == n_rt
        && ev.runtime_name.len() == n_rt
        && [
            ev.gpu_end.len(),
            ev.gpu_stream.len(),
            ev.gpu_launch.len(),
            ev.gpu_nccl.len(),
        ]
        .iter()
        .all(|&l| l == g)
        && ev.comms.end.len() == ev.comms.ts.len()
        && ev.comms.thread.len() == ev.comms.ts.len();
    if !lens_ok {
        return Err("kineto mapping: columns of unequal length".to_owned());
    }
    if ev.threads < 0 || ev.threads as usize > n_rt || ev.streams < 0 {
        return Err("kineto mapping: thread or stream count out of range".to_owned());
    }
    let times = [
        ev.runtime.ts,
        ev.runtime.end,
        ev.gpu_ts,
        ev.gpu_end,
        ev.comms.ts,
        ev.comms.end,
    ];
    let bounded = |t: &i64| (-TIME_BOUND..TIME_BOUND).contains(t);
    let steps_bounded = ev.steps.iter().all(|s| bounded(&s.0) && bounded(&s.1));
    if !times.iter().all(|v| v.iter().all(bounded)) || !steps_bounded || !bounded(&ev.base) {
        return Err("kineto mapping: a time beyond ±2^62 ns".to_owned());
    }
    if ev.runtime.thread.iter().any(|&t| t < 0 || t >= ev.threads) {
        return Err("kineto mapping: a runtime call's thread is out of range".to_owned());
    }
    if ev.runtime_name.iter().any(|&c| c < 0 || c as usize >= ev.names.len()) {
        return Err("kineto mapping: a runtime call's name is out of range".to_owned());
    }
    if ev.gpu_stream.iter().any(|&s| s < 0 || s >= ev.streams) {
        return Err("kineto mapping: a GPU op's stream is out of range".to_owned());
    }
    if ev.gpu_launch.iter().any(|&l| l < -1 || l >= n_rt as i64) {
        return Err("kineto mapping: a GPU op's launch is out of range".to_owned());
    }
    if ev.extra_deps.iter().any(|&(c, p)| c >= g || p >= g) {
        return Err("kineto mapping: an added dep is out of range".to_owned());
    }
    Ok(())
}

/// The N of the ProfilerStep that `t` falls in (the last one starting at or before it).
fn step_of(steps: &[(i64, i64, i64)], t: i64) -> Option<i64> {
    let k = steps.partition_point(|s| s.0 <= t);
    let s = steps.get(k.checked_sub(1)?)?;
    (s.0 <= t && t < s.1).then_some(s.2)
}

/// Indices grouped by thread (in index order within each), threads in order of first index.
fn by_thread(thread: &[i64]) -> Vec<(i64, Vec<usize>)> {
    let mut pos: HashMap<i64, usize> = HashMap::new();
    let mut out: Vec<(i64, Vec<usize>)> = Vec::new();
    for (i, &t) in thread.iter().enumerate() {
        let p = *pos.entry(t).or_insert_with(|| {
            out.push((t, Vec::new()));
            out.len() - 1
        });
        out[p].1.push(i);
    }
    out
}

/// For each call (at `call_ts` on `call_thread`), the innermost of `events` that encloses it on
/// its thread (-1: none); and for each event, the one enclosing it when it was entered (-1: none,
/// or an event after the thread's last call, never needed). Events are entered in (start, longest
/// first) order; one whose end is before the next start or call is left.
pub fn innermost(call_ts: &[i64], call_thread: &[i64], events: &Intervals<'_>) -> (Vec<i64>, Vec<i64>) {
    let mut inner = vec![-1; call_ts.len()];
    let mut parent = vec![-1; events.ts.len()];
    let calls: HashMap<i64, Vec<usize>> = by_thread(call_thread).into_iter().collect();
    for (thread, mut evs) in by_thread(events.thread) {
        let Some(calls) = calls.get(&thread) else { continue };
        evs.sort_by_key(|&e| (events.ts[e], std::cmp::Reverse(events.end[e])));
        let mut calls = calls.clone();
        calls.sort_by_key(|&i| call_ts[i]);
        let mut stack: Vec<usize> = Vec::new();
        let mut p = 0;
        for i in calls {
            let t = call_ts[i];
            while p < evs.len() && events.ts[evs[p]] <= t {
                let e = evs[p];
                while stack.last().is_some_and(|&s| events.end[s] < events.ts[e]) {
                    stack.pop();
                }
                parent[e] = stack.last().map_or(-1, |&s| s as i64);
                stack.push(e);
                p += 1;
            }
            while stack.last().is_some_and(|&s| events.end[s] < t) {
                stack.pop();
            }
            inner[i] = stack.last().map_or(-1, |&s| s as i64);
        }
    }
    (inner, parent)
}

/// Of `order` (indices into `ivs`, sorted by start), the one enclosing `t`, looking back from the
/// last one starting at or before it while earlier ones may still reach it.
fn enclosing(ivs: &Intervals<'_>, order: &[usize], t: i64) -> Option<usize> {
    let mut k = order.partition_point(|&i| ivs.ts[i] <= t);
    while k > 0 {
        k -= 1;
        let i = order[k];
        if ivs.ts[i] <= t && t <= ivs.end[i] {
            return Some(i);
        }
        if ivs.end[i] < t && k > 0 && ivs.end[order[k - 1]] < ivs.ts[i] {
            break;
        }
    }
    None
}

/// Maps one rank (see the module doc). An error means the caller gave inconsistent columns.
pub fn map_rank(ev: &RankEvents<'_>) -> Result<RankOps, String> {
    check(ev)?;
    let g = ev.gpu_ts.len();
    let n_names = ev.names.len();
    let rt = &ev.runtime;
    let mut out = RankOps {
        start: Vec::with_capacity(g + 2 * rt.ts.len()),
        dur: Vec::with_capacity(g + 2 * rt.ts.len()),
        stream: Vec::with_capacity(g + 2 * rt.ts.len()),
        gpu_deps: vec![Vec::new(); g],
        comms: vec![-1; g],
        ..RankOps::default()
    };
    let mut launched: Vec<Vec<usize>> = vec![Vec::new(); rt.ts.len()];
    for j in 0..g {
        out.start.push(ev.gpu_ts[j]);
        out.dur.push((ev.gpu_end[j] - ev.gpu_ts[j]).max(0));
        out.stream.push(ev.gpu_stream[j]);
        let li = ev.gpu_launch[j];
        let when = if li >= 0 { rt.ts[li as usize] } else { ev.gpu_ts[j] };
        out.iteration.push(step_of(ev.steps, when));
        if li >= 0 {
            launched[li as usize].push(j);
        }
    }

    // The record_param_comms op enclosing each NCCL kernel's launch (its collective metadata).
    let mut comms_order: HashMap<i64, Vec<usize>> = by_thread(ev.comms.thread).into_iter().collect();
    for v in comms_order.values_mut() {
        v.sort_by_key(|&i| ev.comms.ts[i]);
    }
    for j in 0..g {
        let li = ev.gpu_launch[j];
        if ev.gpu_nccl[j] && li >= 0 {
            let li = li as usize;
            if let Some(order) = comms_order.get(&rt.thread[li]) {
                out.comms[j] = enclosing(&ev.comms, order, rt.ts[li]).map_or(-1, |i| i as i64);
            }
        }
    }

    // GPU ops by end time, for blocking calls.
    let mut by_end: Vec<usize> = (0..g).collect();
    by_end.sort_by_key(|&j| ev.gpu_end[j]);
    let ends: Vec<i64> = by_end.iter().map(|&j| ev.gpu_end[j]).collect();

    let flags: Vec<(bool, bool)> = ev
        .names
        .iter()
        .map(|n| {
            let blocking = n.contains("Synchronize") || BLOCKING_CALLS.contains(&n.as_str());
            (blocking, n.contains("GraphLaunch"))
        })
        .collect();
    let mut graph_launches: HashSet<i64> = HashSet::new();
    let mut per_thread: Vec<Vec<usize>> = vec![Vec::new(); ev.threads as usize];
    for (i, &t) in rt.thread.iter().enumerate() {
        per_thread[t as usize].push(i);
    }
    for (thread, mut idx) in per_thread.into_iter().enumerate() {
        idx.sort_by_key(|&i| (rt.ts[i], std::cmp::Reverse(rt.end[i])));
        let stream = ev.streams + thread as i64;
        // A call inside another (a runtime call made by a driver call) is merged into it.
        let mut outer: Option<usize> = None;
        let mut kept: Vec<usize> = Vec::with_capacity(idx.len());
        let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
        for &i in &idx {
            if let Some(o) = outer {
                if rt.end[i] <= rt.end[o] && rt.ts[i] < rt.end[o] {
                    children.entry(o).or_default().extend(&launched[i]);
                    out.counts.nested_runtime_calls += 1;
                    continue;
                }
            }
            kept.push(i);
            outer = Some(i);
        }
        let mut cursor = ev.base;
        for i in kept {
            let code = ev.runtime_name[i] as usize;
            let (blocking, graph) = flags[code];
            let s = rt.ts[i].max(cursor);
            let t = rt.end[i].max(s);
            if s > cursor {
                out.host(stream, HostName::CpuGap.code(n_names), cursor, s - cursor, -1);
            }
            let mut own = launched[i].clone();
            if let Some(c) = children.get(&i) {
                own.extend(c);
                own.sort_unstable();
            }
            let mut prev_end = s;
            let mut launch_op: Option<i64> = None;
            if let Some(first) = own.iter().map(|&j| ev.gpu_ts[j]).min() {
                let p = t.min(s.max(first));
                let key = out.host(stream, HostName::Call(code).code(n_names), s, p - s, -1);
                if graph {
                    graph_launches.insert(key);
                }
                for &j in &own {
                    out.gpu_deps[j].push(key);
                    out.counts.launch_deps += 1;
                }
                launch_op = Some(key);
                prev_end = p;
            }
            // A blocking call waits for the last GPU op that ended while it ran and was launched
            // before it (or by it).
            let mut wait: Option<usize> = None;
            if blocking {
                let mut k = ends.partition_point(|&e| e <= t);
                while k > 0 && ends[k - 1] > prev_end {
                    k -= 1;
                    let j = by_end[k];
                    let lj = ev.gpu_launch[j];
                    if own.contains(&j) || lj < 0 || rt.ts[lj as usize] < rt.ts[i] {
                        wait = Some(j);
                        break;
                    }
                }
            }
            if let Some(w) = wait {
                let begin = ev.gpu_end[w].max(prev_end);
                let name = match launch_op {
                    None => HostName::Call(code),
                    Some(_) => HostName::Wait(code),
                };
                out.host(stream, name.code(n_names), begin, t - begin, w as i64);
                out.counts.sync_deps += 1;
            } else if launch_op.is_none() {
                out.host(stream, HostName::Call(code).code(n_names), s, t - s, -1);
            } else if prev_end < t {
                out.host(
                    stream,
                    HostName::AfterLaunch(code).code(n_names),
                    prev_end,
                    t - prev_end,
                    -1,
                );
            }
            cursor = t;
        }
    }

    // GPU ops whose launch is not in the trace: released at their measured start by a marker on
    // a host stream of their own.
    let mut orphans: Vec<usize> = (0..g).filter(|&j| ev.gpu_launch[j] < 0).collect();
    if !orphans.is_empty() {
        orphans.sort_by_key(|&j| ev.gpu_ts[j]);
        let stream = ev.streams + ev.threads;
        let mut cursor = ev.base;
        for &j in &orphans {
            let ts = ev.gpu_ts[j];
            if ts > cursor {
                out.host(stream, HostName::CpuGap.code(n_names), cursor, ts - cursor, -1);
                cursor = ts;
            }
            let marker = out.host(stream, HostName::LaunchNotInTrace.code(n_names), cursor, 0, -1);
            out.gpu_deps[j].push(marker);
        }
        out.counts.orphan_gpu_ops = orphans.len() as u64;
    }

    for &(c, p) in ev.extra_deps {
        out.gpu_deps[c].push(p as i64);
    }
    let mut order: Vec<usize> = (0..g).collect();
    order.sort_by_key(|&j| out.start[j]);
    out.counts.inferred_stream_deps = infer_stream_waits(&mut out, &order);
    let graph_stream = ev.streams + ev.threads + 1;
    for (node, anchor, bound) in graph_node_waits(&out, &order, &graph_launches) {
        let start = out.start[node];
        let stream = graph_stream + out.stream[node];
        let wait = out.host(
            stream,
            HostName::GraphNodeWait.code(n_names),
            bound,
            start - bound,
            anchor,
        );
        out.gpu_deps[node].push(wait);
        out.counts.graph_node_waits += 1;
    }
    Ok(out)
}

/// Deps for GPU ops that started later than their launch and their stream allow.
///
/// Kineto does not record which event a `cudaStreamWaitEvent` waits for, so a GPU op that starts
/// more than STREAM_WAIT_SLACK_NS after both its deps and the previous op of its stream ended is
/// made to depend on the op of another stream of the rank that ended last before it started, if
/// that was within STREAM_WAIT_WINDOW_NS. Deps always point to an op that started before this one
/// and ended by its start, so they cannot make a cycle. `order`: the GPU ops by start (then key).
fn infer_stream_waits(ops: &mut RankOps, order: &[usize]) -> u64 {
    let g = ops.gpu_deps.len();
    let mut by_end: Vec<usize> = (0..g).collect();
    by_end.sort_by_key(|&j| ops.start[j] + ops.dur[j]);
    let ends: Vec<i64> = by_end.iter().map(|&j| ops.start[j] + ops.dur[j]).collect();
    let mut prev_end: HashMap<i64, i64> = HashMap::new();
    let mut added = 0;
    for &j in order {
        let stream = ops.stream[j];
        let start = ops.start[j];
        let mut bound = prev_end.get(&stream).copied().unwrap_or(-(1 << 62));
        for &d in &ops.gpu_deps[j] {
            bound = bound.max(ops.end(d));
        }
        prev_end.insert(stream, start + ops.dur[j]);
        if start - bound <= STREAM_WAIT_SLACK_NS {
            continue;
        }
        let floor = bound.max(start - STREAM_WAIT_WINDOW_NS);
        let mut k = ends.partition_point(|&e| e <= start);
        while k > 0 && ends[k - 1] >= floor {
            k -= 1;
            let other = by_end[k];
            if ops.stream[other] != stream && ops.start[other] < start {
                ops.gpu_deps[j].push(other as i64);
                added += 1;
                break;
            }
        }
    }
    added
}

/// Idle time before the nodes of CUDA/HIP graph launches that nothing in the trace explains.
///
/// Kineto records a graph's kernels but not its edges, event waits or host nodes, so a node that
/// starts more than STREAM_WAIT_SLACK_NS after its stream, its deps and every earlier node of its
/// launch allow was held back by something unseen. For each such node: (node, key of the op whose
/// end bound it, that end): the launch, the previous op of its stream, a dep, or the earlier node
/// of its launch that ended last, so that a wait from that end to the node's measured start keeps
/// the measured gap, anchored to what the node visibly waited for.
fn graph_node_waits(ops: &RankOps, order: &[usize], graph_launches: &HashSet<i64>) -> Vec<(usize, i64, i64)> {
    let mut out = Vec::new();
    if graph_launches.is_empty() {
        return out;
    }
    let end = |j: usize| ops.start[j] + ops.dur[j];
    let mut prev: HashMap<i64, usize> = HashMap::new(); // stream → its last op so far
    let mut reach: HashMap<i64, usize> = HashMap::new(); // launch → its node that ended last so far
    for &j in order {
        let before = prev.insert(ops.stream[j], j);
        let deps = &ops.gpu_deps[j];
        let Some(&launch) = deps.iter().find(|d| graph_launches.contains(d)) else {
            continue;
        };
        let Some((mut bound, mut anchor)) = deps.iter().map(|&d| (ops.end(d), d)).max() else {
            continue;
        };
        let last = reach.get(&launch).copied();
        for o in [before, last].into_iter().flatten() {
            if end(o) > bound {
                (bound, anchor) = (end(o), o as i64);
            }
        }
        if ops.start[j] - bound > STREAM_WAIT_SLACK_NS {
            out.push((j, anchor, bound));
        }
        if last.is_none_or(|l| end(j) > end(l)) {
            reach.insert(launch, j);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    const NONE: Intervals<'static> = Intervals {
        ts: &[],
        end: &[],
        thread: &[],
    };

    /// A rank with no events: the tests give what they need over it.
    fn rank(names: &[String]) -> RankEvents<'_> {
        RankEvents {
            base: 0,
            runtime: NONE,
            runtime_name: &[],
            names,
            threads: 0,
            gpu_ts: &[],
            gpu_end: &[],
            gpu_stream: &[],
            gpu_launch: &[],
            gpu_nccl: &[],
            streams: 0,
            steps: &[],
            comms: NONE,
            extra_deps: &[],
        }
    }

    #[test]
    fn launch_gap_and_blocking_wait() {
        // Thread 0: launch at 10..20 of kernel 0 (runs 15..100), then cudaDeviceSynchronize 30..120.
        let names = names(&["cudaLaunchKernel", "cudaDeviceSynchronize"]);
        let ev = RankEvents {
            runtime: Intervals {
                ts: &[10, 30],
                end: &[20, 120],
                thread: &[0, 0],
            },
            runtime_name: &[0, 1],
            threads: 1,
            gpu_ts: &[15],
            gpu_end: &[100],
            gpu_stream: &[0],
            gpu_launch: &[0],
            gpu_nccl: &[false],
            streams: 1,
            steps: &[(0, 200, 7)],
            ..rank(&names)
        };
        let out = map_rank(&ev).expect("maps");
        let n = names.len();
        // gap 0..10, launch 10..15, [after launch] 15..20, gap 20..30, sync wait 100..120.
        assert_eq!(out.start, vec![15, 0, 10, 15, 20, 100]);
        assert_eq!(out.dur, vec![85, 10, 5, 5, 10, 20]);
        assert_eq!(
            out.host_name,
            vec![
                HostName::CpuGap.code(n),
                HostName::Call(0).code(n),
                HostName::AfterLaunch(0).code(n),
                HostName::CpuGap.code(n),
                HostName::Call(1).code(n),
            ]
        );
        assert_eq!(out.host_dep, vec![-1, -1, -1, -1, 0]);
        assert_eq!(out.gpu_deps, vec![vec![2]]);
        assert_eq!(out.iteration, vec![Some(7)]);
        assert_eq!(out.counts.sync_deps, 1);
        assert_eq!(out.counts.launch_deps, 1);
    }

    #[test]
    fn orphans_and_cross_stream_wait() {
        // Two kernels without launches; the second (stream 1) starts 5 µs after the first ends.
        let names = names(&[]);
        let ev = RankEvents {
            gpu_ts: &[0, 15_000],
            gpu_end: &[10_000, 20_000],
            gpu_stream: &[0, 1],
            gpu_launch: &[-1, -1],
            gpu_nccl: &[false, false],
            streams: 2,
            ..rank(&names)
        };
        let out = map_rank(&ev).expect("maps");
        assert_eq!(out.counts.orphan_gpu_ops, 2);
        // marker at 0, gap 0..15000, marker at 15000; kernel 1 waits for its marker only, which
        // it does not: no cross-stream dep (its marker ends when it starts).
        assert_eq!(out.gpu_deps, vec![vec![2], vec![4]]);
        assert_eq!(out.counts.inferred_stream_deps, 0);
    }

    #[test]
    fn no_cross_stream_wait_between_ops_starting_together() {
        // Two empty kernels on two streams at 100, both launched long before: neither waited for
        // the other (each picking the other would be a cycle).
        let names = names(&["cudaLaunchKernel"]);
        let ev = RankEvents {
            runtime: Intervals {
                ts: &[0, 10],
                end: &[5, 15],
                thread: &[0, 0],
            },
            runtime_name: &[0, 0],
            threads: 1,
            gpu_ts: &[100_000, 100_000],
            gpu_end: &[100_000, 100_000],
            gpu_stream: &[0, 1],
            gpu_launch: &[0, 1],
            gpu_nccl: &[false, false],
            streams: 2,
            ..rank(&names)
        };
        let out = map_rank(&ev).expect("maps");
        assert_eq!(out.counts.inferred_stream_deps, 0);
        assert!(out.gpu_deps.iter().all(|d| d.iter().all(|&k| k >= 2)));
    }

    #[test]
    fn inconsistent_columns_are_an_error() {
        let names = names(&["x"]);
        let ev = RankEvents {
            runtime: Intervals {
                ts: &[0],
                end: &[1],
                thread: &[3],
            },
            runtime_name: &[0],
            threads: 1,
            ..rank(&names)
        };
        assert!(map_rank(&ev).is_err());
    }

    #[test]
    fn innermost_and_parents() {
        // Thread 7: op 0 spans 0..100, op 1 spans 10..50 inside it; calls at 20 and 60.
        let evs = Intervals {
            ts: &[0, 10],
            end: &[100, 50],
            thread: &[7, 7],
        };
        let (inner, parent) = innermost(&[20, 60, 5], &[7, 7, 8], &evs);
        assert_eq!(inner, vec![1, 0, -1]);
        assert_eq!(parent, vec![-1, 0]);
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Any events (times in any order, launches anywhere): ops are made, deps name ops, and
        /// each runtime thread's host ops follow one another without overlap.
        #[test]
        fn host_streams_are_sequential(
            calls in proptest::collection::vec((0i64..500, 0i64..100, 0i64..2, 0i64..3), 0..12),
            kernels in proptest::collection::vec((0i64..600, 0i64..100, 0i64..2, -1i64..12, any::<bool>()), 0..12),
        ) {
            let names = names(&["cudaLaunchKernel", "cudaStreamSynchronize", "cudaGraphLaunch"]);
            let rt_ts: Vec<i64> = calls.iter().map(|c| c.0).collect();
            let rt_end: Vec<i64> = calls.iter().map(|c| c.0 + c.1).collect();
            let threads = calls.len().min(2) as i64; // at most one thread per call
            let rt_thread: Vec<i64> = calls.iter().map(|c| c.2 % threads.max(1)).collect();
            let rt_name: Vec<i64> = calls.iter().map(|c| c.3).collect();
            let n_rt = calls.len() as i64;
            let gpu_ts: Vec<i64> = kernels.iter().map(|k| k.0).collect();
            let gpu_end: Vec<i64> = kernels.iter().map(|k| k.0 + k.1).collect();
            let gpu_stream: Vec<i64> = kernels.iter().map(|k| k.2).collect();
            let gpu_launch: Vec<i64> = kernels.iter().map(|k| if k.3 < n_rt { k.3 } else { -1 }).collect();
            let gpu_nccl: Vec<bool> = kernels.iter().map(|k| k.4).collect();
            let ev = RankEvents {
                    runtime: Intervals { ts: &rt_ts, end: &rt_end, thread: &rt_thread },
                runtime_name: &rt_name,
                    threads,
                gpu_ts: &gpu_ts,
                gpu_end: &gpu_end,
                gpu_stream: &gpu_stream,
                gpu_launch: &gpu_launch,
                gpu_nccl: &gpu_nccl,
                streams: 2,
                steps: &[(0, 300, 1), (300, 700, 2)],
                comms: Intervals { ts: &[0], end: &[50], thread: &[0] },
                    ..rank(&names)
        };
            let out = map_rank(&ev).map_err(TestCaseError::fail)?;
            let n = out.start.len() as i64;
            let g = kernels.len();
            for deps in &out.gpu_deps {
                prop_assert!(deps.iter().all(|&d| (0..n).contains(&d)));
            }
            prop_assert!(out.host_dep.iter().all(|&d| (-1..n).contains(&d)));
            prop_assert!(out.dur.iter().all(|&d| d >= 0));
            for thread in 0..threads {
                let stream = ev.streams + thread;
                let mut last_end = ev.base;
                for k in g..out.start.len() {
                    if out.stream[k] == stream {
                        prop_assert!(out.start[k] >= last_end, "op {} starts before {}", k, last_end);
                        last_end = out.start[k] + out.dur[k];
                    }
                }
            }
        }
    }
}
