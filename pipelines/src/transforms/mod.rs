//! Transforms: batches in, batches out.

pub mod backend;
pub mod bin_features;
pub mod dff;
pub mod moments;
pub mod motion_correct;
pub mod per_stream;
pub mod predictability;
pub mod roi_traces;
pub mod select_channels;
pub mod spike_detect;
pub mod teb_decode;
mod traces;
