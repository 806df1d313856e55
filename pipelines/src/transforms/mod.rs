//! Transforms: batches in, batches out.

pub mod bin_features;
pub mod motion_correct;
pub mod roi_traces;
pub mod select_channels;
pub mod spike_detect;
