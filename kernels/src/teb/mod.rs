//! Transfer-entropy-bottleneck decoding (docs/teb.md): the model files ([`model`]), the CPU
//! twin of one step per bin and, in [`crate::gpu`], its WGSL counterpart.

pub mod cpu;
pub mod model;

pub use cpu::{StepOutput, TebCpu};
pub use model::{Dims, Hidden, ModelError, TebConfig, TebModel, TebWeights};
