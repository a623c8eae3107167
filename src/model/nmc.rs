//! Near-memory compute: which ops the system's `[[offload]]` rules send to an NMC unit, and
//! what such an op costs there.
//!
//! An offloaded op computes at the unit's peak and touches the data in the unit's own tier at
//! its internal bandwidth; bytes the op reads or writes in any other tier (activations in HBM
//! for a unit on HBF, everything for a unit on a tier the op's tensors do not live in) cross
//! the unit's link to the GPU first. Each rank's unit runs one op at a time, beside the GPU's
//! streams; the engine queues ops that find it busy.

use crate::error::Result;
use crate::memory::{MemoryPlan, MemoryState, TensorClass};
use crate::system::{NmcUnit, System};
use crate::trace::{Category, OpKind, Ops, Phase, Trace};

/// Device kind of every op (0: the GPU, k + 1: NMC unit k), or None when nothing is offloaded.
pub fn place(trace: &Trace, system: &System, plan: Option<&MemoryPlan>) -> Result<Option<Vec<u8>>> {
    if system.offload.is_empty() || system.offload.iter().all(|r| r.device == "gpu") {
        return Ok(None);
    }
    struct Rule {
        kind: u8,
        category: Option<Category>,
        phase: Option<Phase>,
        class: Option<TensorClass>,
    }
    let rules: Vec<Rule> = system
        .offload
        .iter()
        .map(|r| Rule {
            kind: system.device_kind(&r.device),
            category: r.category.as_deref().and_then(Category::parse),
            phase: r.phase.as_deref().and_then(Phase::parse),
            class: r.tensor_class.as_deref().and_then(TensorClass::parse),
        })
        .collect();
    let ops = &trace.ops;
    let phases = if rules.iter().any(|r| r.phase.is_some()) {
        ops.phases()?
    } else {
        None
    };
    let mut kind = crate::bulk::filled(ops.len(), 0u8);
    for (i, k) in kind.iter_mut().enumerate() {
        if ops.kind[i] != OpKind::Compute {
            continue;
        }
        let matches = |r: &Rule| {
            r.category.is_none_or(|c| ops.category(i) == Some(c))
                && r.phase.is_none_or(|p| phases.as_ref().and_then(|v| v[i]) == Some(p))
                && r.class.is_none_or(|c| {
                    plan.is_some_and(|plan| plan.accesses_of(i).iter().any(|&(t, _, _)| plan.class[t as usize] == c))
                })
        };
        if let Some(r) = rules.iter().find(|r| matches(r)) {
            *k = r.kind;
        }
    }
    Ok(Some(kind))
}

/// What one op costs on an NMC unit.
#[derive(Debug, Clone, Copy, Default)]
pub struct NmcCost {
    pub ns: i64,
    /// Bytes in the unit's own tier.
    pub local_bytes: u64,
    /// Bytes in other tiers, which cross the link to the GPU.
    pub moved_bytes: u64,
}

/// Bytes op `i` touches in the unit's tier and in other tiers, and the tier-side energy (pJ)
/// of the latter: by its accesses and where their tensors live now, else its bytes_read and
/// bytes_written on the primary tier.
fn split_bytes(ops: &Ops, i: usize, unit: &NmcUnit, system: &System, memory: Option<&MemoryState>) -> (u64, u64, f64) {
    let far_pj = |tier: u8, write: bool, bytes: u64| {
        let t = system.tier(tier);
        bytes as f64
            * 8.0
            * if write {
                t.write_energy_pj_per_bit
            } else {
                t.read_energy_pj_per_bit
            }
    };
    if let Some(m) = memory {
        let accesses = m.plan.accesses_of(i);
        if !accesses.is_empty() {
            let (mut local, mut moved, mut pj) = (0u64, 0u64, 0.0);
            for &(t, write, bytes) in accesses {
                let tier = match m.tier_of[t as usize] {
                    u8::MAX => system.primary_index(),
                    tier => tier,
                };
                if tier == unit.tier_index {
                    local += bytes;
                } else {
                    moved += bytes;
                    pj += far_pj(tier, write, bytes);
                }
            }
            return (local, moved, pj);
        }
    }
    let (read, written) = (ops.bytes_read(i).unwrap_or(0), ops.bytes_written(i).unwrap_or(0));
    let primary = system.primary_index();
    if unit.tier_index == primary {
        (read + written, 0, 0.0)
    } else {
        (
            0,
            read + written,
            far_pj(primary, false, read) + far_pj(primary, true, written),
        )
    }
}

fn unit_peak(unit: &NmcUnit, ops: &Ops, i: usize) -> f64 {
    let dtype = ops.dtype(i).map(|d| d.as_str());
    dtype
        .and_then(|d| unit.peak_flops.get(d).copied())
        .or_else(|| unit.peak_flops.get("fp16").copied())
        // A dtype the unit lacks runs at its slowest listed rate.
        .unwrap_or_else(|| unit.peak_flops.values().copied().fold(f64::INFINITY, f64::min))
}

/// Time of op `i` on `unit`: launch, then compute and local bytes overlapped (roofline), then
/// the bytes from other tiers over the link.
pub fn cost(ops: &Ops, i: usize, unit: &NmcUnit, system: &System, memory: Option<&MemoryState>) -> NmcCost {
    let (local_bytes, moved_bytes, _) = split_bytes(ops, i, unit, system, memory);
    let flops = ops.flops(i).filter(|f| f.is_finite() && *f > 0.0).unwrap_or(0.0);
    let compute = flops / unit_peak(unit, ops, i);
    let local = local_bytes as f64 / unit.internal_bw_bytes;
    let link = if moved_bytes > 0 {
        unit.link_latency_ns * 1e-9 + moved_bytes as f64 / unit.link_bw_bytes
    } else {
        0.0
    };
    NmcCost {
        ns: (unit.launch_overhead_ns + (compute.max(local) + link) * 1e9).round() as i64,
        local_bytes,
        moved_bytes,
    }
}

/// (compute, memory, link) energy in joules of op `i` on `unit`: its FLOPs at the unit's
/// energy per FLOP, its local bytes at the unit's internal energy per bit, bytes in other
/// tiers at their tier's energy plus the link's.
pub fn energy_j(ops: &Ops, i: usize, unit: &NmcUnit, system: &System, memory: Option<&MemoryState>) -> (f64, f64, f64) {
    let (local, moved, far_pj) = split_bytes(ops, i, unit, system, memory);
    let flops = ops.flops(i).filter(|f| f.is_finite() && *f > 0.0).unwrap_or(0.0);
    let compute = flops * unit.energy_pj_per_flop * 1e-12;
    let memory_j = (local as f64 * 8.0 * unit.energy_pj_per_bit + far_pj) * 1e-12;
    let link = moved as f64 * 8.0 * unit.link_energy_pj_per_bit * 1e-12;
    (compute, memory_j, link)
}

#[cfg(test)]
mod tests {
    use crate::system::System;

    fn check(extra: &str) -> String {
        let json = format!(
            r#"{{"name": "t", "nodes": 1, "devices_per_node": 1,
              "device": {{"name": "d", "peak_flops": {{"bf16": 1e15}}, "primary_memory": "hbm",
                "memory": {{"hbm": {{"capacity_bytes": 8e10, "read_bw_bytes": 1e12, "write_bw_bytes": 1e12}}}}}},
              "network": {{"scale_up": {{"bw_bytes": 1e11, "latency_ns": 1000}},
                           "scale_out": {{"bw_bytes": 1e10, "latency_ns": 5000}}}} {extra}}}"#
        );
        System::from_json(&json)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    const UNIT: &str =
        r#""name": "pim", "peak_flops": {"fp16": 1e12}, "internal_bw_bytes": 1e12, "link_bw_bytes": 1e11"#;

    #[test]
    fn bad_units_and_rules_are_refused_by_name() {
        assert!(check(&format!(r#", "nmc": [{{{UNIT}, "tier": "hbm"}}]"#)).is_empty());
        assert!(check(&format!(r#", "nmc": [{{{UNIT}, "tier": "cxl"}}]"#))
            .contains("nmc[0] (pim): tier \"cxl\" is not a memory tier of device d (it has: hbm)"));
        assert!(check(&format!(
            r#", "nmc": [{{{UNIT}, "tier": "hbm"}}, {{{UNIT}, "tier": "hbm"}}]"#
        ))
        .contains("name must be unique"));
        let unit = format!(r#", "nmc": [{{{UNIT}, "tier": "hbm"}}]"#);
        let rule = |r: &str| check(&format!(r#"{unit}, "offload": [{r}]"#));
        assert!(rule(r#"{"device": "npu"}"#)
            .contains("offload[0]: device \"npu\" is not \"gpu\" or an nmc unit (units: pim)"));
        assert!(rule(r#"{"device": "pim", "category": "conv"}"#).contains("offload[0]: unknown category \"conv\""));
        assert!(rule(r#"{"device": "pim", "phase": "serve"}"#).contains("offload[0]: unknown phase \"serve\""));
        assert!(rule(r#"{"device": "pim", "tensor_class": "kv"}"#).contains("offload[0]: unknown tensor_class \"kv\""));
        let zero_bw = UNIT.replace(r#""internal_bw_bytes": 1e12"#, r#""internal_bw_bytes": 0"#);
        assert!(check(&format!(r#", "nmc": [{{{zero_bw}, "tier": "hbm"}}]"#))
            .contains("nmc[0] (pim): internal_bw_bytes must be a positive number, got 0"));
    }
}
