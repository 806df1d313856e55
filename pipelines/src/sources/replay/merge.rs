//! The time-ordered merge of the replayed streams: each stream is read batch by batch, and the
//! batch that starts earliest across all streams goes out next. A stream's own batches keep
//! their stored order; ties go to the stream listed first. One batch per stream is held.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};

use arrow::record_batch::RecordBatch;

/// A batch and the time it starts at (its earliest row's time; `-inf` for a stream without a
/// time, such as ROI masks, which so go out before everything else).
#[derive(Debug, Clone)]
pub struct Keyed {
    pub time_s: f64,
    pub batch: RecordBatch,
}

struct Head {
    time_s: f64,
    cursor: usize,
    batch: RecordBatch,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        self.time_s
            .total_cmp(&other.time_s)
            .then(self.cursor.cmp(&other.cursor))
    }
}

/// Merges cursors (each an iterator of its stream's batches in order) by time. An error of one
/// cursor is handed out with the cursor's position and the merge goes on; a cursor must move
/// past what failed (to its next file), so that it ends.
pub struct Merge<C, E> {
    cursors: Vec<C>,
    heads: BinaryHeap<Reverse<Head>>,
    errors: VecDeque<(usize, E)>,
}

impl<C: Iterator<Item = Result<Keyed, E>>, E> Merge<C, E> {
    pub fn new(cursors: Vec<C>) -> Self {
        let mut m = Merge {
            heads: BinaryHeap::with_capacity(cursors.len()),
            cursors,
            errors: VecDeque::new(),
        };
        for i in 0..m.cursors.len() {
            m.refill(i);
        }
        m
    }

    pub fn cursors(&self) -> &[C] {
        &self.cursors
    }

    fn refill(&mut self, i: usize) {
        let Some(cursor) = self.cursors.get_mut(i) else {
            return;
        };
        for item in cursor.by_ref() {
            match item {
                Ok(k) => {
                    self.heads.push(Reverse(Head {
                        time_s: k.time_s,
                        cursor: i,
                        batch: k.batch,
                    }));
                    return;
                }
                Err(e) => self.errors.push_back((i, e)),
            }
        }
    }
}

impl<C: Iterator<Item = Result<Keyed, E>>, E> Iterator for Merge<C, E> {
    /// The cursor's position, and its next batch or an error.
    type Item = (usize, Result<Keyed, E>);

    fn next(&mut self) -> Option<Self::Item> {
        if let Some((i, e)) = self.errors.pop_front() {
            return Some((i, Err(e)));
        }
        let Reverse(head) = self.heads.pop()?;
        self.refill(head.cursor);
        Some((
            head.cursor,
            Ok(Keyed {
                time_s: head.time_s,
                batch: head.batch,
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn keyed(time_s: f64, tag: i64) -> Keyed {
        let schema = Arc::new(Schema::new(vec![Field::new("tag", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![tag]))]).unwrap();
        Keyed { time_s, batch }
    }

    fn tag(k: &Keyed) -> i64 {
        let c = k.batch.column(0);
        c.as_any().downcast_ref::<Int64Array>().unwrap().value(0)
    }

    type Cursor = std::vec::IntoIter<Result<Keyed, String>>;

    fn cursor(items: Vec<Result<Keyed, String>>) -> Cursor {
        items.into_iter()
    }

    /// (cursor, time, tag) of a batch, or (cursor, error) of a failure.
    type Out = Result<(usize, f64, i64), (usize, String)>;

    /// Everything the merge hands out, in order.
    fn run(cursors: Vec<Cursor>) -> Vec<Out> {
        Merge::new(cursors)
            .map(|(i, r)| r.map(|k| (i, k.time_s, tag(&k))).map_err(|e| (i, e)))
            .collect()
    }

    #[test]
    fn batches_go_out_by_start_time_across_streams_and_in_order_within_each() {
        // A probe in 10 ms batches, a camera at 25 Hz, a sparse table.
        let probe = (0..10).map(|b| Ok(keyed(b as f64 * 0.01, b))).collect();
        let camera = (0..3)
            .map(|f| Ok(keyed(f as f64 * 0.04, 100 + f)))
            .collect();
        let table = vec![Ok(keyed(0.035, 200)), Ok(keyed(0.5, 201))];
        let got: Vec<_> = run(vec![cursor(probe), cursor(camera), cursor(table)])
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        let times: Vec<f64> = got.iter().map(|g| g.1).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        assert_eq!(got.len(), 15);
        for stream in 0..3 {
            let tags: Vec<i64> = got.iter().filter(|g| g.0 == stream).map(|g| g.2).collect();
            assert!(tags.windows(2).all(|w| w[0] < w[1]), "{stream}: {tags:?}");
        }
        // Equal times: the stream listed first goes first (0.0 probe before 0.0 camera).
        assert_eq!(
            got.iter().take(2).map(|g| g.2).collect::<Vec<_>>(),
            [0, 100]
        );
        assert_eq!(got.last().map(|g| g.2), Some(201));
    }

    #[test]
    fn untimed_streams_go_first_and_a_failing_stream_does_not_stop_the_others() {
        let masks = vec![Ok(keyed(f64::NEG_INFINITY, 7))];
        let broken = vec![
            Ok(keyed(0.0, 10)),
            Err("part-000001.parquet: bad footer".to_string()),
            Ok(keyed(2.0, 12)),
        ];
        let steady = vec![Ok(keyed(1.0, 20)), Ok(keyed(3.0, 21))];
        let got = run(vec![cursor(steady), cursor(broken), cursor(masks)]);
        assert_eq!(
            got,
            [
                Ok((2, f64::NEG_INFINITY, 7)),
                Ok((1, 0.0, 10)),
                Err((1, "part-000001.parquet: bad footer".to_string())),
                Ok((0, 1.0, 20)),
                Ok((1, 2.0, 12)),
                Ok((0, 3.0, 21)),
            ]
        );
    }

    #[test]
    fn nothing_to_merge_ends_at_once() {
        assert!(run(vec![]).is_empty());
        assert!(run(vec![cursor(vec![]), cursor(vec![])]).is_empty());
    }
}
