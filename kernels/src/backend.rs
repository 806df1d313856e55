//! Which backend a kernel-backed transform runs on: one rule for every one of them
//! (`spike_detect`, `roi_traces`, ...), so the choice is made, measured and reported alike.
//!
//! - `cpu`: the CPU twins.
//! - `gpu`: any Vulkan adapter, software ones (lavapipe) included; an error without one (the
//!   kernel tests use it).
//! - `hardware`: a hardware adapter, else the CPU.
//! - `auto` (the default): the fastest backend present for this workload (without a GPU device
//!   node, the CPU at once, see [`plan`]). Never a software adapter: lavapipe runs the kernels far slower than their CPU twins (the chain at about 1×
//!   real time on 2 cores against ~37×). With a hardware adapter, both run on the stream's own
//!   first seconds of data ([`Trial`]) and the faster is kept ([`decide`]): small channel counts
//!   can favour the CPU, where uploads and read-backs cost more than the work.

use std::sync::Arc;
use std::time::Instant;

use crate::chain::KernelError;
use crate::gpu::GpuContext;
use crate::Backend;

/// The `backend` option of a kernel-backed transform (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preference {
    /// The fastest present: never a software adapter; with a hardware one, measured.
    #[default]
    Auto,
    /// A hardware adapter, else the CPU.
    Hardware,
    /// Any adapter (lavapipe counts) or an error.
    Gpu,
    /// The CPU twins.
    Cpu,
}

/// What a preference comes to on this machine.
#[derive(Debug, Clone)]
pub enum Plan {
    /// The CPU twins, and why.
    Cpu(&'static str),
    /// This adapter, without measuring.
    Gpu(Arc<GpuContext>),
    /// Both this (hardware) adapter and the CPU, measured on the stream's data by a [`Trial`].
    Measure(Arc<GpuContext>),
}

/// The plan for `pref` with the process's adapter ([`crate::gpu::acquire`]).
pub fn plan(pref: Preference) -> Result<Plan, KernelError> {
    if pref == Preference::Cpu {
        return Ok(Plan::Cpu(resolve(pref, None)?.reason()));
    }
    // Without a hardware adapter, `auto` and `hardware` come to the CPU whatever opening one
    // would give: without a GPU device the Vulkan loader is not even started, else the adapters
    // are only listed, none is opened.
    if matches!(pref, Preference::Auto | Preference::Hardware) && !hardware_gpu_possible() {
        return Ok(Plan::Cpu(
            "no GPU device (no /dev/dri render node, /dev/nvidiactl or /dev/dxg)",
        ));
    }
    let present = crate::gpu::probe();
    if matches!(pref, Preference::Auto | Preference::Hardware) && present != Some(Backend::Gpu) {
        return Ok(Plan::Cpu(resolve(pref, present)?.reason()));
    }
    let ctx = crate::gpu::acquire();
    Ok(match resolve(pref, ctx.as_ref().map(|c| c.backend))? {
        Resolved::Cpu(why) => Plan::Cpu(why),
        Resolved::Gpu => match ctx {
            Some(ctx) => Plan::Gpu(ctx),
            None => return Err(KernelError::NoGpu),
        },
        Resolved::Measure => match ctx {
            Some(ctx) => Plan::Measure(ctx),
            None => return Err(KernelError::NoGpu),
        },
    })
}

/// Whether a hardware Vulkan driver could find a device here: it needs a kernel device, a DRM
/// render node (AMD, Intel, ...), NVIDIA's control device, or WSL's `/dev/dxg`. Without one only
/// a software adapter (lavapipe) can exist, and `auto` knows it without listing the adapters,
/// which loads lavapipe (LLVM: ~50 MB and tens of ms at start-up). True off Linux.
fn hardware_gpu_possible() -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    let render_node = std::fs::read_dir("/dev/dri").is_ok_and(|mut d| {
        d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("renderD")))
    });
    render_node
        || ["/dev/nvidiactl", "/dev/dxg"]
            .iter()
            .any(|p| std::path::Path::new(p).exists())
}

/// [`plan`] without the context: the rule alone, given the kind of adapter there is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    Cpu(&'static str),
    Gpu,
    Measure,
}

impl Resolved {
    fn reason(self) -> &'static str {
        match self {
            Resolved::Cpu(why) => why,
            Resolved::Gpu => "asked for",
            Resolved::Measure => "measured",
        }
    }
}

/// The rule of the module docs. `adapter`: the backend of the usable adapter, if any
/// (`Backend::Gpu` for hardware, `Backend::Lavapipe` for a software one).
pub fn resolve(pref: Preference, adapter: Option<Backend>) -> Result<Resolved, KernelError> {
    let hardware = adapter == Some(Backend::Gpu);
    Ok(match pref {
        Preference::Cpu => Resolved::Cpu("asked for"),
        Preference::Gpu if adapter.is_some() => Resolved::Gpu,
        Preference::Gpu => return Err(KernelError::NoGpu),
        Preference::Hardware if hardware => Resolved::Gpu,
        Preference::Auto if hardware => Resolved::Measure,
        Preference::Hardware | Preference::Auto if adapter.is_some() => {
            Resolved::Cpu("only a software GPU adapter, slower than the CPU")
        }
        Preference::Hardware | Preference::Auto => Resolved::Cpu("no usable GPU adapter"),
    })
}

/// What a backend cost on a stretch of a stream: `compute_s` of wall-clock work for `data_s`
/// seconds of data.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Figure {
    pub backend: Backend,
    pub compute_s: f64,
    pub data_s: f64,
}

impl Figure {
    /// Seconds of compute per second of data (below 1 keeps up with real time).
    pub fn cost(&self) -> f64 {
        if self.data_s > 0.0 {
            self.compute_s / self.data_s
        } else {
            f64::INFINITY
        }
    }
}

/// The backend with the lowest cost; the CPU when costs tie or none is a number (it is the
/// specification, and the one that needs no device).
pub fn decide(figures: &[Figure]) -> Backend {
    let mut best = Backend::Cpu;
    let mut best_cost = figures
        .iter()
        .find(|f| f.backend == Backend::Cpu)
        .map_or(f64::INFINITY, Figure::cost);
    for f in figures.iter().filter(|f| f.backend != Backend::Cpu) {
        if f.cost() < best_cost {
            best = f.backend;
            best_cost = f.cost();
        }
    }
    best
}

/// The outcome of a [`Trial`]: the backend kept and the figures that decided it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verdict {
    pub chosen: Backend,
    pub figures: Vec<Figure>,
    /// Why, in words (for the log).
    pub reason: String,
}

/// Measures the CPU and a GPU on the same data until each has done `window_s` seconds of it;
/// then [`Trial::verdict`] says which to keep. A GPU that fails drops out (the CPU wins).
#[derive(Debug, Clone)]
pub struct Trial {
    window_s: f64,
    figures: Vec<Figure>,
    dropped: Option<String>,
    rule: fn(&[Figure]) -> Backend,
}

impl Trial {
    /// A trial of the CPU against `gpu` (the adapter's backend) over `window_s` of data.
    pub fn new(gpu: Backend, window_s: f64) -> Self {
        let figure = |backend| Figure {
            backend,
            compute_s: 0.0,
            data_s: 0.0,
        };
        Trial {
            window_s,
            figures: vec![figure(Backend::Cpu), figure(gpu)],
            dropped: None,
            rule: decide,
        }
    }

    /// The same trial deciding by `rule` instead of [`decide`] (tests force a winner with it).
    pub fn with_rule(mut self, rule: fn(&[Figure]) -> Backend) -> Self {
        self.rule = rule;
        self
    }

    /// Runs `work` on `backend`'s behalf for `data_s` seconds of data, timing it.
    pub fn time<R>(&mut self, backend: Backend, data_s: f64, work: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        let r = work();
        self.record(backend, start.elapsed().as_secs_f64(), data_s);
        r
    }

    /// Adds measured work (for callers that time it themselves, and for tests).
    pub fn record(&mut self, backend: Backend, compute_s: f64, data_s: f64) {
        if let Some(f) = self.figures.iter_mut().find(|f| f.backend == backend) {
            f.compute_s += compute_s;
            f.data_s += data_s;
        }
    }

    /// The GPU failed: it leaves the trial, and the verdict is the CPU.
    pub fn drop_gpu(&mut self, why: String) {
        self.figures.retain(|f| f.backend == Backend::Cpu);
        self.dropped.get_or_insert(why);
    }

    /// The verdict once every backend has done the window (or the GPU dropped out).
    pub fn verdict(&self) -> Option<Verdict> {
        if let Some(why) = &self.dropped {
            return Some(Verdict {
                chosen: Backend::Cpu,
                figures: self.figures.clone(),
                reason: format!("the GPU failed during the trial: {why}"),
            });
        }
        if self.figures.iter().any(|f| f.data_s < self.window_s) {
            return None;
        }
        let chosen = (self.rule)(&self.figures);
        let costs: Vec<String> = self
            .figures
            .iter()
            .map(|f| format!("{} {:.4}", f.backend.as_str(), f.cost()))
            .collect();
        Some(Verdict {
            chosen,
            figures: self.figures.clone(),
            reason: format!(
                "fastest on {:.1} s of the stream (s of compute per s of data: {})",
                self.window_s,
                costs.join(", ")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(backend: Backend, compute_s: f64, data_s: f64) -> Figure {
        Figure {
            backend,
            compute_s,
            data_s,
        }
    }

    #[test]
    fn auto_never_takes_a_software_adapter() {
        let r = resolve(Preference::Auto, Some(Backend::Lavapipe)).unwrap();
        assert!(matches!(r, Resolved::Cpu(_)), "{r:?}");
        let r = resolve(Preference::Auto, None).unwrap();
        assert!(matches!(r, Resolved::Cpu(_)), "{r:?}");
        assert_eq!(
            resolve(Preference::Auto, Some(Backend::Gpu)).unwrap(),
            Resolved::Measure
        );
    }

    #[test]
    fn explicit_preferences_keep_their_meaning() {
        // `gpu`: any adapter, lavapipe included; an error without one.
        for a in [Backend::Gpu, Backend::Lavapipe] {
            assert_eq!(resolve(Preference::Gpu, Some(a)).unwrap(), Resolved::Gpu);
        }
        assert!(matches!(
            resolve(Preference::Gpu, None),
            Err(KernelError::NoGpu)
        ));
        // `hardware`: a hardware adapter without measuring, else the CPU.
        assert_eq!(
            resolve(Preference::Hardware, Some(Backend::Gpu)).unwrap(),
            Resolved::Gpu
        );
        for a in [Some(Backend::Lavapipe), None] {
            assert!(matches!(
                resolve(Preference::Hardware, a).unwrap(),
                Resolved::Cpu(_)
            ));
        }
        for a in [Some(Backend::Gpu), Some(Backend::Lavapipe), None] {
            assert!(matches!(
                resolve(Preference::Cpu, a).unwrap(),
                Resolved::Cpu(_)
            ));
        }
    }

    #[test]
    fn decide_keeps_the_lower_cost_and_the_cpu_on_ties() {
        let gpu_faster = [fig(Backend::Cpu, 0.2, 4.0), fig(Backend::Gpu, 0.05, 4.0)];
        assert_eq!(decide(&gpu_faster), Backend::Gpu);
        // Few channels: uploads and read-backs cost more than the work saved.
        let cpu_faster = [fig(Backend::Cpu, 0.01, 4.0), fig(Backend::Gpu, 0.08, 4.0)];
        assert_eq!(decide(&cpu_faster), Backend::Cpu);
        let tie = [fig(Backend::Cpu, 0.1, 2.0), fig(Backend::Gpu, 0.1, 2.0)];
        assert_eq!(decide(&tie), Backend::Cpu);
        // Costs are per second of data, not totals.
        let uneven = [fig(Backend::Cpu, 0.3, 6.0), fig(Backend::Gpu, 0.2, 2.0)];
        assert_eq!(decide(&uneven), Backend::Cpu);
        // A backend with no data measured never wins.
        let unmeasured = [fig(Backend::Cpu, 0.3, 6.0), fig(Backend::Gpu, 0.0, 0.0)];
        assert_eq!(decide(&unmeasured), Backend::Cpu);
        assert_eq!(decide(&[]), Backend::Cpu);
    }

    #[test]
    fn trial_waits_for_the_window_on_every_backend() {
        let mut t = Trial::new(Backend::Gpu, 2.0);
        t.record(Backend::Cpu, 0.1, 1.5);
        t.record(Backend::Gpu, 0.01, 1.5);
        assert_eq!(t.verdict(), None);
        t.record(Backend::Cpu, 0.05, 0.5);
        assert_eq!(t.verdict(), None, "the GPU has not done the window yet");
        t.record(Backend::Gpu, 0.01, 0.5);
        let v = t.verdict().expect("both did 2 s");
        assert_eq!(v.chosen, Backend::Gpu);
        assert_eq!(v.figures.len(), 2);
        assert!((v.figures[0].cost() - 0.075).abs() < 1e-12, "{v:?}");
        assert!((v.figures[1].cost() - 0.01).abs() < 1e-12, "{v:?}");
        assert!(v.reason.contains("gpu 0.0100"), "{}", v.reason);
    }

    #[test]
    fn a_failing_gpu_leaves_the_trial_to_the_cpu() {
        let mut t = Trial::new(Backend::Gpu, 2.0);
        t.record(Backend::Gpu, 0.001, 1.0);
        t.drop_gpu("device lost".into());
        let v = t.verdict().expect("decided at once");
        assert_eq!(v.chosen, Backend::Cpu);
        assert!(v.reason.contains("device lost"), "{}", v.reason);
        assert!(v.figures.iter().all(|f| f.backend == Backend::Cpu));
    }

    #[test]
    fn trial_times_the_work_it_runs() {
        let mut t = Trial::new(Backend::Gpu, 1.0);
        let r = t.time(Backend::Cpu, 1.0, || 7);
        assert_eq!(r, 7);
        t.time(Backend::Gpu, 1.0, || ());
        let v = t.verdict().expect("both did the window");
        assert!(v
            .figures
            .iter()
            .all(|f| f.compute_s >= 0.0 && f.data_s == 1.0));
    }
}
