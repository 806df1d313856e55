//! What a client's schema says its stream is (checked once per connection), and the stream's
//! name.

use arrow::datatypes::{Schema, SchemaRef};

use crate::imaging::frames::check_frames_schema;
use crate::stream::{keys, with_stream_id, ContinuousInfo, Layout, SchemaError};

const MAX_CLIENT_STREAM_ID_CHARS: usize = 64;

/// What the schema said about the stream, checked once per connection.
#[derive(Debug)]
pub(super) struct AcceptedStream {
    pub(super) stream_id: String,
    pub(super) layout: Layout,
    /// The client's schema with our stream id (built once, reused for every batch).
    pub(super) schema: SchemaRef,
    /// One past the last `sample_index` delivered (continuous streams).
    pub(super) next_sample_index: Option<i64>,
}

/// Checks what a client's schema says the stream is, and names the stream.
pub(super) fn accept_schema(
    component_id: &str,
    number: u64,
    schema: &Schema,
) -> Result<AcceptedStream, SchemaError> {
    let md = schema.metadata();
    let layout = match md.get(keys::LAYOUT) {
        None => Layout::Continuous,
        Some(text) => Layout::parse(text).ok_or_else(|| SchemaError::Invalid {
            key: keys::LAYOUT.into(),
            value: text.clone(),
            why: "expected continuous, frames, events, traces, rois or table".into(),
        })?,
    };
    // Downstream components read the layout from the schema: make the default explicit.
    let mut with_layout = schema.clone();
    with_layout
        .metadata
        .insert(keys::LAYOUT.into(), layout.as_str().into());
    match layout {
        Layout::Continuous => {
            ContinuousInfo::from_schema(schema)?;
        }
        // The same check `motion_correct` and `roi_traces` make, so what they would refuse
        // batch after batch is refused here once.
        Layout::Frames => {
            check_frames_schema(&with_layout).map_err(SchemaError::Frames)?;
        }
        // Their columns are the client's business; they travel as they are.
        Layout::Events | Layout::Table | Layout::Traces | Layout::Rois => {}
    }
    let stream_id = stream_id_for(
        component_id,
        md.get(keys::STREAM_ID).map(String::as_str),
        number,
    );
    Ok(AcceptedStream {
        schema: with_stream_id(&with_layout, &stream_id),
        stream_id,
        layout,
        next_sample_index: None,
    })
}

/// `<component>.<client id>` when the client names its stream, else `<component>.<connection>`.
fn stream_id_for(component_id: &str, client_id: Option<&str>, number: u64) -> String {
    match client_id.and_then(sanitize_stream_id) {
        Some(client) => format!("{component_id}.{client}"),
        None => format!("{component_id}.{number}"),
    }
}

/// The client's id as it is (the store names directories reversibly, so `a/b` and `a_b` stay two
/// streams), trimmed of spaces and dots, without control characters and at most [`MAX_CLIENT_STREAM_ID_CHARS`];
/// `None` when nothing is left.
fn sanitize_stream_id(raw: &str) -> Option<String> {
    let cleaned: String = raw
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_CLIENT_STREAM_ID_CHARS)
        .collect();
    // `<component>.` + a leading dot would read as an empty path element.
    let cleaned = cleaned.trim().trim_matches('.');
    (!cleaned.is_empty()).then(|| cleaned.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use arrow::datatypes::{DataType, Field};

    use super::*;

    #[test]
    fn unknown_layout_and_events_layout() {
        let with_layout = |layout: &str| {
            Schema::new_with_metadata(
                vec![Field::new("t", DataType::Float64, false)],
                HashMap::from([(keys::LAYOUT.to_string(), layout.to_string())]),
            )
        };
        assert!(accept_schema("x", 0, &with_layout("events")).is_ok());
        let e = accept_schema("x", 0, &with_layout("spikes")).unwrap_err();
        assert!(e.to_string().contains("spikes"), "{e}");
    }

    #[test]
    fn client_stream_ids_are_sanitised() {
        assert_eq!(
            stream_id_for("ipc", Some("rig A/probe#1"), 3),
            "ipc.rig A/probe#1"
        );
        assert_eq!(stream_id_for("ipc", Some("a_b"), 3), "ipc.a_b");
        assert_eq!(stream_id_for("ipc", Some("a/b\n"), 3), "ipc.a/b");
        assert_eq!(stream_id_for("ipc", Some("../etc"), 3), "ipc./etc");
        assert_eq!(stream_id_for("ipc", Some(" . "), 3), "ipc.3");
        assert_eq!(stream_id_for("ipc", None, 7), "ipc.7");
        let long = "x".repeat(500);
        assert_eq!(stream_id_for("ipc", Some(&long), 0).len(), 4 + 64);
    }
}
