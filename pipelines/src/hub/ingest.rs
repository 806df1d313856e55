//! Ingest points: sources that accept streams pushed from outside the daemon register here by
//! component id while they run, so that another front end (Arrow Flight `DoPut`) can feed
//! them through the source's own checks, naming, counters and port.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use super::{lock, Hub};

/// What a pushed message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Taken (a schema accepted, a batch delivered, or nothing to deliver yet).
    Taken,
    /// Every consumer of the source has stopped, or the source is stopping: push no more.
    Stopped,
}

/// Why a push was refused; the message names the input and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The pushed data breaks the source's contract (counted in the source's errors).
    #[error("{0}")]
    Rejected(String),
    /// The source cannot take a stream now (stopping, too many streams).
    #[error("{0}")]
    Unavailable(String),
}

/// A source that accepts pushed Arrow IPC streams.
pub trait Ingest: Send + Sync {
    /// Starts one pushed stream from `peer`.
    fn open(&self, peer: SocketAddr) -> Result<Box<dyn IngestStream>, IngestError>;
}

/// One pushed stream: Arrow IPC messages (the schema first), each as its flatbuffer metadata
/// and its body.
pub trait IngestStream: Send {
    fn message(&mut self, metadata: &[u8], body: &[u8]) -> Result<Pushed, IngestError>;
    /// The stream's id once its schema was accepted.
    fn stream_id(&self) -> Option<&str>;
}

/// Keeps an ingest point registered; dropping it removes the registration.
pub struct IngestRegistration {
    hub: Weak<Hub>,
    id: String,
    point: Weak<dyn Ingest>,
}

impl Drop for IngestRegistration {
    fn drop(&mut self) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        let mut points = lock(&hub.ingest);
        // A restarted source may have registered its successor already: remove only ours.
        if points
            .get(&self.id)
            .is_some_and(|p| Weak::ptr_eq(p, &self.point))
        {
            points.remove(&self.id);
        }
    }
}

impl Hub {
    /// Registers `point` as component `id`'s ingest point until the returned guard drops.
    pub fn register_ingest(
        self: &Arc<Self>,
        id: &str,
        point: &Arc<dyn Ingest>,
    ) -> IngestRegistration {
        let weak = Arc::downgrade(point);
        lock(&self.ingest).insert(id.to_string(), weak.clone());
        IngestRegistration {
            hub: Arc::downgrade(self),
            id: id.to_string(),
            point: weak,
        }
    }

    /// The ingest point of component `id`, while it runs.
    pub fn ingest(&self, id: &str) -> Option<Arc<dyn Ingest>> {
        lock(&self.ingest).get(id).and_then(Weak::upgrade)
    }

    /// The ids of the components that take pushed streams now.
    pub fn ingest_points(&self) -> Vec<String> {
        lock(&self.ingest)
            .iter()
            .filter(|(_, p)| p.strong_count() > 0)
            .map(|(id, _)| id.clone())
            .collect()
    }
}
