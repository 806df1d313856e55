//! The `backend` option of every kernel-backed transform (`spike_detect`, `roi_traces`) and the
//! reports of what it came to, in one place; the rule itself is [`kernels::backend`]: `auto` is
//! the fastest backend present (never a software adapter; with a hardware GPU, GPU and CPU
//! measured on the stream's own first seconds), `hardware` a hardware adapter else the CPU, `gpu`
//! any adapter (lavapipe counts) or a configuration error, `cpu` the CPU twins.
//!
//! Reported as `neurod_kernel_backend{backend, component_id}` (1 for the backend in use), in
//! `/status`, in the log, and after a measurement as
//! `neurod_kernel_compute_seconds_per_data_second{backend, component_id, stream_id}`: the
//! figures that decided it.

use std::sync::OnceLock;

use kernels::backend::{Plan, Verdict};
use kernels::Backend;
use prometheus::{GaugeVec, Opts};

pub use kernels::backend::Preference;

use crate::metrics::{record_kernel_backend, shared_registry};

/// The plan for a transform's `backend`; the error names the transform (`prefix`).
pub fn plan(prefix: &str, pref: Preference) -> Result<Plan, String> {
    kernels::backend::plan(pref).map_err(|_| {
        format!(
            "{prefix}: `backend` = \"gpu\" but no usable GPU adapter was found (no Vulkan device with compute shaders, not even lavapipe); use \"auto\" to fall back to the CPU"
        )
    })
}

/// The backend a plan starts on (a measured plan starts on the CPU, whose output is used
/// during the trial).
pub fn starting_backend(plan: &Plan) -> Backend {
    match plan {
        Plan::Gpu(ctx) => ctx.backend,
        Plan::Cpu(_) | Plan::Measure(_) => Backend::Cpu,
    }
}

/// Reports the backend `component_id` runs on, and why.
pub fn report(component_id: &str, backend: Backend, reason: &str) {
    record_kernel_backend(component_id, backend.as_str());
    tracing::info!(component = %component_id, backend = backend.as_str(), reason, "kernel backend");
}

/// Reports a measured choice for one stream: the backend kept, and each backend's seconds of
/// compute per second of data.
pub fn report_verdict(component_id: &str, stream_id: &str, verdict: &Verdict) {
    record_kernel_backend(component_id, verdict.chosen.as_str());
    for f in &verdict.figures {
        cost_gauge()
            .with_label_values(&[f.backend.as_str(), component_id, stream_id])
            .set(f.cost());
    }
    tracing::info!(
        component = %component_id,
        stream = %stream_id,
        backend = verdict.chosen.as_str(),
        reason = %verdict.reason,
        "kernel backend chosen by measurement"
    );
}

fn cost_gauge() -> &'static GaugeVec {
    static GAUGE: OnceLock<GaugeVec> = OnceLock::new();
    GAUGE.get_or_init(|| {
        let g = GaugeVec::new(
            Opts::new(
                "neurod_kernel_compute_seconds_per_data_second",
                "Seconds of compute per second of data each backend took on a stream's first seconds, when `backend = \"auto\"` measured them.",
            ),
            &["backend", "component_id", "stream_id"],
        )
        .expect("valid metric definition");
        if let Err(e) = shared_registry().register(Box::new(g.clone())) {
            tracing::warn!(error = %e, "neurod_kernel_compute_seconds_per_data_second not registered");
        }
        g
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernels::backend::Figure;

    #[test]
    fn a_verdict_exports_the_backend_and_its_figures() {
        let verdict = Verdict {
            chosen: Backend::Gpu,
            figures: vec![
                Figure {
                    backend: Backend::Cpu,
                    compute_s: 0.5,
                    data_s: 4.0,
                },
                Figure {
                    backend: Backend::Gpu,
                    compute_s: 0.0625,
                    data_s: 4.0,
                },
            ],
            reason: "test".into(),
        };
        report_verdict("verdict_test", "probe0", &verdict);
        let text = crate::metrics::Metrics::new().render();
        for want in [
            r#"neurod_kernel_backend{backend="gpu",component_id="verdict_test"} 1"#,
            r#"neurod_kernel_compute_seconds_per_data_second{backend="cpu",component_id="verdict_test",stream_id="probe0"} 0.125"#,
            r#"neurod_kernel_compute_seconds_per_data_second{backend="gpu",component_id="verdict_test",stream_id="probe0"} 0.015625"#,
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
    }
}
