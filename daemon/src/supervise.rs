//! Supervision of component threads. A component that panics is contained: the panic is caught,
//! logged and counted (`neurod_component_errors_total{error_type="panic"}`), the component is
//! marked failed (`/status`, and `/healthz` answers 503), and every other component goes on.
//!
//! Nothing else is needed for the data paths around it: the component's inbox and output ports
//! are owned by the work that panicked, so unwinding drops them. A dropped inbox refuses further
//! batches (its producers forget it and a blocked producer wakes), and dropped ports end their
//! streams, so its consumers finish after what they already hold.
//!
//! **Test-only fault:** `NEUROD_FAULT_PANIC=<component id>:<N>` makes that component's thread
//! panic once it has counted N batches (received or sent), to test the above through the binary.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pipelines::metrics::{ComponentMetrics, ComponentState};

/// The environment variable of the test-only fault.
pub const FAULT_PANIC_ENV: &str = "NEUROD_FAULT_PANIC";

/// Runs one component's work on the current thread; `true` if it ended without failing.
pub fn run(metrics: &ComponentMetrics, work: impl FnOnce() -> bool) -> bool {
    if let Some(after) = fault_for(metrics.id()) {
        tracing::warn!(component = %metrics.id(), after_batches = after, "{FAULT_PANIC_ENV}: this component will panic (test-only fault)");
        pipelines::fault::arm_panic_after(after);
    }
    match catch_unwind(AssertUnwindSafe(work)) {
        Ok(ok) => ok,
        Err(payload) => {
            let message = pipelines::fault::panic_message(payload.as_ref());
            metrics.error("panic", "running", format!("panicked: {message}"));
            metrics.set_state(ComponentState::Failed);
            tracing::error!(component = %metrics.id(), panic = %message, "component panicked: marked failed, the others go on");
            false
        }
    }
}

/// The batch count after which `component` must panic, if the fault names it.
fn fault_for(component: &str) -> Option<u64> {
    let spec = std::env::var(FAULT_PANIC_ENV).ok()?;
    match parse_fault(&spec) {
        Some((id, after)) => (id == component).then_some(after),
        None => {
            tracing::warn!(value = %spec, "{FAULT_PANIC_ENV} ignored: expected <component id>:<batches>");
            None
        }
    }
}

/// `"<id>:<N>"` → (id, N); the id may itself contain `:`.
fn parse_fault(spec: &str) -> Option<(&str, u64)> {
    let (id, n) = spec.rsplit_once(':')?;
    Some((id, n.trim().parse().ok()?)).filter(|(id, _)| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipelines::metrics::Metrics;

    #[test]
    fn a_panic_is_counted_and_marks_the_component_failed() {
        let m = Metrics::new();
        let c = m.component("det", "transform", "spike_detect");
        assert!(!run(&c, || panic!("index out of bounds")));
        let s = c.status();
        assert_eq!(s.state, ComponentState::Failed);
        assert_eq!(
            s.last_error.as_deref(),
            Some("panicked: index out of bounds")
        );
        assert!(m.render().contains(
            r#"neurod_component_errors_total{component_id="det",error_type="panic",stage="running"} 1"#
        ));
        // Work that returns normally passes its result through.
        assert!(run(&m.component("ok", "sink", "store"), || true));
    }

    #[test]
    fn fault_spec_parses() {
        assert_eq!(parse_fault("store:5"), Some(("store", 5)));
        assert_eq!(parse_fault("a:b:0"), Some(("a:b", 0)));
        assert_eq!(parse_fault("store"), None);
        assert_eq!(parse_fault(":3"), None);
        assert_eq!(parse_fault("store:x"), None);
    }
}
