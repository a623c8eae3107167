//! Validation of a trace and the dependency graph the engine walks: stream order, deps
//! (reversed into successor lists), and rendezvous (collective instances, send/recv pairs).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::{Error, Result};
use crate::trace::{CollKind, OpKind, Trace};

pub const NONE: u32 = u32::MAX;

/// Multiply-shift hasher for integer keys: the maps here are keyed by ids, not by user strings
/// that could be chosen to collide, and SipHash would dominate the build time.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// op_id → row index: a flat table when ids are dense enough, a hash map otherwise.
enum IdIndex {
    Dense { min: u64, table: Vec<u32> },
    Sparse(IdMap<u64, u32>),
}

impl IdIndex {
    fn build(trace: &Trace) -> Result<IdIndex> {
        let ids = trace.ops.op_id.values();
        let (min, max) = ids.iter().fold((u64::MAX, 0), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let span = max.saturating_sub(min);
        let dup = |i: usize| Error::ops("op_id", Some(ids[i]), "duplicate op_id");
        if span < 2 * ids.len() as u64 + 1024 {
            let mut table = crate::bulk::filled(span as usize + 1, NONE);
            for (i, &id) in ids.iter().enumerate() {
                let slot = &mut table[(id - min) as usize];
                if *slot != NONE {
                    return Err(dup(i));
                }
                *slot = i as u32;
            }
            Ok(IdIndex::Dense { min, table })
        } else {
            let mut map = IdMap::with_capacity_and_hasher(ids.len(), Default::default());
            for (i, &id) in ids.iter().enumerate() {
                if map.insert(id, i as u32).is_some() {
                    return Err(dup(i));
                }
            }
            Ok(IdIndex::Sparse(map))
        }
    }

    fn get(&self, id: u64) -> Option<u32> {
        match self {
            IdIndex::Dense { min, table } => {
                let k = id.checked_sub(*min)?;
                table.get(usize::try_from(k).ok()?).copied().filter(|&v| v != NONE)
            }
            IdIndex::Sparse(map) => map.get(&id).copied(),
        }
    }
}

/// Instance index by sequence number (coll_seq or p2p_seq): a flat vector while sequence
/// numbers stay near the count seen so far, as they do when they count from 0; a map beyond.
#[derive(Default)]
struct SeqIndex {
    dense: Vec<u32>,
    sparse: IdMap<u64, u32>,
}

impl SeqIndex {
    fn get_or_insert(&mut self, seq: u64, next: u32) -> u32 {
        let limit = 2 * self.dense.len() as u64 + 1024;
        if seq < limit {
            let k = seq as usize;
            if k >= self.dense.len() {
                self.dense.resize(k + 1, NONE);
            }
            if self.dense[k] == NONE {
                self.dense[k] = next;
            }
            self.dense[k]
        } else {
            *self.sparse.entry(seq).or_insert(next)
        }
    }
}

/// Participants of every rendezvous, as compressed rows: instance c's op indices are
/// `members[offsets[c]..offsets[c+1]]`. Collectives come first, then send/recv pairs.
pub struct Rendezvous {
    pub offsets: Vec<u32>,
    pub members: Vec<u32>,
    /// For collective instances: the index into `Trace::groups` (NONE for send/recv pairs).
    pub group: Vec<u32>,
}

impl Rendezvous {
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn members_of(&self, c: usize) -> &[u32] {
        &self.members[self.offsets[c] as usize..self.offsets[c + 1] as usize]
    }
}

pub struct Graph {
    /// Next op on the same (rank, stream), in op_id order.
    pub stream_next: Vec<u32>,
    /// First op of each (rank, stream).
    pub stream_heads: Vec<u32>,
    /// Number of predecessors (stream predecessor and deps) of each op.
    pub pending: Vec<u32>,
    pub succ_offsets: Vec<u32>,
    pub succ: Vec<u32>,
    /// Rendezvous instance of each collective/send/recv op; NONE otherwise.
    pub instance_of: Vec<u32>,
    pub rendezvous: Rendezvous,
}

impl Graph {
    pub fn successors(&self, i: usize) -> &[u32] {
        &self.succ[self.succ_offsets[i] as usize..self.succ_offsets[i + 1] as usize]
    }

    /// Validates `trace` (everything in DESIGN.md §2 except cycles, see [`find_cycle`]) and builds the graph.
    pub fn build(trace: &Trace) -> Result<Graph> {
        let ops = &trace.ops;
        let n = ops.len();
        if trace.ranks == 0 {
            return Err(Error::ops(
                "rank",
                None,
                "the trace declares 0 ranks (trace.json 'ranks')",
            ));
        }
        if n >= NONE as usize {
            return Err(Error::ops(
                "op_id",
                None,
                format!("{n} ops exceed the engine's limit of {}", NONE - 1),
            ));
        }
        for (i, &r) in ops.rank.values().iter().enumerate() {
            if r >= trace.ranks {
                return Err(Error::ops(
                    "rank",
                    Some(ops.id(i)),
                    format!(
                        "rank {r} is outside 0..{} (trace.json declares {} ranks)",
                        trace.ranks - 1,
                        trace.ranks
                    ),
                ));
            }
        }
        if let Some(d) = &ops.duration_ns {
            if let Some(i) = (0..n).find(|&i| d.is_valid(i) && d.value(i) < 0) {
                return Err(Error::ops(
                    "duration_ns",
                    Some(ops.id(i)),
                    format!("negative duration {}", d.value(i)),
                ));
            }
        }
        let index = IdIndex::build(trace)?;
        let mut pending = crate::bulk::filled(n, 0u32);
        let (stream_next, stream_heads) = stream_order(trace, &mut pending);
        let (succ_offsets, succ) = successors(trace, &index, &mut pending)?;
        let (instance_of, rendezvous) = rendezvous(trace)?;
        Ok(Graph {
            stream_next,
            stream_heads,
            pending,
            succ_offsets,
            succ,
            instance_of,
            rendezvous,
        })
    }
}

use arrow_array::Array;

/// Links every op to the next op of its (rank, stream) in op_id order. Rows usually list each
/// stream in op_id order already, so one pass links them; otherwise the streams are sorted.
fn stream_order(trace: &Trace, pending: &mut [u32]) -> (Vec<u32>, Vec<u32>) {
    if let Some(linked) = stream_order_presorted(trace, pending) {
        return linked;
    }
    pending.iter_mut().for_each(|p| *p = 0);
    stream_order_sorted(trace, pending)
}

fn stream_order_presorted(trace: &Trace, pending: &mut [u32]) -> Option<(Vec<u32>, Vec<u32>)> {
    let ops = &trace.ops;
    let n = ops.len();
    let ranks = ops.rank.values();
    let streams = ops.stream.values();
    let ids = ops.op_id.values();
    // Per rank, its streams and the last row seen on each; ranks have few streams.
    let mut last: Vec<Vec<(u32, u32)>> = vec![Vec::new(); trace.ranks as usize];
    let mut next = crate::bulk::filled(n, NONE);
    let mut heads: Vec<(u32, u32, u32)> = Vec::new();
    for i in 0..n {
        let (r, st) = (ranks[i], streams[i]);
        let slots = &mut last[r as usize];
        match slots.iter_mut().find(|(s, _)| *s == st) {
            Some((_, prev)) => {
                let p = *prev as usize;
                if ids[p] > ids[i] {
                    return None;
                }
                next[p] = i as u32;
                pending[i] += 1;
                *prev = i as u32;
            }
            None => {
                slots.push((st, i as u32));
                heads.push((r, st, i as u32));
            }
        }
    }
    heads.sort_unstable();
    Some((next, heads.into_iter().map(|(_, _, h)| h).collect()))
}

fn stream_order_sorted(trace: &Trace, pending: &mut [u32]) -> (Vec<u32>, Vec<u32>) {
    let ops = &trace.ops;
    let n = ops.len();
    let ranks = ops.rank.values();
    let streams = ops.stream.values();
    let ids = ops.op_id.values();
    // Slot per (rank, stream); consecutive rows usually share it, so cache the last lookup.
    let mut slots: IdMap<(u32, u32), u32> = IdMap::default();
    let mut slot_of = crate::bulk::filled(n, 0u32);
    let mut counts: Vec<u32> = Vec::new();
    let mut last: Option<((u32, u32), u32)> = None;
    for i in 0..n {
        let key = (ranks[i], streams[i]);
        let slot = match last {
            Some((k, s)) if k == key => s,
            _ => {
                let next = slots.len() as u32;
                let s = *slots.entry(key).or_insert(next);
                if s == next {
                    counts.push(0);
                }
                last = Some((key, s));
                s
            }
        };
        slot_of[i] = slot;
        counts[slot as usize] += 1;
    }
    let mut starts = Vec::with_capacity(counts.len() + 1);
    let mut acc = 0u32;
    starts.push(0);
    for &c in &counts {
        acc += c;
        starts.push(acc);
    }
    let mut fill = starts.clone();
    let mut order = crate::bulk::filled(n, 0u32);
    for i in 0..n {
        let s = slot_of[i] as usize;
        order[fill[s] as usize] = i as u32;
        fill[s] += 1;
    }
    drop(slot_of);
    let mut stream_next = crate::bulk::filled(n, NONE);
    let mut heads = Vec::with_capacity(counts.len());
    // Slots in (rank, stream) order so reports and heads are deterministic.
    let mut keyed: Vec<((u32, u32), u32)> = slots.into_iter().collect();
    keyed.sort_unstable();
    for (_, s) in keyed {
        let run = &mut order[starts[s as usize] as usize..starts[s as usize + 1] as usize];
        if run.windows(2).any(|w| ids[w[0] as usize] > ids[w[1] as usize]) {
            run.sort_unstable_by_key(|&i| ids[i as usize]);
        }
        heads.push(run[0]);
        for w in run.windows(2) {
            stream_next[w[0] as usize] = w[1];
            pending[w[1] as usize] += 1;
        }
    }
    (stream_next, heads)
}

fn successors(trace: &Trace, index: &IdIndex, pending: &mut [u32]) -> Result<(Vec<u32>, Vec<u32>)> {
    let ops = &trace.ops;
    let n = ops.len();
    let mut offsets = crate::bulk::filled(n + 1, 0u32);
    let mut total: u64 = 0;
    for i in 0..n {
        for &d in ops.deps_of(i) {
            let j = index.get(d).ok_or_else(|| {
                Error::ops(
                    "deps",
                    Some(ops.id(i)),
                    format!("depends on op_id {d}, which is not in the trace"),
                )
            })?;
            offsets[j as usize + 1] += 1;
            pending[i] += 1;
            total += 1;
        }
    }
    if total >= u64::from(NONE) {
        return Err(Error::ops(
            "deps",
            None,
            format!("{total} dependencies exceed the engine's limit"),
        ));
    }
    for i in 0..n {
        offsets[i + 1] += offsets[i];
    }
    let mut fill = crate::bulk::copied(&offsets);
    let mut succ = crate::bulk::filled(total as usize, 0u32);
    for i in 0..n {
        for &d in ops.deps_of(i) {
            if let Some(j) = index.get(d) {
                let f = &mut fill[j as usize];
                succ[*f as usize] = i as u32;
                *f += 1;
            }
        }
    }
    Ok((offsets, succ))
}

fn rendezvous(trace: &Trace) -> Result<(Vec<u32>, Rendezvous)> {
    let ops = &trace.ops;
    let n = ops.len();
    let mut group_index: IdMap<u32, u32> = IdMap::default();
    let mut sorted_ranks: Vec<Vec<u32>> = Vec::with_capacity(trace.groups.len());
    for (gi, g) in trace.groups.iter().enumerate() {
        if group_index.insert(g.group_id, gi as u32).is_some() {
            return Err(Error::groups("group_id", format!("duplicate group_id {}", g.group_id)));
        }
        if g.ranks.is_empty() {
            return Err(Error::groups("ranks", format!("group {} has no ranks", g.group_id)));
        }
        if let Some(&r) = g.ranks.iter().find(|&&r| r >= trace.ranks) {
            return Err(Error::groups(
                "ranks",
                format!(
                    "group {} names rank {r}, which does not exist (the trace has {} ranks)",
                    g.group_id, trace.ranks
                ),
            ));
        }
        let mut s = g.ranks.clone();
        s.sort_unstable();
        if let Some(w) = s.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::groups(
                "ranks",
                format!("group {} lists rank {} twice", g.group_id, w[0]),
            ));
        }
        sorted_ranks.push(s);
    }
    // group_id → index: a flat table for the usual small ids, the map otherwise.
    let max_gid = trace.groups.iter().map(|g| g.group_id as usize).max().unwrap_or(0);
    let dense_groups: Option<Vec<u32>> = (max_gid < 4 * trace.groups.len() + 1024).then(|| {
        let mut v = vec![NONE; max_gid + 1];
        for (gi, g) in trace.groups.iter().enumerate() {
            v[g.group_id as usize] = gi as u32;
        }
        v
    });
    let group_of = |gid: u32| -> Option<u32> {
        match &dense_groups {
            Some(v) => v.get(gid as usize).copied().filter(|&g| g != NONE),
            None => group_index.get(&gid).copied(),
        }
    };

    let mut instance_of = crate::bulk::filled(n, NONE);
    let mut coll_key: Vec<SeqIndex> = (0..trace.groups.len()).map(|_| SeqIndex::default()).collect();
    let mut coll_group: Vec<u32> = Vec::new();
    let mut counts: Vec<u32> = Vec::new();
    let mut pair_index: IdMap<(u32, u32), u32> = IdMap::default();
    let mut p2p_key: Vec<SeqIndex> = Vec::new();
    let mut p2p_sides: Vec<[u32; 2]> = Vec::new();
    for i in 0..n {
        let id = ops.id(i);
        let rank = ops.rank.value(i);
        match ops.kind[i] {
            OpKind::Collective => {
                let missing = |col: &str| Error::ops(col, Some(id), "a collective needs this column");
                ops.coll(i).ok_or_else(|| missing("coll"))?;
                let gid = ops.group_id(i).ok_or_else(|| missing("group_id"))?;
                let seq = ops.coll_seq(i).ok_or_else(|| missing("coll_seq"))?;
                let gi = group_of(gid)
                    .ok_or_else(|| Error::ops("group_id", Some(id), format!("group {gid} is not in groups.parquet")))?;
                if sorted_ranks[gi as usize].binary_search(&rank).is_err() {
                    return Err(Error::ops(
                        "group_id",
                        Some(id),
                        format!(
                            "rank {rank} is not a member of group {gid} {:?}",
                            trace.groups[gi as usize].ranks
                        ),
                    ));
                }
                let next = counts.len() as u32;
                let c = coll_key[gi as usize].get_or_insert(seq, next);
                if c == next {
                    counts.push(0);
                    coll_group.push(gi);
                }
                counts[c as usize] += 1;
                instance_of[i] = c;
            }
            kind @ (OpKind::Send | OpKind::Recv) => {
                let col = |c: &str| Error::ops(c, Some(id), format!("a {} needs this column", kind.as_str()));
                let peer = ops.peer(i).ok_or_else(|| col("peer"))?;
                let seq = ops.p2p_seq(i).ok_or_else(|| col("p2p_seq"))?;
                if peer >= trace.ranks {
                    return Err(Error::ops(
                        "peer",
                        Some(id),
                        format!("peer {peer} is outside 0..{}", trace.ranks - 1),
                    ));
                }
                if peer == rank {
                    return Err(Error::ops(
                        "peer",
                        Some(id),
                        format!(
                            "rank {rank} {} itself",
                            if kind == OpKind::Send {
                                "sends to"
                            } else {
                                "receives from"
                            }
                        ),
                    ));
                }
                let (key, side) = if kind == OpKind::Send {
                    ((rank, peer, seq), 0)
                } else {
                    ((peer, rank, seq), 1)
                };
                let next = p2p_sides.len() as u32;
                let pairs = p2p_key.len() as u32;
                let pair = *pair_index.entry((key.0, key.1)).or_insert(pairs);
                if pair == pairs {
                    p2p_key.push(SeqIndex::default());
                }
                let p = p2p_key[pair as usize].get_or_insert(key.2, next);
                if p == next {
                    p2p_sides.push([NONE, NONE]);
                }
                let slot = &mut p2p_sides[p as usize][side];
                if *slot != NONE {
                    return Err(Error::ops(
                        "p2p_seq",
                        Some(id),
                        format!(
                            "op_id {} is already the {} of message {} → {} p2p_seq {seq}",
                            ops.id(*slot as usize),
                            kind.as_str(),
                            key.0,
                            key.1
                        ),
                    ));
                }
                *slot = i as u32;
            }
            _ => {}
        }
    }

    let colls = counts.len();
    let mut offsets = Vec::with_capacity(colls + p2p_sides.len() + 1);
    offsets.push(0u32);
    let mut acc = 0u32;
    for &c in &counts {
        acc += c;
        offsets.push(acc);
    }
    let mut members = crate::bulk::filled(acc as usize + 2 * p2p_sides.len(), 0u32);
    let mut fill = crate::bulk::copied(&offsets);
    for i in 0..n {
        if ops.kind[i] == OpKind::Collective {
            let c = instance_of[i] as usize;
            members[fill[c] as usize] = i as u32;
            fill[c] += 1;
        }
    }
    for (p, sides) in p2p_sides.iter().enumerate() {
        let [send, recv] = *sides;
        if send == NONE || recv == NONE {
            let (have, lacks) = if send == NONE { (recv, "send") } else { (send, "recv") };
            let (src, dst) = if send == NONE {
                (ops.peer(have as usize).unwrap_or(0), ops.rank.value(have as usize))
            } else {
                (ops.rank.value(have as usize), ops.peer(have as usize).unwrap_or(0))
            };
            let what = if send == NONE {
                "recv without a matching send"
            } else {
                "send without a matching recv"
            };
            return Err(Error::ops(
                "p2p_seq",
                Some(ops.id(have as usize)),
                format!(
                    "{what}: no {lacks} for message {src} → {dst} p2p_seq {}",
                    ops.p2p_seq(have as usize).unwrap_or(0)
                ),
            ));
        }
        let base = acc as usize + 2 * p;
        members[base] = send;
        members[base + 1] = recv;
        instance_of[send as usize] = (colls + p) as u32;
        instance_of[recv as usize] = (colls + p) as u32;
        offsets.push((base + 2) as u32);
        let (sb, rb) = (ops.comm_bytes(send as usize), ops.comm_bytes(recv as usize));
        if let (Some(sb), Some(rb)) = (sb, rb) {
            if sb != rb {
                return Err(Error::ops(
                    "comm_bytes",
                    Some(ops.id(recv as usize)),
                    format!(
                        "recv of {rb} bytes does not match its send op_id {} of {sb} bytes",
                        ops.id(send as usize)
                    ),
                ));
            }
        }
    }
    let mut group = coll_group;
    group.resize(offsets.len() - 1, NONE);
    let rdv = Rendezvous {
        offsets,
        members,
        group,
    };
    check_collectives(trace, &rdv, &sorted_ranks, colls)?;
    Ok((instance_of, rdv))
}

/// Every collective instance has exactly its group's ranks, which agree on type and size.
fn check_collectives(trace: &Trace, rdv: &Rendezvous, sorted_ranks: &[Vec<u32>], colls: usize) -> Result<()> {
    let ops = &trace.ops;
    let mut ranks = Vec::new();
    for c in 0..colls {
        let members = rdv.members_of(c);
        let g = rdv.group[c] as usize;
        let group = &trace.groups[g];
        let first = members[0] as usize;
        let seq = ops.coll_seq(first).unwrap_or(0);
        let coll = ops.coll(first);
        let bytes = ops.comm_bytes(first);
        for &m in &members[1..] {
            let m = m as usize;
            if ops.coll(m) != coll {
                return Err(Error::ops(
                    "coll",
                    Some(ops.id(m)),
                    format!(
                        "group {} coll_seq {seq}: {} here but {} on op_id {}",
                        group.group_id,
                        ops.coll(m).map_or("null", CollKind::as_str),
                        coll.map_or("null", CollKind::as_str),
                        ops.id(first)
                    ),
                ));
            }
            if ops.comm_bytes(m) != bytes {
                return Err(Error::ops(
                    "comm_bytes",
                    Some(ops.id(m)),
                    format!(
                        "group {} coll_seq {seq}: {} bytes here but {} on op_id {}",
                        group.group_id,
                        fmt_opt(ops.comm_bytes(m)),
                        fmt_opt(bytes),
                        ops.id(first)
                    ),
                ));
            }
        }
        ranks.clear();
        ranks.extend(members.iter().map(|&m| ops.rank.value(m as usize)));
        ranks.sort_unstable();
        if let Some(w) = ranks.windows(2).find(|w| w[0] == w[1]) {
            let dups: Vec<u64> = members
                .iter()
                .filter(|&&m| ops.rank.value(m as usize) == w[0])
                .map(|&m| ops.id(m as usize))
                .collect();
            return Err(Error::ops(
                "coll_seq",
                dups.get(1).copied(),
                format!(
                    "group {} coll_seq {seq}: rank {} has several ops {dups:?}",
                    group.group_id, w[0]
                ),
            ));
        }
        if ranks != sorted_ranks[g] {
            let missing: Vec<u32> = sorted_ranks[g]
                .iter()
                .copied()
                .filter(|r| ranks.binary_search(r).is_err())
                .collect();
            return Err(Error::ops(
                "coll_seq",
                Some(ops.id(first)),
                format!(
                    "group {} coll_seq {seq}: participants do not match the group {:?}; ranks {missing:?} have no op \
                     with this coll_seq",
                    group.group_id, group.ranks
                ),
            ));
        }
    }
    Ok(())
}

fn fmt_opt(v: Option<u64>) -> String {
    v.map_or_else(|| "null".to_owned(), |v| v.to_string())
}

/// A dependency cycle through stream order and deps, as op_ids, if there is one.
pub fn find_cycle(trace: &Trace, graph: &Graph) -> Option<Vec<u64>> {
    let n = trace.ops.len();
    let mut pending = crate::bulk::copied(&graph.pending);
    let mut stack: Vec<u32> = (0..n as u32).filter(|&i| pending[i as usize] == 0).collect();
    let mut done = 0usize;
    while let Some(i) = stack.pop() {
        done += 1;
        let i = i as usize;
        let next = graph.stream_next[i];
        let succ = graph.successors(i);
        for &s in std::iter::once(&next).filter(|&&s| s != NONE).chain(succ) {
            let p = &mut pending[s as usize];
            *p -= 1;
            if *p == 0 {
                stack.push(s);
            }
        }
    }
    if done == n {
        return None;
    }
    // Walk backwards through unfinished predecessors until an op repeats: that loop is a cycle.
    let mut preds: Vec<Vec<u32>> = vec![Vec::new(); n];
    for i in 0..n {
        if pending[i] == 0 {
            continue;
        }
        let next = graph.stream_next[i];
        if next != NONE && pending[next as usize] > 0 {
            preds[next as usize].push(i as u32);
        }
        for &s in graph.successors(i) {
            if pending[s as usize] > 0 {
                preds[s as usize].push(i as u32);
            }
        }
    }
    let start = (0..n).find(|&i| pending[i] > 0)?;
    let mut seen = vec![NONE; n];
    let mut path = Vec::new();
    let mut cur = start as u32;
    while seen[cur as usize] == NONE {
        seen[cur as usize] = path.len() as u32;
        path.push(cur);
        cur = *preds[cur as usize].first()?;
    }
    let mut cycle: Vec<u64> = path[seen[cur as usize] as usize..]
        .iter()
        .map(|&i| trace.ops.id(i as usize))
        .collect();
    cycle.reverse();
    Some(cycle)
}

/// Full validation: [`Graph::build`] plus the cycle check.
pub fn validate(trace: &Trace) -> Result<Graph> {
    let graph = Graph::build(trace)?;
    if let Some(cycle) = find_cycle(trace, &graph) {
        return Err(cycle_error(&cycle));
    }
    Ok(graph)
}

pub fn cycle_error(cycle: &[u64]) -> Error {
    let path: Vec<String> = cycle.iter().chain(cycle.first()).map(u64::to_string).collect();
    Error::ops(
        "deps",
        cycle.first().copied(),
        format!("dependency cycle (stream order and deps): {}", path.join(" → ")),
    )
}
