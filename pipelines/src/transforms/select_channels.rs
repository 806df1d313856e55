//! Keeps a subset of a continuous stream's channels (by name or by kind), e.g. to store only
//! the AP band and the sync word. Output stream id: `<input stream id>.<transform id>`.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use serde::Deserialize;

use crate::component::{
    parse_options, BuildContext, ComponentError, Input, PortSpec, Transform, TransformContext,
};
use crate::stream::{self, keys, ChannelKind, Layout};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    /// Channel names to keep.
    #[serde(default)]
    channels: Vec<String>,
    /// Channel kinds to keep (`ap`, `lf`, `sync`, `analog`, `digital`).
    #[serde(default)]
    kinds: Vec<String>,
}

pub struct SelectChannels {
    id: String,
    names: HashSet<String>,
    kinds: HashSet<ChannelKind>,
    /// Projection and output schema for the input schema last seen (streams rarely change).
    cached: Option<(Arc<Schema>, Vec<usize>, Arc<Schema>)>,
}

pub fn build(ctx: &BuildContext, options: toml::Table) -> Result<Box<dyn Transform>, Vec<String>> {
    let o: Options = parse_options(ctx.id, "select_channels", options)?;
    let mut errors = Vec::new();
    let mut kinds = HashSet::new();
    for k in &o.kinds {
        match ChannelKind::parse(k) {
            Some(k) => {
                kinds.insert(k);
            }
            None => errors.push(format!(
                "transform `{}`: unknown channel kind `{k}` (ap, lf, sync, analog, digital)",
                ctx.id
            )),
        }
    }
    if o.channels.is_empty() && o.kinds.is_empty() {
        errors.push(format!(
            "transform `{}`: give `channels` or `kinds` to select",
            ctx.id
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Box::new(SelectChannels {
        id: ctx.id.into(),
        names: o.channels.into_iter().collect(),
        kinds,
        cached: None,
    }))
}

impl SelectChannels {
    fn projection(&self, schema: &Schema) -> Result<(Vec<usize>, Arc<Schema>), ComponentError> {
        let mut keep = vec![0]; // sample_index
        for (i, f) in schema.fields().iter().enumerate().skip(1) {
            let kind = f
                .metadata()
                .get(keys::CHANNEL_KIND)
                .and_then(|k| ChannelKind::parse(k));
            if self.names.contains(f.name()) || kind.is_some_and(|k| self.kinds.contains(&k)) {
                keep.push(i);
            }
        }
        if keep.len() == 1 {
            return Err(ComponentError::Other(format!(
                "stream `{}` has no channel matching the selection",
                stream::stream_id_of(schema).unwrap_or("?")
            )));
        }
        let projected = schema
            .project(&keep)
            .map_err(|e| ComponentError::arrow("projecting channels", e))?;
        let out_id = format!(
            "{}.{}",
            stream::stream_id_of(schema).unwrap_or("stream"),
            self.id
        );
        Ok((keep, stream::with_stream_id(&projected, &out_id)))
    }
}

impl Transform for SelectChannels {
    fn accepts(&self) -> Vec<Layout> {
        vec![Layout::Continuous]
    }
    fn ports(&self) -> Vec<PortSpec> {
        vec![PortSpec::default_port(&[Layout::Continuous])]
    }
    fn process(
        &mut self,
        _input: &Input,
        batch: RecordBatch,
        out: &mut TransformContext,
    ) -> Result<(), ComponentError> {
        let fresh = match &self.cached {
            Some((s, _, _)) => !Arc::ptr_eq(s, &batch.schema()) && **s != *batch.schema(),
            None => true,
        };
        if fresh {
            let (keep, schema) = self.projection(&batch.schema())?;
            self.cached = Some((batch.schema(), keep, schema));
        }
        let Some((_, keep, schema)) = &self.cached else {
            return Ok(());
        };
        let columns = keep.iter().map(|&i| batch.column(i).clone()).collect();
        let b = RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| ComponentError::arrow("building selected batch", e))?;
        out.emit(b);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{batch_from_interleaved, ChannelInfo, ContinuousInfo};

    fn info() -> ContinuousInfo {
        let ch = |name: &str, kind| ChannelInfo {
            name: name.into(),
            kind,
            uv_per_bit: None,
            x_um: None,
            y_um: None,
            shank: None,
        };
        ContinuousInfo {
            stream_id: "p".into(),
            stream_kind: "ap".into(),
            sampling_hz_text: "30000".into(),
            sampling_hz: 30000.0,
            first_sample: 0,
            probe: None,
            channels: vec![
                ch("AP0", ChannelKind::Ap),
                ch("AP1", ChannelKind::Ap),
                ch("SY0", ChannelKind::Sync),
            ],
        }
    }

    #[test]
    fn keeps_named_and_kind_selected_channels_with_their_values() {
        let t: toml::Table = toml::from_str("channels = ['AP1']\nkinds = ['sync']").unwrap();
        let mut tr = build(
            &BuildContext {
                id: "sel",
                data_dir: "/tmp".as_ref(),
                inputs: &[],
            },
            t,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let bytes: Vec<u8> = [1i16, 2, 3, 4, 5, 6]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let b = batch_from_interleaved(&info().schema(), 10, &bytes).unwrap();
        let mut out = TransformContext::detached("t");
        tr.process(&Input::new(0, "in"), b, &mut out).unwrap();
        let o = &out.batches[0].1;
        let names: Vec<_> = o
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["sample_index", "AP1", "SY0"]);
        let ap1 = o
            .column(1)
            .as_any()
            .downcast_ref::<arrow::array::Int16Array>()
            .unwrap();
        assert_eq!(ap1.values(), &[2, 5]);
        assert_eq!(stream::stream_id_of(&o.schema()), Some("p.sel"));
    }

    #[test]
    fn empty_selection_is_a_config_error() {
        let e = build(
            &BuildContext {
                id: "sel",
                data_dir: "/tmp".as_ref(),
                inputs: &[],
            },
            toml::Table::new(),
        )
        .err()
        .unwrap();
        assert!(e[0].contains("sel"));
    }
}
