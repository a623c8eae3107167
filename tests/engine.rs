//! Engine tests without Python: hand-computed golden cases and proptest properties.

use std::sync::Arc;

use _core::model::ComputeMode;
use _core::{simulate, Error, Group, Ops, SimOptions, System, Trace};
use arrow_array::builder::{ListBuilder, UInt64Builder};
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use proptest::prelude::*;

const SYSTEM: &str = r#"{
  "name": "test", "nodes": 64, "devices_per_node": 8,
  "device": {"name": "d", "peak_flops": {"bf16": 1e15}, "primary_memory": "hbm",
             "memory": {"hbm": {"capacity_bytes": 8e10, "read_bw_bytes": 1e12, "write_bw_bytes": 1e12}}},
  "network": {"scale_up": {"bw_bytes": 1e11, "latency_ns": 1000}, "scale_out": {"bw_bytes": 1e10, "latency_ns": 5000}}
}"#;

#[derive(Clone, Debug, Default)]
struct Op {
    rank: u32,
    stream: u32,
    kind: &'static str,
    duration: i64,
    deps: Vec<u64>,
    group: Option<u32>,
    seq: Option<u64>,
    peer: Option<u32>,
}

fn op(rank: u32, stream: u32, kind: &'static str, duration: i64, deps: &[u64]) -> Op {
    Op {
        rank,
        stream,
        kind,
        duration,
        deps: deps.to_vec(),
        ..Op::default()
    }
}

fn trace(ranks: u32, ops: &[Op], groups: Vec<Group>) -> Trace {
    let n = ops.len();
    let mut deps = ListBuilder::new(UInt64Builder::new());
    for o in ops {
        deps.values().append_slice(&o.deps);
        deps.append(true);
    }
    let coll: Vec<Option<&str>> = ops
        .iter()
        .map(|o| (o.kind == "collective").then_some("all_reduce"))
        .collect();
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("op_id", Arc::new(UInt64Array::from_iter_values(0..n as u64))),
        (
            "rank",
            Arc::new(UInt32Array::from_iter_values(ops.iter().map(|o| o.rank))),
        ),
        (
            "stream",
            Arc::new(UInt32Array::from_iter_values(ops.iter().map(|o| o.stream))),
        ),
        (
            "name",
            Arc::new(StringArray::from_iter_values(ops.iter().map(|_| "op"))),
        ),
        (
            "kind",
            Arc::new(StringArray::from_iter_values(ops.iter().map(|o| o.kind))),
        ),
        (
            "duration_ns",
            Arc::new(Int64Array::from_iter_values(ops.iter().map(|o| o.duration))),
        ),
        ("deps", Arc::new(deps.finish())),
        ("coll", Arc::new(StringArray::from(coll))),
        (
            "group_id",
            Arc::new(UInt32Array::from(ops.iter().map(|o| o.group).collect::<Vec<_>>())),
        ),
        (
            "coll_seq",
            Arc::new(UInt64Array::from(
                ops.iter()
                    .map(|o| o.seq.filter(|_| o.group.is_some()))
                    .collect::<Vec<_>>(),
            )),
        ),
        (
            "peer",
            Arc::new(UInt32Array::from(ops.iter().map(|o| o.peer).collect::<Vec<_>>())),
        ),
        (
            "p2p_seq",
            Arc::new(UInt64Array::from(
                ops.iter()
                    .map(|o| o.seq.filter(|_| o.peer.is_some()))
                    .collect::<Vec<_>>(),
            )),
        ),
        (
            "comm_bytes",
            Arc::new(UInt64Array::from(
                ops.iter()
                    .map(|o| (o.kind != "compute").then_some(1 << 20))
                    .collect::<Vec<_>>(),
            )),
        ),
    ];
    let batch = RecordBatch::try_from_iter(columns).expect("test batch");
    Trace {
        ranks,
        ops: Ops::from_batches(&[batch]).expect("test ops"),
        groups,
    }
}

fn run(t: &Trace) -> Result<_core::Outcome, Error> {
    let system = System::from_json(SYSTEM).expect("test system");
    simulate(
        t,
        &system,
        None,
        &SimOptions {
            compute: ComputeMode::Measured,
            network: "analytical".into(),
        },
    )
}

fn coll(rank: u32, stream: u32, duration: i64, deps: &[u64], group: u32, seq: u64) -> Op {
    Op {
        group: Some(group),
        seq: Some(seq),
        ..op(rank, stream, "collective", duration, deps)
    }
}

fn p2p(rank: u32, kind: &'static str, duration: i64, deps: &[u64], peer: u32, seq: u64) -> Op {
    Op {
        peer: Some(peer),
        seq: Some(seq),
        ..op(rank, 0, kind, duration, deps)
    }
}

#[test]
fn golden_collective_waits_for_the_last_rank_and_takes_the_smallest_duration() {
    // rank 0: compute 100 then all-reduce (measured 80); rank 1: compute 300 then all-reduce (measured 30).
    // Data moves at 300 when rank 1 arrives and takes min(80, 30) = 30: both end at 330.
    let ops = [
        op(0, 0, "compute", 100, &[]),
        coll(0, 0, 80, &[], 0, 0),
        op(1, 0, "compute", 300, &[]),
        coll(1, 0, 30, &[], 0, 0),
    ];
    let t = trace(
        2,
        &ops,
        vec![Group {
            group_id: 0,
            ranks: vec![0, 1],
        }],
    );
    let out = run(&t).expect("replay");
    assert_eq!(out.schedule.start_ns, vec![0, 100, 0, 300]);
    assert_eq!(out.schedule.end_ns, vec![100, 330, 300, 330]);
    assert_eq!(out.schedule.wait_ns, vec![0, 200, 0, 0]);
    assert_eq!(out.summary.makespan_ns, 330);
    assert_eq!(out.summary.ranks[0].wait_ns, 200);
    assert_eq!(out.summary.ranks[0].comm_ns, 230);
    assert_eq!(out.summary.ranks[0].exposed_comm_ns, 230);
}

#[test]
fn golden_streams_overlap_and_cross_rank_deps() {
    // rank 0 stream 0: A 100, B 50; stream 1: C 70 after A; rank 1: D 10 after C.
    let ops = [
        op(0, 0, "compute", 100, &[]),
        op(0, 0, "compute", 50, &[]),
        op(0, 1, "compute", 70, &[0]),
        op(1, 0, "compute", 10, &[2]),
    ];
    let out = run(&trace(2, &ops, vec![])).expect("replay");
    assert_eq!(out.schedule.start_ns, vec![0, 100, 100, 170]);
    assert_eq!(out.schedule.end_ns, vec![100, 150, 170, 180]);
    assert_eq!(out.summary.ranks[0].compute_ns, 170);
    assert_eq!(out.summary.ranks[1].idle_ns, 170);
}

#[test]
fn golden_send_recv_moves_when_both_sides_are_ready() {
    // send ready at 40 (measured 25), recv ready at 0 (measured 90): transfer = 25 from 40.
    let ops = [
        op(0, 0, "compute", 40, &[]),
        p2p(0, "send", 25, &[], 1, 0),
        p2p(1, "recv", 90, &[], 0, 0),
    ];
    let out = run(&trace(2, &ops, vec![])).expect("replay");
    assert_eq!(out.schedule.end_ns, vec![40, 65, 65]);
    assert_eq!(out.schedule.wait_ns, vec![0, 0, 40]);
}

#[test]
fn mismatched_collective_order_is_a_deadlock_naming_blocked_ops() {
    // rank 0 runs group 0 then group 1; rank 1 runs group 1 then group 0.
    let ops = [
        coll(0, 0, 10, &[], 0, 0),
        coll(0, 0, 10, &[], 1, 0),
        coll(1, 0, 10, &[], 1, 0),
        coll(1, 0, 10, &[], 0, 0),
    ];
    let groups = vec![
        Group {
            group_id: 0,
            ranks: vec![0, 1],
        },
        Group {
            group_id: 1,
            ranks: vec![0, 1],
        },
    ];
    match run(&trace(2, &ops, groups)) {
        Err(Error::Deadlock { stuck, blocked }) => {
            assert_eq!(stuck, 4);
            assert_eq!(blocked.len(), 2);
            assert_eq!((blocked[0].rank, blocked[0].op_id), (0, 0));
            assert_eq!((blocked[1].rank, blocked[1].op_id), (1, 2));
            assert!(
                blocked[0].waiting_for.contains("ranks [1]"),
                "{}",
                blocked[0].waiting_for
            );
        }
        other => panic!("expected a deadlock, got {:?}", other.map(|o| o.summary.makespan_ns)),
    }
}

#[test]
fn dependency_cycle_names_its_ops() {
    let ops = [op(0, 0, "compute", 1, &[1]), op(1, 0, "compute", 1, &[0])];
    let err = run(&trace(2, &ops, vec![])).err().expect("cycle");
    let msg = err.to_string();
    assert!(msg.contains("column 'deps'") && msg.contains("cycle"), "{msg}");
    assert!(msg.contains('0') && msg.contains('1'), "{msg}");
}

/// Random traces whose op_id order is a valid schedule (as in tests/strategies.py).
fn random_ops() -> impl Strategy<Value = (u32, Vec<Op>)> {
    (
        1u32..5,
        prop::collection::vec((0u8..4, any::<u32>(), 0i64..1000, any::<u64>()), 1..40),
    )
        .prop_map(|(ranks, steps)| {
            let mut ops: Vec<Op> = Vec::new();
            let mut seq = 0u64;
            let mut p2p_seq = std::collections::HashMap::new();
            for (what, pick, duration, dep_pick) in steps {
                let before = ops.len() as u64;
                let deps: Vec<u64> = if before > 0 && dep_pick % 3 == 0 {
                    vec![dep_pick % before]
                } else {
                    vec![]
                };
                let rank = pick % ranks;
                let stream = (pick / 7) % 2;
                match what {
                    2 => {
                        for r in 0..ranks {
                            ops.push(coll(r, stream, duration + i64::from(r), &deps, 0, seq));
                        }
                        seq += 1;
                    }
                    3 if ranks >= 2 => {
                        let dst = (rank + 1 + (pick / 3) % (ranks - 1)) % ranks;
                        let s = p2p_seq.entry((rank, dst)).or_insert(0u64);
                        ops.push(p2p(rank, "send", duration, &deps, dst, *s));
                        ops.push(p2p(dst, "recv", duration / 2, &deps, rank, *s));
                        *s += 1;
                    }
                    _ => ops.push(op(rank, stream, "compute", duration, &deps)),
                }
            }
            (ranks, ops)
        })
}

fn all_ranks(ranks: u32) -> Vec<Group> {
    vec![Group {
        group_id: 0,
        ranks: (0..ranks).collect(),
    }]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn replay_is_causal_deterministic_and_collectives_end_together((ranks, ops) in random_ops()) {
        let t = trace(ranks, &ops, all_ranks(ranks));
        let a = run(&t).expect("replay");
        let b = run(&t).expect("replay");
        prop_assert_eq!(&a.schedule.start_ns, &b.schedule.start_ns);
        prop_assert_eq!(&a.schedule.end_ns, &b.schedule.end_ns);
        let mut last_in_stream = std::collections::HashMap::new();
        let mut instance_end = std::collections::HashMap::new();
        for i in 0..t.ops.len() {
            let (s, e) = (a.schedule.start_ns[i], a.schedule.end_ns[i]);
            prop_assert!(s <= e);
            for &d in t.ops.deps_of(i) {
                prop_assert!(s >= a.schedule.end_ns[d as usize], "op {} starts before dep {} ends", i, d);
            }
            let key = (t.ops.rank.value(i), t.ops.stream.value(i));
            if let Some(&p) = last_in_stream.get(&key) {
                prop_assert!(s >= a.schedule.end_ns[p]);
            }
            last_in_stream.insert(key, i);
            if let Some(seq) = t.ops.coll_seq(i) {
                let end = *instance_end.entry(seq).or_insert(e);
                prop_assert_eq!(end, e, "participants of collective {} end apart", seq);
            }
        }
    }

    #[test]
    fn shortening_an_op_never_lengthens_the_makespan((ranks, ops) in random_ops(), pick in any::<usize>()) {
        let base = run(&trace(ranks, &ops, all_ranks(ranks))).expect("replay").summary.makespan_ns;
        let mut shorter = ops.clone();
        let i = pick % shorter.len();
        shorter[i].duration /= 2;
        let after = run(&trace(ranks, &shorter, all_ranks(ranks))).expect("replay").summary.makespan_ns;
        prop_assert!(after <= base);
    }
}

#[test]
fn dictionary_encoded_enum_columns_are_read() {
    use arrow_array::types::Int32Type;
    use arrow_array::DictionaryArray;
    let kinds: DictionaryArray<Int32Type> = vec!["compute", "compute", "host"].into_iter().collect();
    let batch = RecordBatch::try_from_iter(vec![
        ("op_id", Arc::new(UInt64Array::from(vec![0u64, 1, 2])) as ArrayRef),
        ("rank", Arc::new(UInt32Array::from(vec![0u32, 0, 0])) as ArrayRef),
        ("stream", Arc::new(UInt32Array::from(vec![0u32, 0, 1])) as ArrayRef),
        ("name", Arc::new(StringArray::from(vec!["a", "b", "c"])) as ArrayRef),
        ("kind", Arc::new(kinds) as ArrayRef),
        ("duration_ns", Arc::new(Int64Array::from(vec![5i64, 7, 3])) as ArrayRef),
    ])
    .expect("batch");
    let t = Trace {
        ranks: 1,
        ops: Ops::from_batches(&[batch]).expect("ops"),
        groups: vec![],
    };
    assert_eq!(t.ops.kind[2], _core::trace::OpKind::Host);
    let out = run(&t).expect("replay");
    assert_eq!(out.schedule.end_ns, vec![5, 12, 3]);

    let bad: DictionaryArray<Int32Type> = vec!["compute", "kernel"].into_iter().collect();
    let batch = RecordBatch::try_from_iter(vec![
        ("op_id", Arc::new(UInt64Array::from(vec![0u64, 9])) as ArrayRef),
        ("rank", Arc::new(UInt32Array::from(vec![0u32, 0])) as ArrayRef),
        ("stream", Arc::new(UInt32Array::from(vec![0u32, 0])) as ArrayRef),
        ("name", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef),
        ("kind", Arc::new(bad) as ArrayRef),
    ])
    .expect("batch");
    let msg = Ops::from_batches(&[batch])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        msg.contains("column 'kind', op_id 9: unknown value \"kernel\""),
        "{msg}"
    );
}
