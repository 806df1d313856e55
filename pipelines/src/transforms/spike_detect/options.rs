//! `spike_detect`'s options: parsing, the checks that report every problem at once, and the
//! chain configuration they make for one stream.

use kernels::chain::{
    ChainConfig, Reference, DEFAULT_CALIBRATION_S, DEFAULT_REFRESH_S, DEFAULT_THRESHOLD,
};
use serde::Deserialize;

use super::backend::Preference;
use crate::stream::{ChannelKind, ContinuousInfo};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ReferenceOption {
    #[default]
    Global,
    Shank,
    None,
}

// Threshold, calibration and refresh default to the chain's (ALGORITHMS.md §2); band, order,
// radius, exclusion and dead time are this transform's own, for causal filtering (module docs).
fn default_band() -> [f64; 2] {
    [250.0, 3000.0]
}
fn default_order() -> usize {
    1
}
fn default_dead_time_ms() -> f64 {
    2.0
}
fn default_threshold() -> f64 {
    DEFAULT_THRESHOLD
}
fn default_radius_um() -> f64 {
    60.0
}
fn default_exclude_ms() -> f64 {
    0.5
}
fn default_calibration_s() -> f64 {
    DEFAULT_CALIBRATION_S
}
fn default_refresh_s() -> f64 {
    DEFAULT_REFRESH_S
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Options {
    #[serde(default = "default_band")]
    band: [f64; 2],
    #[serde(default = "default_order")]
    order: usize,
    #[serde(default)]
    reference: ReferenceOption,
    #[serde(default = "default_threshold")]
    threshold: f64,
    #[serde(default = "default_radius_um")]
    radius_um: f64,
    #[serde(default = "default_exclude_ms")]
    pub(super) exclude_ms: f64,
    #[serde(default = "default_dead_time_ms")]
    dead_time_ms: f64,
    #[serde(default = "default_calibration_s")]
    calibration_s: f64,
    #[serde(default = "default_refresh_s")]
    refresh_s: f64,
    #[serde(default)]
    pub(super) backend: Preference,
}

/// Problems with a bandpass `band` and `order` (shared with `bin_features`); the upper edge
/// against Nyquist can only be checked once a stream's rate is known.
pub(crate) fn band_problems(band: [f64; 2], order: usize) -> Vec<String> {
    let mut out = Vec::new();
    let [low, high] = band;
    if !(low.is_finite() && high.is_finite() && low > 0.0 && low < high) {
        out.push(format!(
            "`band` = [{low}, {high}] must be two frequencies in Hz, 0 < low < high"
        ));
    }
    if !(1..=8).contains(&order) {
        out.push(format!("`order` = {order} must be between 1 and 8"));
    }
    out
}

impl Options {
    pub(super) fn problems(&self) -> Vec<String> {
        let mut out = band_problems(self.band, self.order);
        let mut check = |ok: bool, msg: String| {
            if !ok {
                out.push(msg);
            }
        };
        let t = self.threshold;
        check(
            t.is_finite() && t > 0.0,
            format!("`threshold` = {t} must be a positive multiple of the noise"),
        );
        let r = self.radius_um;
        check(
            r.is_finite() && r >= 0.0,
            format!("`radius_um` = {r} must be 0 or more"),
        );
        let e = self.exclude_ms;
        check(
            e.is_finite() && (0.0..=10.0).contains(&e),
            format!("`exclude_ms` = {e} must be between 0 and 10"),
        );
        let d = self.dead_time_ms;
        check(
            d.is_finite() && (0.0..=100.0).contains(&d),
            format!("`dead_time_ms` = {d} must be between 0 and 100"),
        );
        let c = self.calibration_s;
        check(
            c.is_finite() && c > 0.0 && c <= 600.0,
            format!("`calibration_s` = {c} must be above 0 and at most 600"),
        );
        let f = self.refresh_s;
        check(
            crate::limits::seconds(f).is_ok(),
            format!(
                "`refresh_s` = {f} must be 0 (never) or a number of seconds up to {:e}",
                crate::limits::MAX_SECONDS
            ),
        );
        out
    }

    fn reference(&self) -> Reference {
        match self.reference {
            ReferenceOption::Global => Reference::Global,
            ReferenceOption::Shank => Reference::PerShank,
            ReferenceOption::None => Reference::None,
        }
    }

    /// What the spikes stream's schema records about how it was made.
    pub(super) fn params_json(&self) -> String {
        serde_json::json!({
            "band_hz": self.band,
            "order": self.order,
            "reference": match self.reference {
                ReferenceOption::Global => "global",
                ReferenceOption::Shank => "shank",
                ReferenceOption::None => "none",
            },
            "threshold": self.threshold,
            "radius_um": self.radius_um,
            "exclude_ms": self.exclude_ms,
            "dead_time_ms": self.dead_time_ms,
            "calibration_s": self.calibration_s,
            "refresh_s": self.refresh_s,
        })
        .to_string()
    }
}

/// The chain's configuration for one stream. Channels without a position get one far from all
/// others, so local exclusion only looks at the channel itself; without µV per bit, ADC units.
pub(super) fn chain_config(o: &Options, info: &ContinuousInfo) -> Result<ChainConfig, String> {
    let n = info.channels.len();
    let detect: Vec<bool> = info
        .channels
        .iter()
        .map(|c| c.kind == ChannelKind::Ap)
        .collect();
    if !detect.iter().any(|d| *d) {
        return Err(format!(
            "none of its {n} channels is an `ap` channel, nothing to detect on"
        ));
    }
    let [low, high] = o.band;
    if high >= info.sampling_hz / 2.0 {
        return Err(format!(
            "`band` upper edge {high} Hz is not below the Nyquist frequency {} Hz of the stream",
            info.sampling_hz / 2.0
        ));
    }
    let mut unplaced = 0;
    let mut unscaled = 0;
    let (mut x_um, mut y_um, mut shank, mut uv_per_bit) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (i, (c, d)) in info.channels.iter().zip(&detect).enumerate() {
        match (c.x_um, c.y_um) {
            (Some(x), Some(y)) => {
                x_um.push(x);
                y_um.push(y);
            }
            _ => {
                unplaced += usize::from(*d);
                x_um.push(0.0);
                y_um.push(1e9 * (i + 1) as f64);
            }
        }
        shank.push(c.shank.unwrap_or(0));
        uv_per_bit.push(match c.uv_per_bit {
            Some(v) if v.is_finite() && v > 0.0 => v as f32,
            _ => {
                unscaled += usize::from(*d);
                1.0
            }
        });
    }
    if unplaced > 0 {
        tracing::warn!(stream = %info.stream_id, channels = unplaced, "AP channels without probe positions: local exclusion is per channel only");
    }
    if unscaled > 0 {
        tracing::warn!(stream = %info.stream_id, channels = unscaled, "AP channels without µV per bit: amplitudes are in ADC units");
    }
    Ok(ChainConfig {
        n_channels: n,
        sampling_hz: info.sampling_hz,
        band_hz: (low, high),
        order: o.order,
        reference: o.reference(),
        threshold: o.threshold,
        x_um,
        y_um,
        shank,
        radius_um: o.radius_um,
        exclude_ms: o.exclude_ms,
        dead_time_ms: o.dead_time_ms,
        calibration_s: o.calibration_s,
        refresh_s: o.refresh_s,
        uv_per_bit,
        detect_channels: detect,
    })
}
