//! The decoding proper: the two inputs' bins paired by index, one model step per bin both have,
//! gaps (state reset, counted), the rate smoothed, the record sent, and the rows held until the
//! target's actual value of their bin is known.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use kernels::teb::{Choice, StepOutput, TebDecoder, TebModel};

use super::record::{self, Record, Sender};
use super::reload::{Ready, RingBin};
use super::series::Handles;
use crate::component::ComponentError;

/// Seconds of decoded bins kept to warm a reloaded model.
pub(super) const RING_S: f64 = 30.0;
/// Seconds of data one input's bins wait for the other's before they are given up (a gap).
pub(super) const MAX_WAIT_S: f64 = 10.0;
/// Seconds of rows over which the prediction error is averaged.
pub(super) const ERROR_WINDOW_S: f64 = 30.0;
/// Bins in `seconds` of data, at least 1, bounded (a tiny `bin_s` must not make huge buffers).
fn bins_in(seconds: f64, bin_s: f64) -> usize {
    ((seconds / bin_s).ceil() as usize).clamp(1, 1 << 20)
}

/// Records sent in a row after which a send failure is a new episode, logged again.
const SENDS_ENDING_AN_EPISODE: u32 = 100;

/// A bin of one input, complete, waiting for the other input's.
pub(super) struct PendingBin {
    pub values: Vec<f32>,
    /// When the binner gave it out.
    pub closed: Instant,
}

/// One input's complete bins not yet used.
#[derive(Default)]
pub(super) struct SideBins {
    pub pending: BTreeMap<i64, PendingBin>,
    /// The last bin given out: bins below it that are not pending never will be.
    pub watermark: Option<i64>,
}

impl SideBins {
    pub fn add(&mut self, index: i64, values: Vec<f32>, closed: Instant) {
        self.watermark = Some(self.watermark.map_or(index, |w| w.max(index)));
        self.pending.insert(index, PendingBin { values, closed });
    }
    fn clear(&mut self) {
        self.pending.clear();
        self.watermark = None;
    }
}

/// One output row: the prediction of bin `bin`, made at the close of bin `bin - 1`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Row {
    pub bin: i64,
    pub prediction: Vec<f32>,
    pub target_only: Vec<f32>,
    /// The target's value of `bin`, once known (None: it never came).
    pub actual: Option<Vec<f32>>,
    pub rate_nats: f32,
    pub rate_bits_per_s: f32,
}

/// Mean of the rates of the bins in a trailing window of data time.
struct Smoother {
    window: i64,
    values: VecDeque<(i64, f64)>,
    sum: f64,
    since_exact: usize,
}

impl Smoother {
    fn new(window: usize) -> Self {
        Smoother {
            window: window as i64,
            values: VecDeque::new(),
            sum: 0.0,
            since_exact: 0,
        }
    }
    /// Adds bin `k`'s value; the mean over bins `(k - window, k]`.
    fn push(&mut self, k: i64, v: f64) -> f64 {
        while self
            .values
            .front()
            .is_some_and(|(i, _)| *i <= k - self.window)
        {
            if let Some((_, old)) = self.values.pop_front() {
                self.sum -= old;
            }
        }
        self.values.push_back((k, v));
        self.sum += v;
        // A running sum drifts; re-add it exactly once per window.
        self.since_exact += 1;
        if self.since_exact >= self.values.len().max(64) {
            self.sum = self.values.iter().map(|(_, v)| v).sum();
            self.since_exact = 0;
        }
        self.sum / self.values.len() as f64
    }
}

/// Squared errors per column over a trailing window of rows.
struct ErrorWindow {
    window: i64,
    rows: VecDeque<(i64, Vec<f64>)>,
    sums: Vec<f64>,
}

impl ErrorWindow {
    fn new(window: usize, columns: usize) -> Self {
        ErrorWindow {
            window: window as i64,
            rows: VecDeque::new(),
            sums: vec![0.0; columns],
        }
    }
    /// Adds a row's squared errors; the mean squared error per column.
    fn push(
        &mut self,
        k: i64,
        predicted: &[f32],
        actual: &[f32],
    ) -> impl Iterator<Item = f64> + '_ {
        while self
            .rows
            .front()
            .is_some_and(|(i, _)| *i <= k - self.window)
        {
            if let Some((_, old)) = self.rows.pop_front() {
                self.sums.iter_mut().zip(&old).for_each(|(s, o)| *s -= o);
            }
        }
        let e: Vec<f64> = predicted
            .iter()
            .zip(actual)
            .map(|(p, a)| (f64::from(*p) - f64::from(*a)).powi(2))
            .collect();
        self.sums.iter_mut().zip(&e).for_each(|(s, v)| *s += v);
        self.rows.push_back((k, e));
        let n = self.rows.len() as f64;
        self.sums.iter().map(move |s| s.max(0.0) / n)
    }
}

/// The decoder and everything between the inputs' bins and the output rows.
pub(super) struct Core {
    pub x: SideBins,
    pub y: SideBins,
    decoder: TebDecoder,
    model: TebModel,
    model_label: String,
    out: StepOutput,
    bin_s: f64,
    hold_bins: i64,
    /// Bins up to this one are decided (stepped or given up).
    decided: Option<i64>,
    last_stepped: Option<i64>,
    /// The current run of consecutive decoded bins (at most [`RING_S`]), and its number: a
    /// reset starts a new run.
    ring: VecDeque<Arc<RingBin>>,
    ring_cap: usize,
    run_id: u64,
    rate: Smoother,
    errors: ErrorWindow,
    held: VecDeque<Row>,
    /// Rows released, for the next output batch.
    pub rows: Vec<Row>,
    pub generation: u32,
    next_flags: u16,
    sender: Option<Sender>,
    send_failing: bool,
    /// Records sent in a row since the last failure.
    sent_in_a_row: u32,
    pub handles: Handles,
    /// The streams being decoded, for the transfer-entropy gauge.
    pub source_stream: String,
    pub target_stream: String,
}

impl Core {
    pub fn new(
        model: TebModel,
        decoder: TebDecoder,
        model_label: String,
        rate_smoothing_s: f64,
        sender: Option<Sender>,
        handles: Handles,
    ) -> Self {
        let bin_s = model.config.bin_s;
        Core {
            x: SideBins::default(),
            y: SideBins::default(),
            out: StepOutput::for_model(&model),
            decoder,
            model_label,
            bin_s,
            hold_bins: bins_in(MAX_WAIT_S, bin_s) as i64,
            decided: None,
            last_stepped: None,
            ring: VecDeque::new(),
            ring_cap: bins_in(RING_S, bin_s),
            run_id: 0,
            rate: Smoother::new(bins_in(rate_smoothing_s, bin_s)),
            errors: ErrorWindow::new(bins_in(ERROR_WINDOW_S, bin_s), model.config.target_dim()),
            model,
            held: VecDeque::new(),
            rows: Vec::new(),
            generation: 0,
            next_flags: 0,
            sender,
            send_failing: false,
            sent_in_a_row: 0,
            handles,
            source_stream: String::new(),
            target_stream: String::new(),
        }
    }

    #[cfg(test)]
    pub fn decoder_backend(&self) -> kernels::Backend {
        self.decoder.backend()
    }

    pub fn model(&self) -> &TebModel {
        &self.model
    }

    pub fn bin_s(&self) -> f64 {
        self.bin_s
    }

    /// The bins of the current run, for warming a new model.
    pub fn warm_bins(&self) -> (u64, Vec<Arc<RingBin>>) {
        (self.run_id, self.ring.iter().cloned().collect())
    }

    /// Swaps in a reloaded model, first stepping it through the bins decoded since it was
    /// warmed (or, after a reset since, through the whole current run); its backend choice
    /// comes back.
    pub fn swap(&mut self, ready: Ready) -> Result<Choice, String> {
        let Ready {
            model,
            mut decoder,
            choice,
            run_id,
            warmed_through,
        } = ready;
        let mut out = StepOutput::for_model(&model);
        let from = if run_id == self.run_id {
            warmed_through
        } else {
            decoder.reset();
            None
        };
        for b in self
            .ring
            .iter()
            .filter(|b| from.is_none_or(|w| b.index > w))
        {
            decoder
                .step(&b.x, &b.y, &mut out)
                .map_err(|e| format!("catching the new model up: {e}"))?;
        }
        self.decoder = decoder;
        self.out = out;
        self.model = model;
        self.generation = self.generation.wrapping_add(1);
        self.next_flags |= record::FLAG_NEW_MODEL;
        Ok(choice)
    }

    /// Target bins arrived: rows waiting for their actual value may leave.
    pub fn release(&mut self, at_end: bool) {
        while let Some(front) = self.held.front() {
            let j = front.bin;
            if !(at_end || self.y.watermark.is_some_and(|w| w >= j)) {
                break;
            }
            let Some(mut row) = self.held.pop_front() else {
                break;
            };
            row.actual = self.y.pending.get(&j).map(|b| b.values.clone());
            if let Some(actual) = &row.actual {
                let columns = &self.model.config.target.columns;
                let mse: Vec<f64> = self.errors.push(j, &row.prediction, actual).collect();
                for (g, v) in self.handles.mse(columns).iter().zip(mse) {
                    g.set(v);
                }
            }
            self.rows.push(row);
        }
    }

    /// Steps every bin both inputs have, in order, and gives up bins one input will never have
    /// (or, `at_end`, has not got). The first step error is returned; the others bins go on.
    pub fn advance(&mut self, at_end: bool) -> Result<(), ComponentError> {
        let mut first_error = None;
        loop {
            let k = match (self.x.pending.keys().next(), self.y.pending.keys().next()) {
                (None, None) => break,
                (Some(a), None) | (None, Some(a)) => *a,
                (Some(a), Some(b)) => *a.min(b),
            };
            let (have_x, have_y) = (
                self.x.pending.contains_key(&k),
                self.y.pending.contains_key(&k),
            );
            let late = self.decided.is_some_and(|d| k <= d);
            if have_x && have_y && !late {
                let (Some(x), Some(y)) = (self.x.pending.remove(&k), self.y.pending.remove(&k))
                else {
                    break;
                };
                self.decided = Some(k);
                if let Err(e) = self.step(k, x, y) {
                    first_error.get_or_insert(e);
                }
                continue;
            }
            let missing = if have_x { &self.y } else { &self.x };
            let newest = self.x.watermark.max(self.y.watermark).unwrap_or(k);
            let given_up = late
                || at_end
                || missing.watermark.is_some_and(|w| w >= k)
                || newest - k > self.hold_bins;
            if !given_up {
                break;
            }
            self.x.pending.remove(&k);
            self.y.pending.remove(&k);
            self.decided = Some(self.decided.map_or(k, |d| d.max(k)));
        }
        first_error.map_or(Ok(()), Err)
    }

    fn step(&mut self, k: i64, x: PendingBin, y: PendingBin) -> Result<(), ComponentError> {
        match self.last_stepped {
            Some(p) if k == p + 1 => {}
            Some(p) => {
                self.handles.gaps.inc();
                self.handles.gap_bins.inc_by((k - p - 1) as u64);
                self.reset();
            }
            None => self.reset(),
        }
        let closed = x.closed.max(y.closed);
        if let Err(e) = self.decoder.step(&x.values, &y.values, &mut self.out) {
            self.last_stepped = None;
            return Err(ComponentError::Other(format!(
                "model step of bin {k} failed (the state restarts at the next bin): {e}"
            )));
        }
        self.last_stepped = Some(k);
        let rate = f64::from(self.out.rate_nats);
        let mean = self.rate.push(k, rate);
        let bits_per_s = (mean / self.bin_s / std::f64::consts::LN_2) as f32;
        let predicted = k + 1;
        if let Some(sender) = &mut self.sender {
            let sent = sender.send(Record {
                flags: std::mem::take(&mut self.next_flags),
                model_generation: self.generation,
                sequence: 0,
                bin_index: predicted,
                time_s: predicted as f64 * self.bin_s,
                rate_nats: self.out.rate_nats,
                rate_bits_per_s: bits_per_s,
                predictions: &self.out.prediction,
            });
            match sent {
                Ok(()) => {
                    self.handles.records_sent.inc();
                    // UDP to a port with no reader fails every other send (the refusal of one
                    // datagram is reported on the next), so one success does not end an episode.
                    self.sent_in_a_row = self.sent_in_a_row.saturating_add(1);
                    if self.sent_in_a_row >= SENDS_ENDING_AN_EPISODE {
                        self.send_failing = false;
                    }
                }
                Err(e) => {
                    self.handles.records_failed.inc();
                    self.sent_in_a_row = 0;
                    // Once per failing episode: a reader that is away must not flood the log.
                    if !self.send_failing {
                        self.send_failing = true;
                        tracing::warn!(component = %self.handles.id, error = %e, "per-bin record not sent (further failures are counted in neurod_teb_records_total{{outcome=\"failed\"}} until one goes)");
                    }
                }
            }
        } else {
            self.next_flags = 0;
        }
        self.handles.latency.observe(closed.elapsed().as_secs_f64());
        self.handles.set_te(
            &self.model_label,
            &self.source_stream,
            &self.target_stream,
            f64::from(bits_per_s),
        );
        self.held.push_back(Row {
            bin: predicted,
            prediction: self.out.prediction.clone(),
            target_only: self.out.target_only.clone(),
            actual: None,
            rate_nats: self.out.rate_nats,
            rate_bits_per_s: bits_per_s,
        });
        if self.ring.len() >= self.ring_cap {
            self.ring.pop_front();
        }
        self.ring.push_back(Arc::new(RingBin {
            index: k,
            x: x.values,
            y: y.values,
        }));
        self.release(false);
        Ok(())
    }

    /// Zero state before the next step: a new run.
    fn reset(&mut self) {
        self.decoder.reset();
        self.ring.clear();
        self.run_id += 1;
        self.next_flags |= record::FLAG_RESET;
    }

    /// A new recording on one input: rows held leave (with the actual values known), the
    /// pairing and the state start again, and the other input's pending bins stay.
    pub fn restart(&mut self, target: bool) {
        self.release(true);
        if target {
            self.y.clear();
        } else {
            self.x.clear();
        }
        self.decided = None;
        self.last_stepped = None;
    }

    /// At the end of the input: everything paired that can be, every row out.
    pub fn finish(&mut self) -> Result<(), ComponentError> {
        let r = self.advance(true);
        self.release(true);
        r
    }
}
