//! Replay throughput of the engine alone, on one thread (DESIGN.md §8). Prints figures only.
//!
//! Builds the synthetic trace of `benches/gen_trace.py` (same ops, same durations) directly as
//! Arrow arrays, then times `_core::simulate` end to end and each of its phases:
//! `Graph::build`, `engine::replay`, `summary::op_energy` and `summary::summarize`. A counting
//! global allocator reports the heap the engine needs per op.
//!
//!     cargo bench -j2 --bench replay                       # 10M ops at 64 and 4,096 ranks
//!     cargo bench -j2 --bench replay -- --ranks 64 --ops 1000000 --repeat 1 --row-order rank

use std::alloc::{GlobalAlloc, Layout, System as SysAlloc};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use _core::model::{AnalyticalNetwork, ComputeMode, NetworkModel};
use _core::trace::OpKind;
use _core::{engine, graph, summary, Group, Ops, SimOptions, System, Trace};
use arrow_array::builder::{ListBuilder, StringBuilder, UInt64Builder};
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, UInt32Array, UInt64Array};

// ---------------------------------------------------------------------------------------------
// Heap accounting

/// Counts live heap bytes and their high-water mark.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are only
// bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = SysAlloc.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = SysAlloc.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        SysAlloc.dealloc(ptr, layout);
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = SysAlloc.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn heap() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

/// Restarts the high-water mark at the current heap size; returns that size.
fn reset_peak() -> usize {
    let now = heap();
    PEAK.store(now, Ordering::Relaxed);
    now
}

fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// The synthetic trace (mirrors benches/gen_trace.py; see its docstring for the pattern)

const PERIOD: u64 = 16;
const MIB: u64 = 1 << 20;
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Clone, Copy, PartialEq)]
enum GroupKind {
    World,
    Pair,
    Block,
}

#[derive(Clone, Copy)]
struct Variant {
    kind: &'static str,
    stream: u32,
    name: &'static str,
    category: Option<&'static str>,
    coll: Option<&'static str>,
    group: Option<GroupKind>,
    comm_bytes: Option<u64>,
    peer_step: i8,
    dep_back: Option<u64>,
    dep_from: u64,
}

const CATEGORIES: [&str; 4] = ["gemm", "attention", "elementwise", "norm"];

const fn compute(slot: usize, dep_back: Option<u64>, dep_from: u64) -> Variant {
    let cat = CATEGORIES[[0, 0, 1, 2, 3][slot % 5]];
    Variant {
        kind: "compute",
        stream: 0,
        name: cat,
        category: Some(cat),
        coll: None,
        group: None,
        comm_bytes: None,
        peer_step: 0,
        dep_back,
        dep_from,
    }
}

const fn coll(coll: &'static str, name: &'static str, group: GroupKind, bytes: u64) -> Variant {
    Variant {
        kind: "collective",
        stream: 1,
        name,
        category: None,
        coll: Some(coll),
        group: Some(group),
        comm_bytes: Some(bytes),
        peer_step: 0,
        dep_back: Some(1),
        dep_from: 0,
    }
}

const fn p2p(send: bool, dep_back: u64) -> Variant {
    Variant {
        kind: if send { "send" } else { "recv" },
        stream: 2,
        name: if send { "nccl:send" } else { "nccl:recv" },
        category: None,
        coll: None,
        group: None,
        comm_bytes: Some(16 * MIB),
        peer_step: if send { 1 } else { -1 },
        dep_back: Some(dep_back),
        dep_from: 0,
    }
}

/// Indexed by slot in the period; 16/17 are the recv sides of slots 12/13, 18 is slot 15 in
/// periods without the world all_reduce.
const VARIANTS: [Variant; 19] = [
    compute(0, Some(3), 1),
    compute(1, Some(2), 1),
    compute(2, None, 0),
    compute(3, None, 0),
    compute(4, None, 0),
    coll("all_reduce", "nccl:all_reduce", GroupKind::Pair, 32 * MIB),
    compute(6, None, 0),
    compute(7, Some(2), 0),
    compute(8, None, 0),
    coll("all_gather", "nccl:all_gather", GroupKind::Block, 64 * MIB),
    compute(10, None, 0),
    compute(11, Some(2), 0),
    p2p(true, 1),
    p2p(true, 2),
    compute(14, Some(2), 0),
    coll("all_reduce", "nccl:all_reduce", GroupKind::World, 256 * MIB),
    p2p(false, 1),
    p2p(false, 2),
    coll("reduce_scatter", "nccl:reduce_scatter", GroupKind::Block, 64 * MIB),
];

/// splitmix64 of `x` and `salt`, reduced to [0, modulo) — the same numbers as gen_trace.py.
fn noise(x: u64, salt: u64, modulo: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN.wrapping_mul(salt + 1));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % modulo
}

/// The ops table of `ranks × ops_per_rank` ops and the groups; rows in op_id order, or grouped
/// by rank (`rank_major`, as a trace merged from per-rank files is).
fn build_trace(
    ranks: u32,
    ops_per_rank: u64,
    seed: u64,
    allreduce_every: u64,
    rank_major: bool,
) -> (RecordBatch, Vec<Group>) {
    assert!(ranks >= 2 && ranks % 2 == 0, "ranks must be even and at least 2");
    let every = allreduce_every / PERIOD;
    let r64 = u64::from(ranks);
    let n = (r64 * ops_per_rank) as usize;
    let pairs = u64::from(ranks / 2);

    let mut op_id = Vec::with_capacity(n);
    let mut rank = Vec::with_capacity(n);
    let mut stream = Vec::with_capacity(n);
    let mut flops = Vec::with_capacity(n);
    let mut bytes = Vec::with_capacity(n);
    let mut duration = Vec::with_capacity(n);
    let mut group_id = Vec::with_capacity(n);
    let mut coll_seq = Vec::with_capacity(n);
    let mut comm_bytes = Vec::with_capacity(n);
    let mut peer = Vec::with_capacity(n);
    let mut p2p_seq = Vec::with_capacity(n);
    let mut iteration = Vec::with_capacity(n);
    let strings = |avg: usize| StringBuilder::with_capacity(n, n * avg);
    let (mut name, mut kind, mut category, mut dtype, mut coll) =
        (strings(10), strings(8), strings(6), strings(4), strings(4));
    let mut deps = ListBuilder::with_capacity(UInt64Builder::with_capacity(n), n);

    for row in 0..n as u64 {
        let (s, r) = if rank_major {
            (row % ops_per_rank, row / ops_per_rank)
        } else {
            (row / r64, row % r64)
        };
        let (p, q) = (s % PERIOD, s / PERIOD);
        let odd = r % 2 == 1;
        let v = match p {
            12 if odd => 16,
            13 if !odd => 17,
            15 if q % every != every - 1 => 18,
            _ => p as usize,
        };
        let var = &VARIANTS[v];
        let id = s * r64 + r;
        let is_compute = var.kind == "compute";
        op_id.push(id);
        rank.push(r as u32);
        stream.push(var.stream);
        name.append_value(var.name);
        kind.append_value(var.kind);
        category.append_option(var.category);
        dtype.append_option(is_compute.then_some("bf16"));
        coll.append_option(var.coll);
        let d = if is_compute {
            2_000 + noise(id, seed, 48_000)
        } else {
            5_000 + noise(id, seed + 1, 95_000)
        };
        duration.push(d as i64);
        flops.push(is_compute.then_some(d as f64 * 4.0e5));
        bytes.push(is_compute.then(|| d * 1_000));
        group_id.push(var.group.map(|g| match g {
            GroupKind::World => 0,
            GroupKind::Pair => (1 + r / 2) as u32,
            GroupKind::Block => (1 + pairs + r / 8) as u32,
        }));
        let block_seq = 2 * q - q / every;
        coll_seq.push(match v {
            5 => Some(q),
            9 => Some(block_seq),
            18 => Some(block_seq + 1),
            15 => Some(q / every),
            _ => None,
        });
        comm_bytes.push(var.comm_bytes);
        peer.push(match var.peer_step {
            1 => Some(((r + 1) % r64) as u32),
            -1 => Some(((r + r64 - 1) % r64) as u32),
            _ => None,
        });
        p2p_seq.push((var.peer_step != 0).then_some(q));
        iteration.push((s * 4 / ops_per_rank) as u32);
        if let Some(back) = var.dep_back.filter(|_| q >= var.dep_from) {
            deps.values().append_value((s - back) * r64 + r);
        }
        deps.append(true);
    }
    let bytes = Arc::new(UInt64Array::from(bytes)) as ArrayRef;
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("op_id", Arc::new(UInt64Array::from(op_id))),
        ("rank", Arc::new(UInt32Array::from(rank))),
        ("stream", Arc::new(UInt32Array::from(stream))),
        ("name", Arc::new(name.finish())),
        ("kind", Arc::new(kind.finish())),
        ("category", Arc::new(category.finish())),
        ("dtype", Arc::new(dtype.finish())),
        ("flops", Arc::new(Float64Array::from(flops))),
        ("bytes_read", bytes.clone()),
        ("bytes_written", bytes),
        ("duration_ns", Arc::new(Int64Array::from(duration))),
        ("coll", Arc::new(coll.finish())),
        ("group_id", Arc::new(UInt32Array::from(group_id))),
        ("coll_seq", Arc::new(UInt64Array::from(coll_seq))),
        ("comm_bytes", Arc::new(UInt64Array::from(comm_bytes))),
        ("peer", Arc::new(UInt32Array::from(peer))),
        ("p2p_seq", Arc::new(UInt64Array::from(p2p_seq))),
        ("iteration", Arc::new(UInt32Array::from(iteration))),
        ("deps", Arc::new(deps.finish())),
    ];
    let batch = RecordBatch::try_from_iter(columns).expect("the generated columns form a record batch");

    let mut groups = vec![Group {
        group_id: 0,
        ranks: (0..ranks).collect(),
    }];
    let pair_groups = (0..ranks / 2).map(|i| vec![2 * i, 2 * i + 1]);
    let block_groups = (0..ranks.div_ceil(8)).map(|i| (8 * i..(8 * i + 8).min(ranks)).collect());
    for members in pair_groups.chain(block_groups) {
        groups.push(Group {
            group_id: groups.len() as u32,
            ranks: members,
        });
    }
    (batch, groups)
}

/// dgx-h100 as `tracesim.load_system("dgx-h100", nodes=...).engine_json()` describes it
/// (the fields the engine needs; the others take their defaults).
fn dgx_h100(nodes: u32) -> System {
    let json = format!(
        r#"{{"name": "dgx-h100", "nodes": {nodes}, "devices_per_node": 8,
        "device": {{"name": "h100-sxm",
            "peak_flops": {{"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12, "fp8": 1978.9e12}},
            "launch_overhead_ns": 0.0,
            "energy_pj_per_flop": {{"fp32": 10.45, "tf32": 1.415, "bf16": 0.7075, "fp16": 0.7075, "fp8": 0.3537}},
            "static_power_w": 0.0, "primary_memory": "hbm",
            "memory": {{"hbm": {{"capacity_bytes": 80e9, "read_bw_bytes": 3.35e12, "write_bw_bytes": 3.35e12,
                "latency_ns": 100.0, "read_energy_pj_per_bit": 3.9, "write_energy_pj_per_bit": 3.9}}}}}},
        "network": {{"scale_up": {{"bw_bytes": 450e9, "latency_ns": 936.25, "energy_pj_per_bit": 1.5}},
                     "scale_out": {{"bw_bytes": 50e9, "latency_ns": 1500.0, "energy_pj_per_bit": 37.5}}}}}}"#
    );
    System::from_json(&json).expect("the dgx-h100 description is valid")
}

// ---------------------------------------------------------------------------------------------
// A what-if for the report: the same schedule without the event heap

/// End times of every op computed by a topological sweep (a FIFO queue, or a LIFO stack like
/// `graph::find_cycle`) instead of the engine's time-ordered heap, in measured mode (every op of the synthetic trace has a duration; a
/// rendezvous takes its members' smallest). No op's duration then depends on what else runs
/// at the same time, so any topological order yields the engine's schedule; the bench checks
/// that it does. Not a replacement for `engine::replay` (no deadlock report, no flow-level
/// network), only a measure of what the heap and its time order cost.
fn sweep_end_times(trace: &Trace, graph: &graph::Graph, lifo: bool) -> Vec<i64> {
    let ops = &trace.ops;
    let n = ops.len();
    let rdv = &graph.rendezvous;
    let duration: Vec<i64> = (0..n).map(|i| ops.duration(i).unwrap_or(0)).collect();
    let transfer: Vec<i64> = (0..rdv.len())
        .map(|c| {
            rdv.members_of(c)
                .iter()
                .map(|&m| duration[m as usize])
                .min()
                .unwrap_or(0)
        })
        .collect();
    let mut pending = graph.pending.clone();
    let mut ready = vec![0i64; n];
    let mut end = vec![0i64; n];
    let mut arrived = vec![0u32; rdv.len()];
    let mut last_ready = vec![0i64; rdv.len()];
    let mut queue: Vec<u32> = Vec::with_capacity(n);
    queue.extend((0..n as u32).filter(|&i| pending[i as usize] == 0));
    let (mut head, mut done) = (0, 0);
    loop {
        let i = if lifo {
            match queue.pop() {
                Some(i) => i as usize,
                None => break,
            }
        } else if head < queue.len() {
            head += 1;
            queue[head - 1] as usize
        } else {
            break;
        };
        done += 1;
        let c = graph.instance_of[i];
        let row = i as u32;
        let finished: &[u32] = if c == graph::NONE {
            end[i] = ready[i] + duration[i];
            std::slice::from_ref(&row)
        } else {
            let c = c as usize;
            arrived[c] += 1;
            last_ready[c] = last_ready[c].max(ready[i]);
            let members = rdv.members_of(c);
            if arrived[c] as usize != members.len() {
                continue;
            }
            for &m in members {
                end[m as usize] = last_ready[c] + transfer[c];
            }
            members
        };
        for &f in finished {
            let f = f as usize;
            let next = graph.stream_next[f];
            for &s in std::iter::once(&next)
                .filter(|&&s| s != graph::NONE)
                .chain(graph.successors(f))
            {
                let s = s as usize;
                ready[s] = ready[s].max(end[f]);
                pending[s] -= 1;
                if pending[s] == 0 {
                    queue.push(s as u32);
                }
            }
        }
    }
    assert_eq!(done, n, "the synthetic trace has no deadlock");
    end
}

// ---------------------------------------------------------------------------------------------
// Measurement

struct Args {
    ranks: Vec<u32>,
    ops: u64,
    repeat: usize,
    seed: u64,
    allreduce_every: u64,
    rank_major: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        ranks: vec![64, 4096],
        ops: 10_000_000,
        repeat: 3,
        seed: 0,
        allreduce_every: 64,
        rank_major: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--ranks" => {
                args.ranks = value()
                    .split(',')
                    .map(|r| r.parse().expect("--ranks takes a comma-separated list"))
                    .collect()
            }
            "--ops" => args.ops = value().parse().expect("--ops takes an integer"),
            "--repeat" => args.repeat = value().parse().expect("--repeat takes an integer"),
            "--seed" => args.seed = value().parse().expect("--seed takes an integer"),
            "--allreduce-every" => args.allreduce_every = value().parse().expect("an integer multiple of 16"),
            "--row-order" => {
                args.rank_major = match value().as_str() {
                    "op_id" => false,
                    "rank" => true,
                    other => panic!("--row-order takes op_id or rank, not {other}"),
                }
            }
            "--bench" => {} // passed by `cargo bench`
            other => panic!(
                "unknown argument {other}; expected --ranks, --ops, --repeat, --seed, --allreduce-every, --row-order"
            ),
        }
    }
    assert!(args.allreduce_every >= PERIOD && args.allreduce_every % PERIOD == 0);
    args.repeat = args.repeat.max(1);
    args
}

/// Best wall time of `repeat` runs, the last result, and the heap high-water mark above the
/// heap at the start of the first run.
fn best<T>(repeat: usize, mut f: impl FnMut() -> T) -> (Duration, T, usize) {
    let base = reset_peak();
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..repeat {
        drop(out.take());
        let t = Instant::now();
        let v = black_box(f());
        best = best.min(t.elapsed());
        out = Some(v);
    }
    let extra = peak().saturating_sub(base);
    (best, out.expect("repeat >= 1"), extra)
}

/// (minor page faults, user ticks, system ticks) of this process from /proc/self/stat (Linux).
fn proc_stat() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; minflt is field 10, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |k: usize| fields.get(k - 3)?.parse().ok();
    Some((field(10)?, field(14)?, field(15)?))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn case(ranks: u32, args: &Args) {
    let ops_per_rank = (args.ops / u64::from(ranks)).max(1);
    let heap0 = heap();
    let t = Instant::now();
    let (batch, groups) = build_trace(ranks, ops_per_rank, args.seed, args.allreduce_every, args.rank_major);
    let gen_s = t.elapsed();
    let arrow_bytes = heap() - heap0;
    let n = batch.num_rows();
    let nf = n as f64;

    let (from_batches, ops, from_batches_peak) = best(args.repeat, || {
        Ops::from_batches(std::slice::from_ref(&batch)).expect("the generated trace has the canonical schema")
    });
    drop(batch); // the Ops views share the Arrow buffers
    let trace = Trace { ranks, ops, groups };
    let at_rest = heap() - heap0;

    let system = dgx_h100(ranks.div_ceil(8));
    let options = SimOptions {
        compute: ComputeMode::Measured,
        network: "analytical".into(),
    };
    let (stat0, wall0) = (proc_stat(), Instant::now());
    let (sim, out, sim_peak) = best(args.repeat, || {
        _core::simulate(&trace, &system, None, &options).expect("the synthetic trace replays")
    });
    let sim_kernel = proc_stat().zip(stat0).map(|(b, a)| {
        let runs = args.repeat as f64;
        let ticks = 100.0; // USER_HZ on Linux
        (
            (b.0 - a.0) as f64 / runs,
            (b.1 - a.1) as f64 / ticks / runs,
            (b.2 - a.2) as f64 / ticks / runs,
            secs(wall0.elapsed()) / runs,
        )
    });
    let makespan = out.summary.makespan_ns;
    let outcome_bytes = out.schedule.start_ns.capacity() * 8 * 4 + out.energy_j.capacity() * 8;
    drop(out);

    // The phases of `simulate`, one at a time.
    let compute = options.compute.build(&system, None).expect("measured mode builds");
    let network = AnalyticalNetwork::new(&system).expect("the preset's network builds");
    let models = engine::Models {
        compute: compute.as_ref(),
        network: &network as &dyn NetworkModel,
        flow: false,
        placement: None,
        system: &system,
    };
    let (build, graph, build_peak) = best(args.repeat, || graph::Graph::build(&trace).expect("valid"));
    let graph_bytes = heap() - heap0 - at_rest;
    let (replay, schedule, replay_peak) = best(args.repeat, || {
        engine::replay(&trace, &graph, &models, None).expect("no deadlock")
    });
    let (energy, (energy_j, breakdown), _) = best(args.repeat, || {
        summary::op_energy(&trace, &graph, &system, &network, None, None)
    });
    let (summarize, _, _) = best(args.repeat, || {
        summary::summarize(&trace, &system, &schedule, breakdown.clone(), Vec::new())
    });
    let (cycle, _, cycle_peak) = best(args.repeat, || graph::find_cycle(&trace, &graph));
    let (fifo, fifo_end, sweep_peak) = best(args.repeat, || sweep_end_times(&trace, &graph, false));
    let (lifo, lifo_end, _) = best(args.repeat, || sweep_end_times(&trace, &graph, true));
    let same = fifo_end == schedule.end_ns && lifo_end == schedule.end_ns;
    drop((energy_j, schedule, fifo_end, lifo_end));

    let kinds = |k: OpKind| trace.ops.kind.iter().filter(|&&x| x == k).count();
    let rdv = &graph.rendezvous;
    let colls = rdv.group.iter().filter(|&&g| g != graph::NONE).count();
    println!(
        "\n== {ranks} ranks × {ops_per_rank} = {n} ops ({} collective, {} send, {} recv; {} collective instances, {} \
         send/recv pairs, {} deps), rows in {} order, dgx-h100 × {} nodes, measured ==",
        kinds(OpKind::Collective),
        kinds(OpKind::Send),
        kinds(OpKind::Recv),
        colls,
        rdv.len() - colls,
        graph.succ.len(),
        if args.rank_major { "rank" } else { "op_id" },
        system.nodes,
    );
    let row = |label: &str, d: Duration| {
        println!(
            "  {label:<34} {:>8.3} s  {:>7.2} M ops/s  {:>6.1}% of simulate",
            secs(d),
            nf / secs(d) / 1e6,
            100.0 * secs(d) / secs(sim)
        )
    };
    println!(
        "  {:<34} {:>8.3} s  (Arrow arrays: {:.1} B/op)",
        "build Arrow trace (bench only)",
        secs(gen_s),
        arrow_bytes as f64 / nf
    );
    row("Ops::from_batches (enum parse)", from_batches);
    row("_core::simulate (end to end)", sim);
    row("  Graph::build", build);
    row("  engine::replay", replay);
    row("  summary::op_energy", energy);
    row("  summary::summarize", summarize);
    row("graph::find_cycle (validate only)", cycle);
    row("what-if: heap-free FIFO sweep", fifo);
    row("what-if: heap-free LIFO sweep", lifo);
    println!(
        "  {:<34} same end times as engine::replay: {}; heap +{:.1} B/op on top of the graph",
        "",
        if same { "yes" } else { "NO" },
        sweep_peak as f64 / nf
    );
    println!(
        "  {:<34} {:>8.2} M ops/s on one thread (target >= 10); makespan {makespan} ns",
        "=> simulate throughput",
        nf / secs(sim) / 1e6
    );
    let per_op = |b: usize| b as f64 / nf;
    println!(
        "  heap: trace at rest {:.1} B/op (Arrow columns the Ops view keeps + parsed enums; from_batches peak +{:.1})",
        per_op(at_rest),
        per_op(from_batches_peak)
    );
    if let Some((faults, user, sys, wall)) = sim_kernel {
        println!(
            "  kernel: per simulate run {faults:.0} minor page faults ({:.1} per MiB of peak heap), user {user:.2} s, \
             sys {sys:.2} s of {wall:.2} s",
            faults / (sim_peak as f64 / 1048576.0)
        );
    }
    println!(
        "  heap: simulate peak +{:.1} B/op above the trace (target <= 150), of which the result it returns {:.1} B/op",
        per_op(sim_peak),
        per_op(outcome_bytes)
    );
    println!(
        "  heap: Graph {:.1} B/op kept (build peak +{:.1}); replay peak +{:.1} on top of the graph; find_cycle +{:.1}",
        per_op(graph_bytes),
        per_op(build_peak),
        per_op(replay_peak),
        per_op(cycle_peak)
    );
}

fn main() {
    let args = parse_args();
    println!(
        "tracesim replay bench: ops/s of `_core::simulate` on one thread (best of {}), heap from a counting allocator",
        args.repeat
    );
    for &ranks in &args.ranks {
        case(ranks, &args);
    }
}
