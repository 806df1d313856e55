//! Pacing of sources: `realtime` emits data no faster than it was acquired, `max` as fast as the
//! consumers take it. Lag is how far the emitted data is behind the wall clock's schedule.

use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::component::Shutdown;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pace {
    #[default]
    Realtime,
    Max,
}

pub struct Pacer {
    pace: Pace,
    rate_hz: f64,
    start: Instant,
}

impl Pacer {
    pub fn new(pace: Pace, rate_hz: f64) -> Self {
        Pacer {
            pace,
            rate_hz,
            start: Instant::now(),
        }
    }

    /// Seconds of data in `samples`.
    fn data_time(&self, samples: u64) -> f64 {
        samples as f64 / self.rate_hz
    }

    /// Waits until `samples_emitted` samples are due. Returns `false` if shutdown fired.
    pub fn wait_for(&self, samples_emitted: u64, shutdown: &Shutdown) -> bool {
        if self.pace == Pace::Max {
            return !shutdown.is_triggered();
        }
        // Rates are checked where they are read (limits::check_rate); a schedule beyond what an
        // `Instant` can hold is still only waited for in steps, never a panic.
        let due = Duration::try_from_secs_f64(self.data_time(samples_emitted))
            .ok()
            .and_then(|d| self.start.checked_add(d));
        let now = Instant::now();
        match due {
            Some(due) if due > now => !shutdown.sleep(due - now),
            Some(_) => !shutdown.is_triggered(),
            None => {
                while !shutdown.sleep(Duration::from_secs(3600)) {}
                false
            }
        }
    }

    /// How far the data emitted so far lags the real-time schedule (0 when ahead, and under
    /// `max`, where there is no schedule).
    pub fn lag_seconds(&self, samples_emitted: u64) -> f64 {
        match self.pace {
            Pace::Max => 0.0,
            Pace::Realtime => {
                (self.start.elapsed().as_secs_f64() - self.data_time(samples_emitted)).max(0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realtime_waits_for_the_schedule() {
        let p = Pacer::new(Pace::Realtime, 1000.0);
        let t = Instant::now();
        assert!(p.wait_for(50, &Shutdown::new()));
        assert!(t.elapsed() >= Duration::from_millis(49));
    }

    #[test]
    fn an_unrepresentable_schedule_waits_without_panicking() {
        let p = Pacer::new(Pace::Realtime, 1e-30);
        let s = Shutdown::new();
        s.trigger();
        assert!(!p.wait_for(1_000, &s), "shutdown ends the wait");
        assert_eq!(p.lag_seconds(1_000), 0.0);
    }

    #[test]
    fn max_never_waits() {
        let p = Pacer::new(Pace::Max, 1.0);
        let t = Instant::now();
        assert!(p.wait_for(1_000_000, &Shutdown::new()));
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(p.lag_seconds(0), 0.0);
    }
}
