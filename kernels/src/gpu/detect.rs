//! GPU twin of [`crate::detect::PeakDetector`]: `shaders/detect.wgsl` finds the candidates and
//! applies the local exclusion, one invocation per (sample, channel); the host sorts the
//! survivors by (sample, channel) and applies the per-channel dead time (sequential by nature:
//! whether a peak is kept depends on the previous *kept* peak of its channel).
//!
//! Streaming, as in the twin: a sample is decided once sample + exclude + 1 has arrived. The
//! detector keeps the last `2·exclude + 2` rows on the GPU (the undecided rows and the context
//! they need) in one of two history buffers, refilled in turn from the previous history and the
//! new rows (a buffer cannot be copied onto itself), so any chunking gives the same peak list.
//! Each row remembers the threshold set in force when it arrived (a small table of sets on the
//! GPU), since the twin judges a row against the thresholds of the call that delivered it.

use std::sync::Arc;

use super::context::{GpuContext, GpuError};
use super::util::{
    bind_group, buffer, check_binding, command_encoder, compute_pipeline, dispatch, grid,
    read_back, scoped, table_buffer, uniform_buffer, write_padded, GrowBuffer, HostIo,
};
use crate::detect::{Neighbours, Peak};

const STAGE: &str = "peak detection";
const WORKGROUP: u64 = 256;
/// Bytes per survivor record: row, channel, value bits, padding.
const RECORD: u64 = 16;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_channels: u32,
    n_hist: u32,
    n_rows: u32,
    cur_row0: u32,
    decide_lo: u32,
    decide_hi: u32,
    exclude: u32,
    capacity: u32,
    cur_set: u32,
    _pad: [u32; 3],
}

/// One channel of one threshold set, as the shader reads it.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ThresholdEntry {
    neg: f32,
    inv: f32,
    class: u32,
    _pad: u32,
}

const DISABLED: u32 = 0;
const FINITE: u32 = 1;
const POS_INF: u32 = 2;
const NEG_INF: u32 = 3;

/// The shader's view of a threshold: `x <= −t` and the score `(−x)·(1/t)` as the twin computes
/// them, with the cases WGSL cannot compute through ±∞ classed here.
fn threshold_entry(t: f32) -> ThresholdEntry {
    let inv = 1.0 / t;
    let (neg, inv, class) = if t.is_nan() || t == f32::INFINITY {
        // x <= −∞ (or NaN) never holds.
        (0.0, 0.0, DISABLED)
    } else if t == f32::NEG_INFINITY {
        // x <= +∞ always holds (for finite x); 1/−∞ = −0.
        (f32::MAX, -0.0, FINITE)
    } else if inv == f32::INFINITY {
        (-t, 0.0, POS_INF)
    } else if inv == f32::NEG_INFINITY {
        (-t, 0.0, NEG_INF)
    } else {
        (-t, inv, FINITE)
    };
    ThresholdEntry {
        neg,
        inv,
        class,
        _pad: 0,
    }
}

/// Streaming `locally_exclusive` detector with per-channel dead time, on the GPU. Same rules,
/// same call semantics and the same peak list as the twin on the same input.
pub struct GpuPeakDetector {
    ctx: Arc<GpuContext>,
    pipeline: wgpu::ComputePipeline,
    params: wgpu::Buffer,
    neighbours: wgpu::Buffer,
    /// `slots` threshold sets of `n_channels` entries.
    thresholds: wgpu::Buffer,
    /// Two history buffers of `history` rows; `active` holds the current window's history.
    hist: [wgpu::Buffer; 2],
    hist_set: wgpu::Buffer,
    out: GrowBuffer,
    out_staging: GrowBuffer,
    /// Survivor records the output buffer holds (grown when a dispatch overflows it).
    capacity: usize,
    /// Records copied to the staging buffer with the count (a second read fetches the rest).
    guess: usize,
    counter: wgpu::Buffer,
    counter_staging: wgpu::Buffer,
    /// Stands in for `cur` when only history is decided (end of stream).
    empty: wgpu::Buffer,
    /// (active history, source buffer, output capacity) → bind group.
    bound: Vec<(usize, wgpu::Buffer, usize, wgpu::BindGroup)>,
    io: Option<HostIo>,

    n_channels: usize,
    exclude: i64,
    dead: i64,
    /// Rows kept between calls: 2·exclude + 2.
    history: usize,

    /// Host copies of the threshold sets (what detections report), by slot.
    sets: Vec<Vec<f32>>,
    current_set: Option<usize>,
    scratch_thresholds: Vec<f32>,
    scratch_entries: Vec<ThresholdEntry>,

    /// Next sample expected; None outside a stream segment.
    next_sample: Option<i64>,
    /// Sample of history row 0.
    window_start: i64,
    n_hist: usize,
    /// Threshold set of each history row.
    hist_sets: Vec<u32>,
    active: usize,
    /// Every sample up to this one is decided.
    decided_through: i64,
    /// Sample of the last kept peak per channel (dead time).
    last_kept: Vec<i64>,
    records: Vec<[u32; 4]>,
}

/// What one dispatch decides: rows `decide_lo..decide_hi` of a window of `n_rows`, of which
/// `n_hist` come from the history and the rest from `source` starting at row `source_row0`.
struct Dispatch<'a> {
    source: &'a wgpu::Buffer,
    source_row0: usize,
    n_hist: usize,
    n_rows: usize,
    decide_lo: usize,
    decide_hi: usize,
    cur_set: u32,
}

impl GpuPeakDetector {
    /// `neighbours` should cover `n_channels` channels (channels it lacks have no neighbours, not
    /// even themselves, as in the twin).
    pub fn new(
        ctx: Arc<GpuContext>,
        n_channels: usize,
        neighbours: &Neighbours,
        exclude_samples: usize,
        dead_samples: usize,
    ) -> Result<Self, GpuError> {
        let pipeline = compute_pipeline(
            &ctx,
            STAGE,
            wgpu::include_wgsl!("../shaders/detect.wgsl"),
            "main",
        )?;
        // CSR over exactly n_channels channels.
        let mut table: Vec<u32> = Vec::with_capacity(n_channels + 1 + neighbours.indices().len());
        let covered = neighbours.n_channels().min(n_channels);
        table.extend_from_slice(&neighbours.offsets()[..=covered]);
        let end = table.last().copied().unwrap_or(0);
        table.resize(n_channels + 1, end);
        let indices = &neighbours.indices()[..end as usize];
        if let Some(&bad) = indices.iter().find(|&&b| b as usize >= n_channels) {
            return Err(GpuError::Unsupported {
                stage: STAGE,
                message: format!("neighbour {bad} of a {n_channels}-channel detector"),
            });
        }
        table.extend_from_slice(indices);

        let history = 2 * exclude_samples + 2;
        let slots = history + 1;
        let storage = |label, bytes, usage| buffer(&ctx, label, bytes, usage);
        let read_only = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let copyable = read_only | wgpu::BufferUsages::COPY_SRC;
        let nb = table_buffer(&ctx, "detect neighbours", bytemuck::cast_slice(&table));
        let thr_bytes = (slots * n_channels) as u64 * std::mem::size_of::<ThresholdEntry>() as u64;
        let hist_bytes = (history * n_channels * 4) as u64;
        check_binding(&ctx, STAGE, "the threshold table", thr_bytes)?;
        let thresholds = storage("detect thresholds", thr_bytes, read_only);
        let hist = [
            storage("detect history a", hist_bytes, copyable),
            storage("detect history b", hist_bytes, copyable),
        ];
        let hist_set = storage("detect history sets", (history * 4) as u64, read_only);
        let capacity = 1024;
        let out = GrowBuffer::new(
            &ctx.device,
            "detect survivors",
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            capacity as u64 * RECORD,
        );
        let out_staging = GrowBuffer::new(
            &ctx.device,
            "detect survivors read-back",
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            capacity as u64 * RECORD,
        );
        let counter = storage("detect counter", 4, copyable);
        let counter_staging = storage(
            "detect counter read-back",
            4,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        let empty = storage("detect empty", 4, read_only);
        let params = uniform_buffer(&ctx, "detect params", std::mem::size_of::<Params>() as u64);
        Ok(GpuPeakDetector {
            ctx,
            pipeline,
            params,
            neighbours: nb,
            thresholds,
            hist,
            hist_set,
            out,
            out_staging,
            capacity,
            guess: 256,
            counter,
            counter_staging,
            empty,
            bound: Vec::new(),
            io: None,
            n_channels,
            exclude: exclude_samples as i64,
            dead: dead_samples as i64,
            history,
            sets: vec![Vec::new(); slots],
            current_set: None,
            scratch_thresholds: Vec::with_capacity(n_channels),
            scratch_entries: Vec::with_capacity(n_channels),
            next_sample: None,
            window_start: 0,
            n_hist: 0,
            hist_sets: Vec::with_capacity(history),
            active: 0,
            decided_through: 0,
            last_kept: vec![i64::MIN; n_channels],
            records: Vec::new(),
        })
    }

    pub fn n_channels(&self) -> usize {
        self.n_channels
    }

    /// The twin's `process`: `data` holds samples `first_sample..` (whole rows of C channels);
    /// peaks come out in (sample, channel) order once their ±exclude context has been seen.
    pub fn process(
        &mut self,
        first_sample: i64,
        data: &[f32],
        thresholds: &[f32],
        out: &mut Vec<Peak>,
    ) -> Result<(), GpuError> {
        self.process_with(first_sample, data, thresholds, &mut |peak, _| {
            out.push(peak)
        })
    }

    /// [`process`](Self::process), handing each peak with the threshold it was judged against.
    pub fn process_with(
        &mut self,
        first_sample: i64,
        data: &[f32],
        thresholds: &[f32],
        emit: &mut dyn FnMut(Peak, f32),
    ) -> Result<(), GpuError> {
        let c = self.n_channels;
        if c == 0 || data.len() < c {
            return Ok(());
        }
        let n_rows = data.len() / c;
        let whole = &data[..n_rows * c];
        let ctx = self.ctx.clone();
        let mut io = self
            .io
            .take()
            .unwrap_or_else(|| HostIo::new(&ctx, "detect io"));
        io.upload(&ctx, bytemuck::cast_slice(whole));
        let encoder = command_encoder(&ctx, STAGE);
        let result = self.process_resident(
            encoder,
            first_sample,
            io.data.buffer(),
            0,
            n_rows,
            thresholds,
            emit,
        );
        self.io = Some(io);
        result
    }

    /// The twin's `finish`: decides the held-back samples (context past the end is absent) and
    /// ends the stream segment.
    pub fn finish(&mut self, out: &mut Vec<Peak>) -> Result<(), GpuError> {
        self.finish_with(&mut |peak, _| out.push(peak))
    }

    /// [`finish`](Self::finish), handing each peak with its threshold.
    pub fn finish_with(&mut self, emit: &mut dyn FnMut(Peak, f32)) -> Result<(), GpuError> {
        let encoder = command_encoder(&self.ctx, STAGE);
        self.finish_resident(encoder, emit)
    }

    /// [`process_with`](Self::process_with) on rows already on the GPU: rows
    /// `source_row0..source_row0 + n_rows` of `source` (sample-major, C channels; `STORAGE` and
    /// `COPY_SRC` usage, since the last rows are kept as history). `encoder`
    /// may hold earlier work (the chain's filter and reference); it is submitted with the
    /// detection.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn process_resident(
        &mut self,
        encoder: wgpu::CommandEncoder,
        first_sample: i64,
        source: &wgpu::Buffer,
        source_row0: usize,
        n_rows: usize,
        thresholds: &[f32],
        emit: &mut dyn FnMut(Peak, f32),
    ) -> Result<(), GpuError> {
        let mut encoder = encoder;
        if self.n_channels == 0 || n_rows == 0 {
            self.ctx.queue.submit([encoder.finish()]);
            return Ok(());
        }
        if self.next_sample.is_some_and(|next| next != first_sample) {
            // A gap: flush the previous segment first (with the work recorded so far).
            self.finish_resident(encoder, emit)?;
            encoder = command_encoder(&self.ctx, STAGE);
        }
        let set = self.use_thresholds(thresholds);
        if self.next_sample.is_none() {
            self.window_start = first_sample;
            self.n_hist = 0;
            self.hist_sets.clear();
            self.decided_through = first_sample - 1;
        }
        let end = first_sample + n_rows as i64;
        // Candidates are known through end − 2 (the last row awaits its successor); a sample is
        // final once every candidate within ±exclude is known.
        let through = (end - 2 - self.exclude).max(self.decided_through);
        let dispatch = Dispatch {
            source,
            source_row0,
            n_hist: self.n_hist,
            n_rows: self.n_hist + n_rows,
            decide_lo: (self.decided_through + 1 - self.window_start) as usize,
            decide_hi: (through + 1 - self.window_start) as usize,
            cur_set: set as u32,
        };
        // The next history: from the context of the first undecided sample to the end.
        let keep_from = (through - self.exclude).max(self.window_start);
        let next_active = 1 - self.active;
        let row_bytes = (self.n_channels * 4) as u64;
        let (old_from, new_from) = (keep_from.min(first_sample), keep_from.max(first_sample));
        if old_from < first_sample {
            let rows = (first_sample - old_from) as u64;
            encoder.copy_buffer_to_buffer(
                &self.hist[self.active],
                (old_from - self.window_start) as u64 * row_bytes,
                &self.hist[next_active],
                0,
                rows * row_bytes,
            );
        }
        let new_rows = (end - new_from) as u64;
        if new_rows > 0 {
            encoder.copy_buffer_to_buffer(
                source,
                (source_row0 as u64 + (new_from - first_sample) as u64) * row_bytes,
                &self.hist[next_active],
                (new_from - keep_from) as u64 * row_bytes,
                new_rows * row_bytes,
            );
        }
        self.run(encoder, &dispatch, emit)?;

        let kept_old = (first_sample - old_from) as usize;
        let drop_old = self.n_hist - kept_old;
        self.hist_sets.drain(..drop_old);
        self.hist_sets
            .extend(std::iter::repeat_n(set as u32, new_rows as usize));
        self.n_hist = (end - keep_from) as usize;
        debug_assert!(self.n_hist <= self.history && self.hist_sets.len() == self.n_hist);
        self.window_start = keep_from;
        self.active = next_active;
        self.decided_through = through;
        self.next_sample = Some(end);
        Ok(())
    }

    /// Decides the held-back rows and ends the segment; submits `encoder` first.
    pub(crate) fn finish_resident(
        &mut self,
        encoder: wgpu::CommandEncoder,
        emit: &mut dyn FnMut(Peak, f32),
    ) -> Result<(), GpuError> {
        if self.next_sample.is_none() || self.n_channels == 0 {
            self.ctx.queue.submit([encoder.finish()]);
            self.next_sample = None;
            return Ok(());
        }
        let empty = self.empty.clone();
        let dispatch = Dispatch {
            source: &empty,
            source_row0: 0,
            n_hist: self.n_hist,
            n_rows: self.n_hist,
            decide_lo: (self.decided_through + 1 - self.window_start) as usize,
            decide_hi: self.n_hist,
            cur_set: 0,
        };
        self.run(encoder, &dispatch, emit)?;
        self.next_sample = None;
        self.n_hist = 0;
        self.hist_sets.clear();
        Ok(())
    }

    /// Makes `thresholds` the current set (a new slot only when they changed) and returns it.
    fn use_thresholds(&mut self, thresholds: &[f32]) -> usize {
        let c = self.n_channels;
        self.scratch_thresholds.clear();
        self.scratch_thresholds
            .extend((0..c).map(|i| thresholds.get(i).copied().unwrap_or(f32::INFINITY)));
        if let Some(slot) = self.current_set {
            let same = self.sets[slot]
                .iter()
                .zip(&self.scratch_thresholds)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            if same {
                return slot;
            }
        }
        // Round robin: a slot is reused only after `slots` = history + 1 newer sets, each with at
        // least one row, so no history row refers to it any more.
        let slot = self.current_set.map_or(0, |s| (s + 1) % self.sets.len());
        self.sets[slot].clone_from(&self.scratch_thresholds);
        self.scratch_entries.clear();
        self.scratch_entries
            .extend(self.scratch_thresholds.iter().map(|&t| threshold_entry(t)));
        let offset = (slot * c) as u64 * std::mem::size_of::<ThresholdEntry>() as u64;
        write_padded(
            &self.ctx,
            &self.thresholds,
            offset,
            bytemuck::cast_slice(&self.scratch_entries),
        );
        self.current_set = Some(slot);
        slot
    }

    fn bind_group_for(&mut self, source: &wgpu::Buffer) -> usize {
        let key = (self.active, self.capacity);
        if let Some(i) = self
            .bound
            .iter()
            .position(|(a, s, cap, _)| (*a, *cap) == key && s == source)
        {
            return i;
        }
        self.bound.retain(|(_, _, cap, _)| *cap == self.capacity);
        if self.bound.len() >= 8 {
            // Sources come and go (re-created when a chunk grows): forget the old ones.
            self.bound.clear();
        }
        let group = bind_group(
            &self.ctx,
            STAGE,
            &self.pipeline,
            &[
                &self.params,
                &self.hist[self.active],
                source,
                &self.hist_set,
                &self.thresholds,
                &self.neighbours,
                self.out.buffer(),
                &self.counter,
            ],
        );
        self.bound
            .push((self.active, source.clone(), self.capacity, group));
        self.bound.len() - 1
    }

    /// Encodes the dispatch after `encoder`'s work, submits, reads the survivors back (growing
    /// the output and re-running when it overflowed), and emits the kept peaks in order.
    fn run(
        &mut self,
        encoder: wgpu::CommandEncoder,
        d: &Dispatch<'_>,
        emit: &mut dyn FnMut(Peak, f32),
    ) -> Result<(), GpuError> {
        let device = self.ctx.device.clone();
        scoped(&device, STAGE, || {
            let mut encoder = encoder;
            if d.decide_hi <= d.decide_lo {
                self.ctx.queue.submit([encoder.finish()]);
                return Ok(());
            }
            let jobs = (d.decide_hi - d.decide_lo) as u64 * self.n_channels as u64;
            if jobs > u64::from(u32::MAX) || d.n_rows as u64 > u64::from(u32::MAX) / 2 {
                self.ctx.queue.submit([encoder.finish()]);
                return Err(GpuError::Unsupported {
                    stage: STAGE,
                    message: format!("{jobs} (sample, channel) pairs in one call"),
                });
            }
            if !self.hist_sets.is_empty() {
                self.ctx.queue.write_buffer(
                    &self.hist_set,
                    0,
                    bytemuck::cast_slice(&self.hist_sets),
                );
            }
            let mut count = self.dispatch(&mut encoder, d, jobs)?;
            if count > self.capacity {
                // More survivors than the buffer holds: grow it and decide again (the inputs are
                // untouched: the history update went to the other buffer).
                self.capacity = count.next_power_of_two();
                let bytes = self.capacity as u64 * RECORD;
                self.out.ensure(&self.ctx.device, bytes);
                self.out_staging.ensure(&self.ctx.device, bytes);
                self.guess = count;
                let mut again = command_encoder(&self.ctx, STAGE);
                count = self.dispatch(&mut again, d, jobs)?;
            }
            if count > self.records.len() {
                // The first read fetched `guess` records; fetch the rest.
                let mut rest = command_encoder(&self.ctx, STAGE);
                let from = self.records.len() as u64 * RECORD;
                let bytes = count as u64 * RECORD - from;
                rest.copy_buffer_to_buffer(
                    self.out.buffer(),
                    from,
                    self.out_staging.buffer(),
                    0,
                    bytes,
                );
                self.ctx.queue.submit([rest.finish()]);
                let start = self.records.len();
                self.records.resize(count, [0; 4]);
                read_back(
                    &self.ctx,
                    STAGE,
                    &mut [(
                        self.out_staging.buffer(),
                        bytemuck::cast_slice_mut(&mut self.records[start..]),
                    )],
                )?;
            }
            self.records.truncate(count);
            // Size the first read for the recent calls (a burst, such as the calibration window
            // detected at once, decays away).
            self.guess = (2 * count)
                .max(self.guess * 3 / 4)
                .clamp(256, self.capacity);
            self.emit_records(d.n_hist, d.cur_set as usize, emit);
            Ok(())
        })
    }

    /// One dispatch plus the read-back of the count and the first `guess` records into
    /// `self.records`; returns the count (which may exceed what was read).
    fn dispatch(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        d: &Dispatch<'_>,
        jobs: u64,
    ) -> Result<usize, GpuError> {
        let params = Params {
            n_channels: self.n_channels as u32,
            n_hist: d.n_hist as u32,
            n_rows: d.n_rows as u32,
            cur_row0: d.source_row0 as u32,
            decide_lo: d.decide_lo as u32,
            decide_hi: d.decide_hi as u32,
            exclude: self.exclude as u32,
            capacity: self.capacity as u32,
            cur_set: d.cur_set,
            _pad: [0; 3],
        };
        self.ctx
            .queue
            .write_buffer(&self.params, 0, bytemuck::bytes_of(&params));
        let group = self.bind_group_for(d.source);
        let workgroups = grid(&self.ctx, STAGE, jobs.div_ceil(WORKGROUP))?;
        encoder.clear_buffer(&self.counter, 0, None);
        dispatch(
            encoder,
            STAGE,
            &self.pipeline,
            &self.bound[group].3,
            workgroups,
        );
        let first = self.guess.min(self.capacity);
        encoder.copy_buffer_to_buffer(&self.counter, 0, &self.counter_staging, 0, 4);
        encoder.copy_buffer_to_buffer(
            self.out.buffer(),
            0,
            self.out_staging.buffer(),
            0,
            first as u64 * RECORD,
        );
        let submission = std::mem::replace(encoder, command_encoder(&self.ctx, STAGE));
        self.ctx.queue.submit([submission.finish()]);
        let mut count = [0u32; 1];
        self.records.resize(first, [0; 4]);
        read_back(
            &self.ctx,
            STAGE,
            &mut [
                (&self.counter_staging, bytemuck::cast_slice_mut(&mut count)),
                (
                    self.out_staging.buffer(),
                    bytemuck::cast_slice_mut(&mut self.records[..]),
                ),
            ],
        )?;
        let count = count[0] as usize;
        self.records.truncate(count.min(first));
        Ok(count)
    }

    /// Sorts the survivors by (sample, channel) and applies the dead time.
    fn emit_records(&mut self, n_hist: usize, cur_set: usize, emit: &mut dyn FnMut(Peak, f32)) {
        self.records.sort_unstable_by_key(|r| (r[0], r[1]));
        for r in &self.records {
            let (row, channel) = (r[0] as usize, r[1] as usize);
            let sample = self.window_start + row as i64;
            let last = self.last_kept[channel];
            if last != i64::MIN && sample - last <= self.dead {
                continue;
            }
            self.last_kept[channel] = sample;
            let set = if row < n_hist {
                self.hist_sets[row] as usize
            } else {
                cur_set
            };
            let threshold = self.sets[set][channel];
            emit(
                Peak {
                    sample,
                    channel: channel as u32,
                    value: f32::from_bits(r[2]),
                },
                threshold,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::test_support::{chunks, line_probe};
    use crate::detect::PeakDetector;
    use crate::gpu::test_context;
    use rand::{Rng, SeedableRng};

    /// Feeds `data` in chunks of `sizes` (cycled) with per-chunk thresholds from `thr_of`, then
    /// finishes; returns (peak, threshold) pairs.
    fn run_cpu(
        det: &mut PeakDetector,
        data: &[f32],
        c: usize,
        sizes: &[usize],
        thr_of: &dyn Fn(usize) -> Vec<f32>,
    ) -> Vec<(Peak, f32)> {
        let mut out = Vec::new();
        for (t, len) in chunks(data.len() / c, sizes) {
            let chunk = &data[t * c..(t + len) * c];
            det.process_with(1000 + t as i64, chunk, &thr_of(t), &mut |p, th| {
                out.push((p, th))
            });
        }
        det.finish_with(&mut |p, th| out.push((p, th)));
        out
    }

    fn run_gpu(
        det: &mut GpuPeakDetector,
        data: &[f32],
        c: usize,
        sizes: &[usize],
        thr_of: &dyn Fn(usize) -> Vec<f32>,
    ) -> Vec<(Peak, f32)> {
        let mut out = Vec::new();
        for (t, len) in chunks(data.len() / c, sizes) {
            let chunk = &data[t * c..(t + len) * c];
            det.process_with(1000 + t as i64, chunk, &thr_of(t), &mut |p, th| {
                out.push((p, th))
            })
            .unwrap();
        }
        det.finish_with(&mut |p, th| out.push((p, th))).unwrap();
        out
    }

    fn assert_same(got: &[(Peak, f32)], want: &[(Peak, f32)], what: &str) {
        if let Some(i) = (0..got.len().min(want.len())).find(|&i| got[i] != want[i]) {
            panic!(
                "{what}: first difference at {i}: gpu {:?} cpu {:?} ({} vs {} peaks)",
                got[i],
                want[i],
                got.len(),
                want.len()
            );
        }
        assert_eq!(got.len(), want.len(), "{what}: peak counts");
    }

    #[test]
    fn gpu_detection_matches_cpu_twin_on_random_shapes_and_chunkings() {
        let Some(ctx) = test_context() else { return };
        let mut rng = rand::rngs::SmallRng::seed_from_u64(17);
        for (n_channels, n_samples) in [(384usize, 300usize), (385, 301), (7, 3001), (1, 50)] {
            for exclude in [0usize, 3] {
                let dead = if exclude == 3 { 4 } else { 0 };
                // Coarse quantisation: exact ties in value and in score are frequent.
                let data: Vec<f32> = (0..n_samples * n_channels)
                    .map(|_| rng.random_range(-10.0f32..4.0).round() * 5.0)
                    .collect();
                let base: Vec<f32> = (0..n_channels)
                    .map(|_| [10.0, 15.0, 20.0][rng.random_range(0..3)])
                    .collect();
                // The thresholds change twice mid-stream (as a noise refresh does).
                let thr_of = |t: usize| -> Vec<f32> {
                    let k = if t < n_samples / 3 {
                        1.0
                    } else if t < n_samples / 2 {
                        1.5
                    } else {
                        0.8
                    };
                    base.iter().map(|b| b * k).collect()
                };
                let nb = line_probe(n_channels);
                for sizes in [vec![n_samples], vec![1, 7, 2, 300], vec![3, 1, 1, 1, 8]] {
                    // Thresholds follow the calls, so each chunking has its own reference.
                    let mut cpu = PeakDetector::new(n_channels, nb.clone(), exclude, dead);
                    let want = run_cpu(&mut cpu, &data, n_channels, &sizes, &thr_of);
                    assert!(!want.is_empty());
                    let mut gpu =
                        GpuPeakDetector::new(ctx.clone(), n_channels, &nb, exclude, dead).unwrap();
                    let got = run_gpu(&mut gpu, &data, n_channels, &sizes, &thr_of);
                    assert_same(
                        &got,
                        &want,
                        &format!(
                            "{n_channels} ch × {n_samples}, exclude {exclude}, chunks {sizes:?}"
                        ),
                    );
                }
            }
        }
    }

    #[test]
    fn gpu_detection_overflowing_its_output_buffer_still_reports_everything() {
        let Some(ctx) = test_context() else { return };
        // A comb: every other sample a trough on every channel, no neighbours → far more
        // survivors than the initial buffer (1024 records) holds.
        let (c, n) = (64usize, 400usize);
        let data: Vec<f32> = (0..n * c)
            .map(|i| {
                if (i / c) % 2 == 1 {
                    -50.0 - (i % 7) as f32
                } else {
                    0.0
                }
            })
            .collect();
        let nb = Neighbours::from_lists(&vec![Vec::new(); c]);
        let thr = |_| vec![10.0f32; c];
        let mut cpu = PeakDetector::new(c, nb.clone(), 0, 0);
        let want = run_cpu(&mut cpu, &data, c, &[n], &thr);
        assert!(want.len() > 10_000);
        let mut gpu = GpuPeakDetector::new(ctx, c, &nb, 0, 0).unwrap();
        let got = run_gpu(&mut gpu, &data, c, &[n], &thr);
        assert_same(&got, &want, "comb");
    }

    #[test]
    fn gpu_detection_edge_thresholds_and_gaps() {
        let Some(ctx) = test_context() else { return };
        let c = 4;
        let nb = line_probe(c);
        // Channel 0: threshold 0 (σ = 0: scores ±∞ / NaN); 1: +∞ (disabled); 2: −∞ (every
        // local minimum); 3: ordinary.
        let thr = vec![0.0f32, f32::INFINITY, f32::NEG_INFINITY, 10.0];
        let mut rng = rand::rngs::SmallRng::seed_from_u64(2);
        let data: Vec<f32> = (0..200 * c)
            .map(|_| rng.random_range(-3.0f32..3.0).round() * 10.0)
            .collect();
        let mut cpu = PeakDetector::new(c, nb.clone(), 2, 1);
        let mut gpu = GpuPeakDetector::new(ctx, c, &nb, 2, 1).unwrap();
        let mut want = Vec::new();
        let mut got = Vec::new();
        // Chunks with gaps between them (new segments), and one empty call.
        for (first, from, to) in [
            (0i64, 0usize, 50usize),
            (50, 50, 90),
            (120, 90, 91),
            (200, 91, 91),
            (300, 91, 200),
        ] {
            let chunk = &data[from * c..to * c];
            cpu.process_with(first, chunk, &thr, &mut |p, t| want.push((p, t)));
            gpu.process_with(first, chunk, &thr, &mut |p, t| got.push((p, t)))
                .unwrap();
        }
        cpu.finish_with(&mut |p, t| want.push((p, t)));
        gpu.finish_with(&mut |p, t| got.push((p, t))).unwrap();
        assert!(
            want.iter().any(|(p, _)| p.channel == 0) && want.iter().any(|(p, _)| p.channel == 2)
        );
        assert!(want.iter().all(|(p, _)| p.channel != 1));
        // NaN thresholds never compare equal; compare them by bits.
        let bits = |v: &[(Peak, f32)]| -> Vec<(i64, u32, u32, u32)> {
            v.iter()
                .map(|(p, t)| (p.sample, p.channel, p.value.to_bits(), t.to_bits()))
                .collect()
        };
        assert_eq!(bits(&got), bits(&want));
    }
}
