//! Neuropixels 1.0 contact geometry and the AP stream description of a simulated probe.
//!
//! Bank 0 of an NP1.0 probe, exactly as probeinterface reads it from a SpikeGLX meta: channel
//! `c` sits at x = 16, 48, 0, 32 µm (repeating every 4 channels) and y = 20 µm per pair of
//! channels from the tip, all on shank 0.

use crate::stream::{ChannelInfo, ChannelKind, ContinuousInfo};

/// AP channels of an NP1.0 probe (bank 0), without the sync word.
pub const NP1_CHANNELS: usize = 384;
/// NP1.0 AP µV per bit: 0.6 V range / 512 steps / gain 500 · 1e6, written as the exact decimal.
pub const NP1_UV_PER_BIT: f64 = 2.34375;
/// NP1.0 has a 10-bit ADC: raw AP values lie in -512..=511.
pub const NP1_ADC_MIN: i16 = -512;
pub const NP1_ADC_MAX: i16 = 511;
/// The imec sample rate of the simulated rig, exactly (a real probe's is calibrated, e.g.
/// 29999.757983; the simulator has no clock error to calibrate).
pub const SAMPLE_RATE_HZ: f64 = 30_000.0;
pub const SAMPLE_RATE_TEXT: &str = "30000";
/// SpikeGLX part number of an NP1.0 probe.
pub const NP1_PART_NUMBER: &str = "NP1000";
/// SpikeGLX puts the imec sync input in bit 6 of the SY word.
pub const SYNC_BIT_VALUE: i16 = 1 << 6;

const NP1_X_UM: [f64; 4] = [16.0, 48.0, 0.0, 32.0];
const NP1_ROW_PITCH_UM: f64 = 20.0;

/// Contact position (x, y) in µm of AP channel `channel` in bank 0.
pub fn np1_contact_um(channel: usize) -> (f64, f64) {
    (
        NP1_X_UM[channel % 4],
        (channel / 2) as f64 * NP1_ROW_PITCH_UM,
    )
}

/// The AP stream of one simulated NP1.0 probe: `AP0..AP383` then `SY0`.
pub fn ap_stream_info(stream_id: &str) -> ContinuousInfo {
    let mut channels: Vec<ChannelInfo> = (0..NP1_CHANNELS)
        .map(|c| {
            let (x, y) = np1_contact_um(c);
            ChannelInfo {
                name: format!("AP{c}"),
                kind: ChannelKind::Ap,
                uv_per_bit: Some(NP1_UV_PER_BIT),
                x_um: Some(x),
                y_um: Some(y),
                shank: Some(0),
            }
        })
        .collect();
    channels.push(ChannelInfo {
        name: "SY0".into(),
        kind: ChannelKind::Sync,
        uv_per_bit: None,
        x_um: None,
        y_um: None,
        shank: None,
    });
    ContinuousInfo {
        stream_id: stream_id.into(),
        stream_kind: "ap".into(),
        sampling_hz_text: SAMPLE_RATE_TEXT.into(),
        sampling_hz: SAMPLE_RATE_HZ,
        first_sample: 0,
        probe: Some(NP1_PART_NUMBER.into()),
        channels,
    }
}

/// The SY word at `sample`: a 1 Hz square wave (high for the first half of each second) in bit 6,
/// as a SpikeGLX imec stream records the rig's sync pulse.
pub fn sync_word(sample: i64) -> i16 {
    let half_period = (SAMPLE_RATE_HZ / 2.0) as i64;
    if (sample / half_period) % 2 == 0 {
        SYNC_BIT_VALUE
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn uv_per_bit_is_the_np1_formula() {
        assert!((0.6 / 512.0 / 500.0 * 1e6 - NP1_UV_PER_BIT).abs() < 1e-12);
        assert_eq!(NP1_UV_PER_BIT.to_string(), "2.34375");
    }

    #[test]
    fn contacts_follow_the_np1_checkerboard() {
        assert_eq!(np1_contact_um(0), (16.0, 0.0));
        assert_eq!(np1_contact_um(1), (48.0, 0.0));
        assert_eq!(np1_contact_um(2), (0.0, 20.0));
        assert_eq!(np1_contact_um(3), (32.0, 20.0));
        assert_eq!(np1_contact_um(383), (32.0, 3820.0));
    }

    #[test]
    fn sync_is_a_1hz_square_wave_in_bit_6() {
        assert_eq!(sync_word(0), 64);
        assert_eq!(sync_word(14_999), 64);
        assert_eq!(sync_word(15_000), 0);
        assert_eq!(sync_word(29_999), 0);
        assert_eq!(sync_word(30_000), 64);
    }

    /// The geometry must be what probeinterface reads from a real NP1.0 meta (bank 0).
    #[test]
    fn geometry_matches_probeinterface_on_a_real_np1_meta() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/spikeglx-meta/expected.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "{} is missing and CI is set",
                path.display()
            );
            eprintln!(
                "!!! SKIPPED: {} not found; NP1.0 geometry not checked against probeinterface",
                path.display()
            );
            return;
        };
        let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
        let meta = &expected["probeinterface/Noise_g0_t0.imec0.ap.meta"];
        let xs = meta["x_um"].as_array().unwrap();
        let ys = meta["y_um"].as_array().unwrap();
        let shanks = meta["shank"].as_array().unwrap();
        assert_eq!(xs.len(), NP1_CHANNELS);
        let info = ap_stream_info("p");
        for (c, ch) in info.channels.iter().take(NP1_CHANNELS).enumerate() {
            assert_eq!(ch.x_um, xs[c].as_f64(), "x of channel {c}");
            assert_eq!(ch.y_um, ys[c].as_f64(), "y of channel {c}");
            assert_eq!(ch.shank.map(u64::from), shanks[c].as_u64(), "shank of {c}");
        }
    }
}
