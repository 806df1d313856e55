//! Bounded queues between components. Data and control travel in one ordered queue, so a
//! consumer sees the end of a stream after its last batch.
//!
//! Each consumer has one [`Inbox`] fed by all its inputs; each input is one [`EdgeSender`],
//! tagged with the input's position so that the consumer can tell where a batch came from and a
//! full inbox can drop the oldest batch *of the edge that overflows* (never another input's).
//! What a full inbox does is the edge's [`Overflow`] policy: a lossless edge (file replays into
//! transforms and sinks) waits for room; a live edge (acquisition, run-time subscribers) drops
//! its oldest queued batch and counts it, so memory stays bounded and the producer never waits.
//!
//! An edge can be ended (its producer finished, or a reload detached it): the consumer's inbox
//! closes once every edge has ended and the queue is drained. A send on an ended edge fails with
//! [`SendError::Ended`], which is how a producer learns that a reload moved the consumer (see
//! `hub`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use serde::Serialize;

use crate::batch::Batch;
use crate::metrics::ComponentMetrics;

/// What travels on an edge.
#[derive(Debug, Clone)]
pub enum Message {
    Data(Batch),
    /// The producer of one input has finished; the inbox closes when all have.
    End,
}

/// What a full inbox does to the edge that feeds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Wait for room (lossless: file replays, transforms into sinks).
    Block,
    /// Drop this edge's oldest queued batch and count it (live data, run-time subscribers).
    DropOldest,
}

impl Overflow {
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::Block => "block",
            Overflow::DropOldest => "drop_oldest",
        }
    }
}

/// The consumer is gone; the producer should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the consumer has stopped")]
pub struct Closed;

/// Why a batch was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The consumer's inbox is gone (its component stopped).
    #[error("the consumer has stopped")]
    Closed,
    /// This edge was ended (detached by a reload, or evicted); the batch was not queued.
    #[error("the edge has ended")]
    Ended,
}

struct Queued {
    /// Which edge (input) it came from.
    edge: u32,
    msg: Message,
    /// The batch's data bytes ([`crate::metrics::batch_bytes`]); 0 for `End`.
    bytes: usize,
}

/// An inbox of `capacity` batches also holds at most `capacity` × this many bytes of them. A
/// 10 ms batch of a 385-channel probe is 231 KB, so live probes fill an inbox by count as
/// before; a replay's 100 ms batches stop at 28 (64 MiB with the default 256) instead of
/// holding 590 MB that the source must fault in fresh (a third of the run's time went to the
/// kernel zeroing pages).
pub const BYTES_PER_BATCH: usize = 256 << 10;

struct State {
    queue: VecDeque<Queued>,
    /// Sum of the queued messages' `bytes`.
    bytes: usize,
    /// Edges that have not yet sent `End`.
    open_edges: usize,
    receiver_alive: bool,
}

/// Called after every message queued: how an async reader learns there is something to read.
pub type Waker = Box<dyn Fn() + Send + Sync>;

struct Shared {
    state: Mutex<State>,
    capacity: usize,
    /// `capacity × BYTES_PER_BATCH`.
    max_bytes: usize,
    not_empty: Condvar,
    not_full: Condvar,
    /// The consumer's metrics, when it is a component: queue fill and dropped rows.
    metrics: Option<ComponentMetrics>,
    waker: Option<Waker>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A producer that panicked cannot leave the queue inconsistent (every mutation is a
        // single push or pop), so a poisoned lock is safe to keep using.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn record_fill(&self, st: &State) {
        if let Some(m) = &self.metrics {
            m.set_queue_fill(st.queue.len(), self.capacity, st.bytes, self.max_bytes);
        }
    }
    /// Whether `bytes` more fit: under both bounds, or the queue holds no data at all (a batch
    /// larger than the byte bound must not wait forever).
    fn has_room(&self, st: &State, bytes: usize) -> bool {
        st.queue.len() < self.capacity && (st.bytes == 0 || st.bytes + bytes <= self.max_bytes)
    }
    fn wake(&self) {
        self.not_empty.notify_all();
        if let Some(w) = &self.waker {
            w();
        }
    }
}

/// The receiving end, owned by the consumer.
pub struct Inbox {
    shared: Arc<Shared>,
    next_tag: std::sync::atomic::AtomicU32,
}

/// One producer's handle on a consumer's inbox: one edge.
pub struct EdgeSender {
    shared: Arc<Shared>,
    tag: u32,
    ended: AtomicBool,
    dropped_rows: AtomicU64,
    /// The edge's own series (`neurod_edge_dropped_rows_total`), where it has one.
    dropped_counter: Option<IntCounter>,
}

/// Result of waiting on an inbox.
#[derive(Debug)]
pub enum Recv {
    Data(Batch),
    /// Nothing arrived in time.
    Timeout,
    /// Every producer has ended and the queue is drained.
    Closed,
}

impl Inbox {
    /// An inbox holding at most `capacity` messages and `capacity` × [`BYTES_PER_BATCH`] bytes
    /// of batches. `metrics` are the consumer's.
    pub fn new(capacity: usize, metrics: ComponentMetrics) -> Self {
        Self::build(capacity, Some(metrics), None)
    }

    /// An inbox for a reader that is not a component (a run-time subscriber): `waker` is called
    /// after every message queued, so an async reader can sleep until there is something.
    pub fn for_subscriber(capacity: usize, waker: Option<Waker>) -> Self {
        Self::build(capacity, None, waker)
    }

    fn build(capacity: usize, metrics: Option<ComponentMetrics>, waker: Option<Waker>) -> Self {
        let capacity = capacity.max(1);
        let max_bytes = capacity.saturating_mul(BYTES_PER_BATCH);
        if let Some(m) = &metrics {
            m.set_queue_fill(0, capacity, 0, max_bytes);
        }
        Inbox {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::with_capacity(capacity),
                    bytes: 0,
                    open_edges: 0,
                    receiver_alive: true,
                }),
                capacity,
                max_bytes,
                not_empty: Condvar::new(),
                not_full: Condvar::new(),
                metrics,
                waker,
            }),
            next_tag: Default::default(),
        }
    }

    /// A new edge into this inbox, tagged with the next input number (0, 1, ...). The inbox
    /// stays open until every edge has ended or been dropped.
    pub fn sender(&self) -> EdgeSender {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        self.sender_tagged(tag, None)
    }

    /// A new edge for input number `tag`, counting what it drops on `dropped` as well as on the
    /// consumer's metrics.
    pub fn sender_tagged(&self, tag: u32, dropped: Option<IntCounter>) -> EdgeSender {
        self.handle().sender_tagged(tag, dropped)
    }

    /// A handle that makes edges into this inbox without being its receiver (the topology keeps
    /// one per consumer, so that a reload can rewire the inputs of a running consumer).
    pub fn handle(&self) -> InboxHandle {
        InboxHandle {
            shared: self.shared.clone(),
        }
    }

    /// Waits up to `timeout` for the next batch.
    pub fn recv_timeout(&self, timeout: Duration) -> Recv {
        self.recv_input_timeout(timeout).1
    }

    /// Waits up to `timeout` for the next batch; also says which input (edge tag) it came from.
    pub fn recv_input_timeout(&self, timeout: Duration) -> (u32, Recv) {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(got) = self.pop(&mut st) {
                return got;
            }
            if st.open_edges == 0 {
                return (0, Recv::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return (0, Recv::Timeout);
            }
            st = self
                .shared
                .not_empty
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The next batch if one is queued, without waiting (`Timeout` when there is none yet).
    pub fn try_recv(&self) -> Recv {
        let mut st = self.shared.lock();
        match self.pop(&mut st) {
            Some((_, r)) => r,
            None if st.open_edges == 0 => Recv::Closed,
            None => Recv::Timeout,
        }
    }

    /// Pops queued messages until a batch; `End`s on the way close their edge.
    fn pop(&self, st: &mut State) -> Option<(u32, Recv)> {
        while let Some(q) = st.queue.pop_front() {
            st.bytes -= q.bytes;
            self.shared.record_fill(st);
            self.shared.not_full.notify_all();
            match q.msg {
                Message::Data(b) => return Some((q.edge, Recv::Data(b))),
                Message::End => st.open_edges = st.open_edges.saturating_sub(1),
            }
        }
        None
    }

    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Messages queued now.
    pub fn len(&self) -> usize {
        self.shared.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Makes edges into an inbox; see [`Inbox::handle`].
#[derive(Clone)]
pub struct InboxHandle {
    shared: Arc<Shared>,
}

impl InboxHandle {
    /// See [`Inbox::sender_tagged`].
    pub fn sender_tagged(&self, tag: u32, dropped: Option<IntCounter>) -> EdgeSender {
        self.shared.lock().open_edges += 1;
        EdgeSender {
            shared: self.shared.clone(),
            tag,
            ended: AtomicBool::new(false),
            dropped_rows: AtomicU64::new(0),
            dropped_counter: dropped,
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.receiver_alive = false;
        st.queue.clear();
        st.bytes = 0;
        self.shared.not_full.notify_all();
    }
}

impl EdgeSender {
    /// Sends a batch under the given overflow policy. Returns the rows dropped to make room
    /// (always 0 under `Block`), or `Closed` if the consumer is gone or this edge has ended.
    pub fn send(&self, batch: impl Into<Batch>, overflow: Overflow) -> Result<usize, Closed> {
        self.try_send(batch, overflow).map_err(|_| Closed)
    }

    /// Like [`send`](Self::send), telling a consumer that is gone from an edge that has ended.
    /// Under `DropOldest` a full inbox drops this edge's oldest queued batch; when it holds none
    /// of this edge's (the other inputs filled it), the new batch is the one dropped. Either
    /// way the rows are counted and the producer never waits.
    pub fn try_send(
        &self,
        batch: impl Into<Batch>,
        overflow: Overflow,
    ) -> Result<usize, SendError> {
        let batch = batch.into();
        let bytes = batch.bytes() as usize;
        let mut st = self.shared.lock();
        let mut dropped = 0;
        loop {
            if !st.receiver_alive {
                return Err(SendError::Closed);
            }
            if self.ended.load(Ordering::Acquire) {
                return Err(SendError::Ended);
            }
            if self.shared.has_room(&st, bytes) {
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
                    // Control messages are never dropped, nor another edge's batches.
                    let own = st
                        .queue
                        .iter()
                        .position(|q| q.edge == self.tag && matches!(q.msg, Message::Data(_)));
                    match own.and_then(|i| st.queue.remove(i)) {
                        Some(Queued {
                            msg: Message::Data(old),
                            bytes: freed,
                            ..
                        }) => {
                            st.bytes -= freed;
                            dropped += old.num_rows();
                        }
                        _ => {
                            drop(st);
                            self.count_dropped(batch.num_rows());
                            return Ok(batch.num_rows());
                        }
                    }
                }
            }
        }
        st.queue.push_back(Queued {
            edge: self.tag,
            msg: Message::Data(batch),
            bytes,
        });
        st.bytes += bytes;
        self.shared.record_fill(&st);
        drop(st);
        self.count_dropped(dropped);
        self.shared.wake();
        Ok(dropped)
    }

    fn count_dropped(&self, rows: usize) {
        if rows == 0 {
            return;
        }
        self.dropped_rows.fetch_add(rows as u64, Ordering::Relaxed);
        if let Some(c) = &self.dropped_counter {
            c.inc_by(rows as u64);
        }
        if let Some(m) = &self.shared.metrics {
            m.add_dropped_rows(rows);
        }
    }

    /// Rows this edge has dropped so far.
    pub fn dropped_rows(&self) -> u64 {
        self.dropped_rows.load(Ordering::Relaxed)
    }

    /// Marks this producer finished. Idempotent; also done on drop.
    pub fn end(&mut self) {
        self.finish();
    }

    /// [`end`](Self::end) through a shared handle: queues the end marker (never dropped, never
    /// waiting for room) and wakes a producer blocked on this edge, whose send then fails with
    /// [`SendError::Ended`].
    pub fn finish(&self) {
        let mut st = self.shared.lock();
        if self.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        st.queue.push_back(Queued {
            edge: self.tag,
            msg: Message::End,
            bytes: 0,
        });
        drop(st);
        self.shared.not_full.notify_all();
        self.shared.wake();
    }

    /// Ends this edge and discards what it had queued (a run-time subscriber that fell behind):
    /// its memory is released at once. Returns the rows discarded.
    pub fn evict(&self) -> usize {
        let mut st = self.shared.lock();
        let (mut rows, mut freed) = (0, 0);
        st.queue.retain(|q| match &q.msg {
            Message::Data(b) if q.edge == self.tag => {
                rows += b.num_rows();
                freed += q.bytes;
                false
            }
            _ => true,
        });
        st.bytes -= freed;
        self.shared.record_fill(&st);
        drop(st);
        self.count_dropped(rows);
        self.finish();
        rows
    }

    pub fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }
}

impl Drop for EdgeSender {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;

    fn batch(rows: i64) -> RecordBatch {
        let s = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        RecordBatch::try_new(s, vec![Arc::new(Int64Array::from_iter_values(0..rows))]).unwrap()
    }

    fn inbox(cap: usize) -> (Inbox, Arc<Metrics>) {
        let m = Metrics::new();
        (Inbox::new(cap, m.component("sink", "sink", "test")), m)
    }

    fn rows(inbox: &Inbox) -> Vec<(u32, usize)> {
        let mut got = Vec::new();
        while let (tag, Recv::Data(b)) = inbox.recv_input_timeout(Duration::from_millis(5)) {
            got.push((tag, b.num_rows()));
        }
        got
    }

    #[test]
    fn live_producer_drops_oldest_and_counts_rows() {
        let (inbox, m) = inbox(2);
        let tx = inbox.sender();
        for rows in [1, 2, 3, 4] {
            tx.send(batch(rows), Overflow::DropOldest).unwrap();
        }
        // The two oldest (1 + 2 rows) were dropped; the newest two remain, in order.
        assert_eq!(rows(&inbox), vec![(0, 3), (0, 4)]);
        assert_eq!(m.component("sink", "sink", "test").dropped_rows(), 3);
        assert_eq!(tx.dropped_rows(), 3);
    }

    #[test]
    fn an_inbox_is_bounded_in_bytes_as_well_as_in_batches() {
        // Two batches: 512 KiB; a batch of 40 000 Int64 rows is 320 kB.
        let (inbox, m) = inbox(2);
        let tx = inbox.sender();
        tx.send(batch(40_000), Overflow::DropOldest).unwrap();
        assert_eq!(tx.send(batch(40_001), Overflow::DropOldest), Ok(40_000));
        assert_eq!(rows(&inbox), vec![(0, 40_001)]);
        // A batch larger than the bound still goes into an empty inbox.
        tx.send(batch(100_000), Overflow::Block).unwrap();
        let fill = || {
            m.component("sink", "sink", "test")
                .status()
                .queue_fill_ratio
        };
        assert_eq!(fill(), 1.0);
        // A lossless edge waits for the consumer while the queued bytes fill the bound.
        let sent = std::thread::scope(|s| {
            let waiting = s.spawn(|| tx.send(batch(1), Overflow::Block));
            std::thread::sleep(Duration::from_millis(50));
            assert!(!waiting.is_finished());
            let first = inbox.recv_timeout(Duration::from_secs(1));
            assert!(matches!(first, Recv::Data(b) if b.num_rows() == 100_000));
            waiting.join().unwrap()
        });
        assert_eq!(sent, Ok(0));
        assert_eq!(rows(&inbox), vec![(0, 1)]);
        assert_eq!(fill(), 0.0);
    }

    #[test]
    fn a_live_edge_never_drops_another_edges_batches() {
        let (inbox, _m) = inbox(3);
        let lossless = inbox.sender();
        let live = inbox.sender();
        lossless.send(batch(10), Overflow::Block).unwrap();
        live.send(batch(1), Overflow::DropOldest).unwrap();
        lossless.send(batch(20), Overflow::Block).unwrap();
        // Full: the live edge drops its own oldest batch, never the lossless edge's.
        assert_eq!(live.send(batch(2), Overflow::DropOldest), Ok(1));
        assert_eq!(rows(&inbox), vec![(0, 10), (0, 20), (1, 2)]);
        // Full of the other edge's batches: the new batch is the one dropped.
        for r in [30, 40, 50] {
            lossless.send(batch(r), Overflow::Block).unwrap();
        }
        assert_eq!(live.send(batch(3), Overflow::DropOldest), Ok(3));
        assert_eq!(rows(&inbox), vec![(0, 30), (0, 40), (0, 50)]);
        assert_eq!((lossless.dropped_rows(), live.dropped_rows()), (0, 4));
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
        assert_eq!(
            tx.try_send(batch(1), Overflow::Block),
            Err(SendError::Closed)
        );
    }

    #[test]
    fn ending_an_edge_wakes_its_blocked_producer_with_ended() {
        let (inbox, _m) = inbox(1);
        let tx = Arc::new(inbox.sender());
        tx.send(batch(1), Overflow::Block).unwrap();
        let t = std::thread::spawn({
            let tx = tx.clone();
            move || tx.try_send(batch(2), Overflow::Block)
        });
        std::thread::sleep(Duration::from_millis(20));
        tx.finish();
        assert_eq!(t.join().unwrap(), Err(SendError::Ended));
        // What was queued before the end is still delivered, then the inbox closes.
        assert_eq!(rows(&inbox), vec![(0, 1)]);
        assert!(matches!(inbox.try_recv(), Recv::Closed));
    }

    #[test]
    fn eviction_discards_the_edges_queue_and_counts_it() {
        let wakes = Arc::new(AtomicU64::new(0));
        let inbox = Inbox::for_subscriber(8, {
            let wakes = wakes.clone();
            Some(Box::new(move || {
                wakes.fetch_add(1, Ordering::Relaxed);
            }))
        });
        let tx = inbox.sender();
        tx.send(batch(5), Overflow::DropOldest).unwrap();
        tx.send(batch(6), Overflow::DropOldest).unwrap();
        assert_eq!(
            wakes.load(Ordering::Relaxed),
            2,
            "the reader is woken per batch"
        );
        assert_eq!(tx.evict(), 11);
        assert_eq!(tx.dropped_rows(), 11);
        assert!(matches!(inbox.try_recv(), Recv::Closed));
        assert_eq!(
            tx.try_send(batch(1), Overflow::DropOldest),
            Err(SendError::Ended)
        );
    }
}
