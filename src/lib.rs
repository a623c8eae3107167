//! tracesim's core: the replay engine and hardware models (deterministic, no I/O), and the
//! streaming readers of large trace files (`json_stream`, `kineto_json`, `kineto_classes`) and the
//! Kineto mapping (`kineto_map`) and the reader of execution-trace nodes for pairing (`pytorch_et`).
//!
//! Python reaches it through `src/python/` (feature `python`); Rust users call [`simulate`].

// Ops are columns indexed by row; loops over row indices that touch several columns read better
// than zipped iterators.
#![allow(clippy::needless_range_loop)]

mod bulk;
pub mod chakra_deps;
pub mod chakra_nodes;
pub mod chakra_pb;
pub mod engine;
pub mod error;
pub mod graph;
pub mod json_stream;
pub mod kineto_classes;
pub mod kineto_json;
pub mod kineto_map;
pub mod memory;
pub mod model;
pub mod pytorch_et;
pub mod summary;
pub mod system;
pub mod trace;

#[cfg(feature = "python")]
mod python;

pub use engine::Schedule;
pub use error::{Error, Result};
pub use summary::Summary;
pub use system::System;
pub use trace::{Group, Ops, Trace};

use arrow_array::Array;
use model::{AnalyticalNetwork, ComputeMode, NetworkModel};

/// Options of one replay.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub compute: ComputeMode,
    pub network: String,
}

pub struct Outcome {
    pub schedule: Schedule,
    pub energy_j: Vec<f64>,
    pub summary: Summary,
    /// Occupancy changes of every (rank, tier), in replay order, when the trace has tensors.
    pub memory_events: Vec<memory::MemoryEvent>,
    /// Bytes each rank sent on its scale-up and scale-out links.
    pub links: summary::LinkTraffic,
    /// Device kind of every op (0: GPU, k + 1: NMC unit k) when the system offloads ops.
    pub placement: Option<Vec<u8>>,
    pub compute_model: &'static str,
    pub network_model: &'static str,
}

/// Validates and replays `trace` on `system`; `source` is the system it was measured on.
pub fn simulate(trace: &Trace, system: &System, source: Option<&System>, options: &SimOptions) -> Result<Outcome> {
    simulate_with_memory(trace, None, system, source, options, false)
}

/// [`simulate`] with the trace's tensors and accesses: tensors are placed in tiers by class,
/// ops' memory time follows their placement, and running out of capacity is an error unless
/// `allow_oom`, which turns it into a warning.
pub fn simulate_with_memory(
    trace: &Trace,
    plan: Option<&memory::MemoryPlan>,
    system: &System,
    source: Option<&System>,
    options: &SimOptions,
    allow_oom: bool,
) -> Result<Outcome> {
    let compute = options.compute.build(system, source)?;
    let flow = match options.network.as_str() {
        "analytical" => false,
        "flow" => true,
        other => {
            return Err(Error::Config(format!(
                "unknown network model {other:?}; expected analytical or flow"
            )))
        }
    };
    if u64::from(trace.ranks) > system.devices() {
        return Err(Error::Config(format!(
            "the trace has {} ranks but system {} has {} devices ({} nodes × {}); pass --nodes",
            trace.ranks,
            system.name,
            system.devices(),
            system.nodes,
            system.devices_per_node
        )));
    }
    if let Some(map) = &system.network.rank_to_device {
        if map.len() < trace.ranks as usize {
            return Err(Error::Config(format!(
                "{}: network.rank_to_device maps {} ranks but the trace has {}",
                system.name,
                map.len(),
                trace.ranks
            )));
        }
    }
    check_tier_moves(trace, system)?;
    let network = AnalyticalNetwork::new(system)?;
    let graph = graph::Graph::build(trace)?;
    let placement = model::nmc::place(trace, system, plan)?;
    let models = engine::Models {
        compute: compute.as_ref(),
        network: &network,
        system,
        flow,
        placement: placement.as_deref(),
    };
    let mut state = plan
        .map(|p| memory::MemoryState::new(p, system, trace.ranks, allow_oom))
        .transpose()?;
    let schedule = engine::replay(trace, &graph, &models, state.as_mut())?;
    let (energy_j, energy) = summary::op_energy(trace, &graph, system, &network, state.as_ref(), placement.as_deref());
    let mut summary = summary::summarize(trace, system, &schedule, energy, Vec::new());
    if let Some(p) = &placement {
        summary.devices = summary::device_summary(trace, system, &schedule, &energy_j, p, state.as_ref());
    }
    let links = summary::link_traffic(trace, &graph, system, &network, schedule.link_busy_ns.as_deref());
    let mut memory_events = Vec::new();
    if let Some(state) = state {
        summary::add_memory(&mut summary, trace, system, &state);
        memory_events = state.events;
    }
    Ok(Outcome {
        schedule,
        energy_j,
        memory_events,
        links,
        summary,
        placement,
        compute_model: compute.name(),
        network_model: if flow { "flow" } else { network.name() },
    })
}

/// Duration the compute model gives each op on `system`; `None` for collectives and
/// send/recv, which the network model times. Used to calibrate and check the compute model.
pub fn op_times(
    trace: &Trace,
    system: &System,
    source: Option<&System>,
    mode: ComputeMode,
) -> Result<Vec<Option<i64>>> {
    let compute = mode.build(system, source)?;
    let ops = &trace.ops;
    Ok((0..ops.len())
        .map(|i| match ops.kind[i] {
            trace::OpKind::Collective | trace::OpKind::Send | trace::OpKind::Recv => None,
            _ => Some(compute.op_time(ops, i, None).ns),
        })
        .collect())
}

/// Memory ops that name tiers must name tiers the device has.
fn check_tier_moves(trace: &Trace, system: &System) -> Result<()> {
    let ops = &trace.ops;
    for (column, col) in [("src_tier", &ops.src_tier), ("dst_tier", &ops.dst_tier)] {
        let Some(col) = col else { continue };
        for i in 0..ops.len() {
            if col.is_valid(i) && system.tier_index(col.value(i)).is_none() {
                return Err(Error::ops(
                    column,
                    Some(ops.id(i)),
                    format!(
                        "tier {:?} is not a memory tier of device {} (it has: {})",
                        col.value(i),
                        system.device.name,
                        system.device.memory.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}
