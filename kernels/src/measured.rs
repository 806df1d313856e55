//! [`MeasuredChain`]: `backend = "auto"` with a hardware GPU. The CPU and GPU chains both run
//! every chunk of the stream's first seconds ([`Trial`]); the CPU's detections go out, the GPU's
//! are only timed. Then the slower chain is dropped. Both chains have seen the same input and
//! their detections and σ are identical (see `gpu::chain`), so the one kept simply goes on.

use crate::backend::{Trial, Verdict};
use crate::chain::{Detection, DetectionChain, KernelError};
use crate::columns::Columns;
use crate::Backend;

pub struct MeasuredChain {
    /// The chain whose detections go out: the CPU's during the trial, the winner's after.
    active: Box<dyn DetectionChain>,
    /// The GPU chain during the trial.
    rival: Option<Box<dyn DetectionChain>>,
    trial: Option<Trial>,
    sampling_hz: f64,
    /// The rival's detections (timed, not used).
    scratch: Vec<Detection>,
    /// A verdict not yet taken by [`DetectionChain::take_verdict`].
    news: Option<Verdict>,
}

impl MeasuredChain {
    /// `cpu` and `gpu` built from the same configuration, fresh; `trial` says how long to measure.
    pub fn new(
        cpu: Box<dyn DetectionChain>,
        gpu: Box<dyn DetectionChain>,
        trial: Trial,
        sampling_hz: f64,
    ) -> Self {
        MeasuredChain {
            active: cpu,
            rival: Some(gpu),
            trial: Some(trial),
            sampling_hz,
            scratch: Vec::new(),
            news: None,
        }
    }

    /// One chunk through both chains (during the trial) or the winner.
    fn run(
        &mut self,
        rows: usize,
        out: &mut Vec<Detection>,
        mut step: impl FnMut(&mut dyn DetectionChain, &mut Vec<Detection>) -> Result<(), KernelError>,
    ) -> Result<(), KernelError> {
        let (Some(rival), Some(trial)) = (self.rival.as_mut(), self.trial.as_mut()) else {
            return step(self.active.as_mut(), out);
        };
        let data_s = rows as f64 / self.sampling_hz;
        let active = self.active.as_mut();
        trial.time(Backend::Cpu, data_s, || step(active, out))?;
        self.scratch.clear();
        let scratch = &mut self.scratch;
        let gpu = rival.backend();
        if let Err(e) = trial.time(gpu, data_s, || step(rival.as_mut(), scratch)) {
            trial.drop_gpu(e.to_string());
        }
        self.settle();
        Ok(())
    }

    /// Ends the trial once it has a verdict: the winner becomes the active chain.
    fn settle(&mut self) {
        let Some(verdict) = self.trial.as_ref().and_then(Trial::verdict) else {
            return;
        };
        self.trial = None;
        if let Some(rival) = self.rival.take() {
            if verdict.chosen == rival.backend() {
                self.active = rival;
            }
        }
        self.scratch = Vec::new();
        self.news = Some(verdict);
    }
}

impl DetectionChain for MeasuredChain {
    fn process(
        &mut self,
        first_sample: i64,
        raw: &[i16],
        out: &mut Vec<Detection>,
    ) -> Result<(), KernelError> {
        let rows = raw.len() / self.active.n_channels().max(1);
        self.run(rows, out, |chain, out| {
            chain.process(first_sample, raw, out)
        })
    }

    fn process_columns(
        &mut self,
        first_sample: i64,
        columns: &dyn Columns,
        staging: &mut Vec<i16>,
        out: &mut Vec<Detection>,
    ) -> Result<(), KernelError> {
        self.run(columns.rows(), out, |chain, out| {
            chain.process_columns(first_sample, columns, staging, out)
        })
    }

    fn n_channels(&self) -> usize {
        self.active.n_channels()
    }

    /// A stream that ends during the trial keeps the CPU (no verdict).
    fn finish(&mut self, out: &mut Vec<Detection>) -> Result<(), KernelError> {
        self.rival = None;
        self.trial = None;
        self.active.finish(out)
    }

    fn backend(&self) -> Backend {
        self.active.backend()
    }

    fn noise_uv(&self) -> Option<&[f32]> {
        self.active.noise_uv()
    }

    fn take_verdict(&mut self) -> Option<Verdict> {
        self.news.take()
    }
}
