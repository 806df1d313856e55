//! Neuropixels electrode positions from the Record Node's `settings.xml`.

use std::path::Path;

use super::oebin::read_small;

/// Neuropixels probe geometry from the Record Node's settings.xml.
pub(super) struct Settings {
    probes: Vec<ProbeGeometry>,
}

pub(super) struct ProbeGeometry {
    /// `nodeId` of the PROCESSOR that holds the probe.
    node_id: Option<i64>,
    /// `custom_probe_name`, set by the user (or the serial number by default).
    custom_name: Option<String>,
    /// The basestation's name for the probe's port and dock (`port2dock1="ProbeB"`).
    port_names: Vec<String>,
    /// The processor's stream at the probe's index, where there is one stream per probe.
    index_name: Option<String>,
    pub(super) part_number: Option<String>,
    single_shank: bool,
    x: Vec<Option<f64>>,
    y: Vec<Option<f64>>,
    bank_shank: Vec<Option<String>>,
}

impl ProbeGeometry {
    pub(super) fn position(&self, i: usize) -> (Option<f64>, Option<f64>, Option<u32>) {
        let x = self.x.get(i).copied().flatten();
        let y = self.y.get(i).copied().flatten();
        if x.is_none() || y.is_none() {
            return (None, None, None);
        }
        // CHANNELS values are the bank, or "bank:shank" on multi-shank probes.
        let shank = match self.bank_shank.get(i).cloned().flatten() {
            Some(v) if v.contains(':') => v.rsplit(':').next().and_then(|s| s.trim().parse().ok()),
            _ if self.single_shank => Some(0),
            _ => None,
        };
        (x, y, shank)
    }
}

impl Settings {
    /// `None`: no settings file; `Some(Err)`: one that could not be read (a warning).
    pub(super) fn load(recording_dir: &Path) -> Option<Result<Settings, String>> {
        let experiment = recording_dir.parent()?;
        let node = experiment.parent()?;
        let n: Option<u32> = experiment
            .file_name()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("experiment"))
            .and_then(|s| s.parse().ok());
        let candidates = match n {
            Some(n) if n > 1 => vec![
                node.join(format!("settings_{n}.xml")),
                node.join("settings.xml"),
            ],
            _ => vec![node.join("settings.xml")],
        };
        let path = candidates.into_iter().find(|p| p.is_file())?;
        Some(Self::parse(&path).map_err(|why| {
            format!(
                "{}: {why}; electrode positions are not available",
                path.display()
            )
        }))
    }

    fn parse(path: &Path) -> Result<Settings, String> {
        let bytes = read_small(path).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&bytes);
        let doc = roxmltree::Document::parse(&text).map_err(|e| format!("not valid XML: {e}"))?;
        let mut probes = Vec::new();
        for proc in doc.descendants().filter(|n| n.has_tag_name("PROCESSOR")) {
            let np: Vec<_> = proc
                .descendants()
                .filter(|n| n.has_tag_name("NP_PROBE"))
                .collect();
            if np.is_empty() {
                continue;
            }
            let node_id = proc.attribute("nodeId").and_then(|v| v.trim().parse().ok());
            let stream_names: Vec<&str> = proc
                .children()
                .filter(|n| n.has_tag_name("STREAM"))
                .filter_map(|n| n.attribute("name"))
                .collect();
            let basestations: Vec<_> = proc
                .descendants()
                .filter(|n| n.has_tag_name("BASESTATION"))
                .collect();
            for (idx, p) in np.iter().enumerate() {
                let custom_name = p.attribute("custom_probe_name").map(str::to_string);
                let mut port_names = Vec::new();
                if let (Some(port), Some(dock)) = (p.attribute("port"), p.attribute("dock")) {
                    let key = format!("port{}dock{}", port.trim(), dock.trim());
                    for bs in &basestations {
                        let same_slot = match (bs.attribute("Slot"), p.attribute("slot")) {
                            (Some(a), Some(b)) => a.trim() == b.trim(),
                            _ => true,
                        };
                        if let (true, Some(n)) = (same_slot, bs.attribute(key.as_str())) {
                            port_names.push(n.to_string());
                        }
                    }
                }
                let index_name =
                    (stream_names.len() == np.len()).then(|| stream_names[idx].to_string());
                let table = |tag: &str| -> Vec<Option<String>> {
                    let Some(t) = p.children().find(|n| n.has_tag_name(tag)) else {
                        return Vec::new();
                    };
                    let mut v: Vec<Option<String>> = Vec::new();
                    for a in t.attributes() {
                        let Some(i) = a
                            .name()
                            .strip_prefix("CH")
                            .and_then(|s| s.parse::<usize>().ok())
                        else {
                            continue;
                        };
                        if i >= 1 << 16 {
                            continue;
                        }
                        if v.len() <= i {
                            v.resize(i + 1, None);
                        }
                        v[i] = Some(a.value().to_string());
                    }
                    v
                };
                let num = |v: Vec<Option<String>>| -> Vec<Option<f64>> {
                    v.into_iter()
                        .map(|s| {
                            s.and_then(|s| s.trim().parse::<f64>().ok())
                                .filter(|x| x.is_finite())
                        })
                        .collect()
                };
                let probe_name = p.attribute("probe_name").unwrap_or("").to_lowercase();
                let part_number = p
                    .attribute("probe_part_number")
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string);
                let single_shank = probe_name.contains("single shank")
                    || probe_name.contains("1.0")
                    || part_number.as_deref().is_some_and(|p| {
                        matches!(
                            p,
                            "NP2000" | "NP2003" | "NP2004" | "PRB2_1_2_0640_0" | "PRB2_1_4_0480_1"
                        ) || p.starts_with("PRB_1_")
                            || p.starts_with("NP1")
                    });
                probes.push(ProbeGeometry {
                    node_id,
                    custom_name,
                    port_names,
                    index_name,
                    part_number,
                    single_shank,
                    x: num(table("ELECTRODE_XPOS")),
                    y: num(table("ELECTRODE_YPOS")),
                    bank_shank: table("CHANNELS"),
                });
            }
        }
        Ok(Settings { probes })
    }

    /// The probe recorded as stream `name` (an `-AP`/`-LFP` suffix ignored).
    pub(super) fn probe_for(&self, name: &str, node_id: Option<i64>) -> Option<&ProbeGeometry> {
        let base = ["-AP", "-LFP", "-LF"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        let candidates = || {
            self.probes
                .iter()
                .filter(move |p| node_id.is_none() || p.node_id.is_none() || p.node_id == node_id)
        };
        let is = |n: &str| n == name || n == base;
        // The strongest evidence first: the user's name, the basestation's, then the order.
        candidates()
            .find(|p| p.custom_name.as_deref().is_some_and(is))
            .or_else(|| candidates().find(|p| p.port_names.iter().any(|n| is(n))))
            .or_else(|| candidates().find(|p| p.index_name.as_deref().is_some_and(is)))
            .filter(|p| !p.x.is_empty())
    }
}
