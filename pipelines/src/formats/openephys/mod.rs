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

mod channels;
mod locate;
mod oebin;
mod sample_numbers;
mod settings_xml;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::stream::{ChannelInfo, ContinuousInfo};

/// File name of the JSON description of one recording.
pub const OEBIN: &str = "structure.oebin";

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
        let oebin_path = locate::locate_oebin(path)?;
        oebin::parse_recording(&oebin_path)
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
