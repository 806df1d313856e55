//! Parsers for acquisition file formats (ALGORITHMS.md §1).

pub mod numpy_pickle;
pub mod openephys;
pub mod spikeglx;
pub mod suite2p;
pub mod tiff_guard;
pub mod tiff_stack;
