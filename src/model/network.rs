//! Network models: how long a collective or a point-to-point transfer takes, and which links
//! it loads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::model::collectives::{self, Algorithm, Plan};
use crate::model::topology::Fabric;
use crate::system::System;
use crate::trace::CollKind;

pub trait NetworkModel: Send + Sync {
    fn name(&self) -> &'static str;
    /// Time of one collective of `bytes` (nccl-tests convention) over `ranks`.
    fn collective_ns(&self, coll: CollKind, bytes: u64, ranks: &[u32]) -> i64;
    /// Time of one message from `src` to `dst`.
    fn p2p_ns(&self, bytes: u64, src: u32, dst: u32) -> i64;
    /// Energy in joules that one participant spends on the wire for this collective.
    fn collective_energy_j(&self, coll: CollKind, bytes: u64, ranks: &[u32]) -> f64;
    fn p2p_energy_j(&self, bytes: u64, src: u32, dst: u32) -> f64;
    /// Adds the bytes this collective puts on each fabric link to `per_link`.
    fn add_collective_traffic(&self, coll: CollKind, bytes: u64, ranks: &[u32], per_link: &mut [f64]);
    /// Adds the bytes of one message to `per_link`.
    fn add_p2p_traffic(&self, bytes: u64, src: u32, dst: u32, per_link: &mut [f64]);
    /// The plan the collective runs with (for the flow-level model).
    fn collective_plan(&self, coll: CollKind, bytes: u64, ranks: &[u32]) -> Arc<Plan>;
    /// The plan of one message from `src` to `dst` (for the flow-level model).
    fn p2p_plan(&self, src: u32, dst: u32) -> Plan;
    fn fabric(&self) -> &Fabric;
}

/// α-β per algorithm phase on the fabric: each phase costs its longest path's latency per
/// step plus its most loaded link's bytes over bandwidth (hardware.md §3.2). The algorithm is
/// fixed by `network.algorithm` or, on "auto", the fastest that applies; with `network.nccl`
/// on a switched fabric, all-reduce, all-gather and reduce-scatter follow NCCL's own model.
pub struct AnalyticalNetwork<'a> {
    pub system: &'a System,
    fabric: Fabric,
    algorithm: Option<Algorithm>,
    use_nccl: bool,
    /// Per group (its ranks), per collective kind: the candidate plans.
    plans: Mutex<HashMap<Vec<u32>, [Option<Candidates>; COLL_KINDS]>>,
}

/// Groups above this size skip the direct algorithm under "auto" (it has p² transfers).
const DIRECT_AUTO_MAX: usize = 256;
const COLL_KINDS: usize = 7;

/// The plans a collective may run with on one group.
type Candidates = Arc<Vec<Arc<Plan>>>;

impl<'a> AnalyticalNetwork<'a> {
    pub fn new(system: &'a System) -> Result<AnalyticalNetwork<'a>> {
        let fabric = Fabric::build(system)?;
        fabric.check_connected(system)?;
        let choice = system.network.algorithm.as_deref().unwrap_or("auto");
        let (algorithm, use_nccl) = match choice {
            // NCCL's model assumes NVSwitch domains joined by a switched fabric.
            "auto" => (None, system.network.nccl.is_some() && fabric.is_switched()),
            "nccl" if system.network.nccl.is_some() => (None, true),
            "nccl" => {
                return Err(Error::Config(format!(
                    "{}: network.algorithm \"nccl\" needs a [network.nccl] section",
                    system.name
                )))
            }
            other => match Algorithm::parse(other) {
                Some(a) => (Some(a), false),
                None => {
                    return Err(Error::Config(format!(
                        "{}: network.algorithm {other:?} is unknown; expected auto, nccl, {}",
                        system.name,
                        Algorithm::ALL.map(Algorithm::as_str).join(", ")
                    )))
                }
            },
        };
        Ok(AnalyticalNetwork {
            system,
            fabric,
            algorithm,
            use_nccl,
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// Plans of the algorithms this collective may run with, built once per group.
    fn candidates(&self, coll: CollKind, ranks: &[u32]) -> Candidates {
        if let Ok(cache) = self.plans.lock() {
            // Keyed by the group's ranks: a few distinct groups serve every instance.
            if let Some(Some(p)) = cache.get(ranks).map(|by_kind| &by_kind[coll as usize]) {
                return p.clone();
            }
        }
        let devices: Vec<u32> = ranks.iter().map(|&r| self.device_of(r)).collect();
        let build = |a: Algorithm| {
            collectives::phases(a, coll, &devices, &self.fabric)
                .map(|ph| Arc::new(collectives::plan(&ph, &self.fabric)))
        };
        let mut plans: Vec<Arc<Plan>> = match self.algorithm {
            Some(a) => build(a).into_iter().collect(),
            None => Algorithm::ALL
                .iter()
                .filter(|&&a| a != Algorithm::Direct || ranks.len() <= DIRECT_AUTO_MAX || coll == CollKind::AllToAll)
                .filter_map(|&a| build(a))
                .collect(),
        };
        if plans.is_empty() {
            // The fixed algorithm does not apply (an all-to-all has no ring form): direct
            // always does.
            plans.extend(build(Algorithm::Direct));
        }
        let plans = Arc::new(plans);
        if let Ok(mut cache) = self.plans.lock() {
            cache.entry(ranks.to_vec()).or_default()[coll as usize] = Some(plans.clone());
        }
        plans
    }

    fn best(&self, coll: CollKind, bytes: u64, ranks: &[u32]) -> Arc<Plan> {
        let plans = self.candidates(coll, ranks);
        let mut best = plans[0].clone();
        for p in plans.iter().skip(1) {
            if p.time_ns(bytes) < best.time_ns(bytes) {
                best = p.clone();
            }
        }
        best
    }

    /// Calls `f` with the links from rank `src`'s device to rank `dst`'s. Every send/recv pair
    /// is routed three times (time, energy, traffic), so the path goes into one reused buffer.
    fn with_route<T>(&self, src: u32, dst: u32, f: impl FnOnce(&[u32]) -> T) -> T {
        thread_local! {
            static PATH: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        PATH.with_borrow_mut(|path| {
            path.clear();
            self.fabric.route(self.device_of(src), self.device_of(dst), path);
            f(path)
        })
    }

    /// The device a rank runs on: `network.rank_to_device`, else rank r on device r.
    fn device_of(&self, rank: u32) -> u32 {
        self.system
            .network
            .rank_to_device
            .as_ref()
            .and_then(|m| m.get(rank as usize).copied())
            .unwrap_or(rank)
    }
}

impl NetworkModel for AnalyticalNetwork<'_> {
    fn name(&self) -> &'static str {
        "analytical"
    }

    fn collective_ns(&self, coll: CollKind, bytes: u64, ranks: &[u32]) -> i64 {
        if ranks.len() < 2 {
            return 0;
        }
        if self.use_nccl {
            if let Some(nccl) = &self.system.network.nccl {
                let mut nodes: Vec<u32> = ranks.iter().map(|&r| self.system.node_of(self.device_of(r))).collect();
                nodes.sort_unstable();
                nodes.dedup();
                if let Some(ns) = nccl.collective_ns(coll, bytes, ranks.len(), nodes.len()) {
                    return ns.round() as i64;
                }
            }
        }
        self.best(coll, bytes, ranks).time_ns(bytes).round() as i64
    }

    fn p2p_ns(&self, bytes: u64, src: u32, dst: u32) -> i64 {
        self.with_route(src, dst, |path| {
            let links = path.iter().map(|&l| &self.fabric.links[l as usize]);
            let latency: f64 = links.clone().map(|l| l.latency_ns).sum();
            let bw = links.map(|l| l.bw_bytes).fold(f64::INFINITY, f64::min);
            if bw.is_finite() {
                (latency + bytes as f64 / bw * 1e9).round() as i64
            } else {
                0
            }
        })
    }

    fn collective_energy_j(&self, coll: CollKind, bytes: u64, ranks: &[u32]) -> f64 {
        if ranks.len() < 2 {
            return 0.0;
        }
        let plan = self.best(coll, bytes, ranks);
        let per_byte: f64 = plan
            .link_load
            .iter()
            .map(|&(l, share)| share * self.fabric.links[l as usize].energy_pj_per_bit)
            .sum();
        per_byte * bytes as f64 * 8.0 * 1e-12 / ranks.len() as f64
    }

    fn p2p_energy_j(&self, bytes: u64, src: u32, dst: u32) -> f64 {
        let pj: f64 = self.with_route(src, dst, |path| {
            path.iter()
                .map(|&l| self.fabric.links[l as usize].energy_pj_per_bit)
                .sum()
        });
        bytes as f64 * 8.0 * pj * 1e-12
    }

    fn add_collective_traffic(&self, coll: CollKind, bytes: u64, ranks: &[u32], per_link: &mut [f64]) {
        if ranks.len() < 2 {
            return;
        }
        for &(l, share) in &self.best(coll, bytes, ranks).link_load {
            per_link[l as usize] += share * bytes as f64;
        }
    }

    fn add_p2p_traffic(&self, bytes: u64, src: u32, dst: u32, per_link: &mut [f64]) {
        self.with_route(src, dst, |path| {
            for &l in path {
                per_link[l as usize] += bytes as f64;
            }
        });
    }

    fn collective_plan(&self, coll: CollKind, bytes: u64, ranks: &[u32]) -> Arc<Plan> {
        self.best(coll, bytes, ranks)
    }

    fn p2p_plan(&self, src: u32, dst: u32) -> Plan {
        crate::model::flow::p2p_plan(&self.fabric, self.device_of(src), self.device_of(dst))
    }

    fn fabric(&self) -> &Fabric {
        &self.fabric
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::flow::{p2p_plan, FlowSim};

    fn system(nodes: u32, per_node: u32, network_extra: &str) -> System {
        let json = format!(
            r#"{{"name": "t", "nodes": {nodes}, "devices_per_node": {per_node},
              "device": {{"name": "d", "peak_flops": {{"bf16": 1e15}}, "primary_memory": "hbm",
                "memory": {{"hbm": {{"capacity_bytes": 8e10, "read_bw_bytes": 1e12, "write_bw_bytes": 1e12}}}}}},
              "network": {{"scale_up": {{"bw_bytes": 1e11, "latency_ns": 1000, "energy_pj_per_bit": 1.0}},
                           "scale_out": {{"bw_bytes": 1e10, "latency_ns": 5000, "energy_pj_per_bit": 10.0}}
                           {network_extra}}}}}"#
        );
        match System::from_json(&json) {
            Ok(s) => s,
            Err(e) => panic!("test system: {e}"),
        }
    }

    fn net(s: &System) -> AnalyticalNetwork<'_> {
        match AnalyticalNetwork::new(s) {
            Ok(n) => n,
            Err(e) => panic!("test network: {e}"),
        }
    }

    const N: u64 = 1 << 30;

    #[test]
    fn ring_inside_a_node_is_alpha_beta_over_the_scale_up_link() {
        let s = system(1, 8, r#", "algorithm": "ring""#);
        let ranks: Vec<u32> = (0..8).collect();
        let t = net(&s).collective_ns(CollKind::AllReduce, N, &ranks);
        let expect = 14.0 * 1000.0 + 14.0 / 8.0 * N as f64 / 1e11 * 1e9;
        assert_eq!(t, expect.round() as i64);
    }

    #[test]
    fn halving_doubling_pays_log_steps_of_latency() {
        let s = system(1, 8, r#", "algorithm": "halving_doubling""#);
        let ranks: Vec<u32> = (0..8).collect();
        let t = net(&s).collective_ns(CollKind::AllReduce, N, &ranks);
        let expect = 6.0 * 1000.0 + 2.0 * (0.5 + 0.25 + 0.125) * N as f64 / 1e11 * 1e9;
        assert_eq!(t, expect.round() as i64);
    }

    #[test]
    fn hierarchical_moves_one_eighth_across_nodes() {
        let s = system(2, 8, r#", "algorithm": "hierarchical""#);
        let ranks: Vec<u32> = (0..16).collect();
        let t = net(&s).collective_ns(CollKind::AllReduce, N, &ranks);
        let n = N as f64;
        let intra = 7.0 * 1000.0 + 7.0 / 8.0 * n / 1e11 * 1e9;
        let inter = 2.0 * 5000.0 + 2.0 / 2.0 * (n / 8.0) / 1e10 * 1e9;
        assert_eq!(t, (2.0 * intra + inter).round() as i64);
        // auto picks it over a flat ring, whose boundary hops carry 2·15/16 of n on a NIC.
        let auto = system(2, 8, "");
        assert_eq!(net(&auto).collective_ns(CollKind::AllReduce, N, &ranks), t);
    }

    #[test]
    fn torus_routes_dimension_order_the_short_way() {
        let s = system(1, 16, r#", "topology": {"kind": "torus", "dims": [4, 4]}"#);
        let n = net(&s);
        let mut path = Vec::new();
        n.fabric().route(0, 10, &mut path); // (0,0) → (2,2)
        assert_eq!(path.len(), 4);
        path.clear();
        n.fabric().route(0, 3, &mut path); // wraps: one hop back
        assert_eq!(path.len(), 1);
        let l = &n.fabric().links[path[0] as usize];
        assert_eq!((l.src, l.dst), (0, 3));
    }

    #[test]
    fn ocs_reconfigures_per_collective_or_per_step() {
        let ranks: Vec<u32> = (0..4).map(|k| k * 8).collect(); // one rank per node
        let ocs = |policy: &str, alg: &str| {
            system(
                4,
                8,
                &format!(
                    r#", "algorithm": "{alg}", "topology": {{"kind": "ocs", "reconfig_ns": 1e6, "policy": "{policy}", "ports_per_device": 2}}"#
                ),
            )
        };
        let base = |s: &System| net(s).collective_ns(CollKind::AllReduce, N, &ranks);
        let (ring_pc, ring_ps, hd_pc, hd_ps, ring_static) = (
            base(&ocs("per_collective", "ring")),
            base(&ocs("per_step", "ring")),
            base(&ocs("per_collective", "halving_doubling")),
            base(&ocs("per_step", "halving_doubling")),
            base(&ocs("static", "ring")),
        );
        // A ring repeats one matching: one reconfiguration either way.
        assert_eq!(ring_pc, ring_ps);
        // Halving-doubling over 4 needs 4 matchings (2 halving + 2 doubling steps).
        assert_eq!(hd_ps - hd_pc, 3_000_000);
        // Static circuits: the ring rides them with no reconfiguration, at one port's rate
        // per direction (two ports: one each way) instead of both ports.
        let n = N as f64;
        let dynamic_ring = 6.0 * 5000.0 + 1e6 + 1.5 * n / 2e10 * 1e9;
        assert_eq!(ring_pc, dynamic_ring.round() as i64);
        let static_ring = 6.0 * 5000.0 + 1.5 * n / 1e10 * 1e9;
        assert_eq!(ring_static, static_ring.round() as i64);
    }

    #[test]
    fn bad_topologies_are_refused_by_name() {
        let bad = |extra: &str| match System::from_json(&format!(
            r#"{{"name": "t", "nodes": 1, "devices_per_node": 8,
              "device": {{"name": "d", "peak_flops": {{"bf16": 1e15}}, "primary_memory": "hbm",
                "memory": {{"hbm": {{"capacity_bytes": 8e10, "read_bw_bytes": 1e12, "write_bw_bytes": 1e12}}}}}},
              "network": {{"scale_up": {{"bw_bytes": 1e11, "latency_ns": 1000}},
                           "scale_out": {{"bw_bytes": 1e10, "latency_ns": 5000}} {extra}}}}}"#
        )) {
            Ok(s) => match AnalyticalNetwork::new(&s) {
                Ok(_) => String::new(),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        assert!(bad(r#", "topology": {"kind": "switched", "dims": [8]}"#).contains("field \"dims\" does not apply"));
        assert!(
            bad(r#", "topology": {"kind": "torus", "dims": [3, 3]}"#).contains("must multiply to the device count 8")
        );
        assert!(bad(r#", "topology": {"kind": "ocs"}"#).contains("needs reconfig_ns"));
        assert!(bad(r#", "topology": {"kind": "mesh"}"#).contains("unknown kind \"mesh\""));
        assert!(bad(r#", "algorithm": "bogus""#).contains("network.algorithm \"bogus\" is unknown"));
        assert!(
            bad(r#", "topology": {"kind": "custom", "edges": [{"a": "gpu0", "b": "gpu1", "bw_bytes": 1e9}]}"#)
                .contains("gpu2 has no edge")
        );
        let custom = |edge: &str| bad(&format!(r#", "topology": {{"kind": "custom", "edges": [{edge}]}}"#));
        assert!(custom(r#"{"a": "gpu0", "b": "gpu9", "bw_bytes": 1e9}"#)
            .contains("edges[0] names \"gpu9\", but the system has 8 devices"));
        assert!(custom(r#"{"a": "sw", "b": "sw", "bw_bytes": 1e9}"#).contains("edges[0] joins \"sw\" to itself"));
        assert!(custom(r#"{"a": "gpu0", "b": "sw", "bw_bytes": 0}"#).contains("edges[0].bw_bytes must be positive"));
        assert!(bad(r#", "algorithm": "nccl""#).contains("needs a [network.nccl] section"));
        assert!(
            bad(r#", "topology": {"kind": "ocs", "reconfig_ns": 10, "policy": "hourly"}"#)
                .contains("unknown policy \"hourly\"")
        );
        assert!(
            bad(r#", "topology": {"kind": "ocs", "reconfig_ns": 10, "policy": "static", "ports_per_device": 1}"#)
                .contains("needs ports_per_device >= 2")
        );
        assert!(bad(r#", "topology": {"kind": "switched", "oversubscription": 0.5}"#)
            .contains("oversubscription must be >= 1"));
        assert!(bad(r#", "rank_to_device": [0, 8]"#).contains("rank_to_device[1] = 8, but the system has 8 devices"));
    }

    #[test]
    fn fully_connected_is_capped_and_custom_graphs_route_through_switches() {
        let big = system(129, 8, r#", "topology": {"kind": "fully_connected"}"#);
        assert!(AnalyticalNetwork::new(&big)
            .err()
            .is_some_and(|e| e.to_string().contains("at most 1024 devices")));
        // Two switches in a line: gpu0..3 on s0, gpu4..7 on s1.
        let edges: Vec<String> = (0..8)
            .map(|k| {
                format!(
                    r#"{{"a": "gpu{k}", "b": "s{}", "bw_bytes": 1e11, "latency_ns": 100}}"#,
                    k / 4
                )
            })
            .chain([r#"{"a": "s0", "b": "s1", "bw_bytes": 2e11, "latency_ns": 50}"#.to_string()])
            .collect();
        let s = system(
            1,
            8,
            &format!(r#", "topology": {{"kind": "custom", "edges": [{}]}}"#, edges.join(", ")),
        );
        let n = net(&s);
        let mut path = Vec::new();
        n.fabric().route(1, 6, &mut path);
        let fabric = n.fabric();
        let hops: Vec<(&str, &str)> = path
            .iter()
            .map(|&l| {
                (
                    fabric.node_name(fabric.links[l as usize].src),
                    fabric.node_name(fabric.links[l as usize].dst),
                )
            })
            .collect();
        assert_eq!(hops, [("gpu1", "s0"), ("s0", "s1"), ("s1", "gpu6")]);
        // Latency on the device hop and on both switch-to-switch hops: 100 + 50 + 0.
        assert_eq!(n.p2p_ns(0, 1, 6), 150);
    }

    #[test]
    fn a_flow_without_latency_starts_at_once_with_its_rate() {
        // Custom edges default to no latency: the message's only phase starts when it is posted.
        let edges: Vec<String> = (0..8)
            .map(|k| format!(r#"{{"a": "gpu{k}", "b": "sw", "bw_bytes": 1e9}}"#))
            .collect();
        let s = system(
            1,
            8,
            &format!(r#", "topology": {{"kind": "custom", "edges": [{}]}}"#, edges.join(", ")),
        );
        let n = net(&s);
        let mut sim = FlowSim::new(n.fabric(), 1);
        sim.start(0, 0.0, Arc::new(n.p2p_plan(0, 1)), 1_000_000_000);
        assert_eq!(sim.next_time(), Some(1e9));
        sim.advance(1e9);
        assert_eq!(sim.take_finished(), vec![(0, 1e9)]);
        assert_eq!(sim.next_time(), None);
    }

    #[test]
    fn flows_on_one_link_share_it_fairly() {
        let s = system(2, 8, "");
        let n = net(&s);
        let mut sim = FlowSim::new(n.fabric(), 2);
        // Ranks 0 and 8 → 9: both cross rank 9's NIC ingress link.
        sim.start(0, 0.0, Arc::new(p2p_plan(n.fabric(), 0, 9)), 1_000_000_000);
        sim.start(1, 0.0, Arc::new(p2p_plan(n.fabric(), 1, 9)), 1_000_000_000);
        let mut ends = Vec::new();
        while let Some(t) = sim.next_time() {
            sim.advance(t);
            ends.extend(sim.take_finished());
        }
        // 2 GB through one 10 GB/s link after 5 µs of latency: both end at 200 ms.
        assert_eq!(ends.len(), 2);
        for (_, t) in ends {
            assert!((t - (5000.0 + 2e9 / 1e10 * 1e9)).abs() < 1.0, "{t}");
        }
    }
}
