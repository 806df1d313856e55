//! Bounds on numbers that come from outside (config files, file headers, clients' schemas),
//! checked where they are read, so that no later conversion (`Duration::from_secs_f64`, an
//! `as` cast, an allocation sized by a header) can panic, wrap or exhaust memory.

use std::time::Duration;

/// Slowest sampling or frame rate accepted: one sample every ~17 minutes.
pub const MIN_RATE_HZ: f64 = 1e-3;
/// Fastest sampling rate accepted (100 MHz, far above any electrophysiology or imaging rig).
pub const MAX_RATE_HZ: f64 = 1e8;
/// Longest duration option accepted, in seconds (~31 years; a `Duration` holds ~5·10¹¹ years).
pub const MAX_SECONDS: f64 = 1e9;
/// Largest read buffer of a file source's batch (64 MiB).
pub const MAX_BATCH_BYTES: usize = 64 << 20;
/// Most pixels in one frame (8192 × 8192, 128 MiB as Int16); also keeps `height · width` within
/// the `i32` of an Arrow fixed-size list.
pub const MAX_FRAME_PIXELS: usize = 1 << 26;

/// A sampling or frame rate, positive, finite and within [`MIN_RATE_HZ`]..=[`MAX_RATE_HZ`].
pub fn check_rate(hz: f64) -> Result<f64, String> {
    if hz.is_finite() && (MIN_RATE_HZ..=MAX_RATE_HZ).contains(&hz) {
        Ok(hz)
    } else {
        Err(format!(
            "a sampling rate must be between {MIN_RATE_HZ} and {MAX_RATE_HZ:e} Hz"
        ))
    }
}

/// A duration option in seconds: finite, 0 to [`MAX_SECONDS`].
pub fn seconds(value: f64) -> Result<Duration, String> {
    if value.is_finite() && (0.0..=MAX_SECONDS).contains(&value) {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(format!("must be between 0 and {MAX_SECONDS:e} seconds"))
    }
}

/// `height · width` of a frame, both positive and their product at most [`MAX_FRAME_PIXELS`].
pub fn frame_pixels(height: u64, width: u64) -> Result<usize, String> {
    match height.checked_mul(width) {
        Some(n) if height > 0 && width > 0 && n <= MAX_FRAME_PIXELS as u64 => Ok(n as usize),
        _ => Err(format!(
            "a frame of {height} × {width} pixels is outside 1..={MAX_FRAME_PIXELS} pixels"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_numbers_are_refused_and_ordinary_ones_kept() {
        for bad in [1e-30, 0.0, -5.0, f64::NAN, f64::INFINITY, 1e30] {
            assert!(check_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(check_rate(29999.757983), Ok(29999.757983));
        for bad in [1e30, -1.0, f64::NAN, f64::INFINITY] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
        assert_eq!(seconds(0.0), Ok(Duration::ZERO));
        assert_eq!(seconds(2.5), Ok(Duration::from_millis(2500)));
        assert_eq!(frame_pixels(512, 512), Ok(262_144));
        for (h, w) in [(0, 5), (u64::MAX, 2), (1 << 20, 1 << 20), (65_535, 65_535)] {
            assert!(frame_pixels(h, w).is_err(), "{h} × {w}");
        }
    }
}
