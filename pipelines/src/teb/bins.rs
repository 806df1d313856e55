//! Bins of a stream on the model's clock, the same live (`teb_decode`) and offline
//! (`neurod train-teb`), so a model sees in the daemon exactly what it was trained on.
//!
//! Bin `k` covers `[k·bin_s, (k+1)·bin_s)` of the stream's `time_s`; its value per column is the
//! mean of the rows whose `time_s` falls in it. A bin is complete when a row reaches its end:
//! with the row period known (`row_s`: 1/rate of a continuous stream, the bin width of a
//! `bin_features` stream, the period of a regular table), the row that covers the bin's last
//! instant closes it at once; without, the first row of a later bin does. Bins with no row are
//! simply absent: a gap, which the consumer sees in the indices and never fills in.

use arrow::datatypes::Schema;

use crate::stream::{keys, parse_rate, Layout};
use crate::transforms::bin_features::BIN_SAMPLES_KEY;

/// The row period a stream's schema declares, seconds: `neurod.bin_samples / neurod.sampling_hz`
/// for a `bin_features` table, `1 / neurod.sampling_hz` for any other stream that states a rate,
/// `None` without one (a bin then closes with the next bin's first row). Training and live
/// decoding both take it from here, so a bin closes at the same row in both.
pub fn row_period(schema: &Schema) -> Result<Option<f64>, String> {
    let md = schema.metadata();
    let Some(rate) = md.get(keys::SAMPLING_HZ) else {
        return Ok(None);
    };
    let rate = parse_rate(rate).map_err(|e| format!("`{}`: {e}", keys::SAMPLING_HZ))?;
    let layout = Layout::of(schema).unwrap_or(Layout::Table);
    let samples = match (layout, md.get(BIN_SAMPLES_KEY)) {
        (Layout::Table, Some(b)) => b
            .parse::<u32>()
            .ok()
            .filter(|b| *b > 0)
            .ok_or_else(|| format!("`{BIN_SAMPLES_KEY}` = {b:?} is not a positive integer"))?,
        _ => 1,
    };
    Ok(Some(f64::from(samples) / rate))
}

/// Tolerance on bin edges, in bins: `time_s` is a rounded `sample_index / rate`.
const EDGE_TOLERANCE: f64 = 1e-6;

/// The bin holding `time_s`.
pub fn bin_of(time_s: f64, bin_s: f64) -> i64 {
    (time_s / bin_s + EDGE_TOLERANCE).floor() as i64
}

/// A completed bin.
#[derive(Debug, Clone, PartialEq)]
pub struct Bin {
    pub index: i64,
    /// Mean of each column over the bin's rows.
    pub values: Vec<f32>,
    pub rows: u32,
}

/// What [`Binner::push`] refused.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Rows older than a bin already given out (time going backwards).
    pub late: u64,
    /// Rows with a value that is not finite (NaN, ±inf).
    pub not_finite: u64,
}

/// Accumulates rows of one stream into bins.
#[derive(Debug, Clone)]
pub struct Binner {
    bin_s: f64,
    row_s: Option<f64>,
    current: Option<i64>,
    sum: Vec<f64>,
    rows: u32,
    /// Bins before this one are complete (given out or empty).
    next_open: i64,
    pub refused: Refused,
}

impl Binner {
    pub fn new(bin_s: f64, row_s: Option<f64>, columns: usize) -> Self {
        Binner {
            bin_s,
            row_s: row_s.filter(|r| r.is_finite() && *r > 0.0),
            current: None,
            sum: vec![0.0; columns],
            rows: 0,
            next_open: i64::MIN,
            refused: Refused::default(),
        }
    }

    pub fn bin_s(&self) -> f64 {
        self.bin_s
    }

    /// Rows given as `time_s` and one slice per column (`columns[c][r]`); completed bins are
    /// appended to `out`.
    pub fn push(&mut self, time_s: &[f64], columns: &[&[f32]], out: &mut Vec<Bin>) {
        for (r, &t) in time_s.iter().enumerate() {
            if !t.is_finite()
                || columns
                    .iter()
                    .any(|c| !c.get(r).is_some_and(|v| v.is_finite()))
            {
                self.refused.not_finite += 1;
                continue;
            }
            let k = bin_of(t, self.bin_s);
            if k < self.next_open || self.current.is_some_and(|c| k < c) {
                self.refused.late += 1;
                continue;
            }
            if self.current.is_some_and(|c| k > c) {
                out.extend(self.close());
            }
            self.current = Some(k);
            for (s, c) in self.sum.iter_mut().zip(columns) {
                *s += c[r] as f64;
            }
            self.rows += 1;
            if let Some(row_s) = self.row_s {
                // This row reaches the bin's end: nothing more can fall in it.
                if bin_of(t + row_s, self.bin_s) > k {
                    out.extend(self.close());
                }
            }
        }
    }

    /// At the end of the input: the bin still open, if any, as it is.
    pub fn finish(&mut self) -> Option<Bin> {
        self.close()
    }

    fn close(&mut self) -> Option<Bin> {
        let index = self.current.take()?;
        let n = self.rows.max(1) as f64;
        let values = self.sum.iter().map(|s| (s / n) as f32).collect();
        self.sum.fill(0.0);
        let rows = std::mem::take(&mut self.rows);
        self.next_open = index + 1;
        Some(Bin {
            index,
            values,
            rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bins(b: &mut Binner, t: &[f64], v: &[f32]) -> Vec<Bin> {
        let mut out = Vec::new();
        b.push(t, &[v], &mut out);
        out
    }

    #[test]
    fn with_the_row_period_known_a_bin_leaves_with_its_last_row() {
        // 100 Hz rows into 20 ms bins: the row at 0.01 s ends bin 0.
        let mut b = Binner::new(0.02, Some(0.01), 1);
        assert!(bins(&mut b, &[0.0], &[1.0]).is_empty());
        let out = bins(&mut b, &[0.01, 0.02], &[3.0, 5.0]);
        assert_eq!(
            out,
            vec![Bin {
                index: 0,
                values: vec![2.0],
                rows: 2
            }]
        );
        // A bin_features row per bin (row_s = bin_s) leaves at once.
        let mut b = Binner::new(0.02, Some(0.02), 1);
        assert_eq!(bins(&mut b, &[0.04], &[7.0]).len(), 1);
    }

    #[test]
    fn without_it_the_next_bins_first_row_closes_a_bin_and_gaps_stay_gaps() {
        let mut b = Binner::new(0.02, None, 1);
        assert!(bins(&mut b, &[0.001, 0.015], &[1.0, 1.0]).is_empty());
        let out = bins(&mut b, &[0.101], &[4.0]);
        assert_eq!(out.iter().map(|b| b.index).collect::<Vec<_>>(), vec![0]);
        assert_eq!(b.finish().map(|b| b.index), Some(5));
    }

    #[test]
    fn late_and_non_finite_rows_are_counted_not_binned() {
        let mut b = Binner::new(0.02, Some(0.02), 1);
        bins(&mut b, &[0.02, 0.0, 0.04], &[1.0, 2.0, f32::NAN]);
        assert_eq!(
            b.refused,
            Refused {
                late: 1,
                not_finite: 1
            }
        );
    }
}
