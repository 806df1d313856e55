//! Choosing and opening the GPU: one Vulkan device per process, hardware preferred, Mesa's
//! lavapipe (software Vulkan) as the fallback that CI runs on.

use std::sync::{Arc, OnceLock};

use crate::Backend;

/// An open device and its queue, shared by every GPU kernel of the process.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    /// `Backend::Gpu` for a hardware adapter, `Backend::Lavapipe` for Mesa's software one.
    pub backend: Backend,
    pub adapter_name: String,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("backend", &self.backend)
            .field("adapter_name", &self.adapter_name)
            .finish_non_exhaustive()
    }
}

/// What went wrong on the GPU side. Converted into `KernelError` at the chain boundary.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// wgpu reported an error (validation, out of memory, internal) while running `stage`.
    #[error("GPU error in {stage}: {message}")]
    Device {
        stage: &'static str,
        message: String,
    },
    /// Mapping a read-back buffer or waiting for the queue failed (device lost, timeout).
    #[error("GPU read-back in {stage} failed: {message}")]
    ReadBack {
        stage: &'static str,
        message: String,
    },
    /// The configuration asks for more than the kernels or the device support.
    #[error("GPU cannot run {stage}: {message}")]
    Unsupported {
        stage: &'static str,
        message: String,
    },
}

/// Storage buffers bound by the widest kernel (detection); the WebGPU default is 8.
pub(crate) const STORAGE_BUFFERS_NEEDED: u32 = 8;
/// Largest workgroup the kernels use.
pub(crate) const WORKGROUP_INVOCATIONS_NEEDED: u32 = 256;
/// Buffers below this size are too small for any useful chunk (1 s of 384 channels is 46 MB).
const STORAGE_BINDING_NEEDED: u64 = 128 << 20;

static CONTEXT: OnceLock<Option<Arc<GpuContext>>> = OnceLock::new();

/// The process-wide GPU context: a hardware Vulkan adapter if there is one, else lavapipe, else
/// `None` (the caller then runs the CPU twins). The first call opens the device (and logs the
/// choice); later calls return the same context.
pub fn acquire() -> Option<Arc<GpuContext>> {
    CONTEXT
        .get_or_init(|| match pollster::block_on(open()) {
            Ok(ctx) => {
                tracing::info!(
                    adapter = %ctx.adapter_name,
                    backend = ctx.backend.as_str(),
                    api = "vulkan",
                    "GPU kernels: opened adapter"
                );
                Some(Arc::new(ctx))
            }
            Err(why) => {
                tracing::warn!(reason = %why, "GPU kernels: no usable Vulkan adapter, CPU kernels only");
                None
            }
        })
        .clone()
}

/// For tests: the context, or `None` after a loud SKIPPED line. With `NEUROD_REQUIRE_GPU=1`
/// (CI) a missing adapter is a failure instead of a skip.
pub fn test_context() -> Option<Arc<GpuContext>> {
    let ctx = acquire();
    if ctx.is_none() {
        if std::env::var("NEUROD_REQUIRE_GPU").as_deref() == Ok("1") {
            panic!(
                "NEUROD_REQUIRE_GPU=1 but no GPU adapter (hardware Vulkan or lavapipe) could be \
                 opened; install mesa-vulkan-drivers or unset NEUROD_REQUIRE_GPU"
            );
        }
        eprintln!(
            "SKIPPED: no GPU adapter (hardware Vulkan or lavapipe) found; GPU kernel test not run. \
             Set NEUROD_REQUIRE_GPU=1 to make this a failure."
        );
    }
    ctx
}

/// Hardware first; among hardware, discrete before integrated; lavapipe last.
fn rank(info: &wgpu::AdapterInfo) -> (u8, Backend) {
    if is_lavapipe(info) {
        return (4, Backend::Lavapipe);
    }
    let rank = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    (rank, Backend::Gpu)
}

fn is_lavapipe(info: &wgpu::AdapterInfo) -> bool {
    info.device_type == wgpu::DeviceType::Cpu || info.name.to_ascii_lowercase().contains("llvmpipe")
}

/// The limits the kernels need, with the adapter's own maximum buffer sizes (a long calibration
/// window needs a big storage buffer). `None` if the adapter falls short.
fn required_limits(adapter: &wgpu::Limits) -> Option<wgpu::Limits> {
    let mut need = wgpu::Limits::downlevel_defaults();
    need.max_storage_buffers_per_shader_stage = STORAGE_BUFFERS_NEEDED;
    need.max_compute_invocations_per_workgroup = WORKGROUP_INVOCATIONS_NEEDED;
    need.max_compute_workgroup_size_x = WORKGROUP_INVOCATIONS_NEEDED;
    need.max_storage_buffer_binding_size = adapter
        .max_storage_buffer_binding_size
        .max(STORAGE_BINDING_NEEDED);
    need.max_buffer_size = adapter.max_buffer_size.max(STORAGE_BINDING_NEEDED);
    need.check_limits(adapter).then_some(need)
}

static PRESENT: OnceLock<Option<Backend>> = OnceLock::new();

/// The best kind of usable adapter present (`Backend::Gpu` for hardware), found by listing the
/// adapters without opening any: `auto` asks this first, so that a machine with only lavapipe
/// never pays for opening it (~50 ms and ~70 MB at start-up) just to decide against it.
pub fn probe() -> Option<Backend> {
    *PRESENT.get_or_init(|| {
        let (candidates, _) = pollster::block_on(usable_adapters());
        candidates.first().map(|c| c.1)
    })
}

/// A usable adapter: its rank, kind, name, handle and the limits to ask of it.
type Candidate = (u8, Backend, String, wgpu::Adapter, wgpu::Limits);

/// The adapters with compute shaders and the limits the kernels need, best first, and how many
/// adapters there were in all.
async fn usable_adapters() -> (Vec<Candidate>, usize) {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::VULKAN;
    let instance = wgpu::Instance::new(desc);
    let adapters = instance.enumerate_adapters(wgpu::Backends::VULKAN).await;
    let found = adapters.len();
    let mut candidates = Vec::new();
    for adapter in adapters {
        let info = adapter.get_info();
        if !adapter
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        {
            tracing::info!(adapter = %info.name, "GPU kernels: adapter lacks compute shaders, skipped");
            continue;
        }
        let Some(limits) = required_limits(&adapter.limits()) else {
            tracing::info!(adapter = %info.name, "GPU kernels: adapter limits too small, skipped");
            continue;
        };
        let (rank, backend) = rank(&info);
        candidates.push((rank, backend, info.name, adapter, limits));
    }
    candidates.sort_by_key(|c| c.0);
    (candidates, found)
}

/// The best usable adapter's device (see [`rank`]).
async fn open() -> Result<GpuContext, String> {
    let (candidates, found) = usable_adapters().await;
    if found == 0 {
        return Err(
            "no Vulkan adapter (is a Vulkan driver or mesa-vulkan-drivers installed?)".into(),
        );
    }
    let mut failures = Vec::new();
    for (_, backend, name, adapter, limits) in candidates {
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("neurod kernels"),
            required_limits: limits,
            ..Default::default()
        };
        match adapter.request_device(&descriptor).await {
            Ok((device, queue)) => {
                // wgpu panics on errors nobody captured; a daemon logs them instead. Every
                // kernel call also runs inside error scopes, so its own errors come back typed.
                device.on_uncaptured_error(Arc::new(|e: wgpu::Error| {
                    tracing::error!(error = %e, "GPU kernels: uncaptured wgpu error");
                }));
                return Ok(GpuContext {
                    device,
                    queue,
                    backend,
                    adapter_name: name,
                });
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    if failures.is_empty() {
        Err("no Vulkan adapter with compute shaders and the needed limits".into())
    } else {
        Err(format!("opening a device failed: {}", failures.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_context_opens_and_names_its_backend() {
        let Some(ctx) = test_context() else { return };
        assert!(!ctx.adapter_name.is_empty());
        assert!(matches!(ctx.backend, Backend::Gpu | Backend::Lavapipe));
        if ctx.adapter_name.to_ascii_lowercase().contains("llvmpipe") {
            assert_eq!(ctx.backend, Backend::Lavapipe);
        }
        // Cached: the same device every time.
        let again = acquire().expect("acquire succeeded once, so it is cached");
        assert!(Arc::ptr_eq(&ctx, &again));
    }
}
