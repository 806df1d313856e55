//! Sinks: where streams leave the daemon.

pub mod store;
