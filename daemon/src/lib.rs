//! The parts of `neurod` that benchmarks and tests drive directly: SQL over live and stored
//! streams ([`sql`]) and the Arrow Flight / Flight SQL service ([`flight`]).

pub mod flight;
pub mod security;
pub mod sql;
pub mod subscriber;
