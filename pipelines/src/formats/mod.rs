//! Parsers for acquisition file formats (ALGORITHMS.md §1).

pub mod openephys;
pub mod spikeglx;
