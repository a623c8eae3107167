//! The one error type of the engine; `src/python/errors.rs` maps it to Python exceptions.

use std::fmt;

/// Which table of the trace an error is about (DESIGN.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Ops,
    Groups,
    Tensors,
    Accesses,
}

impl Table {
    pub fn file_name(self) -> &'static str {
        match self {
            Table::Ops => "ops.parquet",
            Table::Groups => "groups.parquet",
            Table::Tensors => "tensors.parquet",
            Table::Accesses => "accesses.parquet",
        }
    }
}

/// One op that can never run, with what it waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedOp {
    pub rank: u32,
    pub stream: u32,
    pub op_id: u64,
    pub waiting_for: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The trace breaks the format contract. `op_id` is the first offending op, when one exists.
    #[error("{}: column '{column}'{}: {reason}", table.file_name(), fmt_op(*op_id))]
    InvalidTrace {
        table: Table,
        column: String,
        op_id: Option<u64>,
        reason: String,
    },
    /// Ops that can never become ready; `blocked` holds the head op of every stuck stream.
    #[error("deadlock: {stuck} ops can never run; {}", fmt_blocked(blocked))]
    Deadlock { stuck: usize, blocked: Vec<BlockedOp> },
    /// A tensor did not fit in any tier its placement allows (names rank, tier, op and bytes).
    #[error("{0}")]
    OutOfMemory(String),
    /// The system description or a model option is unusable.
    #[error("system: {0}")]
    Config(String),
}

fn fmt_op(op_id: Option<u64>) -> String {
    op_id.map(|id| format!(", op_id {id}")).unwrap_or_default()
}

const MAX_LISTED: usize = 16;

fn fmt_blocked(blocked: &[BlockedOp]) -> String {
    let mut s = String::from("blocked ops per rank:");
    for b in blocked.iter().take(MAX_LISTED) {
        s.push_str(&format!(
            " [rank {} stream {} op_id {} waits for {}]",
            b.rank, b.stream, b.op_id, b.waiting_for
        ));
    }
    if blocked.len() > MAX_LISTED {
        s.push_str(&format!(" ... and {} more", blocked.len() - MAX_LISTED));
    }
    s
}

impl Error {
    pub fn ops(column: &str, op_id: Option<u64>, reason: impl fmt::Display) -> Self {
        Error::InvalidTrace {
            table: Table::Ops,
            column: column.to_owned(),
            op_id,
            reason: reason.to_string(),
        }
    }

    pub fn groups(column: &str, reason: impl fmt::Display) -> Self {
        Error::InvalidTrace {
            table: Table::Groups,
            column: column.to_owned(),
            op_id: None,
            reason: reason.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
