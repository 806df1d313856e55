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
