//! Compliance record-keeping. For now: the append-only audit log of who accessed what.

pub mod audit;
