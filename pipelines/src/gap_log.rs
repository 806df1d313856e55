//! Gaps in a live stream, logged at most once per [`GapLog::INTERVAL`] with what happened in
//! between. A consumer that falls behind for hours drops batches all along (counted per edge);
//! a warning per dropped batch would fill the disk with logs.

use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct GapLog {
    last: Option<Instant>,
    gaps: u64,
    samples: u64,
}

impl GapLog {
    pub const INTERVAL: Duration = Duration::from_secs(10);

    /// Notes a gap of `missing` samples. Returns the gaps and samples to log, since the last
    /// time it did, when it is time: at the first gap, then at most once per interval.
    pub fn note(&mut self, missing: u64) -> Option<(u64, u64)> {
        self.gaps += 1;
        self.samples += missing;
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Self::INTERVAL)
        {
            return None;
        }
        self.last = Some(now);
        let due = (self.gaps, self.samples);
        (self.gaps, self.samples) = (0, 0);
        Some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_gap_is_logged_then_the_rest_are_summed_until_the_interval_passes() {
        let mut log = GapLog::default();
        assert_eq!(log.note(300), Some((1, 300)));
        assert_eq!(log.note(300), None);
        assert_eq!(log.note(100), None);
        log.last = log.last.map(|t| t - GapLog::INTERVAL);
        assert_eq!(log.note(5), Some((3, 405)));
    }
}
