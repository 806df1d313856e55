//! GPU twin of [`crate::roi::RoiTable::extract`]: `shaders/roi.wgsl`, one invocation per
//! (frame, ROI). The ROI table is uploaded once; per batch the frames go up and F and the exact
//! neuropil sums come back. F is bit-identical to the twin's (same order, no fused multiply-add);
//! Fneu too (exact integer sums, divided on the host in f64 as by the twin).

use std::sync::Arc;

use super::context::{GpuContext, GpuError};
use super::util::{
    bind_group, check_binding, compute_pipeline, grid, padded_size, read_back, scoped,
    uniform_buffer, write_padded, GrowBuffer,
};
use crate::roi::{neuropil_mean, RoiTable};
use crate::Backend;

const STAGE: &str = "roi extraction";

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_frames: u32,
    n_rois: u32,
    n_pixels: u32,
    opaque_zero: u32,
}

/// Per-batch buffers, grown to the largest batch seen.
struct Io {
    frames: GrowBuffer,
    f: GrowBuffer,
    np: GrowBuffer,
    f_read: GrowBuffer,
    np_read: GrowBuffer,
    bound: Option<wgpu::BindGroup>,
}

/// One ROI table on the GPU, extracting batches of frames.
pub struct GpuRoiExtractor {
    ctx: Arc<GpuContext>,
    pipeline: wgpu::ComputePipeline,
    params: wgpu::Buffer,
    table: wgpu::Buffer,
    weights: wgpu::Buffer,
    n_rois: usize,
    n_pixels: usize,
    /// Neuropil pixel count per ROI (to undo the shader's +32768 offsets and divide).
    np_counts: Vec<u32>,
    io: Option<Io>,
    /// Read-back of the neuropil (lo, hi) sums, reused from batch to batch.
    np_sums: Vec<u32>,
}

impl GpuRoiExtractor {
    pub fn new(ctx: Arc<GpuContext>, rois: &RoiTable) -> Result<Self, GpuError> {
        let k = rois.len();
        let mut table =
            Vec::with_capacity(2 * (k + 1) + rois.cell_pixels.len() + rois.np_pixels.len());
        table.extend_from_slice(&rois.cell_offsets);
        table.extend_from_slice(&rois.np_offsets);
        table.extend_from_slice(&rois.cell_pixels);
        table.extend_from_slice(&rois.np_pixels);
        check_binding(&ctx, STAGE, "the ROI table", (table.len() * 4) as u64)?;
        let pipeline = compute_pipeline(
            &ctx,
            STAGE,
            wgpu::include_wgsl!("../shaders/roi.wgsl"),
            "main",
        )?;
        let storage = |label, bytes: &[u8]| {
            let b = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: padded_size(bytes.len() as u64),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            write_padded(&ctx, &b, 0, bytes);
            b
        };
        let table_buf = storage("roi table", bytemuck::cast_slice(&table));
        let weights = storage("roi weights", bytemuck::cast_slice(&rois.cell_weights));
        let params = uniform_buffer(&ctx, "roi params", std::mem::size_of::<Params>() as u64);
        let np_counts = (0..k).map(|i| rois.neuropil(i).len() as u32).collect();
        Ok(GpuRoiExtractor {
            ctx,
            pipeline,
            params,
            table: table_buf,
            weights,
            n_rois: k,
            n_pixels: rois.n_pixels,
            np_counts,
            io: None,
            np_sums: Vec::new(),
        })
    }

    /// Where it runs: a hardware GPU or lavapipe.
    pub fn backend(&self) -> Backend {
        self.ctx.backend
    }

    /// As [`RoiTable::extract`]: F and Fneu of each whole frame of `frames` that `f` and `fneu`
    /// (frame-major, K per frame) have room for.
    pub fn extract(
        &mut self,
        frames: &[i16],
        f: &mut [f32],
        fneu: &mut [f32],
    ) -> Result<(), GpuError> {
        let k = self.n_rois;
        if k == 0 || self.n_pixels == 0 {
            return Ok(());
        }
        let n_frames = (frames.len() / self.n_pixels)
            .min(f.len() / k)
            .min(fneu.len() / k);
        if n_frames == 0 {
            return Ok(());
        }
        let jobs = n_frames as u64 * k as u64;
        let pixels = n_frames as u64 * self.n_pixels as u64;
        if jobs > u64::from(u32::MAX / 2) || pixels > u64::from(u32::MAX) {
            return Err(GpuError::Unsupported {
                stage: STAGE,
                message: format!("{n_frames} frames × {k} ROIs in one batch"),
            });
        }
        let frame_bytes = pixels * 2;
        check_binding(&self.ctx, STAGE, "the frames", frame_bytes)?;
        check_binding(&self.ctx, STAGE, "the neuropil sums", jobs * 8)?;
        let ctx = self.ctx.clone();
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let out = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let read = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let mut io = self.io.take().unwrap_or_else(|| Io {
            frames: GrowBuffer::new(&ctx.device, "roi frames", storage, 4),
            f: GrowBuffer::new(&ctx.device, "roi f", out, 4),
            np: GrowBuffer::new(&ctx.device, "roi neuropil sums", out, 4),
            f_read: GrowBuffer::new(&ctx.device, "roi f read-back", read, 4),
            np_read: GrowBuffer::new(&ctx.device, "roi neuropil read-back", read, 4),
            bound: None,
        });
        self.np_sums.resize(2 * jobs as usize, 0);
        let f = &mut f[..jobs as usize];
        let result = scoped(&ctx.device, STAGE, || {
            let mut grown = io.frames.ensure(&ctx.device, frame_bytes);
            grown |= io.f.ensure(&ctx.device, jobs * 4);
            grown |= io.np.ensure(&ctx.device, jobs * 8);
            io.f_read.ensure(&ctx.device, jobs * 4);
            io.np_read.ensure(&ctx.device, jobs * 8);
            if grown || io.bound.is_none() {
                io.bound = Some(bind_group(
                    &ctx,
                    STAGE,
                    &self.pipeline,
                    &[
                        &self.params,
                        &self.table,
                        &self.weights,
                        io.frames.buffer(),
                        io.f.buffer(),
                        io.np.buffer(),
                    ],
                ));
            }
            let Some(group) = &io.bound else {
                return Ok(());
            };
            let params = Params {
                n_frames: n_frames as u32,
                n_rois: k as u32,
                n_pixels: self.n_pixels as u32,
                opaque_zero: 0,
            };
            ctx.queue
                .write_buffer(&self.params, 0, bytemuck::bytes_of(&params));
            write_padded(
                &ctx,
                io.frames.buffer(),
                0,
                bytemuck::cast_slice(&frames[..pixels as usize]),
            );
            let (x, y) = grid(&ctx, STAGE, jobs.div_ceil(64))?;
            let mut encoder = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(STAGE) });
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(STAGE),
                    timestamp_writes: None,
                });
                pass.set_pipeline(&self.pipeline);
                pass.set_bind_group(0, group, &[]);
                pass.dispatch_workgroups(x, y, 1);
            }
            encoder.copy_buffer_to_buffer(
                io.f.buffer(),
                0,
                io.f_read.buffer(),
                0,
                padded_size(jobs * 4),
            );
            encoder.copy_buffer_to_buffer(
                io.np.buffer(),
                0,
                io.np_read.buffer(),
                0,
                padded_size(jobs * 8),
            );
            ctx.queue.submit([encoder.finish()]);
            read_back(
                &ctx,
                STAGE,
                &mut [
                    (io.f_read.buffer(), bytemuck::cast_slice_mut(f)),
                    (
                        io.np_read.buffer(),
                        bytemuck::cast_slice_mut(&mut self.np_sums),
                    ),
                ],
            )
        });
        self.io = Some(io);
        result?;
        for (j, out) in fneu[..jobs as usize].iter_mut().enumerate() {
            let n = self.np_counts[j % k];
            let sum = (u64::from(self.np_sums[2 * j + 1]) << 32) | u64::from(self.np_sums[2 * j]);
            *out = neuropil_mean(sum as i64 - 32768 * i64::from(n), n as usize);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::test_context;
    use rand::{Rng, SeedableRng};

    /// A random table: `k` ROIs of 1–60 pixels with random weights, neuropils of 0–800 pixels
    /// (some empty), anywhere in the frame (overlaps allowed: the kernels don't care).
    fn random_table(rng: &mut rand::rngs::StdRng, n_pixels: usize, k: usize) -> RoiTable {
        let mut t = RoiTable::new(n_pixels);
        for i in 0..k {
            let n = rng.random_range(1..=60);
            let cell: Vec<(u32, f32)> = (0..n)
                .map(|_| {
                    (
                        rng.random_range(0..n_pixels as u32),
                        rng.random_range(0.0..1.0f32) / n as f32,
                    )
                })
                .collect();
            let m = if i % 7 == 3 {
                0
            } else {
                rng.random_range(1..=800)
            };
            let np: Vec<u32> = (0..m)
                .map(|_| rng.random_range(0..n_pixels as u32))
                .collect();
            t.push(cell, &np).unwrap();
        }
        t
    }

    /// The contract is 1e-5 relative (of the largest |F|, since F may cancel to near 0); with
    /// products rounded and the twin's order kept it is bit-identical in practice, which the
    /// NaN positions and the neuropil (exact sums) must be.
    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len());
        let scale = want
            .iter()
            .filter(|v| v.is_finite())
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(1.0);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.is_nan(), w.is_nan(), "{what}[{i}]: {g} vs {w}");
            if !w.is_nan() {
                assert!((g - w).abs() <= 1e-5 * scale, "{what}[{i}]: {g} vs {w}");
            }
        }
    }

    #[test]
    fn gpu_matches_twin_on_random_rois() {
        let Some(ctx) = test_context() else { return };
        let mut rng = rand::rngs::StdRng::seed_from_u64(41);
        // 96×80 frames, 300 ROIs × 3 frames = 900 invocations (15 workgroups); then an odd
        // frame size (pixels straddle word halves across frames) and a larger batch, which
        // grows the buffers.
        for (h, w, k, batches) in [(96, 80, 300, [3, 1]), (31, 17, 45, [2, 9])] {
            let n_pixels = h * w;
            let table = random_table(&mut rng, n_pixels, k);
            let mut gpu = GpuRoiExtractor::new(ctx.clone(), &table).unwrap();
            for n_frames in batches {
                let frames: Vec<i16> = (0..n_frames * n_pixels)
                    .map(|i| match i % 97 {
                        0 => i16::MIN,
                        1 => i16::MAX,
                        _ => rng.random(),
                    })
                    .collect();
                let (mut f, mut fneu) = (vec![0f32; n_frames * k], vec![0f32; n_frames * k]);
                table.extract(&frames, &mut f, &mut fneu);
                let (mut gf, mut gneu) = (vec![0f32; n_frames * k], vec![0f32; n_frames * k]);
                gpu.extract(&frames, &mut gf, &mut gneu).unwrap();
                let what = format!("{h}×{w}, {k} ROIs, {n_frames} frames");
                assert_close(&gf, &f, &format!("F ({what})"));
                assert_eq!(
                    gneu.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    fneu.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "Fneu ({what}): exact sums, same division"
                );
            }
        }
    }

    #[test]
    fn gpu_hand_computed() {
        let Some(ctx) = test_context() else { return };
        let mut t = RoiTable::new(4);
        t.push([(0, 0.25), (1, 0.75)], &[2, 3]).unwrap();
        t.push([(3, 1.0)], &[]).unwrap();
        let frames: Vec<i16> = vec![4, 8, -3, 6, 0, -32768, 32767, 32767];
        let (mut f, mut fneu) = ([0f32; 4], [0f32; 4]);
        GpuRoiExtractor::new(ctx, &t)
            .unwrap()
            .extract(&frames, &mut f, &mut fneu)
            .unwrap();
        assert_eq!(f, [7.0, 6.0, -24576.0, 32767.0]);
        assert_eq!((fneu[0], fneu[2]), (1.5, 32767.0));
        assert!(fneu[1].is_nan() && fneu[3].is_nan());
    }
}
