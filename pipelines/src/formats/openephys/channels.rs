//! Channel kinds and µV-per-bit scales from the oebin's channel names and units.

use crate::stream::ChannelKind;

/// The kind of a channel from its name and its stream (see the module docs).
pub(super) fn channel_kind(channel: &str, stream: &str, is_nidaq: bool) -> ChannelKind {
    let u = channel.trim().to_ascii_uppercase();
    let s = stream.trim().to_ascii_uppercase();
    let lf_stream = s.ends_with("-LFP") || s.ends_with("-LF") || s.ends_with(".LFP");
    let digit_after = |p: &str| {
        u.strip_prefix(p)
            .is_some_and(|r| r.is_empty() || r.starts_with(|c: char| c.is_ascii_digit()))
    };
    if u.starts_with("LFP") || digit_after("LF") {
        ChannelKind::Lf
    } else if u.starts_with("AP") || u.starts_with("CH") {
        if lf_stream {
            ChannelKind::Lf
        } else {
            ChannelKind::Ap
        }
    } else if u.starts_with("AI") || u.starts_with("ADC") || u.starts_with("AUX") {
        ChannelKind::Analog
    } else if u.starts_with("DI")
        || u.starts_with("PFI")
        || u.starts_with("TTL")
        || u.contains("DIGITAL")
    {
        ChannelKind::Digital
    } else if u.starts_with("SY") {
        ChannelKind::Sync
    } else if is_nidaq {
        ChannelKind::Analog
    } else {
        ChannelKind::Ap
    }
}

/// µV per ADC step from `bit_volts` and `units` (see the module docs).
pub(super) fn uv_per_bit(kind: ChannelKind, units: &str, bit_volts: f64) -> Option<f64> {
    if !bit_volts.is_finite() || matches!(kind, ChannelKind::Digital | ChannelKind::Sync) {
        return None;
    }
    let u = units
        .trim()
        .replace(['\u{b5}', '\u{3bc}'], "u")
        .to_lowercase();
    match u.as_str() {
        "uv" => Some(bit_volts),
        "mv" => Some(bit_volts * 1e3),
        "v" => Some(bit_volts * 1e6),
        "" if kind == ChannelKind::Analog => Some(bit_volts * 1e6),
        "" => Some(bit_volts),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_kinds_and_units() {
        use ChannelKind::*;
        assert_eq!(channel_kind("AP12", "ProbeA-AP", false), Ap);
        assert_eq!(channel_kind("CH3", "ProbeA-LFP", false), Lf);
        assert_eq!(channel_kind("LFP3", "ProbeA", false), Lf);
        assert_eq!(channel_kind("AI0", "PXIe-6341", true), Analog);
        assert_eq!(channel_kind("DI0", "PXIe-6341", true), Digital);
        assert_eq!(channel_kind("ADC1", "Rhythm", false), Analog);
        assert_eq!(channel_kind("CH1", "Rhythm", false), Ap);
        assert_eq!(uv_per_bit(Ap, "", 0.05), Some(0.05));
        assert_eq!(uv_per_bit(Ap, "\u{b5}V", 0.195), Some(0.195));
        assert_eq!(uv_per_bit(Analog, "V", 0.5), Some(500_000.0));
        assert_eq!(uv_per_bit(Analog, "mV", 0.5), Some(500.0));
        assert_eq!(uv_per_bit(Digital, "", 1.0), None);
        assert_eq!(uv_per_bit(Ap, "furlongs", 1.0), None);
    }
}
