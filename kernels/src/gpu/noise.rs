//! GPU twin of [`crate::noise`]: `shaders/noise.wgsl`, exact medians by radix select, one
//! workgroup per channel, over a window of rows that may wrap around a ring buffer.

use std::sync::Arc;

use super::context::{GpuContext, GpuError};
use super::util::{
    bind_group, buffer, check_binding, command_encoder, compute_pipeline, dispatch, grid,
    padded_size, read_back, scoped, table_buffer, uniform_buffer, BindCache, HostIo,
};
use crate::noise::MAD_TO_SIGMA;

const STAGE: &str = "noise (MAD)";

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_channels: u32,
    ring_rows: u32,
    start_row: u32,
    n_rows: u32,
    n_list: u32,
    _pad: [u32; 3],
}

/// σ = median(|x − median(x)|) / 0.6744897501960817 per listed channel, on the GPU.
pub struct GpuNoise {
    ctx: Arc<GpuContext>,
    pipeline: wgpu::ComputePipeline,
    params: wgpu::Buffer,
    channels: wgpu::Buffer,
    /// Per listed channel: median, MAD (f32).
    out: wgpu::Buffer,
    staging: wgpu::Buffer,
    n_channels: usize,
    n_list: usize,
    /// Rows of the window last encoded (σ of an empty window is NaN, as on the CPU).
    last_rows: usize,
    bound: BindCache,
    io: Option<HostIo>,
}

impl GpuNoise {
    /// Estimates `channels` (indices into rows of `n_channels`); `out[i]` of the read-backs is
    /// the σ of `channels[i]`.
    pub fn new(
        ctx: Arc<GpuContext>,
        n_channels: usize,
        channels: &[usize],
    ) -> Result<Self, GpuError> {
        if let Some(&bad) = channels.iter().find(|&&c| c >= n_channels) {
            return Err(GpuError::Unsupported {
                stage: STAGE,
                message: format!("channel {bad} of {n_channels}"),
            });
        }
        let pipeline = compute_pipeline(
            &ctx,
            STAGE,
            wgpu::include_wgsl!("../shaders/noise.wgsl"),
            "main",
        )?;
        let list: Vec<u32> = channels.iter().map(|&c| c as u32).collect();
        let list_buffer = table_buffer(&ctx, "noise channels", bytemuck::cast_slice(&list));
        let out_bytes = (list.len() * 8) as u64;
        let out = buffer(
            &ctx,
            "noise out",
            out_bytes,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        );
        let staging = buffer(
            &ctx,
            "noise read-back",
            out_bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        let params = uniform_buffer(&ctx, "noise params", std::mem::size_of::<Params>() as u64);
        Ok(GpuNoise {
            ctx,
            pipeline,
            params,
            channels: list_buffer,
            out,
            staging,
            n_channels,
            n_list: list.len(),
            last_rows: 0,
            bound: BindCache::default(),
            io: None,
        })
    }

    /// Records the estimate over rows `start_row, start_row + 1, …` (`n_rows` of them, wrapping
    /// at `ring_rows`) of `data` (sample-major, `n_channels` per row), and the copy of its result
    /// to the read-back buffer; call [`read_sigma`](Self::read_sigma) after submitting.
    pub(crate) fn encode(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        data: &wgpu::Buffer,
        ring_rows: usize,
        start_row: usize,
        n_rows: usize,
    ) -> Result<(), GpuError> {
        self.last_rows = n_rows;
        if n_rows == 0 || self.n_list == 0 {
            return Ok(());
        }
        let too_big = |what: &str| GpuError::Unsupported {
            stage: STAGE,
            message: format!("{what} does not fit the shader's 32-bit indices"),
        };
        if n_rows > ring_rows || start_row >= ring_rows {
            return Err(GpuError::Unsupported {
                stage: STAGE,
                message: format!(
                    "window of {n_rows} rows from {start_row} in a ring of {ring_rows}"
                ),
            });
        }
        let values = ring_rows as u64 * self.n_channels as u64;
        if ring_rows as u64 * 2 > u64::from(u32::MAX) || values > u64::from(u32::MAX) {
            return Err(too_big("the window"));
        }
        let params = Params {
            n_channels: self.n_channels as u32,
            ring_rows: ring_rows as u32,
            start_row: start_row as u32,
            n_rows: n_rows as u32,
            n_list: self.n_list as u32,
            _pad: [0; 3],
        };
        self.ctx
            .queue
            .write_buffer(&self.params, 0, bytemuck::bytes_of(&params));
        let group = self.bound.get(&[data], || {
            bind_group(
                &self.ctx,
                STAGE,
                &self.pipeline,
                &[&self.params, data, &self.channels, &self.out],
            )
        });
        let workgroups = grid(&self.ctx, STAGE, self.n_list as u64)?;
        dispatch(encoder, STAGE, &self.pipeline, group, workgroups);
        encoder.copy_buffer_to_buffer(
            &self.out,
            0,
            &self.staging,
            0,
            padded_size((self.n_list * 8) as u64),
        );
        Ok(())
    }

    /// σ of each listed channel from the last submitted [`encode`](Self::encode):
    /// `MAD / 0.6744897501960817` in f32, exactly the twin's final step. NaN for an empty window.
    pub(crate) fn read_sigma(&self, sigma: &mut [f32]) -> Result<(), GpuError> {
        let n = self.n_list.min(sigma.len());
        if self.last_rows == 0 {
            sigma[..n].fill(f32::NAN);
            return Ok(());
        }
        let mut pairs = vec![0f32; self.n_list * 2];
        read_back(
            &self.ctx,
            STAGE,
            &mut [(&self.staging, bytemuck::cast_slice_mut(&mut pairs))],
        )?;
        for (s, pair) in sigma[..n].iter_mut().zip(pairs.chunks_exact(2)) {
            *s = pair[1] / MAD_TO_SIGMA as f32;
        }
        Ok(())
    }

    /// The twin of `MadEstimator::estimate` over one block: `data` is sample-major, whole rows of
    /// `n_channels`; `sigma[i]` gets σ of the i-th listed channel. Upload, dispatch, read back.
    pub fn sigma(&mut self, data: &[f32], sigma: &mut [f32]) -> Result<(), GpuError> {
        if self.n_channels == 0 {
            return Ok(());
        }
        let n_rows = data.len() / self.n_channels;
        let whole = &data[..n_rows * self.n_channels];
        check_binding(&self.ctx, STAGE, "the window", (whole.len() * 4) as u64)?;
        let ctx = self.ctx.clone();
        let mut io = self
            .io
            .take()
            .unwrap_or_else(|| HostIo::new(&ctx, "noise io"));
        let result = scoped(&ctx.device, STAGE, || {
            io.upload(&ctx, bytemuck::cast_slice(whole));
            let mut encoder = command_encoder(&ctx, STAGE);
            self.encode(&mut encoder, io.data.buffer(), n_rows.max(1), 0, n_rows)?;
            ctx.queue.submit([encoder.finish()]);
            self.read_sigma(sigma)
        });
        self.io = Some(io);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::test_context;
    use crate::noise::{mad_sigma, MadEstimator};
    use rand::{Rng, SeedableRng};

    /// σ bit-identical to the twin's: both take the same order statistics of the same f32
    /// values, halve a sum and subtract exactly the same way, and divide on the CPU.
    fn assert_sigma_bits(got: &[f32], want: &[f32], what: &str) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{what}: channel {i}: gpu σ {g}, cpu σ {w}"
            );
        }
    }

    #[test]
    fn gpu_mad_matches_cpu_twin_on_even_and_odd_counts() {
        let Some(ctx) = test_context() else { return };
        let mut rng = rand::rngs::SmallRng::seed_from_u64(21);
        for n_channels in [384usize, 385] {
            let channels: Vec<usize> = (0..n_channels).collect();
            let mut gpu = GpuNoise::new(ctx.clone(), n_channels, &channels).unwrap();
            for n_rows in [1usize, 2, 7, 300, 3001, 3000] {
                // Mixed signs, a few exact ties (quantised), and one channel of constants.
                let data: Vec<f32> = (0..n_rows * n_channels)
                    .map(|i| {
                        if i % n_channels == 5 {
                            -3.0
                        } else if i % 3 == 0 {
                            (rng.random_range(-50.0f32..50.0) * 2.0).round() / 2.0
                        } else {
                            rng.random_range(-50.0f32..50.0) * (1.0 + (i % n_channels) as f32)
                        }
                    })
                    .collect();
                let mut want = vec![0f32; n_channels];
                mad_sigma(&data, n_channels, &mut want);
                let mut got = vec![0f32; n_channels];
                gpu.sigma(&data, &mut got).unwrap();
                assert_sigma_bits(
                    &got,
                    &want,
                    &format!("{n_channels} channels × {n_rows} rows"),
                );
                assert_eq!(got[5], 0.0, "a constant channel has no spread");
            }
        }
    }

    #[test]
    fn gpu_mad_hand_computed_and_listed_channels() {
        let Some(ctx) = test_context() else { return };
        // The twin's hand-computed case: channel 0: 1 2 3 4 → MAD 1; channel 1: 0 0 10 -10 → 5.
        let data = [1.0, 0.0, 2.0, 0.0, 3.0, 10.0, 4.0, -10.0];
        let mut gpu = GpuNoise::new(ctx.clone(), 2, &[1, 0]).unwrap();
        let mut out = [0f32; 2];
        gpu.sigma(&data, &mut out).unwrap();
        assert_eq!(out, [5.0 / MAD_TO_SIGMA as f32, 1.0 / MAD_TO_SIGMA as f32]);
        // An empty window gives NaN, as on the CPU.
        gpu.sigma(&[], &mut out).unwrap();
        assert!(out.iter().all(|s| s.is_nan()));
    }

    #[test]
    fn gpu_mad_over_a_wrapped_ring_window() {
        let Some(ctx) = test_context() else { return };
        let mut rng = rand::rngs::SmallRng::seed_from_u64(4);
        let (n_channels, ring_rows, start, n_rows) = (33usize, 1000usize, 700usize, 555usize);
        let ring: Vec<f32> = (0..ring_rows * n_channels)
            .map(|_| rng.random_range(-100.0f32..100.0))
            .collect();
        // The window is rows 700..1000 then 0..255 of the ring.
        let (a, b) = (
            &ring[start * n_channels..],
            &ring[..(n_rows - (ring_rows - start)) * n_channels],
        );
        let channels: Vec<usize> = (0..n_channels).rev().collect();
        let mut want = vec![0f32; n_channels];
        MadEstimator::default().estimate(&[a, b], n_channels, &channels, &mut want);

        let mut gpu = GpuNoise::new(ctx.clone(), n_channels, &channels).unwrap();
        let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("test ring"),
            size: (ring.len() * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue
            .write_buffer(&buffer, 0, bytemuck::cast_slice(&ring));
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        gpu.encode(&mut encoder, &buffer, ring_rows, start, n_rows)
            .unwrap();
        ctx.queue.submit([encoder.finish()]);
        let mut got = vec![0f32; n_channels];
        gpu.read_sigma(&mut got).unwrap();
        assert_sigma_bits(&got, &want, "wrapped window");
    }
}
