//! Per-pixel work on two-photon frames: rigid registration and ROI extraction, the math behind
//! the `motion_correct` and `roi_traces` transforms.

pub mod frames;
pub mod labels;
pub mod registration;
pub mod rois;
#[cfg(test)]
pub mod testdata;
