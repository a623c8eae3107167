//! The system description the engine consumes. Python validates the user's TOML and hands
//! the engine this normalised form as JSON, so the engine does no file I/O.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::memory::TensorClass;
use crate::trace::{Category, Dtype};

/// Per-device memory tiers the engine tracks (a fixed bound keeps per-op work allocation-free).
pub const MAX_TIERS: usize = 16;

#[cold]
fn unreachable_tier() -> &'static MemoryTier {
    // check() guarantees at least the primary tier exists, so this is never reached; a static
    // stand-in keeps the engine panic-free regardless.
    static FALLBACK: MemoryTier = MemoryTier {
        capacity_bytes: f64::INFINITY,
        read_bw_bytes: f64::INFINITY,
        write_bw_bytes: f64::INFINITY,
        latency_ns: 0.0,
        read_energy_pj_per_bit: 0.0,
        write_energy_pj_per_bit: 0.0,
        retention_s: None,
        write_endurance: None,
    };
    &FALLBACK
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// Bytes per second per direction, per device.
    pub bw_bytes: f64,
    pub latency_ns: f64,
    #[serde(default)]
    pub energy_pj_per_bit: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryTier {
    pub capacity_bytes: f64,
    pub read_bw_bytes: f64,
    pub write_bw_bytes: f64,
    #[serde(default)]
    pub latency_ns: f64,
    #[serde(default)]
    pub read_energy_pj_per_bit: f64,
    #[serde(default)]
    pub write_energy_pj_per_bit: f64,
    #[serde(default)]
    pub retention_s: Option<f64>,
    #[serde(default)]
    pub write_endurance: Option<f64>,
}

/// Achieved fraction of peak as a function of op size, fitted on measured kernel tables.
/// The defaults make the model a plain roofline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Efficiency {
    /// Fraction of dense peak FLOP/s that large GEMMs reach.
    #[serde(default = "one")]
    pub gemm_max: f64,
    /// FLOPs at which a GEMM reaches half of `gemm_max` (size-dependent saturation).
    #[serde(default)]
    pub gemm_half_flops: f64,
    /// Fraction of memory bandwidth that large memory-bound ops reach.
    #[serde(default = "one")]
    pub mem_max: f64,
    /// Bytes at which a memory-bound op reaches half of `mem_max`.
    #[serde(default)]
    pub mem_half_bytes: f64,
    /// Output tile of a GEMM thread block, for wave quantisation over `sm_count`.
    #[serde(default = "tile")]
    pub tile_m: u64,
    #[serde(default = "tile")]
    pub tile_n: u64,
    /// Memory efficiency of particular op categories (e.g. embedding gathers reach a far
    /// smaller share of bandwidth than streaming elementwise ops); others use mem_max/mem_half_bytes.
    #[serde(default)]
    pub category: BTreeMap<String, MemoryEfficiency>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryEfficiency {
    pub mem_max: f64,
    #[serde(default)]
    pub mem_half_bytes: f64,
}

fn one() -> f64 {
    1.0
}

fn tile() -> u64 {
    128
}

impl Default for Efficiency {
    fn default() -> Self {
        Efficiency {
            gemm_max: 1.0,
            gemm_half_flops: 0.0,
            mem_max: 1.0,
            mem_half_bytes: 0.0,
            tile_m: 128,
            tile_n: 128,
            category: BTreeMap::new(),
        }
    }
}

impl Efficiency {
    pub fn compute(&self, flops: f64) -> f64 {
        self.gemm_max * flops / (flops + self.gemm_half_flops)
    }

    pub fn memory(&self, bytes: f64, category: Option<Category>) -> f64 {
        match category.and_then(|c| self.category.get(c.as_str())) {
            Some(c) => c.mem_max * bytes / (bytes + c.mem_half_bytes),
            None => self.mem_max * bytes / (bytes + self.mem_half_bytes),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub name: String,
    /// Dense peak FLOP/s per dtype name.
    pub peak_flops: BTreeMap<String, f64>,
    #[serde(default)]
    pub launch_overhead_ns: f64,
    /// Streaming multiprocessors (compute units): GEMM tiles run in waves of this many.
    #[serde(default)]
    pub sm_count: u32,
    #[serde(default)]
    pub efficiency: Efficiency,
    #[serde(default)]
    pub energy_pj_per_flop: BTreeMap<String, f64>,
    #[serde(default)]
    pub static_power_w: f64,
    /// Memory tiers by name; `primary_memory` names the one ops touch by default.
    pub memory: BTreeMap<String, MemoryTier>,
    pub primary_memory: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub scale_up: Link,
    pub scale_out: Link,
    /// NCCL's cost model for all-reduce, all-gather and reduce-scatter; without it those are
    /// ring α-β over the links.
    #[serde(default)]
    pub nccl: Option<crate::model::nccl::NcclTuning>,
    /// How devices, switches and links are wired; absent means one scale-up switch per node
    /// and one non-blocking scale-out switch per rail.
    #[serde(default)]
    pub topology: Option<TopologySpec>,
    /// Collective algorithm: "auto" (NCCL's model where it applies, else the fastest of the
    /// algorithms the topology supports), or one of [`crate::model::collectives::Algorithm`].
    #[serde(default)]
    pub algorithm: Option<String>,
    /// The device each rank runs on (rank r on device `rank_to_device[r]`); absent: device r.
    #[serde(default)]
    pub rank_to_device: Option<Vec<u32>>,
}

/// A near-memory compute unit (HBM-PIM, logic beside HBF/MRM, CXL-attached NMC): compute on
/// the data of the tier it sits in at its internal bandwidth, and a link to the GPU for the
/// rest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NmcUnit {
    pub name: String,
    /// The memory tier (a `device.memory` key) it sits on.
    pub tier: String,
    /// Peak FLOP/s per dtype name.
    pub peak_flops: BTreeMap<String, f64>,
    /// Bytes per second it reads and writes its tier at.
    pub internal_bw_bytes: f64,
    #[serde(default)]
    pub energy_pj_per_flop: f64,
    /// Energy per bit of its own accesses to its tier (instead of the tier's off-chip energy).
    #[serde(default)]
    pub energy_pj_per_bit: f64,
    /// Link to the GPU: data the op touches outside the unit's tier crosses it.
    pub link_bw_bytes: f64,
    #[serde(default)]
    pub link_latency_ns: f64,
    #[serde(default)]
    pub link_energy_pj_per_bit: f64,
    #[serde(default)]
    pub launch_overhead_ns: f64,
    /// Index of `tier`, resolved by [`System::from_json`].
    #[serde(skip)]
    pub tier_index: u8,
}

/// Most NMC unit kinds a system may have (a device kind index is a byte).
pub const MAX_NMC_UNITS: usize = 16;

/// `[[offload]]`: ops matching every field given run on `device` ("gpu" or an NMC unit).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffloadRule {
    pub device: String,
    pub category: Option<String>,
    pub phase: Option<String>,
    /// The op reads or writes a tensor of this class (needs tensors and accesses).
    pub tensor_class: Option<String>,
}

/// `[network.topology]`: one flat table, fields checked per `kind` by
/// [`crate::model::topology::Fabric::build`] so a misplaced field is an error naming it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologySpec {
    /// switched | torus | ring | fully_connected | custom | ocs
    pub kind: String,
    /// switched, ocs: devices per scale-up (NVSwitch) domain; default devices_per_node.
    pub scale_up_domain: Option<u32>,
    /// switched: nodes under one leaf switch per rail; default all nodes.
    pub nodes_per_leaf: Option<u32>,
    /// switched: leaf downlink over uplink bandwidth; default 1 (non-blocking).
    pub oversubscription: Option<f64>,
    /// switched: latency of a leaf–spine hop; default 0.
    pub spine_latency_ns: Option<f64>,
    /// switched: switches reduce in the network (NVLS inside a domain, SHARP across).
    pub in_network_reduction: Option<bool>,
    /// torus: devices per dimension; their product is the device count.
    pub dims: Option<Vec<u32>>,
    /// custom: bidirectional edges between "gpu<k>" devices and named switches.
    pub edges: Option<Vec<EdgeSpec>>,
    /// ocs: optical ports per device, each of network.scale_out's bandwidth.
    pub ports_per_device: Option<u32>,
    /// ocs: circuit reconfiguration delay.
    pub reconfig_ns: Option<f64>,
    /// ocs: static | per_collective | per_step.
    pub policy: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSpec {
    pub a: String,
    pub b: String,
    pub bw_bytes: f64,
    #[serde(default)]
    pub latency_ns: f64,
    #[serde(default)]
    pub energy_pj_per_bit: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct System {
    pub name: String,
    pub nodes: u32,
    pub devices_per_node: u32,
    pub device: Device,
    pub network: Network,
    /// Tensor class → memory tiers in order of preference; a tensor spills to the next tier
    /// when one is full. Classes not listed use the primary tier, then the others.
    #[serde(default)]
    pub placement: BTreeMap<String, Vec<String>>,
    /// Near-memory compute units beside each device (per GPU), each on one memory tier.
    #[serde(default)]
    pub nmc: Vec<NmcUnit>,
    /// Which ops run on which device kind; the first matching rule wins, others run on the GPU.
    #[serde(default)]
    pub offload: Vec<OffloadRule>,
    /// Index of the primary tier, resolved once by [`System::from_json`].
    #[serde(skip)]
    primary: u8,
    /// Peak FLOP/s by dtype index (last: unknown dtype), resolved once by [`System::from_json`].
    #[serde(skip)]
    peaks: [Option<f64>; 8],
    /// `device.memory` in index order, for per-op lookups without walking the map.
    #[serde(skip)]
    tiers: Vec<MemoryTier>,
}

impl System {
    pub fn from_json(json: &str) -> Result<System> {
        let mut system: System = serde_json::from_str(json).map_err(|e| Error::Config(e.to_string()))?;
        system.check()?;
        system.primary = system.tier_index(&system.device.primary_memory).unwrap_or(0);
        for k in 0..system.nmc.len() {
            system.nmc[k].tier_index = system.tier_index(&system.nmc[k].tier).unwrap_or(0);
        }
        system.tiers = system.device.memory.values().cloned().collect();
        for (k, d) in Dtype::ALL.iter().enumerate() {
            system.peaks[k] = system.lookup_peak_flops(Some(*d));
        }
        system.peaks[Dtype::ALL.len()] = system.lookup_peak_flops(None);
        Ok(system)
    }

    fn check(&self) -> Result<()> {
        let positive = |what: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::Config(format!(
                    "{}: {what} must be a positive number, got {v}",
                    self.name
                )))
            }
        };
        if self.devices_per_node == 0 || self.nodes == 0 {
            return Err(Error::Config(format!(
                "{}: nodes and devices_per_node must be at least 1",
                self.name
            )));
        }
        positive("network.scale_up.bw_bytes", self.network.scale_up.bw_bytes)?;
        positive("network.scale_out.bw_bytes", self.network.scale_out.bw_bytes)?;
        for (name, tier) in &self.device.memory {
            positive(&format!("device.memory.{name}.read_bw_bytes"), tier.read_bw_bytes)?;
            positive(&format!("device.memory.{name}.write_bw_bytes"), tier.write_bw_bytes)?;
        }
        for (dtype, v) in &self.device.peak_flops {
            if Dtype::parse(dtype).is_none() {
                return Err(Error::Config(format!(
                    "{}: device.peak_flops has unknown dtype {dtype:?}",
                    self.name
                )));
            }
            positive(&format!("device.peak_flops.{dtype}"), *v)?;
        }
        if let Some(n) = &self.network.nccl {
            n.check().map_err(|e| Error::Config(format!("{}: {e}", self.name)))?;
        }
        self.check_nmc()?;
        if let Some(map) = &self.network.rank_to_device {
            let mut seen = vec![false; self.devices() as usize];
            for (r, &d) in map.iter().enumerate() {
                match seen.get_mut(d as usize) {
                    None => {
                        return Err(Error::Config(format!(
                            "{}: network.rank_to_device[{r}] = {d}, but the system has {} devices",
                            self.name,
                            self.devices()
                        )))
                    }
                    Some(true) => {
                        return Err(Error::Config(format!(
                            "{}: network.rank_to_device[{r}] = {d} puts a second rank on device {d}",
                            self.name
                        )))
                    }
                    Some(s) => *s = true,
                }
            }
        }
        let e = &self.device.efficiency;
        for (what, v) in [("gemm_max", e.gemm_max), ("mem_max", e.mem_max)] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(Error::Config(format!(
                    "{}: device.efficiency.{what} must be in (0, 1], got {v}",
                    self.name
                )));
            }
        }
        for (what, v) in [
            ("gemm_half_flops", e.gemm_half_flops),
            ("mem_half_bytes", e.mem_half_bytes),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(Error::Config(format!(
                    "{}: device.efficiency.{what} must be >= 0, got {v}",
                    self.name
                )));
            }
        }
        for (name, c) in &e.category {
            if Category::parse(name).is_none() {
                return Err(Error::Config(format!(
                    "{}: device.efficiency.category has unknown category {name:?}",
                    self.name
                )));
            }
            if !(c.mem_max > 0.0 && c.mem_max <= 1.0 && c.mem_half_bytes >= 0.0) {
                return Err(Error::Config(format!(
                    "{}: device.efficiency.category.{name}: mem_max must be in (0, 1] and mem_half_bytes >= 0",
                    self.name
                )));
            }
        }
        if e.tile_m == 0 || e.tile_n == 0 {
            return Err(Error::Config(format!(
                "{}: device.efficiency tile sizes must be positive",
                self.name
            )));
        }
        if self.device.memory.len() > MAX_TIERS {
            return Err(Error::Config(format!(
                "{}: at most {MAX_TIERS} memory tiers per device",
                self.name
            )));
        }
        for (class, tiers) in &self.placement {
            if TensorClass::parse(class).is_none() {
                return Err(Error::Config(format!(
                    "{}: placement names unknown tensor class {class:?}",
                    self.name
                )));
            }
            if tiers.is_empty() {
                return Err(Error::Config(format!(
                    "{}: placement.{class} lists no tiers",
                    self.name
                )));
            }
            for t in tiers {
                if !self.device.memory.contains_key(t) {
                    return Err(Error::Config(format!(
                        "{}: placement.{class} names tier {t:?}, which device {} does not have (it has: {})",
                        self.name,
                        self.device.name,
                        self.device.memory.keys().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
            }
        }
        if !self.device.memory.contains_key(&self.device.primary_memory) {
            return Err(Error::Config(format!(
                "{}: device.primary_memory {:?} is not one of device.memory",
                self.name, self.device.primary_memory
            )));
        }
        Ok(())
    }

    pub fn devices(&self) -> u64 {
        u64::from(self.nodes) * u64::from(self.devices_per_node)
    }

    /// Node that hosts a rank, with the default mapping rank r → device r.
    pub fn node_of(&self, rank: u32) -> u32 {
        rank / self.devices_per_node
    }

    pub fn primary_tier(&self) -> Option<&MemoryTier> {
        self.tiers.get(self.primary as usize)
    }

    /// Index of a tier in `device.memory` (name order).
    fn check_nmc(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::Config(format!("{}: {msg}", self.name)));
        if self.nmc.len() > MAX_NMC_UNITS {
            return fail(format!("at most {MAX_NMC_UNITS} nmc units, got {}", self.nmc.len()));
        }
        for (k, u) in self.nmc.iter().enumerate() {
            let at = format!("nmc[{k}] ({})", u.name);
            if u.name == "gpu" || self.nmc[..k].iter().any(|v| v.name == u.name) {
                return fail(format!("{at}: name must be unique and not \"gpu\""));
            }
            if !self.device.memory.contains_key(&u.tier) {
                let tiers: Vec<&str> = self.device.memory.keys().map(String::as_str).collect();
                return fail(format!(
                    "{at}: tier {:?} is not a memory tier of device {} (it has: {})",
                    u.tier,
                    self.device.name,
                    tiers.join(", ")
                ));
            }
            for (what, v) in [
                ("internal_bw_bytes", u.internal_bw_bytes),
                ("link_bw_bytes", u.link_bw_bytes),
            ] {
                if !(v.is_finite() && v > 0.0) {
                    return fail(format!("{at}: {what} must be a positive number, got {v}"));
                }
            }
            if u.peak_flops.is_empty() {
                return fail(format!("{at}: peak_flops needs at least one dtype"));
            }
            for (dtype, v) in &u.peak_flops {
                if Dtype::parse(dtype).is_none() {
                    return fail(format!("{at}: peak_flops has unknown dtype {dtype:?}"));
                }
                if !(v.is_finite() && *v > 0.0) {
                    return fail(format!("{at}: peak_flops.{dtype} must be a positive number, got {v}"));
                }
            }
        }
        for (k, r) in self.offload.iter().enumerate() {
            if r.device != "gpu" && !self.nmc.iter().any(|u| u.name == r.device) {
                let units: Vec<&str> = self.nmc.iter().map(|u| u.name.as_str()).collect();
                return fail(format!(
                    "offload[{k}]: device {:?} is not \"gpu\" or an nmc unit (units: {})",
                    r.device,
                    if units.is_empty() {
                        "none".to_string()
                    } else {
                        units.join(", ")
                    }
                ));
            }
            if let Some(c) = &r.category {
                if Category::parse(c).is_none() {
                    return fail(format!("offload[{k}]: unknown category {c:?}"));
                }
            }
            if let Some(p) = &r.phase {
                if crate::trace::Phase::parse(p).is_none() {
                    return fail(format!("offload[{k}]: unknown phase {p:?}"));
                }
            }
            if let Some(c) = &r.tensor_class {
                if crate::memory::TensorClass::parse(c).is_none() {
                    return fail(format!("offload[{k}]: unknown tensor_class {c:?}"));
                }
            }
        }
        Ok(())
    }

    /// Device kind index of an offload rule: 0 for the GPU, k + 1 for NMC unit k.
    pub fn device_kind(&self, name: &str) -> u8 {
        self.nmc.iter().position(|u| u.name == name).map_or(0, |k| k as u8 + 1)
    }

    pub fn device_kind_name(&self, kind: u8) -> &str {
        if kind == 0 {
            "gpu"
        } else {
            self.nmc.get(kind as usize - 1).map_or("?", |u| u.name.as_str())
        }
    }

    pub fn tier_index(&self, name: &str) -> Option<u8> {
        self.device.memory.keys().position(|k| k == name).map(|i| i as u8)
    }

    pub fn primary_index(&self) -> u8 {
        self.primary
    }

    pub fn tier_name(&self, tier: u8) -> &str {
        self.device.memory.keys().nth(tier as usize).map_or("?", String::as_str)
    }

    /// The tier at an index from [`System::placement_of`]; indices always come from that map.
    pub fn tier(&self, tier: u8) -> &MemoryTier {
        match self.tiers.get(tier as usize) {
            Some(t) => t,
            None => self.tiers.first().unwrap_or_else(|| unreachable_tier()),
        }
    }

    /// Tiers a tensor class may live in, in order of preference.
    pub fn placement_of(&self, class: TensorClass) -> Result<Vec<u8>> {
        let primary = self.primary_index();
        match self.placement.get(class.as_str()) {
            Some(names) => names
                .iter()
                .map(|n| {
                    self.tier_index(n)
                        .ok_or_else(|| Error::Config(format!("unknown tier {n:?}")))
                })
                .collect(),
            None => {
                let mut order = vec![primary];
                order.extend((0..self.device.memory.len() as u8).filter(|&t| t != primary));
                Ok(order)
            }
        }
    }

    /// Peak FLOP/s for a dtype; unknown dtypes fall back to fp32, then to the slowest listed.
    pub fn peak_flops(&self, dtype: Option<Dtype>) -> Option<f64> {
        self.peaks[dtype.map_or(Dtype::ALL.len(), |d| d as usize)]
    }

    fn lookup_peak_flops(&self, dtype: Option<Dtype>) -> Option<f64> {
        by_dtype(&self.device.peak_flops, dtype).or_else(|| self.device.peak_flops.values().copied().reduce(f64::min))
    }

    pub fn energy_pj_per_flop(&self, dtype: Option<Dtype>) -> f64 {
        by_dtype(&self.device.energy_pj_per_flop, dtype).unwrap_or(0.0)
    }
}

/// A per-dtype value; a dtype the device lacks runs in the nearest wider type it has (fp8 on an
/// A100 runs as bf16, as frameworks fall back), then in fp32.
fn by_dtype(values: &BTreeMap<String, f64>, dtype: Option<Dtype>) -> Option<f64> {
    let chain: &[&str] = match dtype {
        Some(Dtype::Fp4) => &["fp4", "fp8", "bf16", "fp16"],
        Some(Dtype::Fp8) => &["fp8", "bf16", "fp16"],
        Some(Dtype::Int8) => &["int8", "fp8", "bf16", "fp16"],
        Some(Dtype::Bf16) => &["bf16", "fp16"],
        Some(Dtype::Fp16) => &["fp16", "bf16"],
        Some(Dtype::Tf32) => &["tf32"],
        Some(Dtype::Fp32) | None => &[],
    };
    chain
        .iter()
        .find_map(|d| values.get(*d))
        .or_else(|| values.get("fp32"))
        .copied()
}
