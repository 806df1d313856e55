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
// The CPU twin is larger than the GPU handle; one decoder per stream, built once: not worth a Box.
#[allow(clippy::large_enum_variant)]
pub enum TebDecoder {
    Cpu(TebCpu),
    Gpu(GpuTeb),
}

impl TebDecoder {
    /// The decoder for `pref` (see the module docs). A GPU decoder that fails to build is an
    /// error with `gpu`; otherwise that, or a GPU failing during the `auto` trial, leaves the
    /// CPU (and the reason says why). Logs the choice.
    pub fn new(pref: Preference, model: &TebModel) -> Result<(TebDecoder, Choice), KernelError> {
        model.check_shapes().map_err(KernelError::Teb)?;
        let cpu = |reason: String| {
            (
                TebDecoder::Cpu(TebCpu::new(model)),
                Choice {
                    backend: Backend::Cpu,
                    reason,
                    measured: Vec::new(),
                },
            )
        };
        let build = |ctx: std::sync::Arc<GpuContext>| GpuTeb::new(ctx, model);
        let (decoder, choice) = match backend::plan(pref)? {
            Plan::Cpu(why) => cpu(why.to_string()),
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
                    Err(e) => cpu(format!("the GPU decoder failed to build: {e}")),
                }
            }
            Plan::Measure(ctx) => {
                let name = ctx.adapter_name.clone();
                match build(ctx) {
                    Ok(gpu) => measure(model, gpu, &name)?,
                    Err(e) => cpu(format!("the GPU decoder failed to build: {e}")),
                }
            }
        };
        tracing::info!(
            backend = choice.backend.as_str(),
            reason = %choice.reason,
            "TEB decoder backend"
        );
        Ok((decoder, choice))
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

/// The `auto` trial: the CPU twin and `gpu` each step the model, the faster is kept (reset).
/// A GPU that fails during the trial leaves the choice to the CPU.
fn measure(
    model: &TebModel,
    gpu: GpuTeb,
    adapter: &str,
) -> Result<(TebDecoder, Choice), KernelError> {
    let gpu_backend = gpu.backend();
    let (mut cpu, mut gpu) = (TebDecoder::Cpu(TebCpu::new(model)), TebDecoder::Gpu(gpu));
    let cpu_s = trial(&mut cpu, model)?;
    let gpu_s = match trial(&mut gpu, model) {
        Ok(s) => s,
        Err(e) => {
            return Ok((
                cpu,
                Choice {
                    backend: Backend::Cpu,
                    reason: format!("the GPU failed during the trial: {e}"),
                    measured: Vec::new(),
                },
            ))
        }
    };
    // `decide` compares cost per second of data; both ran the same steps of `bin_s`.
    let data_s = TRIAL_STEPS as f64 * model.config.bin_s;
    let figure = |backend, compute_s| Figure {
        backend,
        compute_s,
        data_s,
    };
    let chosen = backend::decide(&[figure(Backend::Cpu, cpu_s), figure(gpu_backend, gpu_s)]);
    let per_step = |s: f64| s / TRIAL_STEPS as f64;
    let reason = format!(
        "fastest over {TRIAL_STEPS} steps on synthetic inputs (µs per step: cpu {:.1}, {adapter} \
         {:.1})",
        per_step(cpu_s) * 1e6,
        per_step(gpu_s) * 1e6
    );
    let measured = vec![
        StepCost {
            backend: Backend::Cpu,
            seconds_per_step: per_step(cpu_s),
        },
        StepCost {
            backend: gpu_backend,
            seconds_per_step: per_step(gpu_s),
        },
    ];
    let kept = if chosen == Backend::Cpu { cpu } else { gpu };
    Ok((
        kept,
        Choice {
            backend: chosen,
            reason,
            measured,
        },
    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::teb::tests::{assert_close, dims, inputs, model};
    use crate::gpu::test_context;
    use rand::SeedableRng;

    /// Transforms run decoders on their own tasks.
    const _SEND: fn() = || {
        fn send<T: Send + 'static>() {}
        send::<TebDecoder>();
    };

    fn small() -> TebModel {
        model(dims(6, 2, 4, (5, 8, 3)), 41)
    }

    /// Steps `a` and `b` on the same random inputs and checks they agree (the GPU contract).
    fn agree(a: &mut TebDecoder, b: &mut TebDecoder, m: &TebModel, steps: usize, what: &str) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let (mut oa, mut ob) = (StepOutput::default(), StepOutput::default());
        for t in 0..steps {
            let (x, y) = inputs(m, &mut rng);
            a.step(&x, &y, &mut oa).unwrap();
            b.step(&x, &y, &mut ob).unwrap();
            assert_close(&oa, &ob, &format!("{what}, step {t}"));
        }
    }

    #[test]
    fn auto_never_takes_lavapipe() {
        // A missing adapter is a failure with NEUROD_REQUIRE_GPU=1 (test_context), else the
        // "no adapter" case of the rule is checked instead.
        let adapter = test_context().map(|c| c.backend);
        let m = small();
        let (dec, choice) = TebDecoder::new(Preference::Auto, &m).unwrap();
        assert_eq!(dec.backend(), choice.backend);
        match adapter {
            // Without a GPU device node the adapters are not even listed.
            Some(Backend::Lavapipe) => {
                assert_eq!(choice.backend, Backend::Cpu);
                let why = &choice.reason;
                assert!(
                    why.contains("software") || why.contains("no GPU device"),
                    "{why}"
                );
                assert!(choice.measured.is_empty(), "{choice:?}");
            }
            None => {
                assert_eq!(choice.backend, Backend::Cpu);
                let why = &choice.reason;
                assert!(
                    why.contains("no usable") || why.contains("no GPU device"),
                    "{why}"
                );
            }
            Some(hardware) => {
                // Measured (the trial's own test checks the figures).
                assert_eq!(choice.measured.len(), 2, "{choice:?}");
                assert!([Backend::Cpu, hardware].contains(&choice.backend));
            }
        }
    }

    #[test]
    fn cpu_and_gpu_preferences_give_those_backends_and_agree() {
        let m = small();
        let (mut cpu, choice) = TebDecoder::new(Preference::Cpu, &m).unwrap();
        assert_eq!(
            (cpu.backend(), choice.backend),
            (Backend::Cpu, Backend::Cpu)
        );
        let Some(ctx) = test_context() else { return };
        let (mut gpu, choice) = TebDecoder::new(Preference::Gpu, &m).unwrap();
        assert_eq!((gpu.backend(), choice.backend), (ctx.backend, ctx.backend));
        assert!(matches!(gpu, TebDecoder::Gpu(_)));
        agree(&mut gpu, &mut cpu, &m, 50, "gpu vs cpu decoder");
        // reset() zeroes both: they agree with fresh decoders from the first step on.
        gpu.reset();
        let (mut fresh, _) = TebDecoder::new(Preference::Cpu, &m).unwrap();
        agree(&mut gpu, &mut fresh, &m, 5, "after reset");
    }

    #[test]
    fn the_trial_keeps_the_faster_and_resets_what_it_keeps() {
        // `auto` only measures with a hardware adapter; the trial itself runs on any.
        let Some(ctx) = test_context() else { return };
        let m = small();
        let name = ctx.adapter_name.clone();
        let gpu = GpuTeb::new(ctx, &m).unwrap();
        let (mut kept, choice) = measure(&m, gpu, &name).unwrap();
        assert_eq!(kept.backend(), choice.backend);
        let [cpu_cost, gpu_cost] = choice.measured.as_slice() else {
            panic!("two costs: {choice:?}")
        };
        assert_eq!(cpu_cost.backend, Backend::Cpu);
        assert!(cpu_cost.seconds_per_step > 0.0 && gpu_cost.seconds_per_step > 0.0);
        let (faster, slower) = if choice.backend == Backend::Cpu {
            (cpu_cost, gpu_cost)
        } else {
            (gpu_cost, cpu_cost)
        };
        assert!(
            faster.seconds_per_step <= slower.seconds_per_step,
            "{choice:?}"
        );
        assert!(choice.reason.contains("µs per step"), "{}", choice.reason);
        eprintln!("trial: {}", choice.reason);
        let (mut fresh, _) = TebDecoder::new(Preference::Cpu, &m).unwrap();
        agree(
            &mut kept,
            &mut fresh,
            &m,
            5,
            "the kept decoder starts from zero state",
        );
    }

    #[test]
    fn bad_inputs_and_models_are_errors_not_panics() {
        let m = small();
        let (mut dec, _) = TebDecoder::new(Preference::Cpu, &m).unwrap();
        let mut out = StepOutput::default();
        let err = dec.step(&[0.0; 5], &[0.0; 2], &mut out).unwrap_err();
        assert!(err.to_string().contains("5 source values"), "{err}");
        assert!(dec.step(&[0.0; 6], &[0.0; 3], &mut out).is_err());
        // An empty output is sized by the step.
        dec.step(&[0.0; 6], &[0.0; 2], &mut out).unwrap();
        assert_eq!(out.prediction.len(), 2);
        let mut bad = m.clone();
        bad.weights.decoder.bias.push(0.0);
        let err = TebDecoder::new(Preference::Cpu, &bad)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("decoder.bias"), "{err}");
    }
}
