//! Compute kernels: WGSL compute shaders beside their CPU twins. The CPU code is the
//! specification, the fallback and the test oracle of each shader.
//!
//! Data layout: a chunk is `T` samples × `C` channels, sample-major (`data[t * C + c]`), f32 µV,
//! so CPU loops run over contiguous channels (SIMD) and GPU threads take a channel or a sample.

pub mod backend;
pub mod chain;
pub mod cmr;
pub mod columns;
pub mod detect;
pub mod filter;
pub mod gpu;
pub mod measured;
mod memory;
pub mod noise;
pub mod roi;
mod schedule;
mod simd;
pub mod teb;

pub use chain::KernelError;

/// Where kernels run: a hardware adapter, lavapipe (Mesa's software Vulkan) or the CPU twins;
/// which one is [`backend`]'s rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Gpu,
    Lavapipe,
    Cpu,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Gpu => "gpu",
            Backend::Lavapipe => "lavapipe",
            Backend::Cpu => "cpu",
        }
    }
}
