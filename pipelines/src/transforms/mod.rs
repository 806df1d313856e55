//! Transforms: batches in, batches out.

pub mod bin_features;
pub mod select_channels;
pub mod spike_detect;
