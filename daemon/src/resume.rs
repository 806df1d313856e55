//! What each source resumes from after a reload or a restart: the directories of the `store`
//! sinks that take its output directly (by any port). A source asks them, through its
//! [`ResumeLookup`], what they already hold of its streams; the stores drop any row they hold.
//! Stores fed through transforms hold derived streams (other ids) and are not asked.

use std::collections::HashMap;
use std::path::PathBuf;

use pipelines::storage::ResumeLookup;

use neurod::config::{Built, Plan};

/// The resume lookup of every source of a plan, by component id.
pub fn lookups(plan: &Plan) -> HashMap<String, ResumeLookup> {
    let mut stores: HashMap<&str, Vec<PathBuf>> = HashMap::new();
    for c in &plan.components {
        let Built::Sink(sink) = &c.built else {
            continue;
        };
        let Some(dir) = sink.store_dir() else {
            continue;
        };
        for input in &c.inputs {
            let dirs = stores.entry(input.component.as_str()).or_default();
            if !dirs.contains(&dir) {
                dirs.push(dir.clone());
            }
        }
    }
    plan.components
        .iter()
        .filter(|c| matches!(c.built, Built::Source(_)))
        .map(|c| {
            let dirs = stores.get(c.id.as_str()).cloned().unwrap_or_default();
            (c.id.clone(), ResumeLookup::new(dirs))
        })
        .collect()
}
