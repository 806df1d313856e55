//! Open Ephys binary format (ALGORITHMS.md §1; open-ephys gui-docs, "Binary format").
//!
//! A recording folder holds `structure.oebin` (JSON) that lists the continuous streams; each
//! stream's folder `continuous/<folder_name>/` holds `continuous.dat` (Int16 little endian,
//! interleaved by sample), `sample_numbers.npy` (int64) and `timestamps.npy` (float64). The GUI
//! writes the `.npy` headers only when recording stops, so a live or crashed recording has no
//! valid `sample_numbers.npy`: everything here relies on the oebin and `continuous.dat`, and only
//! reads the first sample number (and the fact that the file is complete) from the `.npy`.
//!
//! Conventions, and where they differ from other readers:
//! - Channel kinds come from the channel names: `AP*`/`CH*` extracellular channels are `ap`
//!   (`lf` in a stream whose name ends in `-LFP`), `LFP*` are `lf`, `AI*`/`ADC*`/`AUX*` are
//!   `analog`, `DI*`/`PFI*`/`TTL*` are `digital`, `SY*` is `sync`.
//! - `uv_per_bit` is `bit_volts` converted by the channel's `units`: µV (or `uV`) as is, `mV`
//!   ×1e3, `V` ×1e6. Empty units (what GUI 0.6 writes for every channel) mean µV for
//!   extracellular channels and V for analog inputs (NI-DAQ `AI*` write 0.000305 "volts per bit",
//!   10 V / 32767). Digital and sync channels have none.
//! - Electrode positions come from the Record Node's `settings.xml` (`settings_<N>.xml` for
//!   experiment N > 1), Neuropix-PXI `NP_PROBE` `ELECTRODE_XPOS`/`ELECTRODE_YPOS`, as written
//!   (µm). These are the plugin's own coordinates; probeinterface builds NP2.0 geometry from its
//!   probe library instead (x 0/32 for NP2000 where the plugin writes 8/40), so x can differ from
//!   probeinterface by a constant offset. Channel `i` of the stream is `CH{i}` there.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::stream::{parse_rate, ChannelInfo, ChannelKind, ContinuousInfo};

/// File name of the JSON description of one recording.
pub const OEBIN: &str = "structure.oebin";
/// How deep `open` looks below a folder for `structure.oebin` (Record Node / experiment / recording).
const SEARCH_DEPTH: usize = 4;
/// Larger files are not metadata: refuse to read them into memory.
const MAX_METADATA_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum OebinError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no Open Ephys recording at {}: {why}", .path.display())]
    NotFound { path: PathBuf, why: String },
    #[error("{} holds {} Open Ephys recordings, open one of them: {}", .path.display(), .found.len(), list_paths(.found))]
    SeveralRecordings { path: PathBuf, found: Vec<PathBuf> },
    #[error("{}: not valid JSON: {source}", .path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: {why}", .path.display())]
    Invalid { path: PathBuf, why: String },
    #[error("{}: stream {stream:?} is listed but {} does not exist", .oebin.display(), .missing.display())]
    MissingStream {
        oebin: PathBuf,
        stream: String,
        missing: PathBuf,
    },
    #[error("{}: no continuous stream named {asked:?}; streams: {}", .path.display(), .available.join(", "))]
    NoSuchStream {
        path: PathBuf,
        asked: String,
        available: Vec<String>,
    },
    #[error("{}: {} continuous streams, name one: {}", .path.display(), .available.len(), .available.join(", "))]
    SeveralStreams {
        path: PathBuf,
        available: Vec<String>,
    },
    #[error("{}: lists no continuous streams", .path.display())]
    NoStreams { path: PathBuf },
}

fn list_paths(paths: &[PathBuf]) -> String {
    let mut s = String::new();
    for (i, p) in paths.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{}", p.display());
    }
    s
}

/// One recording (one `structure.oebin`) and its continuous streams.
#[derive(Debug, Clone)]
pub struct OpenEphysRecording {
    pub oebin_path: PathBuf,
    /// The recording folder (the one holding `structure.oebin`).
    pub dir: PathBuf,
    pub streams: Vec<OpenEphysStream>,
    /// `GUI version` from the oebin, where given.
    pub gui_version: Option<String>,
    /// Things that did not stop the parse but a user should hear about (a partial last sample
    /// in a `continuous.dat`, sample counts that disagree, an unreadable settings.xml), each
    /// naming its file. Also logged with `tracing::warn!`.
    pub warnings: Vec<String>,
}

/// One continuous stream of a recording.
#[derive(Debug, Clone)]
pub struct OpenEphysStream {
    /// `stream_name`, e.g. "ProbeB" / "example_data".
    pub name: String,
    /// `folder_name` without its trailing '/', e.g. "Neuropix-PXI-100.ProbeB".
    pub folder_name: String,
    /// `.../continuous/<folder>/continuous.dat`.
    pub dat_path: PathBuf,
    /// The rate as the oebin writes it (a JSON number, printed back as its shortest exact
    /// decimal with Python's/JUCE's `.0` for whole numbers: "30000.0").
    pub sampling_hz_text: String,
    pub sampling_hz: f64,
    pub channels: Vec<ChannelInfo>,
    /// `sample_numbers.npy[0]` if that file is valid (absent/invalid while recording: None).
    pub first_sample: Option<i64>,
    /// `sample_numbers.npy` is valid and not empty, so the GUI stopped recording.
    pub finished: bool,
    /// Number of entries in `sample_numbers.npy` when it is valid.
    pub recorded_samples: Option<u64>,
    /// Probe part number from settings.xml (e.g. "NP2000"), for Neuropixels streams.
    pub probe: Option<String>,
    /// `source_processor_name`, e.g. "Neuropix-PXI", "NI-DAQmx", "File Reader".
    pub source_processor: String,
}

impl OpenEphysRecording {
    /// `path` is a structure.oebin, a recording folder (containing structure.oebin), or a higher
    /// folder (Record Node / experiment) that contains exactly one recording — if several, error
    /// listing them.
    pub fn open(path: &Path) -> Result<Self, OebinError> {
        let oebin_path = locate_oebin(path)?;
        parse_recording(&oebin_path)
    }

    /// Picks a stream by stream_name or folder_name (trailing '/' ignored); `None` = the only
    /// stream, else an error listing the names.
    pub fn stream(&self, name: Option<&str>) -> Result<&OpenEphysStream, OebinError> {
        let available = || {
            self.streams
                .iter()
                .map(|s| format!("{:?} ({})", s.name, s.folder_name))
                .collect::<Vec<_>>()
        };
        match name {
            None => match self.streams.as_slice() {
                [only] => Ok(only),
                [] => Err(OebinError::NoStreams {
                    path: self.oebin_path.clone(),
                }),
                _ => Err(OebinError::SeveralStreams {
                    path: self.oebin_path.clone(),
                    available: available(),
                }),
            },
            Some(asked) => {
                let want = asked.trim().trim_end_matches(['/', '\\']);
                self.streams
                    .iter()
                    .find(|s| s.name == want)
                    .or_else(|| self.streams.iter().find(|s| s.folder_name == want))
                    .ok_or_else(|| OebinError::NoSuchStream {
                        path: self.oebin_path.clone(),
                        asked: asked.to_string(),
                        available: available(),
                    })
            }
        }
    }
}

impl OpenEphysStream {
    /// The stream description (stream_kind "openephys"); `first_sample` is 0 while the
    /// recording has no valid `sample_numbers.npy`.
    pub fn info(&self, stream_id: &str) -> ContinuousInfo {
        ContinuousInfo {
            stream_id: stream_id.to_string(),
            stream_kind: "openephys".to_string(),
            sampling_hz_text: self.sampling_hz_text.clone(),
            sampling_hz: self.sampling_hz,
            first_sample: self.first_sample.unwrap_or(0),
            probe: self.probe.clone(),
            channels: self.channels.clone(),
        }
    }

    /// Bytes of one interleaved sample across all channels.
    pub fn bytes_per_sample(&self) -> u64 {
        self.channels.len() as u64 * 2
    }

    /// Whole samples in continuous.dat now (a partial last sample is not counted).
    pub fn samples_on_disk(&self) -> io::Result<u64> {
        let len = fs::metadata(&self.dat_path)?.len();
        Ok(len.checked_div(self.bytes_per_sample()).unwrap_or(0))
    }
}

/// Finds the one structure.oebin that `path` names or contains.
fn locate_oebin(path: &Path) -> Result<PathBuf, OebinError> {
    let meta = fs::metadata(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            OebinError::NotFound {
                path: path.to_path_buf(),
                why: "no such file or folder".into(),
            }
        } else {
            OebinError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    if meta.is_file() {
        return Ok(path.to_path_buf());
    }
    let direct = path.join(OEBIN);
    if direct.is_file() {
        return Ok(direct);
    }
    let mut found = Vec::new();
    // Report an unreadable top folder; unreadable subfolders are skipped by the search.
    fs::read_dir(path).map_err(|e| OebinError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    search_oebins(path, SEARCH_DEPTH, &mut found);
    found.sort();
    match found.len() {
        0 => Err(OebinError::NotFound {
            path: path.to_path_buf(),
            why: format!("no {OEBIN} in it or in its subfolders (searched {SEARCH_DEPTH} levels)"),
        }),
        1 => Ok(found.remove(0)),
        _ => Err(OebinError::SeveralRecordings {
            path: path.to_path_buf(),
            found: found
                .into_iter()
                .map(|p| p.parent().map(Path::to_path_buf).unwrap_or(p))
                .collect(),
        }),
    }
}

fn search_oebins(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) {
    if depth == 0 {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut subdirs = Vec::new();
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            let oebin = p.join(OEBIN);
            if oebin.is_file() {
                // A recording folder: its own subfolders hold data, not recordings.
                found.push(oebin);
            } else {
                subdirs.push(p);
            }
        }
    }
    for d in subdirs {
        search_oebins(&d, depth - 1, found);
    }
}

fn read_small(path: &Path) -> Result<Vec<u8>, OebinError> {
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

fn parse_recording(oebin_path: &Path) -> Result<OpenEphysRecording, OebinError> {
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
            .filter(|_| matches!(kind, ChannelKind::Ap | ChannelKind::Lf))
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

/// The kind of a channel from its name and its stream (see the module docs).
fn channel_kind(channel: &str, stream: &str, is_nidaq: bool) -> ChannelKind {
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
fn uv_per_bit(kind: ChannelKind, units: &str, bit_volts: f64) -> Option<f64> {
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

struct SampleNumbers {
    count: u64,
    first: Option<i64>,
}

/// Reads the length and first entry of a 1-D int64 `.npy`, checking that the header is complete
/// and the file holds exactly the data it announces (the GUI finalises it on stop).
fn read_sample_numbers(path: &Path) -> Result<SampleNumbers, String> {
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let file_len = f.metadata().map_err(|e| e.to_string())?.len();
    // Check the announced header length before letting ndarray-npy allocate it.
    let mut pre = [0u8; 12];
    let got = read_up_to(&mut f, &mut pre).map_err(|e| e.to_string())?;
    if got < 10 || &pre[..6] != b"\x93NUMPY" {
        return Err("not an .npy file".into());
    }
    let header_end = match pre[6] {
        1 => 10 + u64::from(u16::from_le_bytes([pre[8], pre[9]])),
        2 | 3 if got == 12 => {
            12 + u64::from(u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]))
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    if header_end > file_len {
        return Err("truncated .npy header".into());
    }
    f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let header =
        ndarray_npy::npy::header::Header::from_reader(&mut f).map_err(|e| e.to_string())?;
    let data_start = f.stream_position().map_err(|e| e.to_string())?;
    let count = match header.shape.as_slice() {
        [n] => *n as u64,
        other => return Err(format!("shape {other:?} is not one-dimensional")),
    };
    let expected = count
        .checked_mul(8)
        .and_then(|b| b.checked_add(data_start))
        .ok_or("shape overflows")?;
    if expected != file_len {
        return Err(format!(
            "{file_len} bytes but the header announces {count} int64 entries ({expected} bytes)"
        ));
    }
    let first = if count > 0 {
        let v = <i64 as ndarray_npy::ReadableElement>::read_to_end_exact_vec(
            (&mut f).take(8),
            &header.type_descriptor,
            1,
        )
        .map_err(|e| e.to_string())?;
        v.first().copied()
    } else {
        None
    };
    Ok(SampleNumbers { count, first })
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Neuropixels probe geometry from the Record Node's settings.xml.
struct Settings {
    probes: Vec<ProbeGeometry>,
}

struct ProbeGeometry {
    /// `nodeId` of the PROCESSOR that holds the probe.
    node_id: Option<i64>,
    /// `custom_probe_name`, set by the user (or the serial number by default).
    custom_name: Option<String>,
    /// The basestation's name for the probe's port and dock (`port2dock1="ProbeB"`).
    port_names: Vec<String>,
    /// The processor's stream at the probe's index, where there is one stream per probe.
    index_name: Option<String>,
    part_number: Option<String>,
    single_shank: bool,
    x: Vec<Option<f64>>,
    y: Vec<Option<f64>>,
    bank_shank: Vec<Option<String>>,
}

impl ProbeGeometry {
    fn position(&self, i: usize) -> (Option<f64>, Option<f64>, Option<u32>) {
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
    fn load(recording_dir: &Path) -> Option<Result<Settings, String>> {
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
    fn probe_for(&self, name: &str, node_id: Option<i64>) -> Option<&ProbeGeometry> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::batch_from_interleaved;
    use arrow::array::{Array, Int16Array, Int64Array};

    fn data_dir() -> Option<PathBuf> {
        let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
        if d.join("openephys-16ch-40khz").is_dir() && d.join("openephys-np2-snippets").is_dir() {
            return Some(d);
        }
        if std::env::var_os("CI").is_some() {
            panic!("test data missing at {} (CI is set)", d.display());
        }
        eprintln!(
            "\n!!!!!!!! SKIPPED: Open Ephys test data not found under {} !!!!!!!!\n",
            d.display()
        );
        None
    }

    fn oebin_json(path: &Path) -> Value {
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    /// Checks a stream against the oebin, independently parsed, and the file bytes.
    fn check_stream(rec: &OpenEphysRecording, s: &OpenEphysStream, oebin: &Value) {
        let entry = oebin["continuous"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["folder_name"].as_str().unwrap().trim_end_matches('/') == s.folder_name)
            .unwrap_or_else(|| panic!("{} not in oebin", s.folder_name));
        assert_eq!(entry["stream_name"].as_str().unwrap(), s.name);
        let rate = entry["sample_rate"].as_f64().unwrap();
        assert_eq!(s.sampling_hz, rate);
        assert_eq!(s.sampling_hz_text.parse::<f64>().unwrap(), rate);
        let chans = entry["channels"].as_array().unwrap();
        assert_eq!(chans.len() as u64, entry["num_channels"].as_u64().unwrap());
        assert_eq!(s.channels.len(), chans.len());
        let nidaq = entry["source_processor_name"]
            .as_str()
            .unwrap()
            .contains("NI-DAQ");
        for (c, e) in s.channels.iter().zip(chans) {
            assert_eq!(c.name, e["channel_name"].as_str().unwrap());
            let bv = e["bit_volts"].as_f64().unwrap();
            let want = if nidaq { bv * 1e6 } else { bv };
            assert_eq!(c.uv_per_bit, Some(want), "{}", c.name);
        }

        let info = s.info("oe0");
        assert_eq!(info.stream_kind, "openephys");
        assert_eq!(info.stream_id, "oe0");
        assert_eq!(info.channels, s.channels);
        assert_eq!(info.sampling_hz, rate);

        // Independent reads of the files.
        let folder = rec.dir.join("continuous").join(&s.folder_name);
        assert_eq!(s.dat_path, folder.join("continuous.dat"));
        let bytes = fs::read(&s.dat_path).unwrap();
        let sn: ndarray::Array1<i64> =
            ndarray_npy::read_npy(folder.join("sample_numbers.npy")).unwrap();
        let n_ch = chans.len();
        assert_eq!(bytes.len() % (2 * n_ch), 0);
        let total = (bytes.len() / (2 * n_ch)) as u64;
        assert_eq!(total, sn.len() as u64, "samples vs sample_numbers.npy");
        assert_eq!(s.samples_on_disk().unwrap(), total);
        assert_eq!(s.first_sample, Some(sn[0]));
        assert_eq!(info.first_sample, sn[0]);
        assert!(s.finished);
        assert_eq!(s.recorded_samples, Some(sn.len() as u64));

        // Bit-exact: batches of an odd size, every value against the raw bytes.
        let schema = info.schema();
        let chunk_samples = 7777usize;
        let mut seen = 0u64;
        for (ci, chunk) in bytes.chunks(chunk_samples * 2 * n_ch).enumerate() {
            let first = (ci * chunk_samples) as i64;
            let batch = batch_from_interleaved(&schema, first, chunk).unwrap();
            let idx = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            for r in 0..batch.num_rows() {
                assert_eq!(idx.value(r), first + r as i64);
            }
            for c in 0..n_ch {
                let col = batch
                    .column(c + 1)
                    .as_any()
                    .downcast_ref::<Int16Array>()
                    .unwrap();
                assert_eq!(col.null_count(), 0);
                for r in 0..batch.num_rows() {
                    let off = ((first as usize + r) * n_ch + c) * 2;
                    let want = (bytes[off] as i16) | ((bytes[off + 1] as i16) << 8);
                    assert_eq!(
                        col.value(r),
                        want,
                        "sample {} channel {c}",
                        first as usize + r
                    );
                }
            }
            seen += batch.num_rows() as u64;
        }
        assert_eq!(seen, total);
    }

    #[test]
    fn sixteen_channel_recording_reads_bit_exact() {
        let Some(data) = data_dir() else { return };
        let top = data.join("openephys-16ch-40khz");
        let rec_dir = top.join("experiment1/recording1");
        let oebin_path = rec_dir.join(OEBIN);
        // Top folder, recording folder and the oebin itself all open the same recording.
        let rec = OpenEphysRecording::open(&top).unwrap();
        assert_eq!(rec.oebin_path, oebin_path);
        assert_eq!(rec.dir, rec_dir);
        for p in [&rec_dir, &oebin_path, &top.join("experiment1")] {
            let other = OpenEphysRecording::open(p).unwrap();
            assert_eq!(other.oebin_path, oebin_path);
        }
        assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
        assert_eq!(rec.gui_version.as_deref(), Some("0.6.7"));
        assert_eq!(rec.streams.len(), 1);
        let s = rec.stream(None).unwrap();
        assert_eq!(s.name, "example_data");
        assert_eq!(s.folder_name, "File_Reader-100.example_data");
        assert_eq!(
            rec.stream(Some("File_Reader-100.example_data/"))
                .unwrap()
                .name,
            "example_data"
        );
        assert_eq!(
            rec.stream(Some("example_data")).unwrap().name,
            "example_data"
        );
        assert_eq!(s.sampling_hz, 40000.0);
        assert_eq!(s.sampling_hz_text, "40000.0");
        assert_eq!(s.channels.len(), 16);
        assert_eq!(s.samples_on_disk().unwrap(), 133_120);
        for (i, c) in s.channels.iter().enumerate() {
            assert_eq!(c.name, format!("CH{}", i + 1));
            assert_eq!(c.kind, ChannelKind::Ap);
            // units "" and bit_volts 0.05: µV per bit.
            assert_eq!(c.uv_per_bit, Some(0.05000000074505806));
            assert_eq!((c.x_um, c.y_um, c.shank), (None, None, None));
        }
        assert_eq!(s.probe, None);
        check_stream(&rec, s, &oebin_json(&oebin_path));
    }

    #[test]
    fn neuropixels_multi_experiment_streams_read_bit_exact() {
        let Some(data) = data_dir() else { return };
        let node = data.join("openephys-np2-snippets/Record Node 101");
        // The Record Node holds three recordings: opening it names them all.
        let e = OpenEphysRecording::open(&node).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(&e, OebinError::SeveralRecordings { found, .. } if found.len() == 3),
            "{msg}"
        );
        for x in ["experiment1", "experiment3", "experiment6"] {
            assert!(msg.contains(x), "{msg}");
        }
        for x in ["experiment1", "experiment3", "experiment6"] {
            let rec = OpenEphysRecording::open(&node.join(x)).unwrap();
            assert_eq!(rec.dir, node.join(x).join("recording1"));
            assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
            let oebin = oebin_json(&rec.oebin_path);
            let names: Vec<_> = rec.streams.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["ProbeB", "ProbeC", "PXIe-6341"]);

            let e = rec.stream(None).unwrap_err().to_string();
            assert!(
                e.contains("ProbeB") && e.contains("PXIe-6341") && e.contains(OEBIN),
                "{e}"
            );
            let e = rec.stream(Some("ProbeZ")).unwrap_err().to_string();
            assert!(e.contains("ProbeZ") && e.contains("ProbeC"), "{e}");
            assert_eq!(
                rec.stream(Some("Neuropix-PXI-100.ProbeC/")).unwrap().name,
                "ProbeC"
            );

            for s in &rec.streams {
                check_stream(&rec, s, &oebin);
                assert_eq!(s.sampling_hz_text, "30000.0");
            }
            for probe in ["ProbeB", "ProbeC"] {
                let s = rec.stream(Some(probe)).unwrap();
                assert_eq!(s.channels.len(), 384);
                assert_eq!(s.samples_on_disk().unwrap(), 100);
                assert_eq!(s.probe.as_deref(), Some("NP2000"));
                assert!(s.channels.iter().all(|c| c.kind == ChannelKind::Ap));
                assert!(s
                    .channels
                    .iter()
                    .all(|c| (c.uv_per_bit.unwrap() - 0.195).abs() < 1e-7));
                // settings.xml ELECTRODE_XPOS/YPOS: two columns 8/40 µm, 15 µm rows.
                for (i, c) in s.channels.iter().enumerate() {
                    let want_x = if i % 2 == 0 { 8.0 } else { 40.0 };
                    assert_eq!(c.x_um, Some(want_x), "{probe} ch {i}");
                    assert_eq!(c.y_um, Some((i / 2) as f64 * 15.0), "{probe} ch {i}");
                    assert_eq!(c.shank, Some(0));
                }
                let info = s.info(probe);
                assert_eq!(info.probe.as_deref(), Some("NP2000"));
            }
            let ni = rec.stream(Some("PXIe-6341")).unwrap();
            assert_eq!(ni.channels.len(), 8);
            for (i, c) in ni.channels.iter().enumerate() {
                assert_eq!(c.name, format!("AI{i}"));
                assert_eq!(c.kind, ChannelKind::Analog);
                // 10 V / 32767 per bit, in µV.
                assert!((c.uv_per_bit.unwrap() - 305.185_094_475_746_2).abs() < 1e-6);
                assert_eq!(c.x_um, None);
            }
            assert_eq!(ni.probe, None);
        }
    }

    // ---- synthetic recordings for the error paths ----

    fn oebin_text(folder: &str, n_ch: usize) -> String {
        let chans: Vec<Value> = (0..n_ch)
            .map(|i| {
                serde_json::json!({
                    "channel_name": format!("CH{}", i + 1),
                    "bit_volts": 0.195, "units": "uV"
                })
            })
            .collect();
        serde_json::json!({
            "GUI version": "0.6.7",
            "continuous": [{
                "folder_name": format!("{folder}/"), "sample_rate": 29999.757983,
                "source_processor_name": "Acquisition Board", "source_processor_id": 100,
                "stream_name": "Rhythm", "num_channels": n_ch, "channels": chans
            }],
            "events": [], "spikes": []
        })
        .to_string()
    }

    /// A recording folder with a 2-channel stream: `samples` samples plus `extra` bytes.
    fn synthetic(samples: usize, extra: usize, npy: Option<&[u8]>) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let rec = t.path().join("experiment1/recording1");
        let folder = rec.join("continuous/Rhythm-100.Rhythm");
        fs::create_dir_all(&folder).unwrap();
        fs::write(rec.join(OEBIN), oebin_text("Rhythm-100.Rhythm", 2)).unwrap();
        let dat: Vec<u8> = (0..samples * 4 + extra).map(|i| (i * 7) as u8).collect();
        fs::write(folder.join("continuous.dat"), dat).unwrap();
        if let Some(npy) = npy {
            fs::write(folder.join("sample_numbers.npy"), npy).unwrap();
        }
        t
    }

    fn npy_i64(values: &[i64]) -> Vec<u8> {
        let mut out = Vec::new();
        ndarray_npy::WriteNpyExt::write_npy(&ndarray::Array1::from(values.to_vec()), &mut out)
            .unwrap();
        out
    }

    #[test]
    fn missing_oebin_is_a_clear_error() {
        let t = tempfile::tempdir().unwrap();
        let gone = t.path().join("nope/structure.oebin");
        let e = OpenEphysRecording::open(&gone).unwrap_err();
        assert!(matches!(e, OebinError::NotFound { .. }), "{e}");
        assert!(e.to_string().contains("nope/structure.oebin"), "{e}");
        // An empty folder: nothing found below it.
        let e = OpenEphysRecording::open(t.path()).unwrap_err();
        assert!(e.to_string().contains(OEBIN), "{e}");
        assert!(
            e.to_string().contains(&t.path().display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn malformed_json_names_the_file() {
        let t = synthetic(10, 0, None);
        let oebin = t.path().join("experiment1/recording1").join(OEBIN);
        fs::write(&oebin, "{\"continuous\": [ {\"folder_name\": ").unwrap();
        let e = OpenEphysRecording::open(t.path()).unwrap_err();
        assert!(matches!(e, OebinError::Json { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&oebin.display().to_string()) && msg.contains("JSON"),
            "{msg}"
        );

        fs::write(
            &oebin,
            r#"{"continuous": [{"folder_name": "x/", "sample_rate": -5, "num_channels": 2}]}"#,
        )
        .unwrap();
        let msg = OpenEphysRecording::open(&oebin).unwrap_err().to_string();
        assert!(msg.contains("sample_rate") && msg.contains(OEBIN), "{msg}");
    }

    #[test]
    fn missing_stream_folder_names_it() {
        let t = synthetic(10, 0, None);
        let rec = t.path().join("experiment1/recording1");
        fs::remove_dir_all(rec.join("continuous/Rhythm-100.Rhythm")).unwrap();
        let e = OpenEphysRecording::open(&rec).unwrap_err();
        assert!(matches!(e, OebinError::MissingStream { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("Rhythm-100.Rhythm") && msg.contains("Rhythm"),
            "{msg}"
        );
        assert!(msg.contains(OEBIN), "{msg}");

        // Folder present, continuous.dat missing.
        let t = synthetic(10, 0, None);
        let rec = t.path().join("experiment1/recording1");
        fs::remove_file(rec.join("continuous/Rhythm-100.Rhythm/continuous.dat")).unwrap();
        let msg = OpenEphysRecording::open(&rec).unwrap_err().to_string();
        assert!(msg.contains("continuous.dat"), "{msg}");
    }

    #[test]
    fn partial_last_sample_is_reported_not_fatal() {
        let t = synthetic(10, 3, None);
        let rec = OpenEphysRecording::open(t.path()).unwrap();
        let s = rec.stream(None).unwrap();
        assert_eq!(s.samples_on_disk().unwrap(), 10);
        assert_eq!(s.sampling_hz_text, "29999.757983");
        assert_eq!(s.sampling_hz, 29999.757983);
        assert_eq!(s.channels[0].uv_per_bit, Some(0.195));
        // Live/crashed: no sample_numbers.npy.
        assert!(!s.finished);
        assert_eq!(s.first_sample, None);
        assert_eq!(s.info("x").first_sample, 0);
        assert_eq!(rec.warnings.len(), 1, "{:?}", rec.warnings);
        let w = &rec.warnings[0];
        assert!(
            w.contains("continuous.dat") && w.contains("10 whole samples"),
            "{w}"
        );
    }

    #[test]
    fn sample_numbers_validity_decides_finished() {
        // Valid and consistent.
        let t = synthetic(3, 0, Some(&npy_i64(&[500, 501, 502])));
        let s = OpenEphysRecording::open(t.path())
            .unwrap()
            .streams
            .remove(0);
        assert!(s.finished);
        assert_eq!(s.first_sample, Some(500));
        assert_eq!(s.info("x").first_sample, 500);

        // What the GUI leaves while recording: header with shape (0,) and data after it,
        // or a truncated header, or nothing.
        let mut live = npy_i64(&[]);
        live.extend_from_slice(&[1u8; 24]);
        let full = npy_i64(&[500, 501, 502]);
        let bad_dtype = {
            let mut out = Vec::new();
            ndarray_npy::WriteNpyExt::write_npy(
                &ndarray::Array1::from(vec![1.0f64, 2.0, 3.0]),
                &mut out,
            )
            .unwrap();
            out
        };
        let huge_header = {
            let mut v = b"\x93NUMPY\x02\x00".to_vec();
            v.extend_from_slice(&u32::MAX.to_le_bytes());
            v
        };
        for bad in [
            live.as_slice(),
            &full[..60],
            &full[..full.len() - 1],
            b"",
            b"\x93NUMPY",
            &bad_dtype,
            &huge_header,
            &npy_i64(&[]),
        ] {
            let t = synthetic(3, 0, Some(bad));
            let rec = OpenEphysRecording::open(t.path()).unwrap();
            let s = &rec.streams[0];
            assert!(!s.finished, "{bad:?}");
            assert_eq!(s.first_sample, None);
        }
        // Finished but disagreeing with continuous.dat: a warning naming both files.
        let t = synthetic(4, 0, Some(&npy_i64(&[7, 8, 9])));
        let rec = OpenEphysRecording::open(t.path()).unwrap();
        assert!(rec
            .warnings
            .iter()
            .any(|w| w.contains("sample_numbers.npy") && w.contains("4 whole")));
    }

    #[test]
    fn no_panics_on_odd_oebins() {
        let cases = [
            "",
            "null",
            "[]",
            "{}",
            r#"{"continuous": 3}"#,
            r#"{"continuous": []}"#,
            r#"{"continuous": [null]}"#,
            r#"{"continuous": [{}]}"#,
            r#"{"continuous": [{"folder_name": 5}]}"#,
            r#"{"continuous": [{"folder_name": "/"}]}"#,
            r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": "abc"}]}"#,
            r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": 0}]}"#,
            r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": 1e400}]}"#,
            r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": 30000}]}"#,
            r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": 30000, "num_channels": -2}]}"#,
            r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": 30000, "num_channels": 1e30}]}"#,
            r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": 30000, "num_channels": 18446744073709551615}]}"#,
            r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": 30000, "num_channels": 2, "channels": 4}]}"#,
            r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": 30000, "num_channels": 2, "channels": [1, 2]}]}"#,
            r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": 30000, "num_channels": 3, "channels": [{}, {}]}]}"#,
            r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": 30000, "channels": [{"bit_volts": []}, {}]}]}"#,
            r#"{"continuous": [{"folder_name": "Rhythm-100.Rhythm", "sample_rate": "30000", "num_channels": 2}]}"#,
            r#"{"continuous": [{"folder_name": "../../../../../../", "sample_rate": 30000, "num_channels": 2}]}"#,
        ];
        for (i, text) in cases.iter().enumerate() {
            let t = synthetic(5, 1, None);
            let oebin = t.path().join("experiment1/recording1").join(OEBIN);
            fs::write(&oebin, text).unwrap();
            match OpenEphysRecording::open(&oebin) {
                Ok(r) => {
                    for s in &r.streams {
                        let _ = s.samples_on_disk();
                        let _ = s.info("x").schema();
                    }
                    let _ = r.stream(None);
                }
                Err(e) => {
                    let m = e.to_string();
                    eprintln!("case {i}: {m}");
                    assert!(
                        m.contains(OEBIN) || m.contains("continuous"),
                        "case {i}: {m}"
                    );
                }
            }
        }
        // The string rate is kept as written.
        let t = synthetic(5, 0, None);
        let oebin = t.path().join("experiment1/recording1").join(OEBIN);
        fs::write(&oebin, cases[21]).unwrap();
        let r = OpenEphysRecording::open(&oebin).unwrap();
        assert_eq!(r.streams[0].sampling_hz_text, "30000");

        // Every truncation and many byte flips of a real oebin.
        let good = oebin_text("Rhythm-100.Rhythm", 2).into_bytes();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for cut in 0..good.len() {
            fs::write(&oebin, &good[..cut]).unwrap();
            let _ = OpenEphysRecording::open(&oebin);
        }
        for _ in 0..300 {
            let mut b = good.clone();
            for _ in 0..3 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let pos = (seed >> 33) as usize % b.len();
                b[pos] = (seed >> 20) as u8;
            }
            fs::write(&oebin, &b).unwrap();
            let _ = OpenEphysRecording::open(&oebin);
        }
    }

    #[test]
    fn odd_settings_xml_does_not_break_open() {
        let t = synthetic(5, 0, None);
        for text in ["", "<SETTINGS>", "<SETTINGS><PROCESSOR nodeId=\"100\"><NP_PROBE><ELECTRODE_XPOS CH0=\"x\" CH99999999999=\"1\"/></NP_PROBE></PROCESSOR></SETTINGS>"] {
            fs::write(t.path().join("settings.xml"), text).unwrap();
            let r = OpenEphysRecording::open(t.path()).unwrap();
            assert!(r.streams[0].channels.iter().all(|c| c.x_um.is_none()));
        }
    }

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
        assert_eq!(rate_text(30000.0), "30000.0");
        assert_eq!(rate_text(29999.757983), "29999.757983");
    }
}
