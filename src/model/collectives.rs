//! Collective algorithms as sequences of phases of concurrent transfers (hardware.md §3.2,
//! §3.5, §3.6), and their cost on a [`Fabric`].
//!
//! A phase is a set of transfers that run at the same time; `hops` is how many times the
//! phase pays its path latency (a ring's 2(p−1) steps are one phase of p transfers that each
//! carry 2(p−1)/p of the buffer, since every step loads the same links). Transfer sizes are
//! fractions of the collective's size n (nccl-tests convention: the all-reduce buffer, the
//! all-gather output, the reduce-scatter input, the all-to-all send buffer), so a plan's time
//! is α + β·n and is built once per (collective, group).

use crate::model::topology::{Fabric, OcsPolicy};
use crate::trace::CollKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Ring,
    /// NCCL's double binary tree, pipelined.
    Tree,
    /// Recursive halving (reduce-scatter) and doubling (all-gather), Rabenseifner.
    HalvingDoubling,
    /// Every rank sends each peer its share at once.
    Direct,
    /// Reduce-scatter inside scale-up domains, all-reduce across them, all-gather inside.
    Hierarchical,
    /// Switches reduce (NVLS inside a domain, SHARP across).
    InNetwork,
}

impl Algorithm {
    pub const ALL: [Algorithm; 6] = [
        Algorithm::Ring,
        Algorithm::Tree,
        Algorithm::HalvingDoubling,
        Algorithm::Direct,
        Algorithm::Hierarchical,
        Algorithm::InNetwork,
    ];

    pub fn parse(s: &str) -> Option<Algorithm> {
        Some(match s {
            "ring" => Algorithm::Ring,
            "tree" => Algorithm::Tree,
            "halving_doubling" => Algorithm::HalvingDoubling,
            "direct" => Algorithm::Direct,
            "hierarchical" => Algorithm::Hierarchical,
            "in_network" => Algorithm::InNetwork,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Ring => "ring",
            Algorithm::Tree => "tree",
            Algorithm::HalvingDoubling => "halving_doubling",
            Algorithm::Direct => "direct",
            Algorithm::Hierarchical => "hierarchical",
            Algorithm::InNetwork => "in_network",
        }
    }
}

/// Transfers of one phase: (from node, to node, fraction of n).
#[derive(Debug, Clone, Default)]
pub struct Phase {
    pub transfers: Vec<(u32, u32, f64)>,
    pub hops: u32,
}

/// A phase with its transfers routed: what the flow-level model injects.
#[derive(Debug, Clone)]
pub struct RoutedPhase {
    /// Latency paid before the phase's flows start: hops × the longest path's latency, plus
    /// a circuit reconfiguration where the policy needs one.
    pub latency_ns: f64,
    /// (offset into `Plan::route_links`, route length, fraction of n).
    pub flows: Vec<(u32, u32, f64)>,
}

/// The cost of one algorithm for one (collective, group): time α + β·n, link loads per byte.
#[derive(Debug, Clone)]
pub struct Plan {
    pub alpha_ns: f64,
    pub beta_ns_per_byte: f64,
    /// (link, bytes on it per byte of n), summed over phases.
    pub link_load: Vec<(u32, f64)>,
    pub phases: Vec<RoutedPhase>,
    pub route_links: Vec<u32>,
}

impl Plan {
    pub fn time_ns(&self, bytes: u64) -> f64 {
        self.alpha_ns + self.beta_ns_per_byte * bytes as f64
    }
}

/// The phases of `algorithm` for `coll` over `ranks`, or None where it does not apply.
pub fn phases(algorithm: Algorithm, coll: CollKind, ranks: &[u32], fabric: &Fabric) -> Option<Vec<Phase>> {
    let p = ranks.len();
    if p < 2 {
        return Some(Vec::new());
    }
    let pf = p as f64;
    use Algorithm as A;
    use CollKind as C;
    Some(match (algorithm, coll) {
        (A::Ring, C::AllReduce | C::AllGather | C::ReduceScatter | C::Barrier) => {
            let steps = if matches!(coll, C::AllReduce | C::Barrier) {
                2 * (p - 1)
            } else {
                p - 1
            };
            let share = if coll == C::Barrier { 0.0 } else { steps as f64 / pf };
            vec![ring_phase(ranks, share, steps as u32)]
        }
        // A pipelined chain from the root (ranks[0]): every byte crosses every hop once.
        (A::Ring, C::Broadcast) => vec![chain(ranks, false)],
        (A::Ring, C::Reduce) => vec![chain(ranks, true)],
        (A::Tree, C::AllReduce) => {
            // Two complementary trees each carry half; reduce and broadcast are pipelined.
            let mut ph = Phase {
                hops: 2 * depth(p),
                ..Phase::default()
            };
            for mirrored in [false, true] {
                for k in 1..p {
                    let (child, parent) = tree_edge(ranks, k, mirrored);
                    ph.transfers.push((child, parent, 0.5));
                    ph.transfers.push((parent, child, 0.5));
                }
            }
            vec![ph]
        }
        (A::Tree, C::Broadcast | C::Reduce | C::Barrier) => {
            let share = if coll == C::Barrier { 0.0 } else { 1.0 };
            let mut ph = Phase {
                hops: depth(p) * if coll == C::Barrier { 2 } else { 1 },
                ..Phase::default()
            };
            for k in 1..p {
                let (child, parent) = tree_edge(ranks, k, false);
                if coll == C::Reduce {
                    ph.transfers.push((child, parent, share));
                } else {
                    ph.transfers.push((parent, child, share));
                }
            }
            vec![ph]
        }
        (A::HalvingDoubling, C::AllReduce | C::AllGather | C::ReduceScatter | C::Barrier) => {
            let pow = 1usize << (usize::BITS - 1 - p.leading_zeros());
            let extra = p - pow;
            let (core, rest) = ranks.split_at(pow);
            let fold = |to_core: bool| Phase {
                transfers: rest
                    .iter()
                    .zip(core)
                    .map(|(&e, &c)| if to_core { (e, c, 1.0) } else { (c, e, 1.0) })
                    .collect(),
                hops: 1,
            };
            let zero = coll == C::Barrier;
            let mut out = Vec::new();
            if extra > 0 && matches!(coll, C::AllReduce | C::ReduceScatter) {
                out.push(fold(true));
            }
            let levels = pow.trailing_zeros();
            let exchange = |dist: usize, share: f64| Phase {
                transfers: (0..pow)
                    .map(|i| (core[i], core[i ^ dist], if zero { 0.0 } else { share }))
                    .collect(),
                hops: 1,
            };
            if matches!(coll, C::AllReduce | C::ReduceScatter | C::Barrier) {
                // Halving: distance p/2 first, each step sends half of what it holds.
                for k in 0..levels {
                    out.push(exchange(pow >> (k + 1), 1.0 / f64::from(2u32 << k)));
                }
            }
            if matches!(coll, C::AllReduce | C::AllGather) {
                for k in (0..levels).rev() {
                    out.push(exchange(pow >> (k + 1), 1.0 / f64::from(2u32 << k)));
                }
            }
            if extra > 0 && matches!(coll, C::AllReduce | C::AllGather) {
                out.push(fold(false));
            }
            out
        }
        (A::Direct, _) => {
            let all_pairs = |share: f64| Phase {
                transfers: ranks
                    .iter()
                    .flat_map(|&a| ranks.iter().filter(move |&&b| b != a).map(move |&b| (a, b, share)))
                    .collect(),
                hops: 1,
            };
            let root = ranks[0];
            match coll {
                C::AllReduce => vec![all_pairs(1.0 / pf), all_pairs(1.0 / pf)],
                C::AllGather | C::ReduceScatter | C::AllToAll => vec![all_pairs(1.0 / pf)],
                C::Barrier => vec![all_pairs(0.0)],
                C::Broadcast => vec![Phase {
                    transfers: ranks[1..].iter().map(|&b| (root, b, 1.0)).collect(),
                    hops: 1,
                }],
                C::Reduce => vec![Phase {
                    transfers: ranks[1..].iter().map(|&b| (b, root, 1.0)).collect(),
                    hops: 1,
                }],
            }
        }
        (A::Hierarchical, C::AllReduce | C::AllGather | C::ReduceScatter) => {
            // Members grouped by scale-up domain, in order of first appearance.
            let mut domains: Vec<(u32, Vec<u32>)> = Vec::new();
            for &r in ranks {
                let d = fabric.domain_of(r);
                match domains.iter_mut().find(|(k, _)| *k == d) {
                    Some((_, v)) => v.push(r),
                    None => domains.push((d, vec![r])),
                }
            }
            let m = domains[0].1.len();
            if domains.len() < 2 || m < 2 || domains.iter().any(|(_, v)| v.len() != m) {
                return None;
            }
            let (mf, df) = (m as f64, domains.len() as f64);
            let intra = |steps: usize| {
                let mut ph = Phase {
                    hops: steps as u32,
                    ..Phase::default()
                };
                for (_, v) in &domains {
                    ph.transfers.extend(ring_phase(v, steps as f64 / mf, 0).transfers);
                }
                ph
            };
            let inter = |all_reduce: bool| {
                let steps = if all_reduce {
                    2 * (domains.len() - 1)
                } else {
                    domains.len() - 1
                };
                let mut ph = Phase {
                    hops: steps as u32,
                    ..Phase::default()
                };
                for k in 0..m {
                    let rail: Vec<u32> = domains.iter().map(|(_, v)| v[k]).collect();
                    ph.transfers
                        .extend(ring_phase(&rail, steps as f64 / df / mf, 0).transfers);
                }
                ph
            };
            match coll {
                C::AllReduce => vec![intra(m - 1), inter(true), intra(m - 1)],
                C::ReduceScatter => vec![intra(m - 1), inter(false)],
                _ => vec![inter(false), intra(m - 1)],
            }
        }
        (A::InNetwork, C::AllReduce) => {
            let switch = fabric.reduction_switch(ranks)?;
            vec![Phase {
                transfers: ranks
                    .iter()
                    .flat_map(|&r| [(r, switch, 1.0), (switch, r, 1.0)])
                    .collect(),
                hops: 2,
            }]
        }
        _ => return None,
    })
}

fn ring_phase(ranks: &[u32], share: f64, hops: u32) -> Phase {
    let p = ranks.len();
    Phase {
        transfers: (0..p).map(|k| (ranks[k], ranks[(k + 1) % p], share)).collect(),
        hops,
    }
}

fn chain(ranks: &[u32], towards_root: bool) -> Phase {
    Phase {
        transfers: ranks
            .windows(2)
            .map(|w| {
                if towards_root {
                    (w[1], w[0], 1.0)
                } else {
                    (w[0], w[1], 1.0)
                }
            })
            .collect(),
        hops: (ranks.len() - 1) as u32,
    }
}

/// Depth of a complete binary tree of `p` nodes.
fn depth(p: usize) -> u32 {
    usize::BITS - p.leading_zeros() - 1
}

/// (child, parent) of heap position k ≥ 1; the mirrored tree numbers positions from the end,
/// so leaves of one tree are inner nodes of the other, as in NCCL's double binary tree.
fn tree_edge(ranks: &[u32], k: usize, mirrored: bool) -> (u32, u32) {
    let p = ranks.len();
    let at = |i: usize| if mirrored { ranks[p - 1 - i] } else { ranks[i] };
    (at(k), at((k - 1) / 2))
}

/// Routes and costs `phases` on `fabric`: each phase takes its longest path's latency times
/// its hops, plus its most loaded link's bytes over bandwidth.
pub fn plan(phases: &[Phase], fabric: &Fabric) -> Plan {
    let mut alpha = 0.0;
    let mut beta = 0.0;
    let mut load: Vec<f64> = Vec::new();
    let mut total: std::collections::HashMap<u32, f64> = std::collections::HashMap::new();
    let mut route_links = Vec::new();
    let mut routed = Vec::with_capacity(phases.len());
    let ocs = fabric.ocs.filter(|o| o.policy != OcsPolicy::Static);
    let mut reconfigured = false;
    for ph in phases {
        let mut touched: Vec<u32> = Vec::new();
        let mut latency: f64 = 0.0;
        let mut flows = Vec::with_capacity(ph.transfers.len());
        let mut crosses_circuits = false;
        for &(a, b, share) in &ph.transfers {
            let start = route_links.len();
            fabric.route(a, b, &mut route_links);
            let mut path_latency = 0.0;
            for &l in &route_links[start..] {
                let link = &fabric.links[l as usize];
                path_latency += link.latency_ns;
                crosses_circuits |= link.level == "circuit";
                if load.len() <= l as usize {
                    load.resize(fabric.links.len(), 0.0);
                }
                if load[l as usize] == 0.0 {
                    touched.push(l);
                }
                load[l as usize] += share;
                *total.entry(l).or_default() += share;
            }
            latency = latency.max(path_latency);
            flows.push((start as u32, (route_links.len() - start) as u32, share));
        }
        let mut worst: f64 = 0.0;
        for &l in &touched {
            worst = worst.max(load[l as usize] / fabric.links[l as usize].bw_bytes * 1e9);
            load[l as usize] = 0.0;
        }
        let mut phase_latency = f64::from(ph.hops) * latency;
        if let Some(o) = ocs {
            // Circuits are set once per collective (before its first phase that crosses
            // them) or before every such phase.
            if crosses_circuits && (o.policy == OcsPolicy::PerStep || !reconfigured) {
                phase_latency += o.reconfig_ns;
                reconfigured = true;
            }
        }
        alpha += phase_latency;
        beta += worst;
        routed.push(RoutedPhase {
            latency_ns: phase_latency,
            flows,
        });
    }
    let mut link_load: Vec<(u32, f64)> = total.into_iter().collect();
    link_load.sort_unstable_by_key(|&(l, _)| l);
    Plan {
        alpha_ns: alpha,
        beta_ns_per_byte: beta,
        link_load,
        phases: routed,
        route_links,
    }
}
