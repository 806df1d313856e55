//! Sources, transforms, sinks, Arrow schemas and the storage layer of neurod.

pub mod auth;
pub mod batch;
pub mod buffer_pool;
pub mod component;
pub mod edge;
pub mod fault;
pub mod formats;
pub mod gap_log;
pub mod hub;
pub mod imaging;
pub mod inspect;
pub mod limits;
pub mod metrics;
pub mod pace;
pub mod registry;
pub mod sinks;
pub mod sources;
pub mod stats;
pub mod storage;
pub mod stream;
pub mod teb;
pub mod transforms;
