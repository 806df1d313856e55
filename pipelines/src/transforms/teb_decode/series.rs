//! The process-wide metric series of `teb_decode` (in [`crate::metrics::shared_registry`], as
//! transforms get no `ComponentMetrics` of their own), and one transform's handles on them.

use std::sync::OnceLock;

use prometheus::core::Collector;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts,
};

use crate::metrics::shared_registry;

struct Series {
    latency: HistogramVec,
    te: GaugeVec,
    mse: GaugeVec,
    gaps: IntCounterVec,
    gap_bins: IntCounterVec,
    reloads: IntCounterVec,
    records: IntCounterVec,
    refused: IntCounterVec,
}

fn register<C: Collector + Clone + 'static>(c: C, name: &str) -> C {
    if let Err(e) = shared_registry().register(Box::new(c.clone())) {
        tracing::warn!(error = %e, metric = name, "teb_decode metric not registered");
    }
    c
}

fn series() -> &'static Series {
    static SERIES: OnceLock<Series> = OnceLock::new();
    SERIES.get_or_init(|| {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
                name,
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register(
                GaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
                name,
            )
        };
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "neurod_teb_decode_latency_seconds",
                "Per bin, from the bin being complete on both inputs (the later close) to its step done and its record sent.",
            )
            .buckets(vec![
                1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2,
                0.1, 0.25, 1.0,
            ]),
            &["component_id"],
        )
        .expect("valid metric definition");
        Series {
            latency: register(latency, "neurod_teb_decode_latency_seconds"),
            te: gauge(
                "neurod_transfer_entropy_bits_per_second",
                "The TEB rate (KL of the source's posterior from the target-only prior) smoothed over rate_smoothing_s, in bits per second: an estimate of the transfer entropy from source to target.",
                &["component_id", "model", "source", "target"],
            ),
            mse: gauge(
                "neurod_teb_prediction_squared_error",
                "Mean squared error of the predictions over the bins of the last 30 s with an actual value, per target column (raw units squared).",
                &["component_id", "column"],
            ),
            gaps: counter(
                "neurod_teb_gaps_total",
                "Gaps in the bins both inputs have (the recurrent state was reset after each).",
                &["component_id"],
            ),
            gap_bins: counter(
                "neurod_teb_gap_bins_total",
                "Bins missing from either input between two decoded bins (never filled in).",
                &["component_id"],
            ),
            reloads: counter(
                "neurod_teb_model_reloads_total",
                "Model reloads after model.json or weights.safetensors changed, by outcome (ok, failed).",
                &["component_id", "outcome"],
            ),
            records: counter(
                "neurod_teb_records_total",
                "Per-bin records for emit_to, by outcome (sent, failed: no reader, full buffer, ...).",
                &["component_id", "outcome"],
            ),
            refused: counter(
                "neurod_teb_refused_rows_total",
                "Input rows not binned: late (older than a bin already complete) or not_finite.",
                &["component_id", "input", "reason"],
            ),
        }
    })
}

/// One transform's series, labels resolved once.
pub(super) struct Handles {
    pub id: String,
    pub latency: Histogram,
    pub gaps: IntCounter,
    pub gap_bins: IntCounter,
    pub reload_ok: IntCounter,
    pub reload_failed: IntCounter,
    pub records_sent: IntCounter,
    pub records_failed: IntCounter,
    /// `[input][late, not_finite]`
    pub refused: [[IntCounter; 2]; 2],
    te: Option<(String, String, String, Gauge)>,
    mse: Vec<Gauge>,
}

impl Handles {
    pub fn new(id: &str, inputs: [&str; 2]) -> Self {
        let s = series();
        let refused = inputs.map(|input| {
            ["late", "not_finite"].map(|r| s.refused.with_label_values(&[id, input, r]))
        });
        Handles {
            id: id.into(),
            latency: s.latency.with_label_values(&[id]),
            gaps: s.gaps.with_label_values(&[id]),
            gap_bins: s.gap_bins.with_label_values(&[id]),
            reload_ok: s.reloads.with_label_values(&[id, "ok"]),
            reload_failed: s.reloads.with_label_values(&[id, "failed"]),
            records_sent: s.records.with_label_values(&[id, "sent"]),
            records_failed: s.records.with_label_values(&[id, "failed"]),
            refused,
            te: None,
            mse: Vec::new(),
        }
    }

    /// Sets the transfer-entropy gauge of these streams (labels resolved again only when they
    /// change).
    pub fn set_te(&mut self, model: &str, source: &str, target: &str, bits_per_s: f64) {
        match &self.te {
            Some((m, s, t, g)) if m == model && s == source && t == target => g.set(bits_per_s),
            _ => {
                let g = series()
                    .te
                    .with_label_values(&[&self.id, model, source, target]);
                g.set(bits_per_s);
                self.te = Some((model.into(), source.into(), target.into(), g));
            }
        }
    }

    /// The squared-error gauge of each target column.
    pub fn mse(&mut self, columns: &[String]) -> &[Gauge] {
        if self.mse.len() != columns.len() {
            self.mse = columns
                .iter()
                .map(|c| series().mse.with_label_values(&[&self.id, c]))
                .collect();
        }
        &self.mse
    }
}
