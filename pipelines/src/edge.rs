//! Bounded queues between components. Data and control travel in one ordered queue, so a
//! consumer sees the end of a stream after its last batch.
//!
//! Each consumer has one inbox fed by all its inputs. When the inbox is full, a replayed file
//! blocks (nothing is lost and the replay just slows down), while live acquisition never blocks:
//! it drops the oldest queued batch and counts it, so memory stays bounded.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use arrow::record_batch::RecordBatch;

use crate::metrics::ComponentMetrics;

/// What travels on an edge.
#[derive(Debug, Clone)]
pub enum Message {
    Data(RecordBatch),
    /// The producer of one input has finished; the inbox closes when all have.
    End,
}

/// What a full inbox does to its producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Wait for room (file replays).
    Block,
    /// Drop the oldest queued batch and count it (live acquisition).
    DropOldest,
}

/// The consumer is gone; the producer should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the consumer has stopped")]
pub struct Closed;

struct State {
    queue: VecDeque<Message>,
    /// Producers that have not yet sent `End`.
    open_producers: usize,
    receiver_alive: bool,
}

struct Shared {
    state: Mutex<State>,
    capacity: usize,
    not_empty: Condvar,
    not_full: Condvar,
    /// The consumer's metrics: queue fill and dropped rows are properties of the inbox.
    metrics: ComponentMetrics,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A producer that panicked cannot leave the queue inconsistent (every mutation is a
        // single push or pop), so a poisoned lock is safe to keep using.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn record_fill(&self, len: usize) {
        self.metrics.set_queue_fill(len, self.capacity);
    }
}

/// The receiving end, owned by the consumer.
pub struct Inbox {
    shared: Arc<Shared>,
}

/// One producer's handle on a consumer's inbox.
pub struct EdgeSender {
    shared: Arc<Shared>,
    ended: bool,
}

/// Result of waiting on an inbox.
#[derive(Debug)]
pub enum Recv {
    Data(RecordBatch),
    /// Nothing arrived in time.
    Timeout,
    /// Every producer has ended and the queue is drained.
    Closed,
}

impl Inbox {
    /// An inbox holding at most `capacity` messages. `metrics` are the consumer's.
    pub fn new(capacity: usize, metrics: ComponentMetrics) -> Self {
        let capacity = capacity.max(1);
        metrics.set_queue_fill(0, capacity);
        Inbox {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::with_capacity(capacity),
                    open_producers: 0,
                    receiver_alive: true,
                }),
                capacity,
                not_empty: Condvar::new(),
                not_full: Condvar::new(),
                metrics,
            }),
        }
    }

    /// A new producer handle. The inbox stays open until every handle has ended or been dropped.
    pub fn sender(&self) -> EdgeSender {
        self.shared.lock().open_producers += 1;
        EdgeSender {
            shared: self.shared.clone(),
            ended: false,
        }
    }

    /// Waits up to `timeout` for the next batch.
    pub fn recv_timeout(&self, timeout: Duration) -> Recv {
        let deadline = std::time::Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            while let Some(msg) = st.queue.pop_front() {
                self.shared.record_fill(st.queue.len());
                self.shared.not_full.notify_one();
                match msg {
                    Message::Data(b) => return Recv::Data(b),
                    Message::End => {
                        st.open_producers = st.open_producers.saturating_sub(1);
                    }
                }
            }
            if st.open_producers == 0 {
                return Recv::Closed;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Recv::Timeout;
            }
            st = self
                .shared
                .not_empty
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.receiver_alive = false;
        st.queue.clear();
        self.shared.not_full.notify_all();
    }
}

impl EdgeSender {
    /// Sends a batch under the given overflow policy. Returns the rows dropped to make room
    /// (always 0 under `Block`), or `Closed` if the consumer is gone.
    pub fn send(&self, batch: RecordBatch, overflow: Overflow) -> Result<usize, Closed> {
        let mut st = self.shared.lock();
        let mut dropped = 0;
        loop {
            if !st.receiver_alive {
                return Err(Closed);
            }
            if st.queue.len() < self.shared.capacity {
                break;
            }
            match overflow {
                Overflow::Block => {
                    st = self
                        .shared
                        .not_full
                        .wait(st)
                        .unwrap_or_else(|e| e.into_inner());
                }
                Overflow::DropOldest => {
                    // Control messages are never dropped: find the oldest data batch.
                    match st.queue.iter().position(|m| matches!(m, Message::Data(_))) {
                        Some(i) => {
                            if let Some(Message::Data(old)) = st.queue.remove(i) {
                                dropped += old.num_rows();
                            }
                        }
                        // A queue full of End markers: let it grow by one rather than block.
                        None => break,
                    }
                }
            }
        }
        st.queue.push_back(Message::Data(batch));
        self.shared.record_fill(st.queue.len());
        drop(st);
        if dropped > 0 {
            self.shared.metrics.add_dropped_rows(dropped);
        }
        self.shared.not_empty.notify_one();
        Ok(dropped)
    }

    /// Marks this producer finished. Idempotent; also done on drop.
    pub fn end(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        let mut st = self.shared.lock();
        st.queue.push_back(Message::End);
        drop(st);
        self.shared.not_empty.notify_all();
    }
}

impl Drop for EdgeSender {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(rows: i64) -> RecordBatch {
        let s = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        RecordBatch::try_new(s, vec![Arc::new(Int64Array::from_iter_values(0..rows))]).unwrap()
    }

    fn inbox(cap: usize) -> (Inbox, Arc<Metrics>) {
        let m = Metrics::new();
        (Inbox::new(cap, m.component("sink", "sink", "test")), m)
    }

    #[test]
    fn live_producer_drops_oldest_and_counts_rows() {
        let (inbox, m) = inbox(2);
        let tx = inbox.sender();
        for rows in [1, 2, 3, 4] {
            tx.send(batch(rows), Overflow::DropOldest).unwrap();
        }
        // The two oldest (1 + 2 rows) were dropped; the newest two remain, in order.
        let got: Vec<usize> = (0..2)
            .map(|_| match inbox.recv_timeout(Duration::from_millis(10)) {
                Recv::Data(b) => b.num_rows(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, vec![3, 4]);
        assert_eq!(m.component("sink", "sink", "test").dropped_rows(), 3);
    }

    #[test]
    fn replay_blocks_until_consumer_makes_room_and_loses_nothing() {
        let (inbox, _m) = inbox(1);
        let mut tx = inbox.sender();
        let producer = std::thread::spawn(move || {
            for rows in 1..=50 {
                tx.send(batch(rows), Overflow::Block).unwrap();
            }
            tx.end();
        });
        let mut seen = Vec::new();
        loop {
            match inbox.recv_timeout(Duration::from_secs(5)) {
                Recv::Data(b) => seen.push(b.num_rows() as i64),
                Recv::Closed => break,
                Recv::Timeout => panic!("producer stalled"),
            }
        }
        producer.join().unwrap();
        assert_eq!(seen, (1..=50).collect::<Vec<_>>());
    }

    #[test]
    fn inbox_closes_only_after_every_producer_ends() {
        let (inbox, _m) = inbox(4);
        let mut a = inbox.sender();
        let b = inbox.sender();
        a.end();
        assert!(matches!(
            inbox.recv_timeout(Duration::from_millis(5)),
            Recv::Timeout
        ));
        b.send(batch(1), Overflow::Block).unwrap();
        drop(b);
        assert!(matches!(
            inbox.recv_timeout(Duration::from_millis(5)),
            Recv::Data(_)
        ));
        assert!(matches!(
            inbox.recv_timeout(Duration::from_millis(5)),
            Recv::Closed
        ));
    }

    #[test]
    fn sender_sees_closed_when_consumer_is_gone() {
        let (inbox, _m) = inbox(1);
        let tx = inbox.sender();
        drop(inbox);
        assert_eq!(tx.send(batch(1), Overflow::Block), Err(Closed));
    }
}
