//! Transfer-entropy-bottleneck decoding (docs/teb.md): the model files ([`model`]), the CPU
//! twin of one step per bin, its WGSL counterpart ([`crate::gpu::teb`]) and the decoder that
//! picks between them ([`decoder`]).

pub mod cpu;
pub mod decoder;
pub mod model;

pub use cpu::{StepOutput, TebCpu};
pub use decoder::{Choice, StepCost, TebDecoder};
pub use model::{Dims, Hidden, ModelError, TebConfig, TebModel, TebWeights};
