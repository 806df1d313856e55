//! Model reload without a gap: the model files are polled (their mtime, size and inode, two
//! `stat`s at most once per `poll_every`); once they have changed and then stayed the same for
//! one poll (a trainer writing them is done), a loader thread loads the new model, checks it
//! fits the running one's inputs, and warms its state on the recent bins the decoder keeps
//! ([`RingBin`]); the data path then catches it up on the bins that came meanwhile and swaps.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kernels::backend::Preference;
use kernels::teb::model::{CONFIG_FILE, WEIGHTS_FILE};
use kernels::teb::{Choice, StepOutput, TebDecoder, TebModel};

pub(super) const POLL_EVERY: Duration = Duration::from_secs(1);

/// One decoded bin as the decoder saw it, kept to warm a new model.
#[derive(Debug)]
pub(super) struct RingBin {
    pub index: i64,
    pub x: Vec<f32>,
    pub y: Vec<f32>,
}

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// Both model files' stamps; `None` while either cannot be read.
type Signature = Option<[FileStamp; 2]>;

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

fn signature(dir: &Path) -> Signature {
    Some([
        stamp(&dir.join(CONFIG_FILE))?,
        stamp(&dir.join(WEIGHTS_FILE))?,
    ])
}

/// A new model, loaded and warmed, ready to swap in.
pub(super) struct Ready {
    pub model: TebModel,
    pub decoder: TebDecoder,
    pub choice: Choice,
    /// The decoder run (see `Core::run_id`) whose bins warmed it, and the last of them.
    pub run_id: u64,
    pub warmed_through: Option<i64>,
}

/// What the running model fixes about the inputs: a new model must read the same.
#[derive(Debug, Clone)]
pub(super) struct Fit {
    pub source_columns: Vec<String>,
    pub target_columns: Vec<String>,
    pub bin_s: f64,
}

impl Fit {
    pub fn of(model: &TebModel) -> Self {
        Fit {
            source_columns: model.config.source.columns.clone(),
            target_columns: model.config.target.columns.clone(),
            bin_s: model.config.bin_s,
        }
    }

    fn check(&self, m: &TebModel) -> Result<(), String> {
        let c = &m.config;
        if c.source.columns != self.source_columns || c.target.columns != self.target_columns {
            return Err(format!(
                "its columns ({} source, {} target) are not the running model's ({} source, {} target, same names in the same order); change them with a config reload",
                c.source.columns.len(),
                c.target.columns.len(),
                self.source_columns.len(),
                self.target_columns.len()
            ));
        }
        if (c.bin_s - self.bin_s).abs() > 1e-9 * self.bin_s {
            return Err(format!(
                "its bin_s {} is not the running model's {}",
                c.bin_s, self.bin_s
            ));
        }
        Ok(())
    }
}

/// Loads, checks and warms a model (the loader thread's work).
fn load_and_warm(
    dir: &Path,
    pref: Preference,
    fit: &Fit,
    run_id: u64,
    bins: &[Arc<RingBin>],
) -> Result<Ready, String> {
    let model = TebModel::load(dir).map_err(|e| e.to_string())?;
    fit.check(&model)?;
    let (mut decoder, choice) = TebDecoder::new(pref, &model).map_err(|e| e.to_string())?;
    let mut out = StepOutput::for_model(&model);
    for b in bins {
        decoder
            .step(&b.x, &b.y, &mut out)
            .map_err(|e| format!("warming the new model: {e}"))?;
    }
    Ok(Ready {
        warmed_through: bins.last().map(|b| b.index),
        model,
        decoder,
        choice,
        run_id,
    })
}

/// Watches the model directory and loads new versions off the data path.
pub(super) struct Reloader {
    dir: PathBuf,
    pref: Preference,
    pub poll_every: Duration,
    last_poll: Option<Instant>,
    /// The files of the running model (or of the last version that failed to load: it is not
    /// tried again until the files change).
    current: Signature,
    /// What the previous poll saw.
    seen: Signature,
    loading: Option<(Signature, Receiver<Result<Ready, String>>)>,
}

/// A finished load: the new model, or why not.
pub(super) type Outcome = Result<Ready, String>;

impl Reloader {
    /// Watching `dir`. Made before the model is first loaded: the files' stamps are taken
    /// now, so a change while that load reads them is seen at the first poll.
    pub fn new(dir: &Path, pref: Preference) -> Self {
        let sig = signature(dir);
        Reloader {
            dir: dir.to_path_buf(),
            pref,
            poll_every: POLL_EVERY,
            last_poll: None,
            current: sig,
            seen: sig,
            loading: None,
        }
    }

    /// Called on the data path: a finished load if one is ready; otherwise, at most once per
    /// `poll_every`, looks at the files and starts a load when they have changed and settled
    /// (`warm` gives the bins to warm on, only then).
    pub fn poll(
        &mut self,
        now: Instant,
        fit: impl FnOnce() -> Fit,
        warm: impl FnOnce() -> (u64, Vec<Arc<RingBin>>),
    ) -> Option<Outcome> {
        if let Some((sig, rx)) = &self.loading {
            let outcome = match rx.try_recv() {
                Ok(o) => o,
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => {
                    Err("the loader thread ended without a model".into())
                }
            };
            self.current = *sig;
            self.loading = None;
            return Some(outcome);
        }
        if self
            .last_poll
            .is_some_and(|t| now.duration_since(t) < self.poll_every)
        {
            return None;
        }
        self.last_poll = Some(now);
        let sig = signature(&self.dir);
        let settled = sig == self.seen;
        self.seen = sig;
        if sig.is_none() || sig == self.current || !settled {
            return None;
        }
        let (run_id, bins) = warm();
        let (fit, dir, pref) = (fit(), self.dir.clone(), self.pref);
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("teb-model-load".into())
            .spawn(move || {
                let _ = tx.send(load_and_warm(&dir, pref, &fit, run_id, &bins));
            });
        match spawned {
            Ok(_) => {
                self.loading = Some((sig, rx));
                None
            }
            Err(e) => {
                self.current = sig;
                Some(Err(format!("cannot start the loader thread: {e}")))
            }
        }
    }

    /// Blocks until a load in flight has finished (tests).
    #[cfg(test)]
    pub fn wait(&mut self) -> Option<Outcome> {
        let (sig, rx) = self.loading.take()?;
        self.current = sig;
        Some(
            rx.recv()
                .unwrap_or_else(|_| Err("the loader thread ended".into())),
        )
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
