//! The dependencies of one rank's execution-trace nodes (`tracesim.ingest.chakra`): deps on
//! dropped nodes (metadata, unknown types) reconnected through them to the kept ones, deps on ids
//! not in the file counted, then Kahn's order (lowest node id first among the ready ones, the
//! Chakra feeder's order). Iterative throughout: a chain of any length of dropped nodes is fine.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

/// Lists of ids as (offsets, values): list `i` is `values[offsets[i]..offsets[i + 1]]`.
pub struct Lists<'a> {
    pub offsets: &'a [i64],
    pub values: &'a [i64],
}

impl Lists<'_> {
    /// List `i` (empty when the offsets are not a valid range of `values`).
    fn get(&self, i: usize) -> &[i64] {
        let at = |k: usize| self.offsets.get(k).and_then(|&o| usize::try_from(o).ok());
        match (at(i), at(i + 1)) {
            (Some(s), Some(e)) if s <= e && e <= self.values.len() => &self.values[s..e],
            _ => &[],
        }
    }

    fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }
}

/// The kept nodes in topological order (`order`: their indices among the kept nodes) and their
/// deps in that order, as positions in it (list k, of the node at `order[k]`, is
/// `deps[offsets[k]..offsets[k + 1]]`; first occurrences, in the order the node gave them).
#[derive(Debug, PartialEq)]
pub struct Resolved {
    pub offsets: Vec<i32>,
    pub deps: Vec<i32>,
    pub order: Vec<i32>,
    /// Deps that went through a dropped node, reconnected to its deps.
    pub reconnected: u64,
    /// Deps on ids not in the file (ignored).
    pub outside: u64,
}

/// Resolves the deps of the kept nodes `ids` (`deps`: theirs) through the dropped nodes
/// `dropped_ids` (`dropped_deps`); Err: the ids of the nodes on or after a cycle, sorted, or
/// (empty) more nodes or deps than int32 indexes.
pub fn resolve(
    ids: &[i64],
    deps: &Lists<'_>,
    dropped_ids: &[i64],
    dropped_deps: &Lists<'_>,
) -> Result<Resolved, Vec<i64>> {
    if ids.len() >= i32::MAX as usize || deps.values.len() >= i32::MAX as usize {
        return Err(Vec::new());
    }
    let kept: HashMap<i64, usize> = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let dropped: HashMap<i64, usize> = dropped_ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let mut memo: Vec<Option<Vec<usize>>> = vec![None; dropped_deps.len().max(dropped_ids.len())];
    let mut on_stack = vec![false; memo.len()];
    let mut outside = 0u64;
    let mut reconnected = 0u64;

    // The kept nodes a dropped node's deps lead to (memoised; a node met again on the current
    // path leads nowhere).
    let mut through = |start: usize, outside: &mut u64| -> Vec<usize> {
        if let Some(done) = &memo[start] {
            return done.clone();
        }
        if on_stack[start] {
            return Vec::new();
        }
        on_stack[start] = true;
        let mut frames: Vec<(usize, usize, Vec<usize>)> = vec![(start, 0, Vec::new())];
        loop {
            let Some(top) = frames.last_mut() else {
                return Vec::new();
            };
            let (node, pos) = (top.0, top.1);
            let list = dropped_deps.get(node);
            if pos < list.len() {
                top.1 += 1;
                let d = list[pos];
                if let Some(&k) = kept.get(&d) {
                    top.2.push(k);
                } else if let Some(&m) = dropped.get(&d) {
                    if let Some(done) = &memo[m] {
                        top.2.extend(done);
                    } else if !on_stack[m] {
                        on_stack[m] = true;
                        frames.push((m, 0, Vec::new()));
                    }
                } else {
                    *outside += 1;
                }
                continue;
            }
            let Some((node, _, out)) = frames.pop() else {
                return Vec::new();
            };
            on_stack[node] = false;
            let out = first_occurrences(out);
            memo[node] = Some(out.clone());
            match frames.last_mut() {
                Some(parent) => parent.2.extend(&out),
                None => return out,
            }
        }
    };

    let mut offsets: Vec<i32> = Vec::with_capacity(ids.len() + 1);
    offsets.push(0);
    let mut flat: Vec<i32> = Vec::with_capacity(deps.values.len());
    let mut new: Vec<usize> = Vec::new();
    let mut seen: HashSet<usize> = HashSet::new();
    for (i, &id) in ids.iter().enumerate() {
        new.clear();
        for &d in deps.get(i) {
            if d == id {
                continue;
            }
            if let Some(&k) = kept.get(&d) {
                new.push(k);
            } else if let Some(&m) = dropped.get(&d) {
                let got: Vec<usize> = through(m, &mut outside).into_iter().filter(|&k| k != i).collect();
                reconnected += got.len() as u64;
                new.extend(got);
            } else {
                outside += 1;
            }
        }
        seen.clear();
        flat.extend(new.iter().filter(|&&k| seen.insert(k)).map(|&k| k as i32));
        if flat.len() >= i32::MAX as usize {
            return Err(Vec::new()); // reconnected deps beyond int32 indexes
        }
        offsets.push(flat.len() as i32);
    }

    // Kahn's order, the lowest id first among the ready nodes; users as flat lists, in order.
    let dep_range = |i: usize| offsets[i] as usize..offsets[i + 1] as usize;
    let mut indeg: Vec<usize> = (0..ids.len()).map(|i| dep_range(i).len()).collect();
    let mut user_start = vec![0usize; ids.len() + 1];
    for &d in &flat {
        user_start[d as usize + 1] += 1;
    }
    for i in 0..ids.len() {
        user_start[i + 1] += user_start[i];
    }
    let mut users = vec![0u32; flat.len()];
    let mut fill = user_start.clone();
    for i in 0..ids.len() {
        for &d in &flat[dep_range(i)] {
            users[fill[d as usize]] = i as u32;
            fill[d as usize] += 1;
        }
    }
    drop(fill);
    let mut ready: BinaryHeap<Reverse<(i64, usize)>> = (0..ids.len())
        .filter(|&i| indeg[i] == 0)
        .map(|i| Reverse((ids[i], i)))
        .collect();
    let mut order: Vec<i32> = Vec::with_capacity(ids.len());
    while let Some(Reverse((_, i))) = ready.pop() {
        order.push(i as i32);
        for &u in &users[user_start[i]..user_start[i + 1]] {
            let u = u as usize;
            indeg[u] -= 1;
            if indeg[u] == 0 {
                ready.push(Reverse((ids[u], u)));
            }
        }
    }
    if order.len() != ids.len() {
        let mut stuck: Vec<i64> = (0..ids.len()).filter(|&i| indeg[i] > 0).map(|i| ids[i]).collect();
        stuck.sort_unstable();
        return Err(stuck);
    }
    drop(users);
    drop(indeg);
    // The deps in topological order, as positions in it.
    let mut position = vec![0i32; ids.len()];
    for (k, &i) in order.iter().enumerate() {
        position[i as usize] = k as i32;
    }
    let mut sorted_offsets = Vec::with_capacity(offsets.len());
    sorted_offsets.push(0i32);
    let mut sorted = Vec::with_capacity(flat.len());
    for &i in &order {
        sorted.extend(flat[dep_range(i as usize)].iter().map(|&d| position[d as usize]));
        sorted_offsets.push(sorted.len() as i32);
    }
    Ok(Resolved {
        offsets: sorted_offsets,
        deps: sorted,
        order,
        reconnected,
        outside,
    })
}

fn first_occurrences(v: Vec<usize>) -> Vec<usize> {
    let mut seen = HashSet::with_capacity(v.len());
    v.into_iter().filter(|x| seen.insert(*x)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `resolve` of kept nodes `ids` with deps `deps`, and dropped nodes `dropped` (id, deps).
    fn run(ids: &[i64], deps: &[&[i64]], dropped: &[(i64, &[i64])]) -> Result<Resolved, Vec<i64>> {
        fn flat<'a>(lists: impl Iterator<Item = &'a [i64]>) -> (Vec<i64>, Vec<i64>) {
            let mut offsets = vec![0];
            let mut values = Vec::new();
            for l in lists {
                values.extend_from_slice(l);
                offsets.push(values.len() as i64);
            }
            (offsets, values)
        }
        let (ko, kv) = flat(deps.iter().copied());
        let (dof, dv) = flat(dropped.iter().map(|d| d.1));
        let dropped_ids: Vec<i64> = dropped.iter().map(|d| d.0).collect();
        let kept = Lists {
            offsets: &ko,
            values: &kv,
        };
        resolve(
            ids,
            &kept,
            &dropped_ids,
            &Lists {
                offsets: &dof,
                values: &dv,
            },
        )
    }

    #[test]
    fn through_dropped_nodes_and_order() {
        // kept 10, 30, 40; dropped 20 → 10, 25 → (20, 99); 40 depends on 25, 30, itself, 77.
        let r = run(
            &[10, 30, 40],
            &[&[], &[10], &[25, 30, 40, 77]],
            &[(20, &[10]), (25, &[20, 99])],
        )
        .expect("acyclic");
        assert_eq!((r.offsets, r.deps), (vec![0, 0, 1, 3], vec![0, 0, 1]));
        assert_eq!(r.order, vec![0, 1, 2]);
        assert_eq!((r.reconnected, r.outside), (1, 2)); // 99 and 77 are not in the file
    }

    #[test]
    fn deps_in_topological_order() {
        // 30 depends on 10: 10 (row 1) comes first; 30's dep is position 0.
        let r = run(&[30, 10], &[&[10], &[]], &[]).expect("acyclic");
        assert_eq!((r.order, r.offsets, r.deps), (vec![1, 0], vec![0, 0, 1], vec![0]));
    }

    #[test]
    fn a_long_chain_of_dropped_nodes() {
        let n = 100_000i64;
        let chain: Vec<(i64, Vec<i64>)> = (1..n).map(|i| (i, vec![i - 1])).collect();
        let dropped: Vec<(i64, &[i64])> = chain.iter().map(|(i, d)| (*i, d.as_slice())).collect();
        let r = run(&[0, n], &[&[], &[n - 1]], &dropped).expect("acyclic");
        assert_eq!((r.offsets, r.deps), (vec![0, 0, 1], vec![0]));
    }

    #[test]
    fn cycles() {
        let err = run(&[1, 2, 3], &[&[2], &[1], &[]], &[]).expect_err("a cycle");
        assert_eq!(err, vec![1, 2]);
        // a cycle among dropped nodes leads nowhere (not an error)
        let r = run(&[1], &[&[5]], &[(5, &[6]), (6, &[5])]).expect("acyclic");
        assert_eq!((r.offsets, r.deps), (vec![0, 0], vec![]));
    }
}
