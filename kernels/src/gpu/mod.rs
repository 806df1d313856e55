//! GPU twins of the kernels: WGSL compute shaders (`src/shaders/*.wgsl`) on Vulkan (a hardware
//! GPU, else Mesa's lavapipe), each tested against its CPU twin, and [`GpuChain`], the whole
//! detection chain on the GPU.
//!
//! | kernel | shader | twin | agreement |
//! |---|---|---|---|
//! | [`sosfilt::GpuSosFilter`] | sosfilt.wgsl, invocation per channel | `filter::SosFilter` | bit-identical (contract: ≤ 1e-5·max\|cpu\|) |
//! | [`cmr::GpuMedianReference`] | cmr.wgsl, invocation per (sample, group) | `cmr::MedianReference` | bit-identical |
//! | [`noise::GpuNoise`] | noise.wgsl, workgroup per channel | `noise::mad_sigma` | bit-identical σ |
//! | [`detect::GpuPeakDetector`] | detect.wgsl, invocation per (sample, channel) | `detect::PeakDetector` | identical peak lists |
//! | [`roi::GpuRoiExtractor`] | roi.wgsl, invocation per (frame, ROI) | `roi::RoiTable::extract` | bit-identical on lavapipe (contract: ≤ 1e-5·max\|F\|; Fneu exact) |
//! | [`teb::GpuTeb`] | teb.wgsl: workgroup per matrix row (LSTM gates, MLP), invocation per hidden unit (cell), one workgroup (KL rate, decoder) | `teb::TebCpu` | ≤ 1e-4 over 1,000 recurrent steps (sums in another order; exp/tanh within Vulkan's ULP bounds) |
//! | [`GpuChain`] | all of them | `chain::CpuChain` | identical detections and σ |
//!
//! Bit-identical because every shader uses only operations Vulkan rounds correctly (add,
//! subtract, multiply, compare, exact conversions), keeps the twin's operation order, stops the
//! compiler from fusing a·b + c (sosfilt.wgsl), and leaves divisions to the host. The one
//! exception Vulkan allows: denormals (|x| < 1.2e-38) may be flushed to zero on the GPU.
//!
//! The TEB step is the exception to bit-identity: its matrix-vector products are reduced across
//! a workgroup and it needs exp and tanh, so it agrees with its twin to a tolerance instead.
//!
//! Every kernel builds its pipeline once and sizes its buffers once per chunk size (re-created
//! only when a larger chunk arrives); per chunk: write_buffer → dispatch → copy → map → read.

mod chain;
pub mod cmr;
mod context;
pub mod detect;
pub mod noise;
pub mod roi;
pub mod sosfilt;
pub mod teb;
mod util;

pub use chain::{ChunkTiming, GpuChain};
pub use context::{acquire, probe, test_context, GpuContext, GpuError};

/// The `backend` option; see [`crate::backend`].
pub use crate::backend::Preference;

impl From<GpuError> for crate::chain::KernelError {
    fn from(e: GpuError) -> Self {
        crate::chain::KernelError::Gpu(e.to_string())
    }
}
