//! Compute models: how long a compute, memory or host op takes on a device.

use crate::error::{Error, Result};
use crate::system::System;
use crate::trace::{OpKind, Ops};

/// Where an op's duration came from; the engine counts the ops timed from nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSource {
    Measured,
    Model,
    /// Neither a measured duration nor FLOPs/bytes: timed as zero and reported.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpTime {
    pub ns: i64,
    pub source: TimeSource,
}

pub trait ComputeModel: Send + Sync {
    fn name(&self) -> &'static str;
    /// Duration of op `i` (a compute, memory or host op). `memory` is the op's memory time at
    /// full bandwidth of the tiers its tensors live in, with its bytes, when its accesses are
    /// known; otherwise its bytes are served by the primary tier.
    fn op_time(&self, ops: &Ops, i: usize, memory: Option<(f64, u64)>) -> OpTime;
    /// Whether collectives and send/recv take their measured durations (DESIGN.md §3).
    fn uses_measured_comm(&self) -> bool;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeMode {
    Measured,
    Roofline,
    Retime,
    Auto,
}

impl ComputeMode {
    pub fn parse(s: &str) -> Result<ComputeMode> {
        match s {
            "measured" => Ok(ComputeMode::Measured),
            "roofline" => Ok(ComputeMode::Roofline),
            "retime" => Ok(ComputeMode::Retime),
            "auto" => Ok(ComputeMode::Auto),
            other => Err(Error::Config(format!(
                "unknown compute model {other:?}; expected auto, measured, roofline or retime"
            ))),
        }
    }

    /// Builds the model; `source` is the system the trace was measured on (needed by retime).
    pub fn build<'a>(self, target: &'a System, source: Option<&'a System>) -> Result<Box<dyn ComputeModel + 'a>> {
        let roofline = Roofline { system: target };
        Ok(match self {
            ComputeMode::Measured => Box::new(Measured { fallback: roofline }),
            ComputeMode::Roofline => Box::new(roofline),
            ComputeMode::Retime => {
                let source = source.ok_or_else(|| {
                    Error::Config(
                        "compute model 'retime' needs the source system: set source_system in trace.json \
                         or pass --source-system"
                            .into(),
                    )
                })?;
                Box::new(Retime {
                    target: roofline,
                    source: Roofline { system: source },
                })
            }
            ComputeMode::Auto => match source {
                Some(s) if s.name == target.name => Box::new(Measured { fallback: roofline }),
                Some(s) => Box::new(Retime {
                    target: roofline,
                    source: Roofline { system: s },
                }),
                None => Box::new(Measured { fallback: roofline }),
            },
        })
    }
}

/// Roofline time with the device's efficiency model: the larger of FLOPs at the achieved share
/// of dense peak (size saturation × wave quantisation) and bytes at the achieved share of the
/// primary tier's bandwidth, plus the per-kernel launch overhead.
pub struct Roofline<'a> {
    pub system: &'a System,
}

impl Roofline<'_> {
    /// Wave-quantisation efficiency of a GEMM with an M×N output: the share of SM slots that
    /// the last, partly filled wave leaves busy.
    fn wave_efficiency(&self, m: u64, n: u64) -> f64 {
        let device = &self.system.device;
        let sms = u64::from(device.sm_count);
        if sms == 0 || m == 0 || n == 0 {
            return 1.0;
        }
        let e = &device.efficiency;
        let tiles = m.div_ceil(e.tile_m) * n.div_ceil(e.tile_n);
        let waves = tiles.div_ceil(sms);
        tiles as f64 / (waves * sms) as f64
    }

    pub(crate) fn estimate_ns(&self, ops: &Ops, i: usize, memory: Option<(f64, u64)>) -> Option<f64> {
        let flops = ops.flops(i).filter(|f| f.is_finite() && *f > 0.0);
        let bytes = match memory {
            Some((_, b)) => Some(b).filter(|b| *b > 0),
            None => ops.bytes(i).filter(|b| *b > 0),
        };
        if flops.is_none() && bytes.is_none() {
            return None;
        }
        let eff = &self.system.device.efficiency;
        if let (Some(b), Some((src, dst))) = (bytes, ops.tier_move(i)) {
            // A move between tiers runs at the slower of reading the source and writing the destination.
            let (src, dst) = (self.system.tier_index(src)?, self.system.tier_index(dst)?);
            let (src, dst) = (self.system.tier(src), self.system.tier(dst));
            let bw = src.read_bw_bytes.min(dst.write_bw_bytes);
            let secs = b as f64 / bw / eff.memory(b as f64, ops.category(i));
            return Some(secs * 1e9 + src.latency_ns + self.system.device.launch_overhead_ns);
        }
        let compute_s = match (flops, self.system.peak_flops(ops.dtype(i))) {
            (Some(f), Some(peak)) => {
                let (m, n) = ops.gemm_mn(i);
                f / (peak * eff.compute(f) * self.wave_efficiency(m, n))
            }
            _ => 0.0,
        };
        let memory_s = match (bytes, self.system.primary_tier()) {
            (Some(b), _) if memory.is_some() => {
                memory.map_or(0.0, |(secs, _)| secs) / eff.memory(b as f64, ops.category(i))
            }
            (Some(b), Some(tier)) => {
                let read = ops
                    .bytes_read
                    .as_ref()
                    .map_or(0, |a| if a.is_valid(i) { a.value(i) } else { 0 });
                let written = b - read.min(b);
                let e = eff.memory(b as f64, ops.category(i));
                (read as f64 / tier.read_bw_bytes + written as f64 / tier.write_bw_bytes) / e
            }
            _ => 0.0,
        };
        Some(compute_s.max(memory_s) * 1e9 + self.system.device.launch_overhead_ns)
    }
}

use arrow_array::Array;

impl ComputeModel for Roofline<'_> {
    fn name(&self) -> &'static str {
        "roofline"
    }

    fn op_time(&self, ops: &Ops, i: usize, memory: Option<(f64, u64)>) -> OpTime {
        if ops.kind[i] == OpKind::Host {
            // Host work has no device roofline; it keeps its measured time.
            return Measured {
                fallback: Roofline { system: self.system },
            }
            .op_time(ops, i, None);
        }
        modelled(self.estimate_ns(ops, i, memory))
    }

    fn uses_measured_comm(&self) -> bool {
        false
    }
}

/// A model estimate as an op time; no estimate (no FLOPs or bytes) is zero, counted as unknown.
fn modelled(estimate_ns: Option<f64>) -> OpTime {
    match estimate_ns {
        Some(ns) => OpTime {
            ns: ns.round() as i64,
            source: TimeSource::Model,
        },
        None => OpTime {
            ns: 0,
            source: TimeSource::Unknown,
        },
    }
}

/// Measured durations; ops without one are timed by the roofline.
pub struct Measured<'a> {
    pub fallback: Roofline<'a>,
}

impl ComputeModel for Measured<'_> {
    fn name(&self) -> &'static str {
        "measured"
    }

    fn op_time(&self, ops: &Ops, i: usize, memory: Option<(f64, u64)>) -> OpTime {
        match ops.duration(i) {
            Some(ns) => OpTime {
                ns,
                source: TimeSource::Measured,
            },
            None if ops.kind[i] == OpKind::Host => OpTime {
                ns: 0,
                source: TimeSource::Unknown,
            },
            None => modelled(self.fallback.estimate_ns(ops, i, memory)),
        }
    }

    fn uses_measured_comm(&self) -> bool {
        true
    }
}

/// Measured duration scaled by target/source roofline time, so measured inefficiencies carry over.
pub struct Retime<'a> {
    pub target: Roofline<'a>,
    pub source: Roofline<'a>,
}

impl ComputeModel for Retime<'_> {
    fn name(&self) -> &'static str {
        "retime"
    }

    fn op_time(&self, ops: &Ops, i: usize, memory: Option<(f64, u64)>) -> OpTime {
        let measured = ops.duration(i);
        if ops.kind[i] == OpKind::Host {
            return Measured {
                fallback: Roofline {
                    system: self.target.system,
                },
            }
            .op_time(ops, i, None);
        }
        // The source ran with its bytes in its primary tier; the target with its placement.
        let target = self.target.estimate_ns(ops, i, memory);
        let source = self.source.estimate_ns(ops, i, None);
        match (measured, target, source) {
            (Some(m), Some(t), Some(s)) if s > 0.0 => OpTime {
                ns: (m as f64 * t / s).round() as i64,
                source: TimeSource::Model,
            },
            (Some(m), _, _) => OpTime {
                ns: m,
                source: TimeSource::Measured,
            },
            (None, Some(t), _) => OpTime {
                ns: t.round() as i64,
                source: TimeSource::Model,
            },
            (None, None, _) => OpTime {
                ns: 0,
                source: TimeSource::Unknown,
            },
        }
    }

    fn uses_measured_comm(&self) -> bool {
        false
    }
}
