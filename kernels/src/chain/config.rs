//! What the chain does for one stream ([`ChainConfig`], with ALGORITHMS.md §2's defaults): its
//! checks (the bandpass design among them), and what the chain derives from it in samples and
//! channels (exclusion and dead time, the calibration and refresh windows, the median
//! reference's groups, the neighbours of local exclusion).

use super::KernelError;
use crate::detect::Neighbours;
use crate::filter::butter_bandpass;

/// Which median reference to subtract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reference {
    /// No reference.
    None,
    /// One median over all detect channels.
    Global,
    /// One median per shank, over that shank's detect channels.
    PerShank,
}

/// The chain's parameters for one stream; per-channel vectors have `n_channels` entries.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainConfig {
    pub n_channels: usize,
    pub sampling_hz: f64,
    pub band_hz: (f64, f64),
    /// Butterworth order (3 to 5 in ALGORITHMS.md); the bandpass has `order` sections.
    pub order: usize,
    pub reference: Reference,
    /// k: a candidate lies below −k·σ.
    pub threshold: f64,
    pub x_um: Vec<f64>,
    pub y_um: Vec<f64>,
    pub shank: Vec<u32>,
    pub radius_um: f64,
    /// Local exclusion ±window, rounded to whole samples.
    pub exclude_ms: f64,
    /// Per-channel dead time after a kept peak, rounded to whole samples (0 = none).
    pub dead_time_ms: f64,
    pub calibration_s: f64,
    /// Noise re-estimated every refresh_s over the last calibration_s; 0 = never.
    pub refresh_s: f64,
    pub uv_per_bit: Vec<f32>,
    /// false for sync/non-AP channels: never detected, not in the median.
    pub detect_channels: Vec<bool>,
}

/// ALGORITHMS.md §2 defaults.
pub const DEFAULT_BAND_HZ: (f64, f64) = (300.0, 6000.0);
pub const DEFAULT_ORDER: usize = 3;
pub const DEFAULT_THRESHOLD: f64 = 5.0;
pub const DEFAULT_RADIUS_UM: f64 = 50.0;
pub const DEFAULT_EXCLUDE_MS: f64 = 0.1;
pub const DEFAULT_CALIBRATION_S: f64 = 2.0;
/// Each refresh costs two exact medians per channel over the calibration window (~60–90 ms of
/// one core for 384 channels × 2 s, spread over 0.5 s of stream), so refreshing much more
/// often than this costs real time.
pub const DEFAULT_REFRESH_S: f64 = 60.0;
/// The longest the refresh work is spread over (see the module docs).
const REFRESH_SPREAD_S: f64 = 0.5;

impl ChainConfig {
    /// Defaults for `n_channels` on a single line 20 µm apart (tests and tools; real streams take
    /// their geometry from the probe), 1 µV per bit, all channels detected.
    pub fn with_defaults(n_channels: usize, sampling_hz: f64) -> Self {
        ChainConfig {
            n_channels,
            sampling_hz,
            band_hz: DEFAULT_BAND_HZ,
            order: DEFAULT_ORDER,
            reference: Reference::Global,
            threshold: DEFAULT_THRESHOLD,
            x_um: vec![0.0; n_channels],
            y_um: (0..n_channels).map(|c| 20.0 * c as f64).collect(),
            shank: vec![0; n_channels],
            radius_um: DEFAULT_RADIUS_UM,
            exclude_ms: DEFAULT_EXCLUDE_MS,
            dead_time_ms: 0.0,
            calibration_s: DEFAULT_CALIBRATION_S,
            refresh_s: DEFAULT_REFRESH_S,
            uv_per_bit: vec![1.0; n_channels],
            detect_channels: vec![true; n_channels],
        }
    }

    /// Every problem is reported at once, naming the field.
    pub fn validate(&self) -> Result<(), KernelError> {
        let mut problems: Vec<(&'static str, String)> = Vec::new();
        let n = self.n_channels;
        if n == 0 {
            problems.push(("n_channels", "must be at least 1".into()));
        }
        for (field, len) in [
            ("x_um", self.x_um.len()),
            ("y_um", self.y_um.len()),
            ("shank", self.shank.len()),
            ("uv_per_bit", self.uv_per_bit.len()),
            ("detect_channels", self.detect_channels.len()),
        ] {
            if len != n {
                problems.push((field, format!("has {len} entries for {n} channels")));
            }
        }
        if !self.detect_channels.iter().any(|&d| d) {
            problems.push(("detect_channels", "no channel to detect on".into()));
        }
        if !(self.sampling_hz.is_finite() && self.sampling_hz > 0.0) {
            problems.push((
                "sampling_hz",
                format!("{} is not a positive rate", self.sampling_hz),
            ));
        }
        if let Some(bad) = self
            .uv_per_bit
            .iter()
            .find(|v| !(v.is_finite() && **v != 0.0))
        {
            problems.push(("uv_per_bit", format!("{bad} is not a usable scale")));
        }
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            problems.push(("threshold", format!("{} must be positive", self.threshold)));
        }
        for (field, v) in [
            ("radius_um", self.radius_um),
            ("exclude_ms", self.exclude_ms),
            ("dead_time_ms", self.dead_time_ms),
            ("refresh_s", self.refresh_s),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                problems.push((field, format!("{v} must be zero or positive")));
            }
        }
        if !(self.calibration_s.is_finite() && self.calibration_s > 0.0)
            || self.calibration_samples() == 0
        {
            problems.push((
                "calibration_s",
                format!("{} s is not at least one sample", self.calibration_s),
            ));
        }
        if self.refresh_s > 0.0 && self.refresh_samples() == 0 {
            problems.push((
                "refresh_s",
                format!("{} s is less than one sample", self.refresh_s),
            ));
        }
        if let Err(e) =
            butter_bandpass(self.order, self.band_hz.0, self.band_hz.1, self.sampling_hz)
        {
            problems.push(("band_hz", e.to_string()));
        }
        match problems.len() {
            0 => Ok(()),
            1 => {
                let (field, problem) = problems.remove(0);
                Err(KernelError::Config { field, problem })
            }
            _ => Err(KernelError::Config {
                field: problems[0].0,
                problem: problems
                    .iter()
                    .map(|(f, p)| format!("`{f}`: {p}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            }),
        }
    }

    fn samples(&self, seconds: f64) -> u64 {
        let v = (seconds * self.sampling_hz).round();
        if v.is_finite() && v > 0.0 {
            v as u64
        } else {
            0
        }
    }

    /// `round(exclude_ms · fs / 1000)`: 3 at 30 kHz (SpikeInterface truncates, which gives 2 at
    /// NP's real 29 999.76 Hz; we round so the window does not depend on a rate's last digits).
    pub fn exclude_samples(&self) -> usize {
        self.samples(self.exclude_ms / 1000.0) as usize
    }

    pub fn dead_samples(&self) -> usize {
        self.samples(self.dead_time_ms / 1000.0) as usize
    }

    pub fn calibration_samples(&self) -> u64 {
        self.samples(self.calibration_s)
    }

    /// 0 = never.
    pub fn refresh_samples(&self) -> u64 {
        self.samples(self.refresh_s)
    }

    /// Samples after a refresh point at which the new thresholds apply.
    pub fn refresh_spread_samples(&self) -> u64 {
        self.samples(REFRESH_SPREAD_S)
            .clamp(1, self.refresh_samples().max(1))
    }

    /// The channels detected on, ascending.
    pub fn detect_list(&self) -> Vec<usize> {
        (0..self.n_channels)
            .filter(|&c| self.detect_channels.get(c).copied().unwrap_or(false))
            .collect()
    }

    /// Median reference groups: none, all detect channels, or detect channels per shank (by
    /// ascending shank id).
    pub fn reference_groups(&self) -> Vec<Vec<usize>> {
        let detect = self.detect_list();
        match self.reference {
            Reference::None => Vec::new(),
            Reference::Global => vec![detect],
            Reference::PerShank => {
                let mut shanks: Vec<u32> = detect.iter().map(|&c| self.shank[c]).collect();
                shanks.sort_unstable();
                shanks.dedup();
                shanks
                    .into_iter()
                    .map(|s| {
                        detect
                            .iter()
                            .copied()
                            .filter(|&c| self.shank[c] == s)
                            .collect()
                    })
                    .collect()
            }
        }
    }

    /// Neighbours within `radius_um` on the same shank, among the detect channels (other channels
    /// have no neighbours, not even themselves; they are never detected anyway).
    pub fn neighbours(&self) -> Neighbours {
        let lists: Vec<Vec<u32>> = if self.x_um.len() == self.n_channels
            && self.y_um.len() == self.n_channels
            && self.shank.len() == self.n_channels
        {
            let all =
                Neighbours::within_radius(&self.x_um, &self.y_um, &self.shank, self.radius_um);
            (0..self.n_channels)
                .map(|c| {
                    if self.detect_channels.get(c).copied().unwrap_or(false) {
                        all.of(c)
                            .iter()
                            .copied()
                            .filter(|&d| {
                                self.detect_channels
                                    .get(d as usize)
                                    .copied()
                                    .unwrap_or(false)
                            })
                            .collect()
                    } else {
                        Vec::new()
                    }
                })
                .collect()
        } else {
            vec![Vec::new(); self.n_channels]
        };
        Neighbours::from_lists(&lists)
    }
}
