//! Hardware models behind traits, so later models plug into the same engine.

pub mod collectives;
pub mod compute;
pub mod flow;
pub mod nccl;
pub mod network;
pub mod nmc;
pub mod topology;

pub use compute::{ComputeMode, ComputeModel, OpTime, TimeSource};
pub use network::{AnalyticalNetwork, NetworkModel};
