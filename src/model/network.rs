//! Network models: how long a collective or a point-to-point transfer takes.

use crate::system::{Link, System};
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
    /// Bytes each participant puts on its links for one collective: (rank, level, bytes), where
    /// level 0 is the rank's scale-up link and 1 its scale-out link (NIC).
    fn collective_link_bytes(&self, coll: CollKind, bytes: u64, ranks: &[u32], out: &mut Vec<(u32, u8, f64)>);
}

pub const SCALE_UP: u8 = 0;
pub const SCALE_OUT: u8 = 1;

/// Ring α-β model on a single switch per level: ranks within one node use the scale-up
/// link, groups that span nodes are bound by the scale-out link (hardware.md §3.2). With
/// `network.nccl` set, all-reduce, all-gather and reduce-scatter follow NCCL's own cost model.
pub struct AnalyticalNetwork<'a> {
    pub system: &'a System,
}

impl AnalyticalNetwork<'_> {
    fn link(&self, ranks: &[u32]) -> &Link {
        let first = ranks.first().map(|&r| self.system.node_of(r));
        if ranks.iter().all(|&r| Some(self.system.node_of(r)) == first) {
            &self.system.network.scale_up
        } else {
            &self.system.network.scale_out
        }
    }

    /// (latency steps, bytes each rank puts on the wire) of the ring algorithm.
    fn ring_cost(coll: CollKind, bytes: u64, p: usize) -> (f64, f64) {
        let p_f = p as f64;
        let n = bytes as f64;
        let share = (p_f - 1.0) / p_f;
        match coll {
            CollKind::AllReduce => (2.0 * (p_f - 1.0), 2.0 * share * n),
            CollKind::AllGather | CollKind::ReduceScatter | CollKind::AllToAll => (p_f - 1.0, share * n),
            CollKind::Broadcast | CollKind::Reduce => (p_f - 1.0, n),
            CollKind::Barrier => (2.0 * (p_f - 1.0), 0.0),
        }
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
        if let Some(nccl) = &self.system.network.nccl {
            let mut nodes: Vec<u32> = ranks.iter().map(|&r| self.system.node_of(r)).collect();
            nodes.sort_unstable();
            nodes.dedup();
            if let Some(ns) = nccl.collective_ns(coll, bytes, ranks.len(), nodes.len()) {
                return ns.round() as i64;
            }
        }
        let link = self.link(ranks);
        let (steps, wire) = Self::ring_cost(coll, bytes, ranks.len());
        (steps * link.latency_ns + wire / link.bw_bytes * 1e9).round() as i64
    }

    fn p2p_ns(&self, bytes: u64, src: u32, dst: u32) -> i64 {
        let link = self.link(&[src, dst]);
        (link.latency_ns + bytes as f64 / link.bw_bytes * 1e9).round() as i64
    }

    fn collective_energy_j(&self, coll: CollKind, bytes: u64, ranks: &[u32]) -> f64 {
        if ranks.len() < 2 {
            return 0.0;
        }
        let (_, wire) = Self::ring_cost(coll, bytes, ranks.len());
        wire * 8.0 * self.link(ranks).energy_pj_per_bit * 1e-12
    }

    fn p2p_energy_j(&self, bytes: u64, src: u32, dst: u32) -> f64 {
        bytes as f64 * 8.0 * self.link(&[src, dst]).energy_pj_per_bit * 1e-12
    }

    /// Ring order over the group's ranks as listed: each rank sends to the next one, over its
    /// NIC when the next rank is on another node, else over its scale-up link.
    fn collective_link_bytes(&self, coll: CollKind, bytes: u64, ranks: &[u32], out: &mut Vec<(u32, u8, f64)>) {
        out.clear();
        if ranks.len() < 2 {
            return;
        }
        let (_, wire) = Self::ring_cost(coll, bytes, ranks.len());
        for (k, &r) in ranks.iter().enumerate() {
            let next = ranks[(k + 1) % ranks.len()];
            let level = if self.system.node_of(r) == self.system.node_of(next) {
                SCALE_UP
            } else {
                SCALE_OUT
            };
            out.push((r, level, wire));
        }
    }
}
