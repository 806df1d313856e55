//! Parsing `structure.oebin` into streams and channels, checking each stream's files on disk.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::channels::{channel_kind, uv_per_bit};
use super::sample_numbers::read_sample_numbers;
use super::settings_xml::Settings;
use super::{OebinError, OpenEphysRecording, OpenEphysStream};
use crate::stream::{parse_rate, ChannelInfo};

/// Larger files are not metadata: refuse to read them into memory.
const MAX_METADATA_BYTES: u64 = 64 << 20;

pub(super) fn read_small(path: &Path) -> Result<Vec<u8>, OebinError> {
    let io_err = |e| OebinError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let len = fs::metadata(path).map_err(io_err)?.len();
    if len > MAX_METADATA_BYTES {
        return Err(OebinError::Invalid {
            path: path.to_path_buf(),
            why: format!("{len} bytes is too large for a metadata file"),
        });
    }
    fs::read(path).map_err(io_err)
}

/// Prints a JSON number the way Python's `repr` (and the GUI) write it: shortest round-trip
/// decimal, with ".0" on whole numbers.
fn rate_text(v: f64) -> String {
    let s = v.to_string();
    if s.contains(['.', 'e', 'E']) || !v.is_finite() {
        s
    } else {
        s + ".0"
    }
}

pub(super) fn parse_recording(oebin_path: &Path) -> Result<OpenEphysRecording, OebinError> {
    let bytes = read_small(oebin_path)?;
    let root: Value = serde_json::from_slice(&bytes).map_err(|e| OebinError::Json {
        path: oebin_path.to_path_buf(),
        source: e,
    })?;
    let invalid = |why: String| OebinError::Invalid {
        path: oebin_path.to_path_buf(),
        why,
    };
    let obj = root
        .as_object()
        .ok_or_else(|| invalid("the top level is not a JSON object".into()))?;
    let dir = oebin_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let gui_version = obj
        .get("GUI version")
        .and_then(Value::as_str)
        .map(str::to_string);
    let continuous = match obj.get("continuous") {
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => return Err(invalid("`continuous` is not a list".into())),
        None => return Err(invalid("no `continuous` list".into())),
    };
    let settings = Settings::load(&dir);
    let mut warnings = Vec::new();
    if let Some(Err(w)) = &settings {
        warnings.push(w.clone());
    }
    let settings = settings.and_then(Result::ok);

    let mut streams = Vec::with_capacity(continuous.len());
    for (k, s) in continuous.iter().enumerate() {
        let stream = parse_stream(oebin_path, &dir, k, s, settings.as_ref(), &mut warnings)?;
        streams.push(stream);
    }
    for w in &warnings {
        tracing::warn!("{w}");
    }
    Ok(OpenEphysRecording {
        oebin_path: oebin_path.to_path_buf(),
        dir,
        streams,
        gui_version,
        warnings,
    })
}

fn parse_stream(
    oebin_path: &Path,
    dir: &Path,
    k: usize,
    s: &Value,
    settings: Option<&Settings>,
    warnings: &mut Vec<String>,
) -> Result<OpenEphysStream, OebinError> {
    let invalid = |why: String| OebinError::Invalid {
        path: oebin_path.to_path_buf(),
        why,
    };
    let at = |field: &str| format!("continuous[{k}].{field}");
    let s = s
        .as_object()
        .ok_or_else(|| invalid(format!("continuous[{k}] is not an object")))?;
    let folder_name = match s.get("folder_name") {
        Some(Value::String(f)) => f.trim().trim_end_matches(['/', '\\']).to_string(),
        Some(_) => return Err(invalid(format!("{} is not a string", at("folder_name")))),
        None => return Err(invalid(format!("{} is missing", at("folder_name")))),
    };
    if folder_name.is_empty() {
        return Err(invalid(format!("{} is empty", at("folder_name"))));
    }
    if Path::new(&folder_name)
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(invalid(format!(
            "{} = {folder_name:?} is not a folder name inside continuous/",
            at("folder_name")
        )));
    }
    let name = match s.get("stream_name") {
        Some(Value::String(n)) => n.clone(),
        // Before GUI 0.6 there were no stream names: the folder name says it.
        _ => folder_name.clone(),
    };
    let sampling_hz_text = match s.get("sample_rate") {
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) => rate_text(v),
            None => {
                return Err(invalid(format!(
                    "{} = {n} is not a number",
                    at("sample_rate")
                )))
            }
        },
        // Not what the GUI writes, but unambiguous: keep the text as written.
        Some(Value::String(t)) => t.trim().to_string(),
        Some(other) => {
            return Err(invalid(format!(
                "{} = {other} is not a number",
                at("sample_rate")
            )))
        }
        None => return Err(invalid(format!("{} is missing", at("sample_rate")))),
    };
    let sampling_hz = parse_rate(&sampling_hz_text)
        .map_err(|why| invalid(format!("{} = {sampling_hz_text}: {why}", at("sample_rate"))))?;
    let source_processor = s
        .get("source_processor_name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let source_id = s.get("source_processor_id").and_then(|v| match v {
        Value::Number(n) => n.as_i64(),
        Value::String(t) => t.trim().parse().ok(),
        _ => None,
    });

    let declared = match s.get("num_channels") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(n) => Some(n),
            None => {
                return Err(invalid(format!(
                    "{} = {v} is not a channel count",
                    at("num_channels")
                )))
            }
        },
    };
    let channel_values: &[Value] = match s.get("channels") {
        Some(Value::Array(a)) => a,
        None => &[],
        Some(_) => return Err(invalid(format!("{} is not a list", at("channels")))),
    };
    let n_channels = match declared {
        Some(n) if !channel_values.is_empty() && n != channel_values.len() as u64 => {
            return Err(invalid(format!(
                "{} = {n} but {} lists {} channels",
                at("num_channels"),
                at("channels"),
                channel_values.len()
            )))
        }
        Some(n) => n,
        None => channel_values.len() as u64,
    };
    if n_channels == 0 {
        return Err(invalid(format!("stream {name:?} has no channels")));
    }
    if n_channels > 1 << 20 {
        return Err(invalid(format!(
            "stream {name:?} claims {n_channels} channels"
        )));
    }

    let probe_geometry = settings.and_then(|st| st.probe_for(&name, source_id));
    let is_nidaq = source_processor.to_ascii_uppercase().contains("NI-DAQ");
    let mut channels = Vec::with_capacity(n_channels as usize);
    for i in 0..n_channels as usize {
        let c = channel_values.get(i).and_then(Value::as_object);
        if channel_values.get(i).is_some() && c.is_none() {
            return Err(invalid(format!(
                "{} is not an object",
                at(&format!("channels[{i}]"))
            )));
        }
        let ch_name = c
            .and_then(|c| c.get("channel_name"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("CH{}", i + 1));
        let bit_volts = match c.and_then(|c| c.get("bit_volts")) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(t)) => t.trim().parse::<f64>().ok(),
            Some(other) => {
                return Err(invalid(format!(
                    "{} = {other} is not a number",
                    at(&format!("channels[{i}].bit_volts"))
                )))
            }
        };
        let units = c
            .and_then(|c| c.get("units"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let kind = channel_kind(&ch_name, &name, is_nidaq);
        let uv_per_bit = bit_volts.and_then(|bv| uv_per_bit(kind, units, bv));
        let (x_um, y_um, shank) = probe_geometry
            .filter(|_| kind.is_electrode())
            .map(|p| p.position(i))
            .unwrap_or((None, None, None));
        channels.push(ChannelInfo {
            name: ch_name,
            kind,
            uv_per_bit,
            x_um,
            y_um,
            shank,
        });
    }

    let folder = dir.join("continuous").join(&folder_name);
    if !folder.is_dir() {
        return Err(OebinError::MissingStream {
            oebin: oebin_path.to_path_buf(),
            stream: name,
            missing: folder,
        });
    }
    let dat_path = folder.join("continuous.dat");
    let dat_len = match fs::metadata(&dat_path) {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => {
            return Err(OebinError::Invalid {
                path: dat_path,
                why: "is not a file".into(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(OebinError::MissingStream {
                oebin: oebin_path.to_path_buf(),
                stream: name,
                missing: dat_path,
            })
        }
        Err(e) => {
            return Err(OebinError::Io {
                path: dat_path,
                source: e,
            })
        }
    };
    let bps = n_channels * 2;
    let whole = dat_len / bps;
    let rest = dat_len % bps;
    if rest != 0 {
        warnings.push(format!(
            "{}: {dat_len} bytes is not a whole number of {n_channels}-channel samples \
             ({bps} bytes each): {whole} whole samples, the last {rest} bytes are a partial \
             sample (crashed or still recording) and are ignored",
            dat_path.display()
        ));
    }

    let npy_path = folder.join("sample_numbers.npy");
    let (first_sample, recorded_samples) = match read_sample_numbers(&npy_path) {
        Ok(sn) => (sn.first, Some(sn.count)),
        Err(_) => (None, None),
    };
    let finished = matches!(recorded_samples, Some(n) if n > 0);
    if let Some(n) = recorded_samples.filter(|_| finished) {
        if n != whole {
            warnings.push(format!(
                "{} lists {n} samples but {} holds {whole} whole samples",
                npy_path.display(),
                dat_path.display()
            ));
        }
    }

    Ok(OpenEphysStream {
        name,
        folder_name,
        dat_path,
        sampling_hz_text,
        sampling_hz,
        channels,
        first_sample,
        finished,
        recorded_samples,
        probe: probe_geometry.and_then(|p| p.part_number.clone()),
        source_processor,
    })
}

#[cfg(test)]
mod tests {
    use super::rate_text;

    #[test]
    fn rates_print_like_python_repr() {
        assert_eq!(rate_text(30000.0), "30000.0");
        assert_eq!(rate_text(29999.757983), "29999.757983");
    }
}
