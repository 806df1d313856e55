//! The channels of an NI-DAQ (`nidq`) stream: groups from `acqMnMaXaDw`, µV per bit from the
//! input range, `niMaxInt` and the MN/MA gains.

use crate::stream::ChannelInfo;

use super::meta_map::Ctx;
use super::saved_channels::{channel_name, classify, uv_per_bit, Group, Saved};
use super::MetaError;

/// NI-DAQ int16 full scale.
const NI_MAX_INT: f64 = 32768.0;

/// The saved NI-DAQ channels in file order.
pub(super) fn nidq_channels(cx: &Ctx, saved: &[Saved]) -> Result<Vec<ChannelInfo>, MetaError> {
    const GROUPS: [Group; 4] = [Group::Mn, Group::Ma, Group::Xa, Group::Xd];
    let classes = classify(cx, saved, &GROUPS, "acqMnMaXaDw", "snsMnMaXaDw")?;
    let range = cx.float("niAiRangeMax")?;
    // Newer metas state `niMaxInt`; it has always been the int16 full scale.
    let max_int = cx.float("niMaxInt")?.unwrap_or(NI_MAX_INT);
    let mn_gain = cx.float("niMNGain")?;
    let ma_gain = cx.float("niMAGain")?;
    Ok(saved
        .iter()
        .zip(classes)
        .map(|(s, (group, index))| {
            let gain = match group {
                Group::Mn => mn_gain,
                Group::Ma => ma_gain,
                Group::Xa => Some(1.0),
                _ => None,
            };
            ChannelInfo {
                name: channel_name(s, group, index),
                kind: group.kind(),
                uv_per_bit: uv_per_bit(range, Some(max_int), gain),
                x_um: None,
                y_um: None,
                shank: None,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use crate::formats::spikeglx::tests::parse_err;
    use crate::formats::spikeglx::SpikeGlxMeta;
    use crate::stream::ChannelKind;

    #[test]
    fn nidq_channels_from_counts() {
        let text = "typeThis=nidq\nniSampRate=25000\nniAiRangeMax=5\nniMNGain=200\nniMAGain=2\n\
                    acqMnMaXaDw=2,1,2,1\nsnsMnMaXaDw=1,1,2,1\nsnsSaveChanSubset=1:5\nnSavedChans=5\n";
        let m = SpikeGlxMeta::parse(text, "run_g0_t0.nidq.meta").unwrap();
        assert_eq!(m.stream_kind(), "nidq");
        let info = m.info("nidq").unwrap();
        assert_eq!(info.probe, None);
        let got: Vec<(&str, ChannelKind, Option<f64>)> = info
            .channels
            .iter()
            .map(|c| (c.name.as_str(), c.kind, c.uv_per_bit))
            .collect();
        let uv = |g: f64| Some(5.0 / 32768.0 / g * 1e6);
        assert_eq!(
            got,
            vec![
                ("MN1", ChannelKind::Analog, uv(200.0)),
                ("MA0", ChannelKind::Analog, uv(2.0)),
                ("XA0", ChannelKind::Analog, uv(1.0)),
                ("XA1", ChannelKind::Analog, uv(1.0)),
                ("XD0", ChannelKind::Digital, None),
            ]
        );
        assert!(info
            .channels
            .iter()
            .all(|c| c.x_um.is_none() && c.shank.is_none()));
        let e = parse_err(&text.replace("niSampRate=25000\n", ""), "d.nidq.meta");
        assert_eq!(e, "d.nidq.meta: `niSampRate` missing");
    }
}
