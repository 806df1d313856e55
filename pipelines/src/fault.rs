//! Panics: turning a caught panic's payload into text, and a **test-only** fault that makes one
//! component panic, so that tests can check a panic is contained (the component is marked failed,
//! `/healthz` answers 503, every other component goes on).
//!
//! The fault is armed per thread by the daemon's supervision wrapper (`NEUROD_FAULT_PANIC`) and
//! fires from [`ComponentMetrics::received`](crate::metrics::ComponentMetrics::received) /
//! [`sent`](crate::metrics::ComponentMetrics::sent), which every component calls on its own
//! thread for each batch. Unarmed, a tick is one thread-local read.

use std::any::Any;
use std::cell::Cell;

thread_local! {
    /// Batches this thread may still count before the injected panic; `None`: no fault.
    static PANIC_AFTER: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Makes the current thread panic once it has counted `batches` more batches (received or sent).
pub fn arm_panic_after(batches: u64) {
    PANIC_AFTER.with(|c| c.set(Some(batches)));
}

/// Counts one batch on this thread; panics if an armed fault is due.
#[inline]
pub(crate) fn tick(component: &str) {
    PANIC_AFTER.with(|c| match c.get() {
        None => {}
        Some(0) => {
            c.set(None);
            panic!("NEUROD_FAULT_PANIC: injected panic in component `{component}`");
        }
        Some(n) => c.set(Some(n - 1)),
    });
}

/// The message of a caught panic (`panic!` with a literal or a formatted string), or `"panic"`.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn armed_thread_panics_after_its_batches_and_others_do_not() {
        let r = std::thread::spawn(|| {
            arm_panic_after(2);
            tick("x");
            tick("x");
            tick("x");
        })
        .join();
        let payload = r.expect_err("the third batch panics");
        assert_eq!(
            panic_message(payload.as_ref()),
            "NEUROD_FAULT_PANIC: injected panic in component `x`"
        );
        // Another thread is not armed.
        std::thread::spawn(|| (0..10).for_each(|_| tick("y")))
            .join()
            .expect("unarmed threads never panic");
    }
}
