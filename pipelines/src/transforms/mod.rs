//! Transforms: batches in, batches out.

pub mod select_channels;
