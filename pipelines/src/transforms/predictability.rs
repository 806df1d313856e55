//! `type = "predictability"`: the POYO-SSL rule (ALGORITHMS.md §5) applied live to every unit of a
//! `moments` stream, and the traces split by the label of their neuron.
//!
//! ```toml
//! [transforms.pred]
//! type = "predictability"
//! inputs = ["moments", "dff"]   # the moments of a traces stream, and that traces stream
//! max_skew = 3.51
//! max_kurtosis = 22.62
//! kurtosis = "excess"           # or "pearson" (= excess + 3)
//! min_samples = 600             # samples before a unit (or group) is labelled
//! hysteresis = 0.05             # fraction of a threshold a statistic must cross it by to flip
//! max_hold_s = 60               # trace rows wait at most this long (data time) for moments
//! groups = { "0" = "Cux2", "1" = "Cux2", "7" = "Sst" }   # optional: unit → group
//!
//! [sinks.pretraining]
//! type = "store"
//! inputs = ["pred.predictable"]
//! [sinks.finetuning]
//! type = "store"
//! inputs = ["pred.unpredictable"]
//! ```
//!
//! Inputs, by position: first the tables of [`super::moments`] (they name their source stream in
//! `neurod.source_stream`), then traces streams; a batch whose layout is not its input's is an
//! error naming the input. A traces stream is matched with the moments whose source it is (`moments` on `plane0.dff` goes with the traces
//! `plane0.dff`). A traces unit is its `roi` as decimal text, as `moments` names it.
//!
//! The rule: predictable when skew ≤ `max_skew` and kurtosis ≤ `max_kurtosis`, else
//! unpredictable, judged on each moments table as it arrives. Not before the unit has
//! `min_samples` samples (default 600: 20 s at 30 Hz; with fewer, the sample skewness and
//! kurtosis of sparse calcium traces swing widely), and not while the statistics are undefined
//! (a constant trace). Hysteresis, so that a unit near a threshold does not flicker: once
//! labelled, a predictable unit becomes unpredictable only when a statistic exceeds its threshold
//! by `hysteresis`·|threshold|, and an unpredictable one becomes predictable only when both are
//! below their thresholds by that margin. The first label is the plain rule.
//!
//! Groups (e.g. a Cre line): a unit's group is `groups[unit]` if given, else the `group` column
//! that `moments` carried from the traces; a grouped unit takes its group's label, judged on the
//! merged moments of all the group's units (Pébay's merge, exact from the tables' `m2`, `m3`,
//! `m4`) with `min_samples` applying to the merged count.
//!
//! Outputs:
//! - default port (layout `table`), stream id `<source>.neurons`: for every moments table, one row
//!   per unit whose label changed: `frame_index: Int64` (of the moments table), `unit: Utf8`,
//!   `group: Utf8` (nullable), `n: Int64`, `skew`, `excess_kurtosis` (Float64; of what the rule
//!   judged: the unit, or its group's merged moments), `label: Utf8` (`predictable`,
//!   `unpredictable`, `unlabelled`), `labelled_since_frame: Int64` (nullable: the moments frame at
//!   which the label was taken). At the end of the input, one row per unit with its final
//!   statistics, changed or not.
//! - ports `predictable`, `unpredictable`, `unlabelled` (layout `traces`, stream ids
//!   `<source>.predictable`, ...): the trace rows of the units with that label. A row of frame f
//!   goes out once a moments table covering frame f has been judged, with the labels it gave, so
//!   the split does not depend on the timing of the two inputs; rows wait at most `max_hold_s` of
//!   data time for that (then they go with the labels known), and at the end with the final ones.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::Deserialize;

use super::moments::{EXCESS_KURTOSIS, GROUP, M2, M3, M4, MEAN, N, SKEW, UNIT};
use super::per_stream::PerStream;
use super::spike_detect::SOURCE_STREAM_KEY;
use super::traces::{self, err};
use crate::component::{
    parse_options, BuildContext, ComponentError, Emitter, Input, PortSpec, Transform,
    TransformContext,
};
use crate::stats::{KurtosisConvention, Label, Moments, PoyoRule};
use crate::stream::{self, keys, Layout, FRAME_INDEX};

pub const TYPE: &str = "predictability";
pub const PREDICTABLE_PORT: &str = "predictable";
pub const UNPREDICTABLE_PORT: &str = "unpredictable";
pub const UNLABELLED_PORT: &str = "unlabelled";
/// Neuron table stream id: `<source stream id>` + this.
pub const NEURONS_SUFFIX: &str = ".neurons";
pub const LABEL: &str = "label";
pub const LABELLED_SINCE_FRAME: &str = "labelled_since_frame";
pub const UNLABELLED: &str = "unlabelled";

fn default_min_samples() -> u64 {
    600
}
fn default_hysteresis() -> f64 {
    0.05
}
fn default_max_hold_s() -> f64 {
    60.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    max_skew: Option<f64>,
    max_kurtosis: Option<f64>,
    #[serde(default)]
    kurtosis: KurtosisConvention,
    #[serde(default = "default_min_samples")]
    min_samples: u64,
    #[serde(default = "default_hysteresis")]
    hysteresis: f64,
    #[serde(default = "default_max_hold_s")]
    max_hold_s: f64,
    #[serde(default)]
    groups: BTreeMap<String, String>,
}

/// The layout of each input, by position (the role is the layout): the moments, then their
/// traces.
const INPUT_LAYOUTS: [(Layout, Layout); 2] = [
    (Layout::Table, Layout::Table),
    (Layout::Traces, Layout::Traces),
];

pub struct Predictability {
    id: String,
    rule: PoyoRule,
    options: Options,
    /// By source (traces) stream id.
    sources: PerStream<SourceState>,
}

pub fn build(ctx: &BuildContext, options: toml::Table) -> Result<Box<dyn Transform>, Vec<String>> {
    let o: Options = parse_options(ctx.id, TYPE, options)?;
    let prefix = format!("transform `{}` (type `{TYPE}`)", ctx.id);
    let d = PoyoRule::default();
    let rule = PoyoRule {
        max_skew: o.max_skew.unwrap_or(d.max_skew),
        max_kurtosis: o.max_kurtosis.unwrap_or(d.max_kurtosis),
        kurtosis: o.kurtosis,
    };
    let mut errors = Vec::new();
    for (name, v) in [
        ("max_skew", rule.max_skew),
        ("max_kurtosis", rule.max_kurtosis),
    ] {
        if !v.is_finite() {
            errors.push(format!("{prefix}: `{name}` = {v} must be a finite number"));
        }
    }
    let h = o.hysteresis;
    if !(h.is_finite() && (0.0..1.0).contains(&h)) {
        errors.push(format!(
            "{prefix}: `hysteresis` = {h} must be a fraction, 0 or more and below 1"
        ));
    }
    let m = o.max_hold_s;
    if !(m.is_finite() && m > 0.0) {
        errors.push(format!("{prefix}: `max_hold_s` = {m} must be positive"));
    }
    if o.min_samples < 2 {
        errors.push(format!(
            "{prefix}: `min_samples` = {} must be at least 2 (skewness needs a spread)",
            o.min_samples
        ));
    }
    if ctx.inputs.len() != INPUT_LAYOUTS.len() {
        errors.push(format!(
            "{prefix}: takes 2 inputs, a moments stream then its traces, and has {}",
            ctx.inputs.len()
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Box::new(Predictability {
        id: ctx.id.into(),
        rule,
        options: o,
        sources: PerStream::new(),
    }))
}

/// The label after hysteresis (see the module docs); `current` is kept when the statistics are
/// undefined.
fn next_label(
    rule: &PoyoRule,
    hysteresis: f64,
    current: Option<Label>,
    skew: f64,
    excess_kurtosis: f64,
) -> Option<Label> {
    let k = rule.kurtosis_of(excess_kurtosis);
    if skew.is_nan() || k.is_nan() {
        return current;
    }
    let up = |t: f64| t + hysteresis * t.abs();
    let down = |t: f64| t - hysteresis * t.abs();
    Some(match current {
        None => return rule.label(skew, excess_kurtosis),
        Some(Label::Predictable) => {
            if skew > up(rule.max_skew) || k > up(rule.max_kurtosis) {
                Label::Unpredictable
            } else {
                Label::Predictable
            }
        }
        Some(Label::Unpredictable) => {
            if skew <= down(rule.max_skew) && k <= down(rule.max_kurtosis) {
                Label::Predictable
            } else {
                Label::Unpredictable
            }
        }
    })
}

/// A unit as the latest moments table described it.
struct Unit {
    name: String,
    /// From the moments table's `group` column.
    group_column: Option<String>,
    moments: Moments,
}

/// What the rule judges: a unit on its own, or a group.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Entity {
    Unit(String),
    Group(String),
}

#[derive(Clone, Copy, Default)]
struct Judged {
    label: Option<Label>,
    since: Option<i64>,
    n: u64,
    skew: f64,
    excess_kurtosis: f64,
}

#[derive(Default)]
struct SourceState {
    units: Vec<Unit>,
    by_name: HashMap<String, usize>,
    entities: HashMap<Entity, Judged>,
    /// Label of each unit, by ROI number, for routing.
    roi_labels: HashMap<i32, Option<Label>>,
    /// Frames up to this one are covered by a judged moments table.
    covered: Option<i64>,
    /// Trace batches waiting for moments, oldest first.
    held: VecDeque<RecordBatch>,
    warned_held: bool,
    /// Port schemas for the traces schema last seen.
    port_schemas: Option<(SchemaRef, [SchemaRef; 3])>,
    neurons_schema: Option<SchemaRef>,
}

impl Transform for Predictability {
    fn accepts(&self) -> Vec<Layout> {
        vec![Layout::Table, Layout::Traces]
    }

    fn input_layout(&self, index: usize) -> Option<Layout> {
        INPUT_LAYOUTS.get(index).map(|(_, layout)| *layout)
    }

    fn ports(&self) -> Vec<PortSpec> {
        vec![
            PortSpec::default_port(&[Layout::Table]),
            PortSpec::named(PREDICTABLE_PORT, &[Layout::Traces]),
            PortSpec::named(UNPREDICTABLE_PORT, &[Layout::Traces]),
            PortSpec::named(UNLABELLED_PORT, &[Layout::Traces]),
        ]
    }

    fn process(
        &mut self,
        input: &Input,
        batch: RecordBatch,
        out: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        let schema = batch.schema();
        let sid = traces::stream_id(&schema);
        if input.role(&INPUT_LAYOUTS, &schema)? == Layout::Traces {
            let src = self.sources.get_or_insert_with(&sid, SourceState::default);
            return src.traces(&self.options, &sid, batch, out);
        }
        let source = schema
            .metadata()
            .get(SOURCE_STREAM_KEY)
            .cloned()
            .ok_or_else(|| {
                let why = format!("a moments table without `{SOURCE_STREAM_KEY}`");
                err(&sid, format!("input `{}`: {why}", input.name))
            })?;
        let src = self
            .sources
            .get_or_insert_with(&source, SourceState::default);
        let judged = src.moments(&self.rule, &self.options, &source, &sid, &batch, out);
        for (label, n) in src.population(&self.options) {
            population_gauge()
                .with_label_values(&[self.id.as_str(), source.as_str(), label])
                .set(n as i64);
        }
        judged
    }

    fn finish(&mut self, out: &mut TransformContext) -> Result<(), ComponentError> {
        let (id, options) = (&self.id, &self.options);
        self.sources.finish_each(|source, s| {
            s.release(options, source, true, out)
                .and_then(|_| s.emit_neurons(options, source, None, out))
                .inspect_err(|e| {
                    tracing::error!(component = %id, stream = %source, error = %e, "flushing labels failed");
                })
        })
    }
}

fn column<'a, T: 'static>(
    b: &'a RecordBatch,
    name: &str,
    sid: &str,
) -> Result<&'a T, ComponentError> {
    b.schema()
        .index_of(name)
        .ok()
        .and_then(|i| b.column(i).as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            err(
                sid,
                format!("moments table: no column `{name}` of the expected type"),
            )
        })
}

/// `neurod_poyo_neurons{component_id, stream, label}`: the units of each source stream by
/// their current label.
fn population_gauge() -> &'static prometheus::IntGaugeVec {
    static SERIES: std::sync::OnceLock<prometheus::IntGaugeVec> = std::sync::OnceLock::new();
    SERIES.get_or_init(|| {
        let g = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "neurod_poyo_neurons",
                "Units of each source stream by their current POYO-SSL label (predictable, unpredictable, unlabelled).",
            ),
            &["component_id", "stream", "label"],
        )
        .expect("valid metric definition");
        if let Err(e) = crate::metrics::shared_registry().register(Box::new(g.clone())) {
            tracing::warn!(error = %e, "predictability metrics not registered");
        }
        g
    })
}

impl SourceState {
    /// How many units carry each label now.
    fn population(&self, o: &Options) -> [(&'static str, usize); 3] {
        let mut n = [0usize; 3];
        for u in &self.units {
            let i = match self.entities.get(&self.entity(o, u)).and_then(|j| j.label) {
                Some(Label::Predictable) => 0,
                Some(Label::Unpredictable) => 1,
                None => 2,
            };
            n[i] += 1;
        }
        [
            ("predictable", n[0]),
            ("unpredictable", n[1]),
            ("unlabelled", n[2]),
        ]
    }

    fn moments(
        &mut self,
        rule: &PoyoRule,
        o: &Options,
        source: &str,
        sid: &str,
        batch: &RecordBatch,
        out: &mut Emitter,
    ) -> Result<(), ComponentError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let frames = column::<Int64Array>(batch, FRAME_INDEX, sid)?;
        let units = column::<StringArray>(batch, UNIT, sid)?;
        let groups = column::<StringArray>(batch, GROUP, sid).ok();
        let n = column::<Int64Array>(batch, N, sid)?;
        let [mean, m2, m3, m4] = [MEAN, M2, M3, M4].map(|c| column::<Float64Array>(batch, c, sid));
        let (mean, m2, m3, m4) = (mean?, m2?, m3?, m4?);
        let mut frame = i64::MIN;
        for i in 0..batch.num_rows() {
            if units.is_null(i) {
                continue;
            }
            frame = frame.max(frames.value(i));
            let name = units.value(i);
            let u = match self.by_name.get(name) {
                Some(&u) => u,
                None => {
                    self.units.push(Unit {
                        name: name.to_string(),
                        group_column: None,
                        moments: Moments::default(),
                    });
                    self.by_name.insert(name.to_string(), self.units.len() - 1);
                    self.units.len() - 1
                }
            };
            let unit = &mut self.units[u];
            unit.group_column = groups
                .filter(|g| g.is_valid(i))
                .map(|g| g.value(i).to_string());
            unit.moments = Moments {
                n: n.value(i).max(0) as u64,
                mean: mean.value(i),
                m2: m2.value(i),
                m3: m3.value(i),
                m4: m4.value(i),
            };
        }
        self.judge(rule, o, source, frame, out)?;
        self.covered = Some(self.covered.map_or(frame, |c| c.max(frame)));
        self.release(o, source, false, out)
    }

    fn entity(&self, o: &Options, u: &Unit) -> Entity {
        match o.groups.get(&u.name).or(u.group_column.as_ref()) {
            Some(g) => Entity::Group(g.clone()),
            None => Entity::Unit(u.name.clone()),
        }
    }

    /// Judges every unit and group on the moments known now; sends the units whose label changed.
    fn judge(
        &mut self,
        rule: &PoyoRule,
        o: &Options,
        source: &str,
        frame: i64,
        out: &mut Emitter,
    ) -> Result<(), ComponentError> {
        let mut merged: BTreeMap<Entity, Moments> = BTreeMap::new();
        for u in &self.units {
            let m = merged.entry(self.entity(o, u)).or_default();
            *m = m.merge(&u.moments);
        }
        let mut changed_entities = Vec::new();
        for (e, m) in merged {
            let j = self.entities.entry(e.clone()).or_default();
            j.n = m.n;
            j.skew = m.skew();
            j.excess_kurtosis = m.excess_kurtosis();
            if m.n < o.min_samples {
                continue;
            }
            let next = next_label(rule, o.hysteresis, j.label, j.skew, j.excess_kurtosis);
            if next != j.label {
                j.label = next;
                j.since = Some(frame);
                changed_entities.push(e);
            }
        }
        let changed_entities: HashSet<Entity> = changed_entities.into_iter().collect();
        let changed: Vec<usize> = (0..self.units.len())
            .filter(|&u| changed_entities.contains(&self.entity(o, &self.units[u])))
            .collect();
        for u in &self.units {
            let label = self.entities.get(&self.entity(o, u)).and_then(|j| j.label);
            if let Ok(roi) = u.name.parse::<i32>() {
                self.roi_labels.insert(roi, label);
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        self.emit_neurons(o, source, Some((frame, &changed)), out)
    }

    /// Neuron table rows: of `only` (a moments frame and units), or of every unit at the end.
    fn emit_neurons(
        &mut self,
        o: &Options,
        source: &str,
        only: Option<(i64, &[usize])>,
        out: &mut Emitter,
    ) -> Result<(), ComponentError> {
        if self.units.is_empty() {
            return Ok(());
        }
        let all: Vec<usize> = (0..self.units.len()).collect();
        let (frame, rows) = match only {
            Some((f, r)) => (Some(f), r),
            None => (None, &all[..]),
        };
        let schema = self
            .neurons_schema
            .get_or_insert_with(|| neurons_schema(source))
            .clone();
        let info: Vec<(Option<String>, Judged)> = rows
            .iter()
            .map(|&u| {
                let e = self.entity(o, &self.units[u]);
                let j = self.entities.get(&e).copied().unwrap_or_default();
                match e {
                    Entity::Group(g) => (Some(g), j),
                    Entity::Unit(_) => (None, j),
                }
            })
            .collect();
        let last_frame = self
            .entities
            .values()
            .filter_map(|j| j.since)
            .max()
            .unwrap_or(-1);
        let frame = frame.unwrap_or_else(|| self.covered.unwrap_or(last_frame));
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![frame; rows.len()])),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|&u| self.units[u].name.as_str()),
            )),
            Arc::new(StringArray::from_iter(
                info.iter().map(|(g, _)| g.as_deref()),
            )),
            Arc::new(Int64Array::from_iter_values(
                info.iter().map(|(_, j)| j.n as i64),
            )),
            Arc::new(Float64Array::from_iter_values(
                info.iter().map(|(_, j)| j.skew),
            )),
            Arc::new(Float64Array::from_iter_values(
                info.iter().map(|(_, j)| j.excess_kurtosis),
            )),
            Arc::new(StringArray::from_iter_values(
                info.iter()
                    .map(|(_, j)| j.label.map_or(UNLABELLED, Label::as_str)),
            )),
            Arc::new(Int64Array::from_iter(info.iter().map(|(_, j)| j.since))),
        ];
        let b = RecordBatch::try_new(schema, cols)
            .map_err(|e| ComponentError::arrow("building the neuron table", e))?;
        out.emit(b);
        Ok(())
    }

    fn traces(
        &mut self,
        o: &Options,
        sid: &str,
        batch: RecordBatch,
        out: &mut Emitter,
    ) -> Result<(), ComponentError> {
        // Checked now, so that a malformed batch is reported when it arrives, not when released.
        traces::frame_index(&batch, sid)?;
        traces::roi(&batch, sid)?;
        traces::time_s(&batch, sid)?;
        if batch.num_rows() > 0 {
            self.held.push_back(batch);
        }
        self.release(o, sid, false, out)
    }

    /// Routes the held rows whose frames are covered (all of them at the end, or those held
    /// longer than `max_hold_s`).
    fn release(
        &mut self,
        o: &Options,
        source: &str,
        at_end: bool,
        out: &mut Emitter,
    ) -> Result<(), ComponentError> {
        let newest_time = self.held.back().and_then(|b| {
            traces::time_s(b, source)
                .ok()
                .and_then(|t| (!t.is_empty()).then(|| t.value(t.len() - 1)))
        });
        while let Some(b) = self.held.pop_front() {
            let frames = traces::frame_index(&b, source)?;
            let times = traces::time_s(&b, source)?;
            let overdue = newest_time.is_some_and(|t| t - times.value(0) > o.max_hold_s);
            if overdue && !self.warned_held {
                self.warned_held = true;
                tracing::warn!(stream = %source, "trace rows waited {} s for moments and go with the labels known: is the moments stream of `{source}` among the inputs?", o.max_hold_s);
            }
            let cover = if at_end || overdue {
                i64::MAX
            } else {
                self.covered.unwrap_or(i64::MIN)
            };
            let (ready, rest): (Vec<u32>, Vec<u32>) =
                (0..b.num_rows() as u32).partition(|&i| frames.value(i as usize) <= cover);
            if ready.is_empty() {
                self.held.push_front(b);
                break;
            }
            self.route(&b, &ready, source, out)?;
            if !rest.is_empty() {
                let rest = take(&b, &rest)?;
                self.held.push_front(rest);
                break;
            }
        }
        Ok(())
    }

    /// Sends rows `idx` of a traces batch to the port of their unit's label.
    fn route(
        &mut self,
        b: &RecordBatch,
        idx: &[u32],
        source: &str,
        out: &mut Emitter,
    ) -> Result<(), ComponentError> {
        let rois = traces::roi(b, source)?;
        let mut by_port: [Vec<u32>; 3] = Default::default();
        for &i in idx {
            let p = match self
                .roi_labels
                .get(&rois.value(i as usize))
                .copied()
                .flatten()
            {
                Some(Label::Predictable) => 0,
                Some(Label::Unpredictable) => 1,
                None => 2,
            };
            by_port[p].push(i);
        }
        let schema = b.schema();
        let fresh = self
            .port_schemas
            .as_ref()
            .is_none_or(|(s, _)| !Arc::ptr_eq(s, &schema) && **s != *schema);
        if fresh {
            let ports = [PREDICTABLE_PORT, UNPREDICTABLE_PORT, UNLABELLED_PORT]
                .map(|p| stream::with_stream_id(&schema, &format!("{source}.{p}")));
            self.port_schemas = Some((schema.clone(), ports));
        }
        let Some((_, schemas)) = &self.port_schemas else {
            return Ok(());
        };
        for (k, port) in [PREDICTABLE_PORT, UNPREDICTABLE_PORT, UNLABELLED_PORT]
            .iter()
            .enumerate()
        {
            if by_port[k].is_empty() {
                continue;
            }
            let rows = take(b, &by_port[k])?;
            let rows = RecordBatch::try_new(schemas[k].clone(), rows.columns().to_vec())
                .map_err(|e| ComponentError::arrow("building routed trace rows", e))?;
            out.emit_to(port, rows);
        }
        Ok(())
    }
}

fn take(b: &RecordBatch, idx: &[u32]) -> Result<RecordBatch, ComponentError> {
    let idx = UInt32Array::from(idx.to_vec());
    arrow::compute::take_record_batch(b, &idx)
        .map_err(|e| ComponentError::arrow("selecting trace rows", e))
}

fn neurons_schema(source: &str) -> SchemaRef {
    let md: HashMap<String, String> = [
        (
            keys::STREAM_ID.to_string(),
            format!("{source}{NEURONS_SUFFIX}"),
        ),
        (keys::LAYOUT.to_string(), Layout::Table.as_str().to_string()),
        (keys::STREAM_KIND.to_string(), "neurons".to_string()),
        (SOURCE_STREAM_KEY.to_string(), source.to_string()),
    ]
    .into();
    Arc::new(Schema::new_with_metadata(
        vec![
            Field::new(FRAME_INDEX, DataType::Int64, false),
            Field::new(UNIT, DataType::Utf8, false),
            Field::new(GROUP, DataType::Utf8, true),
            Field::new(N, DataType::Int64, false),
            Field::new(SKEW, DataType::Float64, false),
            Field::new(EXCESS_KURTOSIS, DataType::Float64, false),
            Field::new(LABEL, DataType::Utf8, false),
            Field::new(LABELLED_SINCE_FRAME, DataType::Int64, true),
        ],
        md,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transforms::dff::tests::{python, suite2p_traces, traces_batches};

    fn moments_input() -> Input {
        Input::new(0, "moments")
    }

    fn traces_input() -> Input {
        Input::new(1, "dff")
    }

    fn build_with(options: &str) -> Box<dyn Transform> {
        build(
            &BuildContext {
                id: "pred",
                data_dir: "/tmp".as_ref(),
                inputs: &["moments".into(), "dff".into()],
            },
            toml::from_str(options).unwrap(),
        )
        .unwrap_or_else(|e| panic!("{e:?}"))
    }

    /// A moments table (as `moments` emits it) of unit-variance units with the given n, skew
    /// and excess kurtosis: m2 = n, m3 = skew·n, m4 = (kurtosis + 3)·n.
    fn table(source: &str, frame: i64, units: &[(&str, u64, f64, f64)]) -> RecordBatch {
        let md: HashMap<String, String> = [
            (keys::STREAM_ID.to_string(), format!("{source}.moments")),
            (keys::LAYOUT.to_string(), "table".to_string()),
            (SOURCE_STREAM_KEY.to_string(), source.to_string()),
        ]
        .into();
        let f = |v: Vec<f64>| Arc::new(Float64Array::from(v)) as ArrayRef;
        let k = units.len();
        let n: Vec<f64> = units.iter().map(|u| u.1 as f64).collect();
        RecordBatch::try_new(
            Arc::new(Schema::new_with_metadata(
                vec![
                    Field::new(FRAME_INDEX, DataType::Int64, false),
                    Field::new(UNIT, DataType::Utf8, false),
                    Field::new(N, DataType::Int64, false),
                    Field::new(MEAN, DataType::Float64, false),
                    Field::new(M2, DataType::Float64, false),
                    Field::new(M3, DataType::Float64, false),
                    Field::new(M4, DataType::Float64, false),
                ],
                md,
            )),
            vec![
                Arc::new(Int64Array::from(vec![frame; k])),
                Arc::new(StringArray::from_iter_values(units.iter().map(|u| u.0))),
                Arc::new(Int64Array::from_iter_values(
                    units.iter().map(|u| u.1 as i64),
                )),
                f(vec![0.0; k]),
                f(n.clone()),
                f(units.iter().zip(&n).map(|(u, n)| u.2 * n).collect()),
                f(units.iter().zip(&n).map(|(u, n)| (u.3 + 3.0) * n).collect()),
            ],
        )
        .unwrap()
    }

    fn labels(out: &Emitter) -> Vec<(String, String, Option<i64>)> {
        out.batches
            .iter()
            .filter(|(p, _)| p.is_empty())
            .flat_map(|(_, b)| {
                let s = |c: &str| {
                    b.column(b.schema().index_of(c).unwrap())
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .unwrap()
                        .clone()
                };
                let (u, l) = (s(UNIT), s(LABEL));
                let since = b
                    .column(b.schema().index_of(LABELLED_SINCE_FRAME).unwrap())
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .clone();
                (0..b.num_rows())
                    .map(|i| {
                        (
                            u.value(i).to_string(),
                            l.value(i).to_string(),
                            since.is_valid(i).then(|| since.value(i)),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn thresholds_with_hysteresis_do_not_flicker() {
        let rule = PoyoRule::default();
        let h = 0.05;
        // The first label is the plain rule.
        assert_eq!(
            next_label(&rule, h, None, 3.51, 22.62),
            Some(Label::Predictable)
        );
        assert_eq!(
            next_label(&rule, h, None, 3.52, 0.0),
            Some(Label::Unpredictable)
        );
        assert_eq!(
            next_label(&rule, h, None, 0.0, 22.63),
            Some(Label::Unpredictable)
        );
        // Predictable stays so up to 3.51·1.05 = 3.6855 and 22.62·1.05 = 23.751.
        let p = Some(Label::Predictable);
        assert_eq!(next_label(&rule, h, p, 3.68, 23.7), p);
        assert_eq!(
            next_label(&rule, h, p, 3.69, 0.0),
            Some(Label::Unpredictable)
        );
        assert_eq!(
            next_label(&rule, h, p, 0.0, 23.76),
            Some(Label::Unpredictable)
        );
        // Unpredictable needs both below 3.51·0.95 = 3.3345 and 22.62·0.95 = 21.489.
        let u = Some(Label::Unpredictable);
        assert_eq!(next_label(&rule, h, u, 3.4, 10.0), u);
        assert_eq!(next_label(&rule, h, u, 3.3, 21.5), u);
        assert_eq!(next_label(&rule, h, u, 3.3, 21.4), p);
        // Undefined statistics keep the label; Pearson's convention adds 3.
        assert_eq!(next_label(&rule, h, u, f64::NAN, 0.0), u);
        let pearson = PoyoRule {
            kurtosis: KurtosisConvention::Pearson,
            ..rule
        };
        assert_eq!(
            next_label(&pearson, h, None, 0.0, 20.0),
            Some(Label::Unpredictable)
        );
    }

    #[test]
    fn labels_wait_for_min_samples_then_change_only_past_the_margin() {
        let mut tr = build_with("min_samples = 100");
        let mut out = TransformContext::detached("t");
        let steps: [(i64, u64, f64); 6] = [
            (10, 50, 5.0),  // too few samples: no label, even though clearly unpredictable
            (20, 100, 3.0), // labelled predictable
            (30, 150, 3.6), // above 3.51 but within the margin: stays
            (40, 200, 3.4),
            (50, 250, 3.7), // past 3.6855: unpredictable
            (60, 300, 3.4), // below 3.51 but not below 3.3345: stays
        ];
        for (frame, n, skew) in steps {
            tr.process(
                &moments_input(),
                table("s", frame, &[("0", n, skew, 1.0)]),
                &mut out,
            )
            .unwrap();
        }
        assert_eq!(
            labels(&out),
            vec![
                ("0".into(), "predictable".into(), Some(20)),
                ("0".into(), "unpredictable".into(), Some(50)),
            ]
        );
        out.batches.clear();
        tr.finish(&mut out).unwrap();
        assert_eq!(
            labels(&out),
            vec![("0".into(), "unpredictable".into(), Some(50))]
        );
    }

    #[test]
    fn trace_rows_go_to_the_port_of_their_label_once_moments_cover_them() {
        let f = ndarray::Array2::from_shape_fn((2, 6), |(r, t)| (r * 10 + t) as f32);
        let traces = traces_batches("s", &f, None, 5);
        let mut tr = build_with("min_samples = 3");
        let mut out = TransformContext::detached("t");
        // Traces on the moments input, or a table on the traces input: errors naming the input.
        let e = tr
            .process(&moments_input(), traces[0].clone(), &mut out)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("input `moments`") && e.contains("traces stream"),
            "{e}"
        );
        let moments = table("s", 0, &[("0", 2, 0.0, 0.0)]);
        let e = tr.process(&traces_input(), moments, &mut out).unwrap_err();
        assert!(e.to_string().contains("input `dff`"), "{e}");
        // Traces first: held, nothing is known of their units yet.
        tr.process(&traces_input(), traces[0].clone(), &mut out)
            .unwrap();
        assert!(out.batches.is_empty());
        tr.process(
            &moments_input(),
            table("s", 0, &[("0", 2, 0.0, 0.0), ("1", 2, 0.0, 0.0)]),
            &mut out,
        )
        .unwrap();
        tr.process(
            &moments_input(),
            table("s", 2, &[("0", 3, 0.0, 0.0), ("1", 3, 9.0, 0.0)]),
            &mut out,
        )
        .unwrap();
        for b in &traces[1..] {
            tr.process(&traces_input(), b.clone(), &mut out).unwrap();
        }
        tr.finish(&mut out).unwrap();
        assert_eq!(out.undeclared_ports(&tr.ports()), Vec::<String>::new());
        let mut rows: BTreeMap<String, Vec<(i64, i32)>> = BTreeMap::new();
        for (port, b) in &out.batches {
            if port.is_empty() {
                continue;
            }
            assert_eq!(b.schema().metadata()[keys::STREAM_ID], format!("s.{port}"));
            let t = traces::frame_index(b, "").unwrap();
            let r = traces::roi(b, "").unwrap();
            rows.entry(port.clone())
                .or_default()
                .extend((0..b.num_rows()).map(|i| (t.value(i), r.value(i))));
        }
        // Frame 0 judged with 2 samples: unlabelled; frames 1–5 after the table at frame 2.
        assert_eq!(rows[UNLABELLED_PORT], vec![(0, 0), (0, 1)]);
        assert_eq!(
            rows[PREDICTABLE_PORT],
            (1..6).map(|t| (t, 0)).collect::<Vec<_>>()
        );
        assert_eq!(
            rows[UNPREDICTABLE_PORT],
            (1..6).map(|t| (t, 1)).collect::<Vec<_>>()
        );
    }

    /// Groups judged on merged moments: equal to scipy on the concatenated traces of the group.
    #[test]
    fn groups_are_judged_on_merged_moments_equal_to_scipy() {
        let Some((dir, f, fneu)) = suite2p_traces() else {
            return;
        };
        let Some(py) = python() else { return };
        let mut groups = String::from("groups = {");
        for r in 0..23 {
            groups += &format!("\"{r}\" = \"{}\", ", if r < 12 { "A" } else { "B" });
        }
        groups.pop();
        groups.pop();
        groups += "}\nmin_samples = 600";
        let mut dff = crate::transforms::dff::tests::build_with("dff", "");
        let mut mo = crate::transforms::moments::build(
            &BuildContext {
                id: "m",
                data_dir: "/tmp".as_ref(),
                inputs: &[],
            },
            toml::from_str("value = 'fc'").unwrap(),
        )
        .unwrap();
        let mut pred = build_with(&groups);
        let mut out = TransformContext::detached("t");
        for b in traces_batches("s2p", &f, Some(&fneu), 500) {
            let mut a = TransformContext::detached("t");
            dff.process(&Input::new(0, "in"), b, &mut a).unwrap();
            let mut m = TransformContext::detached("t");
            for (_, b) in a.out.batches {
                pred.process(&traces_input(), b.clone(), &mut out).unwrap();
                mo.process(&Input::new(0, "in"), b, &mut m).unwrap();
            }
            for (_, b) in m.out.batches {
                pred.process(&moments_input(), b, &mut out).unwrap();
            }
        }
        let mut m = TransformContext::detached("t");
        mo.finish(&mut m).unwrap();
        for (_, b) in m.out.batches {
            pred.process(&moments_input(), b, &mut out).unwrap();
        }
        out.batches.clear();
        pred.finish(&mut out).unwrap();
        let (_, last) = out.batches.iter().find(|(p, _)| p.is_empty()).unwrap();
        let code = r#"
import sys, numpy as np
from scipy import stats
d = sys.argv[1]
F = np.load(d + '/F.npy').astype(np.float64); N = np.load(d + '/Fneu.npy').astype(np.float64)
fc = (F - 0.7 * N).astype(np.float32).astype(np.float64)   # dff's `fc` column is Float32
for g in (fc[:12].ravel(), fc[12:].ravel()):
    print(repr(float(stats.skew(g))), repr(float(stats.kurtosis(g))))
"#;
        let o = std::process::Command::new(&py)
            .args(["-c", code])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let want: Vec<Vec<f64>> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
            .collect();
        let g = last
            .column(2)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let n = last
            .column(3)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let skew = last
            .column(4)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        let kurt = last
            .column(5)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        let label = last
            .column(6)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(last.num_rows(), 23);
        for i in 0..23 {
            let k = usize::from(g.value(i) == "B");
            assert_eq!(g.value(i), if i < 12 { "A" } else { "B" });
            assert_eq!(n.value(i), if i < 12 { 12 * 864 } else { 11 * 864 });
            let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
            assert!(
                rel(skew.value(i), want[k][0]) < 1e-9,
                "{} vs {}",
                skew.value(i),
                want[k][0]
            );
            assert!(
                rel(kurt.value(i), want[k][1]) < 1e-9,
                "{} vs {}",
                kurt.value(i),
                want[k][1]
            );
            let expect = PoyoRule::default().label(want[k][0], want[k][1]).unwrap();
            assert_eq!(label.value(i), expect.as_str(), "unit {i}");
        }
    }
}
