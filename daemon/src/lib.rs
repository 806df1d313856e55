//! The parts of `neurod` that benchmarks and tests drive directly: SQL over live and stored
//! streams ([`sql`]), the Arrow Flight / Flight SQL service ([`flight`]) and exports of stored
//! sessions ([`export`]).

pub mod config;
pub mod export;
pub mod flight;
pub mod security;
pub mod sql;
pub mod subscriber;
