//! Streaming statistics shared by transforms (ALGORITHMS.md §4).

pub mod moments;

pub use moments::{EwMoments, Moments};
