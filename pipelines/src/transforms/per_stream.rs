//! The one way a transform keeps state per stream.
//!
//! - A stream's state is made on its first batch (`make`), keyed by the stream id the transform
//!   chooses (its own input stream, or the stream a batch belongs to, e.g. the probe a spikes
//!   batch names).
//! - **Schema change** (for states made with [`PerStream::for_schema`]): a batch whose schema
//!   differs from the one the state was made for (fields, types, or metadata such as the rate)
//!   means a new recording under the same id. The old state is
//!   handed back to be flushed (nothing it holds is lost), then a new one starts from this batch.
//!   The stream keeps its place in the order.
//! - At the end, [`PerStream::finish_each`] flushes every stream in the order they were first
//!   seen, all of them even when one fails (the first error is returned).

use std::collections::hash_map::Entry as Slot;
use std::collections::HashMap;
use std::convert::Infallible;

use arrow::datatypes::{Schema, SchemaRef};

use crate::component::ComponentError;

pub struct PerStream<S> {
    /// Stream ids in the order their first batch came.
    order: Vec<String>,
    states: HashMap<String, Entry<S>>,
}

struct Entry<S> {
    /// The schema the state was made for (`None` when the caller does not track it).
    schema: Option<SchemaRef>,
    state: S,
}

impl<S> Default for PerStream<S> {
    fn default() -> Self {
        PerStream {
            order: Vec::new(),
            states: HashMap::new(),
        }
    }
}

fn same_schema(a: &SchemaRef, b: &Schema) -> bool {
    std::ptr::eq(a.as_ref(), b) || **a == *b
}

impl<S> PerStream<S> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get_mut(&mut self, stream: &str) -> Option<&mut S> {
        self.states.get_mut(stream).map(|e| &mut e.state)
    }

    pub fn contains(&self, stream: &str) -> bool {
        self.states.contains_key(stream)
    }

    /// The state of `stream`, made by `make` on its first batch (no schema tracked: for state
    /// fed by several inputs of different schemas).
    pub fn get_or_insert_with(&mut self, stream: &str, make: impl FnOnce() -> S) -> &mut S {
        match self.try_get_or_insert_with(stream, || Ok::<_, Infallible>(make())) {
            Ok(s) => s,
            Err(never) => match never {},
        }
    }

    /// Sets the state of `stream`, replacing any (the stream keeps its place in the order).
    pub fn insert(&mut self, stream: &str, state: S) {
        match self.get_mut(stream) {
            Some(s) => *s = state,
            None => {
                self.get_or_insert_with(stream, || state);
            }
        }
    }

    /// Like [`PerStream::get_or_insert_with`], for a `make` that can fail (then no state is
    /// kept, and the next batch tries again).
    pub fn try_get_or_insert_with<E>(
        &mut self,
        stream: &str,
        make: impl FnOnce() -> Result<S, E>,
    ) -> Result<&mut S, E> {
        self.insert_with(stream, None, make)
    }

    /// The state of `stream` for a batch of `schema`, made by `make` on the first batch and
    /// again after a schema change; the state that change retired comes back too, for the
    /// caller to flush before going on. An `Err` from `make` leaves no state (the next batch
    /// tries again).
    pub fn for_schema<E>(
        &mut self,
        stream: &str,
        schema: &SchemaRef,
        make: impl FnOnce() -> Result<S, E>,
    ) -> Result<(&mut S, Option<S>), E> {
        let retired = match self.states.get(stream) {
            Some(e) if e.schema.as_ref().is_some_and(|s| !same_schema(s, schema)) => {
                self.states.remove(stream).map(|e| e.state)
            }
            _ => None,
        };
        let state = self.insert_with(stream, Some(schema), make)?;
        Ok((state, retired))
    }

    fn insert_with<E>(
        &mut self,
        stream: &str,
        schema: Option<&SchemaRef>,
        make: impl FnOnce() -> Result<S, E>,
    ) -> Result<&mut S, E> {
        match self.states.entry(stream.to_string()) {
            Slot::Occupied(o) => Ok(&mut o.into_mut().state),
            Slot::Vacant(v) => {
                let state = make()?;
                // A stream restarted after a schema change keeps its place.
                if !self.order.iter().any(|s| s == stream) {
                    self.order.push(stream.to_string());
                }
                let entry = v.insert(Entry {
                    schema: schema.cloned(),
                    state,
                });
                Ok(&mut entry.state)
            }
        }
    }

    /// Every stream's state, in the order first seen.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &S)> {
        self.order
            .iter()
            .filter_map(|id| self.states.get(id).map(|e| (id.as_str(), &e.state)))
    }

    /// Every stream's state, in the order first seen.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut S)> {
        let mut by_id: HashMap<&str, &mut S> = self
            .states
            .iter_mut()
            .map(|(k, e)| (k.as_str(), &mut e.state))
            .collect();
        self.order
            .iter()
            .filter_map(move |id| by_id.remove(id.as_str()).map(|s| (id.as_str(), s)))
    }

    /// Flushes every stream with `flush`, in the order first seen; every stream is flushed even
    /// when one fails, and the first error is returned (each is logged by the caller's `flush`).
    pub fn finish_each(
        &mut self,
        mut flush: impl FnMut(&str, &mut S) -> Result<(), ComponentError>,
    ) -> Result<(), ComponentError> {
        let mut first_error = None;
        for (id, s) in self.iter_mut() {
            if let Err(e) = flush(id, s) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field};
    use std::sync::Arc;

    fn schema(cols: &[&str]) -> SchemaRef {
        let fields: Vec<Field> = cols
            .iter()
            .map(|c| Field::new(*c, DataType::Int64, false))
            .collect();
        Arc::new(Schema::new(fields))
    }

    #[test]
    fn states_are_made_once_and_flushed_in_first_seen_order() {
        let mut p: PerStream<Vec<i32>> = PerStream::new();
        for (id, v) in [("b", 1), ("a", 2), ("b", 3), ("c", 4)] {
            p.get_or_insert_with(id, Vec::new).push(v);
        }
        let mut seen = Vec::new();
        let r = p.finish_each(|id, s| {
            seen.push((id.to_string(), s.clone()));
            if id == "a" {
                Err(ComponentError::Other("a failed".into()))
            } else {
                Ok(())
            }
        });
        assert_eq!(r.unwrap_err().to_string(), "a failed");
        let ids: Vec<&str> = seen.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(ids, ["b", "a", "c"], "every stream, first-seen order");
        assert_eq!(seen[0].1, [1, 3]);
    }

    #[test]
    fn a_schema_change_hands_back_the_old_state_and_starts_anew() {
        let mut p: PerStream<Vec<i32>> = PerStream::new();
        let (s1, s2) = (schema(&["x"]), schema(&["x", "y"]));
        let (st, old) = p.for_schema("s", &s1, || Ok::<_, ()>(vec![1])).unwrap();
        assert!(old.is_none());
        st.push(2);
        p.for_schema("t", &s1, || Ok::<_, ()>(vec![9])).unwrap();
        // Same fields, new Arc: the same state.
        let (st, old) = p
            .for_schema("s", &schema(&["x"]), || Ok::<_, ()>(vec![]))
            .unwrap();
        assert!(old.is_none());
        assert_eq!(st, &[1, 2]);
        let (st, old) = p.for_schema("s", &s2, || Ok::<_, ()>(vec![7])).unwrap();
        assert_eq!(st, &[7]);
        assert_eq!(old.unwrap(), [1, 2], "the retired state, to flush");
        let order: Vec<&str> = p.iter_mut().map(|(id, _)| id).collect();
        assert_eq!(order, ["s", "t"], "the stream keeps its place");
        // Replacing a state keeps its place too; a new one goes last.
        p.insert("s", vec![5]);
        p.insert("v", vec![6]);
        let all: Vec<(&str, &Vec<i32>)> = p.iter().collect();
        assert_eq!(all, [("s", &vec![5]), ("t", &vec![9]), ("v", &vec![6])]);
        // A failed make leaves nothing behind.
        assert!(p
            .for_schema("u", &s1, || Err::<Vec<i32>, _>("bad"))
            .is_err());
        assert!(!p.contains("u"));
    }
}
