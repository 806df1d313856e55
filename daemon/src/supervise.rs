//! Supervision of component threads. A component that panics is contained: the panic is caught,
//! logged and counted (`neurod_component_errors_total{error_type="panic"}`), the component is
//! marked failed (`/status`, and `/healthz` answers 503), and every other component goes on.
//!
//! Nothing else is needed for the data paths around it: the component's inbox and output ports
//! are owned by the work that panicked, so unwinding drops them. A dropped inbox refuses further
//! batches (its producers forget it and a blocked producer wakes), and dropped ports end their
//! streams, so its consumers finish after what they already hold.
//!
//! **Test-only faults:** `NEUROD_FAULT_PANIC=<component id>:<N>` makes that component's thread
//! panic once it has counted N batches (received or sent), to test the above through the binary.
//! `NEUROD_FAULT_SLOW=<component id>:<ms>:<s>` makes it take `ms` milliseconds longer for each
//! batch it receives during its first `s` seconds: an overload of that component, to test that
//! the rest of the daemon rides it out and that it recovers.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use pipelines::metrics::{ComponentMetrics, ComponentState};

/// The environment variables of the test-only faults.
pub const FAULT_PANIC_ENV: &str = "NEUROD_FAULT_PANIC";
pub const FAULT_SLOW_ENV: &str = "NEUROD_FAULT_SLOW";

/// Runs one component's work on the current thread; `true` if it ended without failing.
pub fn run(metrics: &ComponentMetrics, work: impl FnOnce() -> bool) -> bool {
    if let Some(after) = fault_for(metrics.id()) {
        tracing::warn!(component = %metrics.id(), after_batches = after, "{FAULT_PANIC_ENV}: this component will panic (test-only fault)");
        pipelines::fault::arm_panic_after(after);
    }
    if let Some((per_batch, during)) = slowdown_for(metrics.id()) {
        tracing::warn!(component = %metrics.id(), ?per_batch, ?during, "{FAULT_SLOW_ENV}: this component is slowed down (test-only fault)");
        pipelines::fault::arm_slowdown(per_batch, during);
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

/// The slowdown `component` must take, if the fault names it.
fn slowdown_for(component: &str) -> Option<(Duration, Duration)> {
    let spec = std::env::var(FAULT_SLOW_ENV).ok()?;
    match parse_slowdown(&spec) {
        Some((id, per_batch, during)) => (id == component).then_some((per_batch, during)),
        None => {
            tracing::warn!(value = %spec, "{FAULT_SLOW_ENV} ignored: expected <component id>:<ms>:<s>");
            None
        }
    }
}

/// `"<id>:<ms>:<s>"` → (id, ms per batch, for s).
fn parse_slowdown(spec: &str) -> Option<(&str, Duration, Duration)> {
    let (rest, seconds) = spec.rsplit_once(':')?;
    let (id, ms) = rest.rsplit_once(':')?;
    let ms: f64 = ms.trim().parse().ok()?;
    let seconds: f64 = seconds.trim().parse().ok()?;
    let ok = |v: f64| (0.0..1e6).contains(&v);
    (ok(ms) && ok(seconds) && !id.is_empty()).then(|| {
        (
            id,
            Duration::from_secs_f64(ms / 1000.0),
            Duration::from_secs_f64(seconds),
        )
    })
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
        let ms = Duration::from_millis;
        assert_eq!(
            parse_slowdown("spikes:6.5:20"),
            Some(("spikes", Duration::from_micros(6500), ms(20_000)))
        );
        assert_eq!(parse_slowdown("a:b:1:2"), Some(("a:b", ms(1), ms(2000))));
        assert_eq!(parse_slowdown("spikes:6.5"), None);
        assert_eq!(parse_slowdown(":1:2"), None);
        assert_eq!(parse_slowdown("spikes:-1:2"), None);
        assert_eq!(parse_slowdown("spikes:NaN:2"), None);
    }
}
