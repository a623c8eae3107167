//! Hardware models behind traits, so later models plug into the same engine.

pub mod compute;
pub mod nccl;
pub mod network;

pub use compute::{ComputeMode, ComputeModel, OpTime, TimeSource};
pub use network::{AnalyticalNetwork, NetworkModel};
