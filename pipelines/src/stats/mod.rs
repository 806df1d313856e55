//! Streaming statistics shared by transforms (ALGORITHMS.md §3–§5).

pub mod bank;
pub mod moments;
pub mod poyo;
pub mod window;

pub use bank::{EwMomentsBank, MomentsBank};
pub use moments::{EwMoments, Moments};
pub use poyo::{KurtosisConvention, Label, PoyoRule};
pub use window::OrderWindow;
