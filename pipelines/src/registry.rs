//! Component types by name. A new component is one module plus one line here.

use crate::component::{BuildContext, Sink, Source, Transform};
use crate::{sinks, sources, transforms};

type Builder<T> = fn(&BuildContext, toml::Table) -> Result<Box<T>, Vec<String>>;

pub const SOURCES: &[(&str, Builder<dyn Source>)] = &[
    ("simulated", sources::simulated::build),
    ("spikeglx", sources::spikeglx::build),
    ("openephys", sources::openephys::build),
    ("arrow_ipc", sources::arrow_ipc::build),
    ("suite2p", sources::suite2p::build),
    ("tiff", sources::tiff::build),
    ("replay", sources::replay::build),
];

pub const TRANSFORMS: &[(&str, Builder<dyn Transform>)] = &[
    ("select_channels", transforms::select_channels::build),
    ("spike_detect", transforms::spike_detect::build),
    ("bin_features", transforms::bin_features::build),
    ("motion_correct", transforms::motion_correct::build),
    ("roi_traces", transforms::roi_traces::build),
    ("dff", transforms::dff::build),
    ("moments", transforms::moments::build),
    ("predictability", transforms::predictability::build),
    ("teb_decode", transforms::teb_decode::build),
];

pub const SINKS: &[(&str, Builder<dyn Sink>)] = &[("store", sinks::store::build)];

fn find<'a, T: ?Sized>(
    table: &'a [(&'a str, Builder<T>)],
    kind: &str,
    type_name: &str,
    id: &str,
) -> Result<Builder<T>, Vec<String>> {
    table
        .iter()
        .find(|(n, _)| *n == type_name)
        .map(|(_, b)| *b)
        .ok_or_else(|| {
            let known: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            vec![format!(
                "{kind} `{id}`: unknown type `{type_name}` (known: {})",
                known.join(", ")
            )]
        })
}

pub fn build_source(
    type_name: &str,
    ctx: &BuildContext,
    options: toml::Table,
) -> Result<Box<dyn Source>, Vec<String>> {
    find(SOURCES, "source", type_name, ctx.id)?(ctx, options)
}

pub fn build_transform(
    type_name: &str,
    ctx: &BuildContext,
    options: toml::Table,
) -> Result<Box<dyn Transform>, Vec<String>> {
    find(TRANSFORMS, "transform", type_name, ctx.id)?(ctx, options)
}

pub fn build_sink(
    type_name: &str,
    ctx: &BuildContext,
    options: toml::Table,
) -> Result<Box<dyn Sink>, Vec<String>> {
    find(SINKS, "sink", type_name, ctx.id)?(ctx, options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    /// Every numeric option of every component (README), with values no rig would use.
    const NUMERIC_KEYS: &[&str] = &[
        "seed",
        "duration_s",
        "probes",
        "units_per_probe",
        "noise_uv",
        "batch_ms",
        "rois",
        "frame_size",
        "frame_rate_hz",
        "poll_ms",
        "idle_timeout_s",
        "max_connections",
        "batch_frames",
        "rate_hz",
        "order",
        "threshold",
        "radius_um",
        "exclude_ms",
        "dead_time_ms",
        "calibration_s",
        "refresh_s",
        "reference_frames",
        "max_shift_px",
        "smooth_sigma",
        "taper_px",
        "neuropil_inner_px",
        "neuropil_min_pixels",
        "neuropil_max_radius_px",
        "max_held_frames",
        "neuropil_coefficient",
        "percentile",
        "window_s",
        "short_window_frames",
        "min_baseline",
        "emit_every_s",
        "tau_s",
        "max_skew",
        "max_kurtosis",
        "min_samples",
        "hysteresis",
        "max_hold_s",
        "bin_ms",
        "rate_smoothing_s",
        "flush_interval_s",
        "rotate_s",
        "rotate_bytes",
        "zstd_level",
    ];
    const ABSURD: &[&str] = &[
        "1e30",
        "-1e30",
        "1e-30",
        "nan",
        "inf",
        "-inf",
        "0.0",
        "9223372036854775807",
        "-1",
        "0",
    ];

    /// Builds `type_name` with `key = value`, adding a `path` when the type needs one; the
    /// build may refuse the value but must not panic.
    fn build_does_not_panic(type_name: &str, key: &str, value: &str) -> bool {
        let dir = std::env::temp_dir();
        let ctx = BuildContext {
            id: "c",
            data_dir: &dir,
            inputs: &[],
        };
        let attempt = |extra: &str| {
            let options: toml::Table =
                toml::from_str(&format!("{key} = {value}\n{extra}")).unwrap();
            catch_unwind(AssertUnwindSafe(|| {
                let r: Result<(), Vec<String>> = if SOURCES.iter().any(|(n, _)| *n == type_name) {
                    build_source(type_name, &ctx, options).map(drop)
                } else if TRANSFORMS.iter().any(|(n, _)| *n == type_name) {
                    build_transform(type_name, &ctx, options).map(drop)
                } else {
                    build_sink(type_name, &ctx, options).map(drop)
                };
                r
            }))
        };
        match attempt("") {
            Err(_) => false,
            Ok(Err(e)) if e.iter().any(|m| m.contains("missing field `path`")) => {
                attempt("path = '/nonexistent/neurod-test'").is_ok()
            }
            Ok(_) => true,
        }
    }

    #[test]
    fn absurd_numeric_options_are_refused_or_harmless_never_a_panic() {
        let types = SOURCES
            .iter()
            .map(|(n, _)| *n)
            .chain(TRANSFORMS.iter().map(|(n, _)| *n))
            .chain(SINKS.iter().map(|(n, _)| *n));
        let mut panicked = Vec::new();
        for t in types {
            for key in NUMERIC_KEYS {
                for value in ABSURD {
                    if !build_does_not_panic(t, key, value) {
                        panicked.push(format!("{t}: {key} = {value}"));
                    }
                }
            }
        }
        assert!(panicked.is_empty(), "builds that panicked: {panicked:#?}");
    }
}
