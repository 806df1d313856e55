//! A run-time subscription to one stream, read from async code: the hub's own bounded queue for
//! this reader, with a waker that wakes the reading task. `GET /streams/{id}` and Flight's
//! `DoGet` both read streams through it.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use pipelines::edge::Recv;
use pipelines::hub::{Hub, SubscribeError, SubscribeOptions, Subscription};
use tokio::sync::Notify;

/// What the stream has next for this reader.
pub enum Next {
    Batch(RecordBatch),
    /// The stream has ended.
    Ended,
    /// This reader fell a whole queue behind and was dropped: it must not end as if complete.
    Evicted,
}

pub struct LiveSubscription {
    sub: Subscription,
    notify: Arc<Notify>,
}

impl LiveSubscription {
    /// Subscribes to `id` from its next batch on, with a queue of `capacity` batches; the
    /// reader is evicted at its first overflow. `consumer` labels its edge (`http`, `flight`).
    pub fn open(
        hub: &Hub,
        id: &str,
        capacity: usize,
        consumer: &str,
    ) -> Result<Self, SubscribeError> {
        let notify = Arc::new(Notify::new());
        let waker = {
            let notify = notify.clone();
            Box::new(move || notify.notify_one())
        };
        let sub = hub.subscribe(
            id,
            SubscribeOptions {
                capacity,
                consumer: consumer.into(),
                evict_on_overflow: true,
                waker: Some(waker),
            },
        )?;
        Ok(LiveSubscription { sub, notify })
    }

    /// The stream's schema as last seen.
    pub fn schema(&self) -> Option<SchemaRef> {
        self.sub.schema()
    }

    pub fn stream_id(&self) -> &str {
        self.sub.stream_id()
    }

    /// Waits for the next batch, the end, or this reader's eviction.
    pub async fn next(&mut self) -> Next {
        loop {
            if self.sub.evicted() {
                return Next::Evicted;
            }
            match self.sub.try_recv() {
                Recv::Data(b) => return Next::Batch(b.into_record_batch()),
                // The subscription closes on eviction too: the check above tells them apart.
                Recv::Closed if self.sub.evicted() => continue,
                Recv::Closed => return Next::Ended,
                Recv::Timeout => self.notify.notified().await,
            }
        }
    }
}
