//! Plumbing shared by the GPU kernels: buffers that grow with the chunk size, read-back,
//! error scopes, pipelines and dispatch grids.

use std::sync::mpsc;
use std::time::Duration;

use super::context::{GpuContext, GpuError};

/// How long a read-back waits for the queue. lavapipe on two cores needs seconds for a long
/// calibration window; a hardware GPU far less. Past this the device is taken as hung.
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(600);

/// A storage (or staging) buffer sized for the largest chunk seen so far: re-created only when a
/// larger one arrives, so steady streaming allocates nothing on the device.
pub(crate) struct GrowBuffer {
    buffer: wgpu::Buffer,
    capacity: u64,
    usage: wgpu::BufferUsages,
    label: &'static str,
}

/// wgpu wants sizes that are multiples of 4 and bindings that are not empty.
pub(crate) fn padded_size(bytes: u64) -> u64 {
    bytes.max(4).div_ceil(4) * 4
}

impl GrowBuffer {
    pub(crate) fn new(
        device: &wgpu::Device,
        label: &'static str,
        usage: wgpu::BufferUsages,
        bytes: u64,
    ) -> Self {
        let capacity = padded_size(bytes);
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: capacity,
            usage,
            mapped_at_creation: false,
        });
        GrowBuffer {
            buffer,
            capacity,
            usage,
            label,
        }
    }

    /// Makes room for `bytes`; true when the buffer was re-created (bind groups must follow).
    /// The old contents are not kept.
    pub(crate) fn ensure(&mut self, device: &wgpu::Device, bytes: u64) -> bool {
        if padded_size(bytes) <= self.capacity {
            return false;
        }
        // Grow by half again so a slowly growing chunk size does not re-create every time.
        let wanted = padded_size(bytes.max(self.capacity + self.capacity / 2));
        let limit = device.limits().max_buffer_size;
        *self = GrowBuffer::new(device, self.label, self.usage, wanted.min(limit).max(bytes));
        true
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

/// Checks that `bytes` fits one storage binding of this device.
pub(crate) fn check_binding(
    ctx: &GpuContext,
    stage: &'static str,
    what: &str,
    bytes: u64,
) -> Result<(), GpuError> {
    let limits = ctx.device.limits();
    let max = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size);
    if bytes > max {
        return Err(GpuError::Unsupported {
            stage,
            message: format!("{what} needs {bytes} bytes, the device binds at most {max}"),
        });
    }
    Ok(())
}

/// Runs `f` inside validation and out-of-memory error scopes, so wgpu errors come back as
/// `GpuError` instead of going to the uncaptured handler.
pub(crate) fn scoped<R>(
    device: &wgpu::Device,
    stage: &'static str,
    f: impl FnOnce() -> Result<R, GpuError>,
) -> Result<R, GpuError> {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let result = f();
    let validation = pollster::block_on(validation.pop());
    let oom = pollster::block_on(oom.pop());
    if let Some(e) = validation.or(oom) {
        return Err(GpuError::Device {
            stage,
            message: e.to_string(),
        });
    }
    result
}

/// Builds a compute pipeline with an automatic layout from one WGSL module.
pub(crate) fn compute_pipeline(
    ctx: &GpuContext,
    stage: &'static str,
    module: wgpu::ShaderModuleDescriptor<'_>,
    entry_point: &str,
) -> Result<wgpu::ComputePipeline, GpuError> {
    scoped(&ctx.device, stage, || {
        let module = ctx.device.create_shader_module(module);
        Ok(ctx
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(stage),
                layout: None,
                module: &module,
                entry_point: Some(entry_point),
                compilation_options: Default::default(),
                cache: None,
            }))
    })
}

/// A bind group for group 0 of `pipeline`, binding `buffers` in order to bindings 0, 1, ...
pub(crate) fn bind_group(
    ctx: &GpuContext,
    label: &'static str,
    pipeline: &wgpu::ComputePipeline,
    buffers: &[&wgpu::Buffer],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: b.as_entire_binding(),
        })
        .collect();
    ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    })
}

/// A command encoder labelled with the kernel's stage.
pub(crate) fn command_encoder(ctx: &GpuContext, stage: &'static str) -> wgpu::CommandEncoder {
    ctx.device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(stage) })
}

/// A buffer of `bytes` (padded) with `usage`; wgpu zero-initialises new buffers.
pub(crate) fn buffer(
    ctx: &GpuContext,
    label: &'static str,
    bytes: u64,
    usage: wgpu::BufferUsages,
) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: padded_size(bytes),
        usage,
        mapped_at_creation: false,
    })
}

/// A read-only table for a shader (`STORAGE | COPY_DST`) holding `data`.
pub(crate) fn table_buffer(ctx: &GpuContext, label: &'static str, data: &[u8]) -> wgpu::Buffer {
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
    let table = buffer(ctx, label, data.len() as u64, usage);
    write_padded(ctx, &table, 0, data);
    table
}

/// Records one compute pass: `pipeline` with `group` as bind group 0 over a `(x, y)` grid.
pub(crate) fn dispatch(
    encoder: &mut wgpu::CommandEncoder,
    stage: &'static str,
    pipeline: &wgpu::ComputePipeline,
    group: &wgpu::BindGroup,
    (x, y): (u32, u32),
) {
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(stage),
        timestamp_writes: None,
    });
    pass.set_pipeline(pipeline);
    pass.set_bind_group(0, group, &[]);
    pass.dispatch_workgroups(x, y, 1);
}

/// A kernel's bind group for the caller's buffers it was last bound to, rebuilt only when they
/// change (the chain passes the same buffers chunk after chunk).
#[derive(Default)]
pub(crate) struct BindCache(Option<(Vec<wgpu::Buffer>, wgpu::BindGroup)>);

impl BindCache {
    /// The group for `buffers`, made by `make` unless the cached one was made for them.
    pub(crate) fn get(
        &mut self,
        buffers: &[&wgpu::Buffer],
        make: impl FnOnce() -> wgpu::BindGroup,
    ) -> &wgpu::BindGroup {
        let entry = match self.0.take() {
            Some((bound, group)) if bound.iter().eq(buffers.iter().copied()) => (bound, group),
            _ => (buffers.iter().map(|&b| b.clone()).collect(), make()),
        };
        &self.0.insert(entry).1
    }
}

/// A uniform buffer for a kernel's parameters, rewritten before each submission.
pub(crate) fn uniform_buffer(ctx: &GpuContext, label: &'static str, bytes: u64) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: padded_size(bytes).div_ceil(16) * 16,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// Workgroups for `n` items of work laid out as an (x, y) grid within the per-dimension limit;
/// shaders rebuild the linear index as `id.x + id.y * num_workgroups.x` and skip the excess.
pub(crate) fn grid(ctx: &GpuContext, stage: &'static str, n: u64) -> Result<(u32, u32), GpuError> {
    let max = u64::from(ctx.device.limits().max_compute_workgroups_per_dimension);
    let x = n.clamp(1, max);
    let y = n.div_ceil(x).max(1);
    if y > max {
        return Err(GpuError::Unsupported {
            stage,
            message: format!("{n} workgroups exceed the device's {max}×{max} grid"),
        });
    }
    Ok((x as u32, y as u32))
}

/// Maps the first `bytes` of each staging buffer, waits for the queue once, copies them out and
/// unmaps. The buffers must have `MAP_READ` usage and hold finished copies (submitted before).
pub(crate) fn read_back(
    ctx: &GpuContext,
    stage: &'static str,
    reads: &mut [(&wgpu::Buffer, &mut [u8])],
) -> Result<(), GpuError> {
    let (tx, rx) = mpsc::channel();
    let mut mapped = 0usize;
    for (i, (buffer, out)) in reads.iter().enumerate() {
        if out.is_empty() {
            continue;
        }
        let tx = tx.clone();
        buffer.map_async(
            wgpu::MapMode::Read,
            0..padded_size(out.len() as u64),
            move |r| {
                // The receiver lives until every callback has run (we wait for all of them below).
                let _ = tx.send((i, r));
            },
        );
        mapped += 1;
    }
    drop(tx);
    if mapped == 0 {
        return Ok(());
    }
    ctx.device
        .poll(wgpu::PollType::Wait {
            submission_index: None,
            timeout: Some(READ_BACK_TIMEOUT),
        })
        .map_err(|e| GpuError::ReadBack {
            stage,
            message: e.to_string(),
        })?;
    let mut failure = None;
    for _ in 0..mapped {
        match rx.recv() {
            Ok((_, Ok(()))) => {}
            Ok((i, Err(e))) => failure = Some(format!("mapping buffer {i}: {e}")),
            Err(_) => failure = Some("a map callback never ran".to_string()),
        }
    }
    for (buffer, out) in reads.iter_mut() {
        if out.is_empty() {
            continue;
        }
        if failure.is_none() {
            let len = out.len();
            match buffer.get_mapped_range(0..padded_size(len as u64)) {
                Ok(view) => out.copy_from_slice(&view[..len]),
                Err(e) => failure = Some(e.to_string()),
            }
        }
        buffer.unmap();
    }
    match failure {
        None => Ok(()),
        Some(message) => Err(GpuError::ReadBack { stage, message }),
    }
}

/// Buffers for running a kernel on host slices (tests, benchmarks, the standalone runners): a
/// storage buffer the data is uploaded to and a staging buffer it is read back from.
pub(crate) struct HostIo {
    pub(crate) data: GrowBuffer,
    pub(crate) readback: GrowBuffer,
}

impl HostIo {
    pub(crate) fn new(ctx: &GpuContext, label: &'static str) -> Self {
        HostIo {
            data: GrowBuffer::new(
                &ctx.device,
                label,
                wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                4,
            ),
            readback: GrowBuffer::new(
                &ctx.device,
                label,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                4,
            ),
        }
    }

    /// Runs a kernel in place on host data: uploads `data`, records `encode` on the uploaded
    /// copy, and reads the result back into `data`.
    pub(crate) fn run_in_place(
        &mut self,
        ctx: &GpuContext,
        stage: &'static str,
        data: &mut [f32],
        encode: impl FnOnce(&mut wgpu::CommandEncoder, &wgpu::Buffer) -> Result<(), GpuError>,
    ) -> Result<(), GpuError> {
        scoped(&ctx.device, stage, || {
            self.upload(ctx, bytemuck::cast_slice(data));
            let mut encoder = command_encoder(ctx, stage);
            encode(&mut encoder, self.data.buffer())?;
            encoder.copy_buffer_to_buffer(
                self.data.buffer(),
                0,
                self.readback.buffer(),
                0,
                padded_size((data.len() * 4) as u64),
            );
            ctx.queue.submit([encoder.finish()]);
            read_back(
                ctx,
                stage,
                &mut [(self.readback.buffer(), bytemuck::cast_slice_mut(data))],
            )
        })
    }

    /// Uploads `bytes`, growing the buffers if needed; true when the data buffer was re-created.
    pub(crate) fn upload(&mut self, ctx: &GpuContext, bytes: &[u8]) -> bool {
        let len = bytes.len() as u64;
        let grown = self.data.ensure(&ctx.device, len);
        self.readback.ensure(&ctx.device, len);
        write_padded(ctx, self.data.buffer(), 0, bytes);
        grown
    }
}

/// `queue.write_buffer` wants a length that is a multiple of 4: the last partial word is
/// written zero-padded.
pub(crate) fn write_padded(ctx: &GpuContext, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
    let whole = bytes.len() / 4 * 4;
    if whole > 0 {
        ctx.queue.write_buffer(buffer, offset, &bytes[..whole]);
    }
    if whole < bytes.len() {
        let mut tail = [0u8; 4];
        tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
        ctx.queue.write_buffer(buffer, offset + whole as u64, &tail);
    }
}
