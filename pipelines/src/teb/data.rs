//! Source and target aligned on common bins: what `neurod train-teb` trains on.

use std::ops::Range;

use kernels::teb::model::StreamColumns;

/// Both streams on the same bins; only bins that both streams have are here.
#[derive(Debug, Clone, PartialEq)]
pub struct Aligned {
    pub source: StreamColumns,
    pub target: StreamColumns,
    pub bin_s: f64,
    /// Bin numbers ([`super::bins::bin_of`]), strictly increasing; a jump is a gap.
    pub bin_index: Vec<i64>,
    /// `bins × Dx`, row-major, raw units.
    pub x: Vec<f32>,
    /// `bins × Dy`, row-major, raw units.
    pub y: Vec<f32>,
}

impl Aligned {
    pub fn len(&self) -> usize {
        self.bin_index.len()
    }
    pub fn is_empty(&self) -> bool {
        self.bin_index.is_empty()
    }
    pub fn source_dim(&self) -> usize {
        self.source.columns.len()
    }
    pub fn target_dim(&self) -> usize {
        self.target.columns.len()
    }
    /// Runs of consecutive bins (no gap inside): the recurrent state starts afresh at each.
    pub fn segments(&self) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let mut start = 0;
        for i in 1..=self.bin_index.len() {
            if i == self.bin_index.len() || self.bin_index[i] != self.bin_index[i - 1] + 1 {
                out.push(start..i);
                start = i;
            }
        }
        out
    }
}
