//! NCCL's own cost model (`ncclTopoGetAlgoTime` in src/graph/tuning.cc, transcribed in
//! hardware.md §3.4): per collective it predicts the time of every algorithm × protocol pair
//! and picks the fastest, as NCCL does. Ring and Tree with LL, LL128 and Simple are modelled;
//! CollNet, NVLS and PAT are not.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::trace::CollKind;

/// The system's NCCL parameters: the GPU generation (which selects NCCL's constants) and the
/// channel count and per-channel bandwidths that NCCL's topology search would find.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NcclTuning {
    /// "volta", "ampere", "hopper" or "blackwell".
    pub arch: String,
    pub channels: u32,
    /// GB/s per channel inside a node (graph.bwIntra).
    pub bw_intra_gbps: f64,
    /// GB/s per channel across nodes (graph.bwInter).
    pub bw_inter_gbps: f64,
    /// Extra network latency in µs (graph.latencyInter).
    #[serde(default)]
    pub latency_inter_us: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algo {
    Tree,
    Ring,
}

const PROTOCOLS: [Proto; 3] = [Proto::Ll, Proto::Ll128, Proto::Simple];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Ll,
    Ll128,
    Simple,
}

/// Per-architecture bandwidth caps (GB/s; per channel except llMaxBw), columns nNodes = 1 / 2 / >2.
struct ArchCaps {
    ll_max_bw: [f64; 3],
    ring_ll128: [f64; 3],
    tree_ll128: [f64; 3],
    tree: [f64; 3],
}

fn caps(arch: &str) -> Option<ArchCaps> {
    // hardware.md §3.4 "Bandwidth caps".
    Some(match arch {
        "volta" => ArchCaps {
            ll_max_bw: [39.0, 39.0, 20.4],
            ring_ll128: [20.0; 3],
            tree_ll128: [20.0; 3],
            tree: [26.5, 18.5, 10.0],
        },
        "ampere" => ArchCaps {
            ll_max_bw: [87.7, 22.5, 19.0],
            ring_ll128: [20.0; 3],
            tree_ll128: [20.0; 3],
            tree: [24.0, 23.6, 17.8],
        },
        "hopper" => ArchCaps {
            ll_max_bw: [141.0, 45.0, 35.0],
            ring_ll128: [36.7; 3],
            tree_ll128: [36.7, 36.7, 29.0],
            tree: [38.7, 41.4, 36.0],
        },
        "blackwell" => ArchCaps {
            ll_max_bw: [282.0, 90.0, 70.0],
            ring_ll128: [40.0; 3],
            tree_ll128: [55.6, 31.67, 20.0],
            tree: [70.0, 42.8, 24.0],
        },
        _ => return None,
    })
}

/// baseLatencies (µs) and hwLatencies for NVLink and the network, by algorithm and protocol.
fn base_latency(a: Algo, p: Proto) -> f64 {
    match (a, p) {
        (Algo::Tree, Proto::Ll) => 6.8,
        (Algo::Ring, Proto::Ll) => 6.6,
        (_, Proto::Ll128) => 14.0,
        (_, Proto::Simple) => 8.4,
    }
}

fn nvlink_latency(a: Algo, p: Proto) -> f64 {
    match (a, p) {
        (Algo::Tree, Proto::Ll) | (Algo::Ring, Proto::Ll) => 0.6,
        (Algo::Tree, Proto::Ll128) => 1.25,
        (Algo::Ring, Proto::Ll128) => 1.9,
        (Algo::Tree, Proto::Simple) => 4.0,
        (Algo::Ring, Proto::Simple) => 3.4,
    }
}

fn net_latency(a: Algo, p: Proto) -> f64 {
    match (a, p) {
        (Algo::Tree, Proto::Ll) => 5.0,
        (Algo::Tree, Proto::Ll128) => 8.5,
        (Algo::Tree, Proto::Simple) | (Algo::Ring, Proto::Simple) => 14.0,
        (Algo::Ring, Proto::Ll) => 2.7,
        (Algo::Ring, Proto::Ll128) => 4.0,
    }
}

/// treeCorrectionFactor[proto][log2(bytes/64)].
fn tree_correction(p: Proto, bytes: u64) -> f64 {
    const LL: [f64; 24] = [
        1.0, 1.0, 1.0, 1.0, 0.9, 0.8, 0.7, 0.7, 0.7, 0.7, 0.6, 0.5, 0.4, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0, 1.0,
        1.0, 1.0,
    ];
    const LL128: [f64; 24] = [
        1.0, 1.0, 1.0, 1.0, 1.0, 0.9, 0.8, 0.8, 0.8, 0.7, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.8, 0.9, 0.9, 0.9, 0.9, 1.0,
        1.0, 1.0,
    ];
    const SIMPLE: [f64; 24] = [
        0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.8, 0.7, 0.6, 0.6, 0.5, 0.5, 0.5, 0.5, 0.6, 0.7, 0.8, 0.7, 0.7, 0.8, 0.9,
        0.9, 0.9,
    ];
    let bin = ((bytes.max(64) / 64) as f64).log2().floor() as usize;
    let table = match p {
        Proto::Ll => &LL,
        Proto::Ll128 => &LL128,
        Proto::Simple => &SIMPLE,
    };
    table[bin.min(22)]
}

impl NcclTuning {
    pub fn check(&self) -> Result<()> {
        if caps(&self.arch).is_none() {
            return Err(Error::Config(format!(
                "network.nccl.arch {:?} is not one of volta, ampere, hopper, blackwell",
                self.arch
            )));
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if self.channels == 0 || !positive(self.bw_intra_gbps) || !positive(self.bw_inter_gbps) {
            return Err(Error::Config(
                "network.nccl: channels, bw_intra_gbps and bw_inter_gbps must be positive".into(),
            ));
        }
        Ok(())
    }

    /// Predicted time in ns of an all_reduce, all_gather or reduce_scatter of `bytes`
    /// (nccl-tests convention) over `ranks` ranks on `nodes` nodes; None for other collectives.
    pub fn collective_ns(&self, coll: CollKind, bytes: u64, ranks: usize, nodes: usize) -> Option<f64> {
        if !matches!(
            coll,
            CollKind::AllReduce | CollKind::AllGather | CollKind::ReduceScatter
        ) || ranks < 2
        {
            return None;
        }
        let caps = caps(&self.arch)?;
        let col = match nodes {
            0 | 1 => 0,
            2 => 1,
            _ => 2,
        };
        let n_ch = f64::from(self.channels);
        let bw = if nodes <= 2 {
            self.bw_intra_gbps
        } else {
            self.bw_inter_gbps
        };
        let p = ranks as f64;
        let all_reduce = coll == CollKind::AllReduce;
        let nsteps = if all_reduce { 2.0 * (p - 1.0) } else { p - 1.0 };
        let inter_steps = if nodes > 1 {
            if all_reduce {
                2.0 * (nodes as f64 - 1.0)
            } else {
                nodes as f64 - 1.0
            }
        } else {
            0.0
        };
        let mut best: Option<f64> = None;
        for algo in [Algo::Ring, Algo::Tree] {
            // Tree serves all-reduce across nodes only.
            if algo == Algo::Tree && (!all_reduce || nodes < 2) {
                continue;
            }
            for proto in PROTOCOLS {
                let mut bus = n_ch * bw;
                match (algo, proto) {
                    (Algo::Ring, Proto::Ll) => bus = caps.ll_max_bw[col].min(0.5 * bus),
                    (Algo::Ring, Proto::Ll128) => bus = (0.92 * bus).min(n_ch * caps.ring_ll128[col]),
                    (Algo::Ring, Proto::Simple) => {}
                    (Algo::Tree, _) => {
                        bus = (0.92 * bus).min(n_ch * caps.tree[col]);
                        match proto {
                            Proto::Ll => bus = (bus / 3.8).min(caps.ll_max_bw[col]),
                            Proto::Ll128 => {
                                let f = if nodes == 1 { 7.0 / 9.0 } else { 120.0 / 128.0 };
                                bus = (bus * f).min(n_ch * caps.tree_ll128[col]);
                            }
                            Proto::Simple => {}
                        }
                        bus *= 0.85 * tree_correction(proto, bytes);
                    }
                }
                let alg_bw = match algo {
                    Algo::Ring => bus * p / nsteps,
                    Algo::Tree => bus * 0.5,
                };
                let intra = nvlink_latency(algo, proto);
                let simple_twice = if proto == Proto::Simple { 2.0 } else { 1.0 };
                let inter = net_latency(algo, proto) + self.latency_inter_us * simple_twice;
                let net_overhead = if nodes > 1 {
                    if proto == Proto::Simple {
                        3.0
                    } else {
                        1.0
                    }
                } else {
                    0.0
                };
                let mut lat = match algo {
                    Algo::Ring => {
                        base_latency(algo, proto)
                            + (nsteps - inter_steps) * intra.max(net_overhead)
                            + inter_steps * inter
                    }
                    Algo::Tree => {
                        let ppn = p / nodes as f64;
                        base_latency(algo, proto) + 2.0 * ((ppn - 1.0) * intra + (nodes as f64).log2() * inter)
                    }
                };
                // The "plateau effect" of multi-node Ring/Simple all-reduce.
                if algo == Algo::Ring
                    && proto == Proto::Simple
                    && all_reduce
                    && nodes > 1
                    && bytes as f64 / (n_ch * p) >= 64.0
                {
                    lat *= if self.arch == "volta" { 1.9 } else { 1.4 };
                }
                let us = lat + bytes as f64 / (1000.0 * alg_bw);
                best = Some(best.map_or(us, |b: f64| b.min(us)));
            }
        }
        best.map(|us| us * 1000.0)
    }
}
