//! Streaming statistics shared by transforms (ALGORITHMS.md §4).

pub mod moments;
pub mod poyo;

pub use moments::{EwMoments, Moments};
pub use poyo::{KurtosisConvention, Label, PoyoRule};
