//! Sources: where streams enter the daemon.

pub mod arrow_ipc;
pub mod follow;
pub mod openephys;
pub mod raw_file;
pub mod replay;
pub mod simulated;
pub mod spikeglx;
pub mod suite2p;
pub mod tiff;
