//! The POYO-SSL selection rule (ALGORITHMS.md §5): a neuron whose activity has skewness ≤ 3.51
//! and kurtosis ≤ 22.62 is "predictable" (pretraining data), otherwise "unpredictable"
//! (fine-tuning data). The paper does not say which kurtosis; excess (Fisher) is the default.

use serde::{Deserialize, Serialize};

use super::Moments;

/// Which kurtosis the threshold applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KurtosisConvention {
    /// Fisher's g2 = n·M4/M2² − 3 (scipy's default); 0 for a Gaussian.
    #[default]
    Excess,
    /// Pearson's n·M4/M2²; 3 for a Gaussian.
    Pearson,
}

/// The rule's thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoyoRule {
    pub max_skew: f64,
    pub max_kurtosis: f64,
    pub kurtosis: KurtosisConvention,
}

impl Default for PoyoRule {
    fn default() -> Self {
        PoyoRule {
            max_skew: 3.51,
            max_kurtosis: 22.62,
            kurtosis: KurtosisConvention::Excess,
        }
    }
}

/// A neuron's class under the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    Predictable,
    Unpredictable,
}

impl Label {
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Predictable => "predictable",
            Label::Unpredictable => "unpredictable",
        }
    }
}

impl PoyoRule {
    /// The kurtosis in this rule's convention, from Fisher's excess kurtosis.
    pub fn kurtosis_of(&self, excess_kurtosis: f64) -> f64 {
        match self.kurtosis {
            KurtosisConvention::Excess => excess_kurtosis,
            KurtosisConvention::Pearson => excess_kurtosis + 3.0,
        }
    }

    /// The label of a neuron with these statistics; `None` when they are undefined (NaN: a
    /// constant trace).
    pub fn label(&self, skew: f64, excess_kurtosis: f64) -> Option<Label> {
        let k = self.kurtosis_of(excess_kurtosis);
        if skew.is_nan() || k.is_nan() {
            return None;
        }
        Some(if skew <= self.max_skew && k <= self.max_kurtosis {
            Label::Predictable
        } else {
            Label::Unpredictable
        })
    }

    /// [`label`](Self::label) of a neuron's moments.
    pub fn label_moments(&self, m: &Moments) -> Option<Label> {
        self.label(m.skew(), m.excess_kurtosis())
    }
}
