//! GPU twin of [`TebCpu`](crate::teb::TebCpu): `shaders/teb.wgsl`. Everything is built once in
//! [`GpuTeb::new`]: the three pipelines, the six bind groups and their parameters, the weights
//! (uploaded once), the activations and recurrent state (h, c of both LSTMs, kept on the GPU
//! between steps and never read back) and the staging buffer. Per step: one `write_buffer` of the
//! normalised inputs, one submission of six dispatches and a copy, one read-back of 2·Dy + 1
//! floats (prediction, target-only prediction, rate).

use std::sync::Arc;

use super::context::{GpuContext, GpuError};
use super::util::{
    buffer, check_binding, command_encoder, grid, padded_size, read_back, scoped, table_buffer,
    uniform_buffer,
};
use crate::teb::cpu::normalise;
use crate::teb::{StepOutput, TebModel};
use crate::Backend;

const STAGE: &str = "teb step";
/// The shader's "no second bias".
const NONE: u32 = u32::MAX;
/// Invocations per workgroup of every entry point.
const WG: u64 = 64;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Segment {
    weight: u32,
    stride: u32,
    input: u32,
    cols: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Job {
    rows: u32,
    out: u32,
    bias_a: u32,
    bias_b: u32,
    act: u32,
    _pad: [u32; 3],
    seg: [Segment; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Matvec {
    jobs: [Job; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct CellLstm {
    gates: u32,
    h: u32,
    c: u32,
    hidden: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Cell {
    lstm: [CellLstm; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Finish {
    latent: u32,
    target_dim: u32,
    dec_w: u32,
    dec_b: u32,
    mean: u32,
    sd: u32,
    enc: u32,
    mlp: u32,
    out: u32,
    _pad: [u32; 3],
}

/// Places vectors one after another in a flat f32 buffer; offsets are the shader's u32 indices.
struct Layout {
    len: usize,
}

impl Layout {
    fn take(&mut self, n: usize) -> u32 {
        let at = self.len;
        self.len += n;
        // The caller checks the total against u32 (see `offsets_fit`) before using any offset.
        at as u32
    }
}

/// Where each activation lives in the state buffer.
struct StateLayout {
    /// [ỹ | x̃], written per step.
    inputs: u32,
    h_y: u32,
    c_y: u32,
    h_x: u32,
    c_x: u32,
    gates_y: u32,
    gates_x: u32,
    enc: u32,
    mlp_hidden: u32,
    mlp_out: u32,
    /// prediction (Dy) | target-only (Dy) | rate.
    out: u32,
    len: usize,
}

/// The entry points of teb.wgsl, in the order of `GpuTeb::pipelines`.
#[derive(Clone, Copy)]
enum Entry {
    Matvec = 0,
    Cell = 1,
    Finish = 2,
}

impl Entry {
    const ALL: [Entry; 3] = [Entry::Matvec, Entry::Cell, Entry::Finish];

    fn name(self) -> &'static str {
        match self {
            Entry::Matvec => "matvec",
            Entry::Cell => "cell",
            Entry::Finish => "finish",
        }
    }

    /// The binding of its uniform parameters in teb.wgsl.
    fn params_binding(self) -> u32 {
        match self {
            Entry::Matvec => 2,
            Entry::Cell => 3,
            Entry::Finish => 4,
        }
    }
}

/// One dispatch of the step: pipeline, bind group, grid.
struct Pass {
    pipeline: usize,
    group: wgpu::BindGroup,
    grid: (u32, u32),
}

/// A TEB model on the GPU with its recurrent state, stepped once per bin.
pub struct GpuTeb {
    ctx: Arc<GpuContext>,
    pipelines: [wgpu::ComputePipeline; 3],
    passes: Vec<Pass>,
    /// Keeps the parameter buffers alive beside their bind groups.
    _params: Vec<wgpu::Buffer>,
    state: wgpu::Buffer,
    staging: wgpu::Buffer,
    layout: StateLayout,
    dx: usize,
    dy: usize,
    /// source then target mean/std (host-side normalisation, bit-identical to the twin's).
    norm: crate::teb::model::Normalisation,
    /// [ỹ | x̃] of the current step.
    inputs: Vec<f32>,
    /// Read-back: prediction | target-only | rate.
    readback: Vec<f32>,
    /// The recurrent state is zeroed at the start of the next step's submission.
    reset_pending: bool,
}

fn unsupported(message: String) -> GpuError {
    GpuError::Unsupported {
        stage: STAGE,
        message,
    }
}

impl GpuTeb {
    pub fn new(ctx: Arc<GpuContext>, model: &TebModel) -> Result<Self, GpuError> {
        model.check_shapes().map_err(unsupported)?;
        let d = model.dims();
        let (dx, dy, l) = (d.source, d.target, d.latent);
        let (hy, hx, hm) = (
            d.hidden.target_lstm,
            d.hidden.source_lstm,
            d.hidden.source_mlp,
        );

        // Weights: the state dict in order, then the target's mean and std.
        let n = &model.config.normalisation;
        let mut tensors = model.weights.named();
        tensors.push(("target mean", &n.target_mean));
        tensors.push(("target std", &n.target_std));
        let mut wl = Layout { len: 0 };
        let offsets: Vec<u32> = tensors.iter().map(|(_, v)| wl.take(v.len())).collect();
        let mut sl = Layout { len: 0 };
        let layout = StateLayout {
            inputs: sl.take(dy + dx),
            h_y: sl.take(hy),
            c_y: sl.take(hy),
            h_x: sl.take(hx),
            c_x: sl.take(hx),
            gates_y: sl.take(4 * hy),
            gates_x: sl.take(4 * hx),
            enc: sl.take(3 * l),
            mlp_hidden: sl.take(hm),
            mlp_out: sl.take(2 * l),
            out: sl.take(2 * dy + 1),
            len: sl.len,
        };
        // Row × stride products stay below the buffer length, so this bounds every index.
        for (what, len) in [("the weights", wl.len), ("the activations", layout.len)] {
            if len >= u32::MAX as usize / 2 {
                return Err(unsupported(format!(
                    "{what} ({len} values) exceed the shader's 32-bit indices"
                )));
            }
            check_binding(&ctx, STAGE, what, (len * 4) as u64)?;
        }
        let o = |name: &str| {
            tensors
                .iter()
                .position(|(n, _)| *n == name)
                .and_then(|i| offsets.get(i).copied())
                .unwrap_or(0)
        };
        let u = |v: usize| v as u32;

        let s = &layout;
        let gates = |p: &str, input: u32, din: usize, h: u32, hidden: usize, out: u32| Job {
            rows: u(4 * hidden),
            out,
            bias_a: o(&format!("{p}.bias_ih_l0")),
            bias_b: o(&format!("{p}.bias_hh_l0")),
            act: 0,
            _pad: [0; 3],
            seg: [
                Segment {
                    weight: o(&format!("{p}.weight_ih_l0")),
                    stride: u(din),
                    input,
                    cols: u(din),
                },
                Segment {
                    weight: o(&format!("{p}.weight_hh_l0")),
                    stride: u(hidden),
                    input: h,
                    cols: u(hidden),
                },
            ],
        };
        let linear = |p: &str, rows: usize, input: u32, cols: usize, out: u32, act: u32| Job {
            rows: u(rows),
            out,
            bias_a: o(&format!("{p}.bias")),
            bias_b: NONE,
            act,
            _pad: [0; 3],
            seg: [
                Segment {
                    weight: o(&format!("{p}.weight")),
                    stride: u(cols),
                    input,
                    cols: u(cols),
                },
                Segment::default(),
            ],
        };
        let gates_job = Matvec {
            jobs: [
                gates("target.lstm", s.inputs, dy, s.h_y, hy, s.gates_y),
                gates("source.lstm", s.inputs + u(dy), dx, s.h_x, hx, s.gates_x),
            ],
        };
        let enc_job = linear("target.enc", 3 * l, s.h_y, hy, s.enc, 0);
        // [h_x ; u_c]: the first Hx columns of each row take h_x, the last L take u_c.
        let mut mlp1_job = linear("source.mlp.0", hm, s.h_x, hx, s.mlp_hidden, 1);
        mlp1_job.seg[0].stride = u(hx + l);
        mlp1_job.seg[1] = Segment {
            weight: o("source.mlp.0.weight") + u(hx),
            stride: u(hx + l),
            input: s.enc + u(2 * l),
            cols: u(l),
        };
        let mlp2_job = linear("source.mlp.2", 2 * l, s.mlp_hidden, hm, s.mlp_out, 0);
        let cell = Cell {
            lstm: [
                CellLstm {
                    gates: s.gates_y,
                    h: s.h_y,
                    c: s.c_y,
                    hidden: u(hy),
                },
                CellLstm {
                    gates: s.gates_x,
                    h: s.h_x,
                    c: s.c_x,
                    hidden: u(hx),
                },
            ],
        };
        let finish = Finish {
            latent: u(l),
            target_dim: u(dy),
            dec_w: o("decoder.weight"),
            dec_b: o("decoder.bias"),
            mean: o("target mean"),
            sd: o("target std"),
            enc: s.enc,
            mlp: s.mlp_out,
            out: s.out,
            _pad: [0; 3],
        };

        let weights_data: Vec<f32> = tensors
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .collect();
        scoped(&ctx.device, STAGE, || {
            let module = ctx
                .device
                .create_shader_module(wgpu::include_wgsl!("../shaders/teb.wgsl"));
            let pipelines = Entry::ALL.map(|entry| {
                ctx.device
                    .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(STAGE),
                        layout: None,
                        module: &module,
                        entry_point: Some(entry.name()),
                        compilation_options: Default::default(),
                        cache: None,
                    })
            });
            let weights = table_buffer(&ctx, "teb weights", bytemuck::cast_slice(&weights_data));
            let state = buffer(
                &ctx,
                "teb state",
                (layout.len * 4) as u64,
                wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
            );
            let out_bytes = ((2 * dy + 1) * 4) as u64;
            let staging = buffer(
                &ctx,
                "teb read-back",
                out_bytes,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            );
            let mut params = Vec::new();
            let mut passes = Vec::new();
            let max_x = ctx.device.limits().max_compute_workgroups_per_dimension;
            let matvec_grid = |jobs: &[&Job]| {
                let rows = jobs.iter().map(|j| j.rows).max().unwrap_or(1);
                (rows.clamp(1, max_x), jobs.len() as u32)
            };
            let cell_grid = grid(&ctx, STAGE, ((hy + hx) as u64).div_ceil(WG))?;
            let single = |job: Job| Matvec {
                jobs: [job, Job::default()],
            };
            let bytes = |b: &[u8]| b.to_vec();
            let plan = [
                (
                    Entry::Matvec,
                    bytes(bytemuck::bytes_of(&gates_job)),
                    matvec_grid(&[&gates_job.jobs[0], &gates_job.jobs[1]]),
                ),
                (Entry::Cell, bytes(bytemuck::bytes_of(&cell)), cell_grid),
                (
                    Entry::Matvec,
                    bytes(bytemuck::bytes_of(&single(enc_job))),
                    matvec_grid(&[&enc_job]),
                ),
                (
                    Entry::Matvec,
                    bytes(bytemuck::bytes_of(&single(mlp1_job))),
                    matvec_grid(&[&mlp1_job]),
                ),
                (
                    Entry::Matvec,
                    bytes(bytemuck::bytes_of(&single(mlp2_job))),
                    matvec_grid(&[&mlp2_job]),
                ),
                (Entry::Finish, bytes(bytemuck::bytes_of(&finish)), (1, 1)),
            ];
            for (entry, bytes, grid) in plan {
                let uniform = uniform_buffer(&ctx, "teb params", bytes.len() as u64);
                ctx.queue.write_buffer(&uniform, 0, &bytes);
                let pipeline = &pipelines[entry as usize];
                // Auto layouts hold only the bindings an entry point uses: `cell` never reads
                // the weights.
                let mut entries = vec![(1, &state), (entry.params_binding(), &uniform)];
                if !matches!(entry, Entry::Cell) {
                    entries.push((0, &weights));
                }
                let group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(STAGE),
                    layout: &pipeline.get_bind_group_layout(0),
                    entries: &entries
                        .iter()
                        .map(|(binding, b)| wgpu::BindGroupEntry {
                            binding: *binding,
                            resource: b.as_entire_binding(),
                        })
                        .collect::<Vec<_>>(),
                });
                passes.push(Pass {
                    pipeline: entry as usize,
                    group,
                    grid,
                });
                params.push(uniform);
            }
            params.push(weights);
            Ok(GpuTeb {
                ctx: ctx.clone(),
                pipelines,
                passes,
                _params: params,
                state,
                staging,
                dx,
                dy,
                norm: n.clone(),
                inputs: vec![0.0; dy + dx],
                readback: vec![0.0; 2 * dy + 1],
                layout,
                reset_pending: false,
            })
        })
    }

    /// Where it runs: a hardware GPU or lavapipe.
    pub fn backend(&self) -> Backend {
        self.ctx.backend
    }

    /// (Dx, Dy): the source and target values a step takes.
    pub fn dims(&self) -> (usize, usize) {
        (self.dx, self.dy)
    }

    /// Zero recurrent state (at the start, and after a gap in the data); done on the GPU at the
    /// start of the next step's submission.
    pub fn reset(&mut self) {
        self.reset_pending = true;
    }

    /// As [`TebCpu::step`](crate::teb::TebCpu::step): `x` (Dx) and `y` (Dy) raw values of the
    /// bin that just closed; `out` gets the prediction of the next bin and this step's rate.
    pub fn step(&mut self, x: &[f32], y: &[f32], out: &mut StepOutput) -> Result<(), GpuError> {
        if x.len() != self.dx || y.len() != self.dy {
            return Err(unsupported(format!(
                "inputs of {} source and {} target values for a model of {} and {}",
                x.len(),
                y.len(),
                self.dx,
                self.dy
            )));
        }
        let n = &self.norm;
        let (ty, tx) = self.inputs.split_at_mut(self.dy);
        normalise(y, &n.target_mean, &n.target_std, ty);
        normalise(x, &n.source_mean, &n.source_std, tx);
        let ctx = self.ctx.clone();
        let l = &self.layout;
        scoped(&ctx.device, STAGE, || {
            let f32s = |n: u32| u64::from(n) * 4;
            ctx.queue.write_buffer(
                &self.state,
                f32s(l.inputs),
                bytemuck::cast_slice(&self.inputs),
            );
            let mut encoder = command_encoder(&ctx, STAGE);
            if std::mem::take(&mut self.reset_pending) {
                // h_y, c_y, h_x, c_x are contiguous.
                encoder.clear_buffer(&self.state, f32s(l.h_y), Some(f32s(l.gates_y - l.h_y)));
            }
            for pass in &self.passes {
                let mut cpass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(STAGE),
                    timestamp_writes: None,
                });
                if let Some(p) = self.pipelines.get(pass.pipeline) {
                    cpass.set_pipeline(p);
                }
                cpass.set_bind_group(0, &pass.group, &[]);
                cpass.dispatch_workgroups(pass.grid.0, pass.grid.1, 1);
            }
            let out_bytes = (self.readback.len() * 4) as u64;
            encoder.copy_buffer_to_buffer(
                &self.state,
                f32s(l.out),
                &self.staging,
                0,
                padded_size(out_bytes),
            );
            ctx.queue.submit([encoder.finish()]);
            read_back(
                &ctx,
                STAGE,
                &mut [(&self.staging, bytemuck::cast_slice_mut(&mut self.readback))],
            )
        })?;
        let dy = self.dy;
        out.prediction.resize(dy, 0.0);
        out.target_only.resize(dy, 0.0);
        out.prediction.copy_from_slice(&self.readback[..dy]);
        out.target_only.copy_from_slice(&self.readback[dy..2 * dy]);
        out.rate_nats = self.readback[2 * dy];
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gpu::test_context;
    use crate::teb::{Dims, Hidden, TebCpu};
    use rand::{Rng, SeedableRng};

    /// The contract: every output within 1e-4 of the twin's, relative to its magnitude where
    /// that exceeds 1 (the rate sums L terms and can be large; predictions are in raw units).
    /// Returns the largest error seen, in those units.
    pub(crate) fn assert_close(got: &StepOutput, want: &StepOutput, what: &str) -> f32 {
        let err = |g: f32, w: f32| (g - w).abs() / w.abs().max(1.0);
        let mut worst = 0f32;
        let pairs = got
            .prediction
            .iter()
            .zip(&want.prediction)
            .chain(got.target_only.iter().zip(&want.target_only))
            .chain(std::iter::once((&got.rate_nats, &want.rate_nats)));
        assert_eq!(got.prediction.len(), want.prediction.len(), "{what}");
        for (g, w) in pairs {
            let e = err(*g, *w);
            assert!(
                w.is_finite() && e <= 1e-4,
                "{what}: gpu {got:?} vs cpu {want:?}"
            );
            worst = worst.max(e);
        }
        worst
    }

    /// A random model with non-trivial normalisation (so both normalisations are exercised).
    pub(crate) fn model(dims: Dims, seed: u64) -> TebModel {
        let mut m = TebModel::random(dims, seed);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed + 1);
        let n = &mut m.config.normalisation;
        for v in n.source_mean.iter_mut().chain(&mut n.target_mean) {
            *v = rng.random_range(-5.0..5.0);
        }
        for v in n.source_std.iter_mut().chain(&mut n.target_std) {
            *v = rng.random_range(0.2..4.0);
        }
        m
    }

    /// Raw inputs around the model's statistics (±2 std).
    pub(crate) fn inputs(m: &TebModel, rng: &mut rand::rngs::StdRng) -> (Vec<f32>, Vec<f32>) {
        let n = &m.config.normalisation;
        let mut draw = |mean: &[f32], std: &[f32]| -> Vec<f32> {
            mean.iter()
                .zip(std)
                .map(|(m, s)| m + s * rng.random_range(-2.0..2.0f32))
                .collect()
        };
        (
            draw(&n.source_mean, &n.source_std),
            draw(&n.target_mean, &n.target_std),
        )
    }

    pub(crate) fn dims(
        dx: usize,
        dy: usize,
        l: usize,
        (hy, hx, hm): (usize, usize, usize),
    ) -> Dims {
        Dims {
            source: dx,
            target: dy,
            latent: l,
            hidden: Hidden {
                target_lstm: hy,
                source_lstm: hx,
                source_mlp: hm,
            },
        }
    }

    #[test]
    fn gpu_matches_twin_over_1000_steps_of_recurrence() {
        let Some(ctx) = test_context() else { return };
        // The benchmark's size (512 gate rows per LSTM: 1,024 workgroups of 64 in the gates
        // pass; 384 columns: 6 per invocation) and an odd small one (fewer columns and rows
        // than invocations, every size different so a mixed-up offset shows).
        for (d, seed) in [
            (dims(384, 2, 16, (128, 128, 128)), 11),
            (dims(5, 3, 3, (7, 9, 11)), 12),
        ] {
            let m = model(d, seed);
            let mut gpu = GpuTeb::new(ctx.clone(), &m).unwrap();
            let mut cpu = TebCpu::new(&m);
            let (mut g, mut c) = (StepOutput::for_model(&m), StepOutput::for_model(&m));
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed + 2);
            let (mut rate_sum, mut worst) = (0.0, 0f32);
            for t in 0..1000 {
                let (x, y) = inputs(&m, &mut rng);
                gpu.step(&x, &y, &mut g).unwrap();
                cpu.step(&x, &y, &mut c);
                worst = worst.max(assert_close(&g, &c, &format!("{d:?}, step {t}")));
                rate_sum += c.rate_nats;
            }
            // Random source heads give q ≠ p: the rate is exercised, not 0 throughout.
            assert!(rate_sum > 1.0, "{d:?}: rate {rate_sum}");
            eprintln!(
                "{d:?} on {}: largest error {worst:e} over 1,000 steps",
                ctx.adapter_name
            );
        }
    }

    #[test]
    fn reset_returns_to_the_first_step() {
        let Some(ctx) = test_context() else { return };
        let m = model(dims(6, 2, 4, (5, 8, 3)), 21);
        let mut gpu = GpuTeb::new(ctx, &m).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(22);
        let seq: Vec<_> = (0..5).map(|_| inputs(&m, &mut rng)).collect();
        let run = |gpu: &mut GpuTeb| -> Vec<StepOutput> {
            seq.iter()
                .map(|(x, y)| {
                    let mut out = StepOutput::for_model(&m);
                    gpu.step(x, y, &mut out).unwrap();
                    out
                })
                .collect()
        };
        let first = run(&mut gpu);
        let carried = run(&mut gpu);
        assert_ne!(first, carried, "the state carries over between steps");
        gpu.reset();
        assert_eq!(run(&mut gpu), first, "after a reset, as from the start");
        let mut cpu = TebCpu::new(&m);
        for ((x, y), g) in seq.iter().zip(&first) {
            let mut c = StepOutput::for_model(&m);
            cpu.step(x, y, &mut c);
            assert_close(g, &c, "first steps");
        }
    }

    #[test]
    fn wrong_input_lengths_and_inconsistent_models_are_errors() {
        let Some(ctx) = test_context() else { return };
        let m = model(dims(4, 2, 3, (5, 5, 5)), 31);
        let mut gpu = GpuTeb::new(ctx.clone(), &m).unwrap();
        let mut out = StepOutput::for_model(&m);
        assert!(gpu.step(&[0.0; 3], &[0.0; 2], &mut out).is_err());
        assert!(gpu.step(&[0.0; 4], &[0.0; 3], &mut out).is_err());
        gpu.step(&[0.0; 4], &[0.0; 2], &mut out).unwrap();
        let mut bad = m.clone();
        bad.weights.source_mlp1.weight.pop();
        let err = GpuTeb::new(ctx, &bad)
            .err()
            .expect("a short tensor is refused");
        assert!(err.to_string().contains("source.mlp.0.weight"), "{err}");
    }
}
