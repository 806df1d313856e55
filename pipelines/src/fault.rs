//! Panics: turning a caught panic's payload into text, and **test-only** faults of one
//! component: a panic, so that tests can check a panic is contained (the component is marked
//! failed, `/healthz` answers 503, every other component goes on), and a slowdown, so that tests
//! can overload one component at will (its queue fills, drops are counted per edge, and it
//! catches up when the slowdown ends).
//!
//! The faults are armed per thread by the daemon's supervision wrapper (`NEUROD_FAULT_PANIC`,
//! `NEUROD_FAULT_SLOW`) and fire from
//! [`ComponentMetrics::received`](crate::metrics::ComponentMetrics::received) /
//! [`sent`](crate::metrics::ComponentMetrics::sent), which every component calls on its own
//! thread for each batch. Unarmed, a tick is a thread-local read or two.

use std::any::Any;
use std::cell::Cell;
use std::time::{Duration, Instant};

thread_local! {
    /// Batches this thread may still count before the injected panic; `None`: no fault.
    static PANIC_AFTER: Cell<Option<u64>> = const { Cell::new(None) };
    /// The delay per received batch, and until when; `None`: no fault.
    static SLOW: Cell<Option<(Duration, Instant)>> = const { Cell::new(None) };
}

/// Makes the current thread take `per_batch` longer for each batch it receives, for `during`.
pub fn arm_slowdown(per_batch: Duration, during: Duration) {
    SLOW.with(|c| c.set(Some((per_batch, Instant::now() + during))));
}

/// Delays this thread if an armed slowdown is on.
#[inline]
pub(crate) fn slow_tick() {
    SLOW.with(|c| {
        if let Some((delay, until)) = c.get() {
            if Instant::now() < until {
                std::thread::sleep(delay);
            } else {
                c.set(None);
            }
        }
    });
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
    fn an_armed_slowdown_delays_each_batch_until_it_ends() {
        std::thread::spawn(|| {
            arm_slowdown(Duration::from_millis(20), Duration::from_millis(100));
            let t = Instant::now();
            slow_tick();
            slow_tick();
            assert!(t.elapsed() >= Duration::from_millis(40), "each batch waits");
            std::thread::sleep(Duration::from_millis(100));
            slow_tick(); // past the end: disarms
            SLOW.with(|c| assert!(c.get().is_none(), "disarmed once over"));
        })
        .join()
        .unwrap();
        SLOW.with(|c| assert!(c.get().is_none(), "other threads are not slowed"));
    }

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
