//! SQL over every stream, live and stored alike, with DataFusion.
//!
//! Each stream is a table named by its id (`SELECT * FROM "rig.spikes"`): the rows the stores
//! under the data directory hold, followed by the rows the hub holds in memory that the store
//! has not flushed yet (see [`table`] for the seam). Three more tables describe the daemon:
//! `streams` (the registry), `components` (the topology and its counters) and `neurons` (the
//! latest POYO-SSL labels).
//!
//! - [`engine`]: the session, its limits (rows, memory, time) and running a query.
//! - [`catalog`]: which tables exist (stream directories read when named, the hub's registry).
//! - [`table`]: one stream as a table: pruning, projection, the memory/disk seam.
//! - [`rows`]: the order column, filter bounds, and cutting batches by them.
//! - [`split`]: a few files' rows spread over the query threads at page boundaries.
//! - [`system`]: the `streams`, `components` and `neurons` tables.
//! - [`format`]: results as a text table, CSV, JSON or Arrow IPC.

pub(crate) mod catalog;
pub(crate) mod engine;
pub mod format;
pub(crate) mod rows;
mod split;
mod system;
pub(crate) mod table;

pub use engine::{Live, QueryResult, SqlEngine, SqlError, SqlLimits};
