//! GPU twin of [`crate::cmr::MedianReference`]: `shaders/cmr.wgsl`, one workgroup per
//! (sample, group), exact ranks by counting in workgroup memory.

use std::sync::Arc;

use super::context::{GpuContext, GpuError};
use super::util::{
    bind_group, compute_pipeline, dispatch, grid, table_buffer, uniform_buffer, BindCache, HostIo,
};
use crate::cmr::MedianReference;

const STAGE: &str = "median reference";
/// Largest group the shader ranks (`MAX_GROUP` in cmr.wgsl: 4 KiB of workgroup memory); a
/// Neuropixels probe records 384 channels.
pub const MAX_GROUP: usize = 1024;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_channels: u32,
    n_samples: u32,
    n_groups: u32,
    _pad: u32,
}

/// Median reference on the GPU; same groups (after the twin's clean-up) and bit-identical output.
pub struct GpuMedianReference {
    ctx: Arc<GpuContext>,
    pipeline: wgpu::ComputePipeline,
    params: wgpu::Buffer,
    groups: wgpu::Buffer,
    n_channels: usize,
    n_groups: usize,
    bound: BindCache,
    io: Option<HostIo>,
}

impl GpuMedianReference {
    /// Groups are cleaned exactly as by `MedianReference::new` (out-of-range and repeated
    /// channels dropped, empty groups ignored).
    pub fn new(
        ctx: Arc<GpuContext>,
        groups: Vec<Vec<usize>>,
        n_channels: usize,
    ) -> Result<Self, GpuError> {
        let twin = MedianReference::new(groups, n_channels);
        let groups: Vec<&[usize]> = twin.groups().collect();
        if let Some(big) = groups.iter().find(|g| g.len() > MAX_GROUP) {
            return Err(GpuError::Unsupported {
                stage: STAGE,
                message: format!(
                    "a group of {} channels; the shader selects among at most {MAX_GROUP}",
                    big.len()
                ),
            });
        }
        // CSR: n_groups + 1 offsets, then the members.
        let mut table: Vec<u32> = Vec::with_capacity(groups.len() + 1 + n_channels);
        let mut offset = 0u32;
        table.push(0);
        for g in &groups {
            offset += g.len() as u32;
            table.push(offset);
        }
        for g in &groups {
            table.extend(g.iter().map(|&c| c as u32));
        }
        let pipeline = compute_pipeline(
            &ctx,
            STAGE,
            wgpu::include_wgsl!("../shaders/cmr.wgsl"),
            "main",
        )?;
        let buffer = table_buffer(&ctx, "median groups", bytemuck::cast_slice(&table));
        let params = uniform_buffer(&ctx, "median params", std::mem::size_of::<Params>() as u64);
        Ok(GpuMedianReference {
            ctx,
            pipeline,
            params,
            groups: buffer,
            n_channels,
            n_groups: groups.len(),
            bound: BindCache::default(),
            io: None,
        })
    }

    /// Records the reference over the first `n_samples` samples of `data`. Writes the kernel's
    /// parameters now: encode at most once per submission.
    pub(crate) fn encode(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        data: &wgpu::Buffer,
        n_samples: usize,
    ) -> Result<(), GpuError> {
        if self.n_groups == 0 || n_samples == 0 || self.n_channels == 0 {
            return Ok(());
        }
        let jobs = n_samples as u64 * self.n_groups as u64;
        if jobs > u64::from(u32::MAX) {
            return Err(GpuError::Unsupported {
                stage: STAGE,
                message: format!(
                    "{n_samples} samples × {} groups in one chunk",
                    self.n_groups
                ),
            });
        }
        let params = Params {
            n_channels: self.n_channels as u32,
            n_samples: n_samples as u32,
            n_groups: self.n_groups as u32,
            _pad: 0,
        };
        self.ctx
            .queue
            .write_buffer(&self.params, 0, bytemuck::bytes_of(&params));
        let group = self.bound.get(&[data], || {
            bind_group(
                &self.ctx,
                STAGE,
                &self.pipeline,
                &[&self.params, &self.groups, data],
            )
        });
        let workgroups = grid(&self.ctx, STAGE, jobs.div_ceil(64))?;
        dispatch(encoder, STAGE, &self.pipeline, group, workgroups);
        Ok(())
    }

    /// References `data` (whole samples of C channels, sample-major) in place: upload, dispatch,
    /// read back.
    pub fn process(&mut self, data: &mut [f32]) -> Result<(), GpuError> {
        if self.n_channels == 0 {
            return Ok(());
        }
        let n_samples = data.len() / self.n_channels;
        let whole = &mut data[..n_samples * self.n_channels];
        if whole.is_empty() || self.n_groups == 0 {
            return Ok(());
        }
        let ctx = self.ctx.clone();
        let mut io = self
            .io
            .take()
            .unwrap_or_else(|| HostIo::new(&ctx, "median io"));
        let result = io.run_in_place(&ctx, STAGE, whole, |encoder, data| {
            self.encode(encoder, data, n_samples)
        });
        self.io = Some(io);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::test_context;
    use rand::{Rng, SeedableRng};

    /// Bit-identical to the twin: selecting, (a + b)·0.5 and x − m are exact or correctly rounded
    /// on both sides.
    fn assert_bits_equal(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len());
        if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
            panic!(
                "{what}: first difference at {i}: gpu {} cpu {}",
                got[i], want[i]
            );
        }
    }

    #[test]
    fn gpu_median_matches_cpu_twin_on_uneven_groups() {
        let Some(ctx) = test_context() else { return };
        let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
        let cases: Vec<(usize, Vec<Vec<usize>>)> = vec![
            // Whole probe, even count (384) and odd count (385).
            (384, vec![(0..384).collect()]),
            (385, vec![(0..385).collect()]),
            // Four shanks of uneven size, interleaved channels, one channel in no group.
            (
                385,
                vec![
                    (0..384).filter(|c| c % 4 == 0).collect(),
                    (0..384).filter(|c| c % 4 == 1).take(77).collect(),
                    (0..384).filter(|c| c % 4 == 2).collect(),
                    (0..384).filter(|c| c % 4 == 3).take(1).collect(),
                ],
            ),
            // Single channel groups and a group of two.
            (5, vec![vec![0], vec![3, 1], vec![4]]),
        ];
        for (n_channels, groups) in cases {
            for n_samples in [1usize, 7, 300] {
                // Quantised values make exact ties (equal middle values) common.
                let input: Vec<f32> = (0..n_samples * n_channels)
                    .map(|_| (rng.random_range(-400.0f32..400.0) * 4.0).round() / 4.0)
                    .collect();
                let mut want = input.clone();
                MedianReference::new(groups.clone(), n_channels).process(&mut want);
                let mut got = input;
                let mut gpu =
                    GpuMedianReference::new(ctx.clone(), groups.clone(), n_channels).unwrap();
                gpu.process(&mut got).unwrap();
                assert_bits_equal(
                    &got,
                    &want,
                    &format!(
                        "{n_channels} channels, {} groups, {n_samples} samples",
                        groups.len()
                    ),
                );
            }
        }
    }

    #[test]
    fn gpu_median_hand_computed() {
        let Some(ctx) = test_context() else { return };
        // Same case as the twin's test: (3 + 4) / 2 = 3.5 and 5; channel 7 untouched.
        let mut data = vec![4.0, 1.0, 3.0, 10.0, 7.0, -2.0, 5.0, 100.0];
        let mut gpu =
            GpuMedianReference::new(ctx, vec![vec![0, 1, 2, 3], vec![4, 6, 5]], 8).unwrap();
        gpu.process(&mut data).unwrap();
        assert_eq!(data, vec![0.5, -2.5, -0.5, 6.5, 2.0, -7.0, 0.0, 100.0]);
    }

    #[test]
    fn gpu_median_refuses_groups_past_its_workgroup_memory() {
        let Some(ctx) = test_context() else { return };
        let n = MAX_GROUP + 1;
        let err = GpuMedianReference::new(ctx, vec![(0..n).collect()], n).err();
        assert!(matches!(err, Some(GpuError::Unsupported { .. })), "{err:?}");
    }
}
