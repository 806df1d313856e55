//! [`TebDecoder`]: a TEB model stepped on the backend [`crate::backend`]'s rule picks. `auto`
//! never takes a software adapter; with a hardware one, both the CPU twin and the GPU step the
//! model [`TRIAL_STEPS`] times on synthetic inputs of its size (then are reset) and the faster is
//! kept ([`backend::decide`]). A TEB step is small and fixed in size, so a synthetic trial
//! measures what the stream will cost and the choice is made before the first bin.

use std::time::Instant;

use super::cpu::{StepOutput, TebCpu};
use super::model::TebModel;
use crate::backend::{self, Figure, Plan, Preference};
use crate::chain::KernelError;
use crate::gpu::teb::GpuTeb;
use crate::gpu::GpuContext;
use crate::Backend;

/// Timed steps of each backend in an `auto` trial.
pub const TRIAL_STEPS: usize = 200;
/// Untimed steps before them (pipeline and cache warm-up).
const WARMUP_STEPS: usize = 10;

/// What a backend cost per step in the trial.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct StepCost {
    pub backend: Backend,
    pub seconds_per_step: f64,
}

/// The backend a decoder runs on, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Choice {
    pub backend: Backend,
    /// Why, in words (for the log and the status).
    pub reason: String,
    /// With `auto` on a hardware adapter: each backend's cost in the trial (CPU first); else
    /// empty.
    pub measured: Vec<StepCost>,
}

/// A TEB model with its recurrent state on one backend.
pub enum TebDecoder {
    Cpu(TebCpu),
    Gpu(GpuTeb),
}

impl TebDecoder {
    /// The decoder for `pref` (see the module docs). A GPU that fails to build or to run the
    /// trial is an error with `gpu`, else the CPU runs (and the reason says why).
    pub fn new(pref: Preference, model: &TebModel) -> Result<(TebDecoder, Choice), KernelError> {
        model.check_shapes().map_err(KernelError::Teb)?;
        let cpu = |reason: String, measured| {
            (
                TebDecoder::Cpu(TebCpu::new(model)),
                Choice {
                    backend: Backend::Cpu,
                    reason,
                    measured,
                },
            )
        };
        let build = |ctx: std::sync::Arc<GpuContext>| GpuTeb::new(ctx, model);
        Ok(match backend::plan(pref)? {
            Plan::Cpu(why) => cpu(why.to_string(), Vec::new()),
            Plan::Gpu(ctx) => {
                let name = ctx.adapter_name.clone();
                match build(ctx) {
                    Ok(gpu) => {
                        let backend = gpu.backend();
                        (
                            TebDecoder::Gpu(gpu),
                            Choice {
                                backend,
                                reason: format!("asked for ({name})"),
                                measured: Vec::new(),
                            },
                        )
                    }
                    Err(e) if pref == Preference::Gpu => return Err(e.into()),
                    Err(e) => cpu(format!("the GPU decoder failed to build: {e}"), Vec::new()),
                }
            }
            Plan::Measure(ctx) => {
                let name = ctx.adapter_name.clone();
                let gpu = match build(ctx) {
                    Ok(gpu) => gpu,
                    Err(e) => {
                        return Ok(cpu(
                            format!("the GPU decoder failed to build: {e}"),
                            Vec::new(),
                        ))
                    }
                };
                let (mut cpu_dec, mut gpu_dec) =
                    (TebDecoder::Cpu(TebCpu::new(model)), TebDecoder::Gpu(gpu));
                let bin_s = model.config.bin_s;
                let cpu_s = trial(&mut cpu_dec, model)?;
                let gpu_s = match trial(&mut gpu_dec, model) {
                    Ok(s) => s,
                    Err(e) => {
                        return Ok(cpu(
                            format!("the GPU failed during the trial: {e}"),
                            Vec::new(),
                        ))
                    }
                };
                let data_s = TRIAL_STEPS as f64 * bin_s;
                let figure = |backend, compute_s| Figure {
                    backend,
                    compute_s,
                    data_s,
                };
                let chosen = backend::decide(&[
                    figure(Backend::Cpu, cpu_s),
                    figure(gpu_dec.backend(), gpu_s),
                ]);
                let per_step = |s: f64| s / TRIAL_STEPS as f64;
                let measured = vec![
                    StepCost {
                        backend: Backend::Cpu,
                        seconds_per_step: per_step(cpu_s),
                    },
                    StepCost {
                        backend: gpu_dec.backend(),
                        seconds_per_step: per_step(gpu_s),
                    },
                ];
                let reason = format!(
                    "fastest over {TRIAL_STEPS} steps on synthetic inputs (µs per step: cpu {:.1}, \
                     {name} {:.1})",
                    per_step(cpu_s) * 1e6,
                    per_step(gpu_s) * 1e6
                );
                let kept = if chosen == Backend::Cpu {
                    cpu_dec
                } else {
                    gpu_dec
                };
                (
                    kept,
                    Choice {
                        backend: chosen,
                        reason,
                        measured,
                    },
                )
            }
        })
    }

    /// One bin: see [`TebCpu::step`]. `x` must have the model's Dx values and `y` its Dy.
    pub fn step(&mut self, x: &[f32], y: &[f32], out: &mut StepOutput) -> Result<(), KernelError> {
        let (dx, dy) = match self {
            TebDecoder::Cpu(c) => (c.model().config.source_dim(), c.model().config.target_dim()),
            TebDecoder::Gpu(g) => g.dims(),
        };
        for (field, got, want) in [("source", x.len(), dx), ("target", y.len(), dy)] {
            if got != want {
                return Err(KernelError::Teb(format!(
                    "{got} {field} values for a model of {want} {field} columns"
                )));
            }
        }
        match self {
            TebDecoder::Cpu(c) => {
                out.prediction.resize(dy, 0.0);
                out.target_only.resize(dy, 0.0);
                c.step(x, y, out);
                Ok(())
            }
            TebDecoder::Gpu(g) => Ok(g.step(x, y, out)?),
        }
    }

    /// Zero recurrent state (at the start, and after a gap in the data).
    pub fn reset(&mut self) {
        match self {
            TebDecoder::Cpu(c) => c.reset(),
            TebDecoder::Gpu(g) => g.reset(),
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            TebDecoder::Cpu(_) => Backend::Cpu,
            TebDecoder::Gpu(g) => g.backend(),
        }
    }
}

/// Seconds for [`TRIAL_STEPS`] steps of `decoder` on synthetic inputs (after a warm-up), then
/// resets it. Inputs are the training statistics' mean ± 1.5 std, varying per column and step,
/// so the networks see values of the size they will see.
fn trial(decoder: &mut TebDecoder, model: &TebModel) -> Result<f64, KernelError> {
    let n = &model.config.normalisation;
    let wave = |mean: &[f32], std: &[f32], t: usize| -> Vec<f32> {
        mean.iter()
            .zip(std)
            .enumerate()
            .map(|(c, (m, s))| m + 1.5 * s * ((t * 31 + c * 7) as f32 * 0.37).sin())
            .collect()
    };
    // A few distinct inputs, made before timing so the trial times only the steps.
    let inputs: Vec<(Vec<f32>, Vec<f32>)> = (0..8)
        .map(|t| {
            (
                wave(&n.source_mean, &n.source_std, t),
                wave(&n.target_mean, &n.target_std, t),
            )
        })
        .collect();
    let mut out = StepOutput::for_model(model);
    let mut run = |steps: usize| -> Result<(), KernelError> {
        for (x, y) in inputs.iter().cycle().take(steps) {
            decoder.step(x, y, &mut out)?;
        }
        Ok(())
    };
    run(WARMUP_STEPS)?;
    let start = Instant::now();
    run(TRIAL_STEPS)?;
    let elapsed = start.elapsed().as_secs_f64();
    decoder.reset();
    Ok(elapsed)
}
