//! The row bookkeeping both detection chains share (see `chain`'s module docs), so that the CPU
//! and GPU chains split chunks, fill the ring and refresh σ at the same rows by construction:
//! [`RefreshSchedule`] (when calibration ends, which rows each window holds, when new thresholds
//! apply) and [`RowClock`] (rows seen, and the sample index of each row).

use crate::chain::ChainConfig;

/// Calibration and refresh points of a stream, in row counts since its start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RefreshSchedule {
    /// Rows of the calibration window (and of every refresh window).
    pub(crate) calibration: u64,
    /// Rows between refresh points; 0 = never.
    pub(crate) refresh: u64,
    /// Rows after a refresh point at which its thresholds apply (0 without refresh).
    pub(crate) spread: u64,
}

impl RefreshSchedule {
    pub(crate) fn new(cfg: &ChainConfig) -> Self {
        let refresh = cfg.refresh_samples();
        RefreshSchedule {
            calibration: cfg.calibration_samples(),
            refresh,
            spread: if refresh > 0 {
                cfg.refresh_spread_samples()
            } else {
                0
            },
        }
    }

    /// Rows of the ring that holds the windows: a window and the rows that arrive while it is
    /// being estimated.
    pub(crate) fn ring_samples(&self) -> u64 {
        self.calibration + self.spread
    }

    /// Whether row count `n` is copied into the ring: it belongs to the calibration window or
    /// to the window of the next refresh point.
    pub(crate) fn goes_to_ring(&self, n: u64) -> bool {
        n < self.calibration || self.in_refresh_window(n)
    }

    /// Whether row count `n` (≥ calibration) belongs to the window of the next refresh point.
    fn in_refresh_window(&self, n: u64) -> bool {
        if self.refresh == 0 {
            return false;
        }
        let j = (n - self.calibration) / self.refresh + 1;
        let r = self.calibration + j * self.refresh;
        n + self.calibration >= r
    }

    /// The refresh point R whose estimation is under way once `processed` rows have been seen:
    /// its window is complete (`processed > R`) and its apply point not reached
    /// (`processed < R + spread`; at the apply point the estimation was completed and used).
    pub(crate) fn refresh_in_progress(&self, processed: u64) -> Option<u64> {
        if self.refresh == 0 || processed <= self.calibration + self.refresh {
            return None;
        }
        let j = (processed - 1 - self.calibration) / self.refresh;
        let r = self.calibration + j * self.refresh;
        (processed > r && processed < r + self.spread).then_some(r)
    }

    /// The next row count after `n` at which thresholds change: the end of calibration until
    /// then, afterwards the next apply point (`u64::MAX` without refresh).
    pub(crate) fn next_event(&self, n: u64, calibrated: bool) -> u64 {
        if !calibrated {
            return self.calibration;
        }
        if self.refresh == 0 {
            return u64::MAX;
        }
        let first = self.calibration + self.refresh + self.spread;
        if n < first {
            return first;
        }
        let j = (n - first) / self.refresh + 1;
        first + j * self.refresh
    }

    /// The next segment of a chunk of `rows` rows whose row 0 has count `n0`, from its row `t`:
    /// the next event and the chunk row the segment ends at (the event or the chunk's end).
    pub(crate) fn segment(&self, n0: u64, t: usize, rows: usize, calibrated: bool) -> (u64, usize) {
        let n = n0 + t as u64;
        let event = self.next_event(n, calibrated);
        let end = if event > n {
            ((event - n0) as usize).min(rows)
        } else {
            rows
        };
        (event, end)
    }
}

/// Rows seen since the stream start and the sample index of each; a gap in the sample indices
/// starts a new contiguous run.
#[derive(Debug, Default)]
pub(crate) struct RowClock {
    /// Rows processed since the start of the stream.
    pub(crate) processed: u64,
    /// The next expected sample index.
    next_sample: Option<i64>,
    /// Sample index of row count 0 of the current run (sample = base + count).
    sample_base: i64,
    /// Sample index of the first row of each contiguous run in the calibration buffer:
    /// `(row count, sample index)`.
    calibration_runs: Vec<(u64, i64)>,
}

impl RowClock {
    /// Starts a chunk of `rows` rows from `first_sample` (warns about a gap) and returns the
    /// row count of its first row.
    pub(crate) fn start_chunk(&mut self, first_sample: i64, rows: usize, calibrated: bool) -> u64 {
        let n0 = self.processed;
        if self.next_sample != Some(first_sample) {
            if let Some(expected) = self.next_sample {
                // Debug only: the transform feeding the chain warns about gaps, rate-limited.
                tracing::debug!(
                    expected,
                    got = first_sample,
                    "detection chain: the stream skipped samples; filtering on as if contiguous, peak context restarts"
                );
            }
            self.sample_base = first_sample - n0 as i64;
            if !calibrated {
                self.calibration_runs.push((n0, first_sample));
            }
        }
        self.next_sample = Some(first_sample + rows as i64);
        n0
    }

    /// The sample index of row count `n` (of the current run).
    pub(crate) fn sample(&self, n: u64) -> i64 {
        self.sample_base + n as i64
    }

    /// The contiguous runs of the calibration rows `[0, rows)` as `(start, end, sample of
    /// start)`, forgotten here (calibration happens once).
    pub(crate) fn take_calibration_runs(&mut self, rows: u64) -> Vec<(u64, u64, i64)> {
        let runs = std::mem::take(&mut self.calibration_runs);
        let ends = runs.iter().skip(1).map(|r| r.0).chain([rows]);
        runs.iter()
            .zip(ends)
            .map(|(&(start, sample), end)| (start, end.min(rows), sample))
            .filter(|&(start, end, _)| start < end)
            .collect()
    }

    /// The stream ended: the next chunk starts a new run.
    pub(crate) fn end_stream(&mut self) {
        self.next_sample = None;
    }
}
