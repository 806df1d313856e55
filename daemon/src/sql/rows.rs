//! The row-level rules tables and subscribers share: the column a stream's rows are ordered by,
//! bounds a query's filters put on it, and cutting and conforming batches by them.

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, BooleanArray};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};
use pipelines::storage::FileEntry;
use pipelines::stream::{FRAME_INDEX, SAMPLE_INDEX, TIME_S};

/// Whether an expression refers to `column`.
pub(super) fn mentions(e: &Expr, column: &str) -> bool {
    e.column_refs().iter().any(|c| c.name == column)
}

/// The column rows are ordered by, which the seam and pruning use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Order {
    Index(&'static str),
    Time,
    None,
}

impl Order {
    pub(super) fn of(schema: &Schema) -> Order {
        for c in [SAMPLE_INDEX, FRAME_INDEX] {
            if schema
                .field_with_name(c)
                .is_ok_and(|f| f.data_type() == &DataType::Int64)
            {
                return Order::Index(c);
            }
        }
        if schema
            .field_with_name(TIME_S)
            .is_ok_and(|f| f.data_type() == &DataType::Float64)
        {
            return Order::Time;
        }
        Order::None
    }

    pub(super) fn column(self) -> Option<&'static str> {
        match self {
            Order::Index(c) => Some(c),
            Order::Time => Some(TIME_S),
            Order::None => None,
        }
    }

    /// The largest value of the order column in a finished file.
    pub(super) fn file_last(self, f: &FileEntry) -> Option<f64> {
        match self {
            Order::Index(_) => f.last_index.map(|i| i as f64),
            Order::Time => f.last_time_s,
            Order::None => None,
        }
    }
}

/// Inclusive bounds on one column, from the query's filters; `None`: unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Bounds {
    pub(super) lo: Option<f64>,
    pub(super) hi: Option<f64>,
}

impl Bounds {
    pub(super) fn of(filters: &[Expr], column: &str) -> Bounds {
        let mut b = Bounds::default();
        for f in filters {
            b.narrow(f, column);
        }
        b
    }

    pub(super) fn narrow(&mut self, e: &Expr, column: &str) {
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if *op == Operator::And {
                    self.narrow(left, column);
                    self.narrow(right, column);
                    return;
                }
                let (op, value) = match (is_column(left, column), is_column(right, column)) {
                    (true, false) => (Some(*op), number(right)),
                    (false, true) => (op.swap(), number(left)),
                    _ => (None, None),
                };
                if let (Some(op), Some(v)) = (op, value) {
                    match op {
                        Operator::Gt | Operator::GtEq => self.raise(v),
                        Operator::Lt | Operator::LtEq => self.lower(v),
                        Operator::Eq => {
                            self.raise(v);
                            self.lower(v);
                        }
                        _ => {}
                    }
                }
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) if is_column(expr, column) => {
                if let Some(v) = number(low) {
                    self.raise(v);
                }
                if let Some(v) = number(high) {
                    self.lower(v);
                }
            }
            _ => {}
        }
    }

    pub(super) fn raise(&mut self, v: f64) {
        self.lo = Some(self.lo.map_or(v, |lo| lo.max(v)));
    }
    pub(super) fn lower(&mut self, v: f64) {
        self.hi = Some(self.hi.map_or(v, |hi| hi.min(v)));
    }

    /// Whether values in `[first, last]` may pass (unknown ends may).
    pub(super) fn overlaps(&self, first: Option<f64>, last: Option<f64>) -> bool {
        let below = matches!((last, self.lo), (Some(l), Some(lo)) if l < lo);
        let above = matches!((first, self.hi), (Some(f), Some(hi)) if f > hi);
        !(below || above)
    }
}

pub(super) fn is_column(e: &Expr, name: &str) -> bool {
    matches!(e, Expr::Column(c) if c.name == name)
}

pub(super) fn number(e: &Expr) -> Option<f64> {
    let Expr::Literal(v, _) = e else {
        return None;
    };
    match v {
        ScalarValue::Int64(Some(x)) => Some(*x as f64),
        ScalarValue::Int32(Some(x)) => Some(f64::from(*x)),
        ScalarValue::UInt64(Some(x)) => Some(*x as f64),
        ScalarValue::Float64(Some(x)) => Some(*x),
        ScalarValue::Float32(Some(x)) => Some(f64::from(*x)),
        _ => None,
    }
}

/// The smallest and largest values of a batch's column (Int64 or Float64), as f64.
pub(crate) fn column_range(batch: &RecordBatch, column: &str) -> (Option<f64>, Option<f64>) {
    let Some(a) = batch.column_by_name(column) else {
        return (None, None);
    };
    if let Some(a) = a.as_primitive_opt::<Int64Type>() {
        let lo = arrow::compute::min(a).map(|v| v as f64);
        let hi = arrow::compute::max(a).map(|v| v as f64);
        return (lo, hi);
    }
    if let Some(a) = a.as_primitive_opt::<Float64Type>() {
        return (arrow::compute::min(a), arrow::compute::max(a));
    }
    (None, None)
}

/// The rows of `batch` whose `column` is greater than `after`.
pub(crate) fn rows_after(batch: &RecordBatch, column: &str, after: f64) -> Result<RecordBatch> {
    rows_past(batch, column, after, false)
}

/// The rows of `batch` whose `column` is at least `from`.
pub(crate) fn rows_from(batch: &RecordBatch, column: &str, from: f64) -> Result<RecordBatch> {
    rows_past(batch, column, from, true)
}

/// The rows of `batch` whose `column` is past `bound` (or equal to it, if `inclusive`).
pub(super) fn rows_past(
    batch: &RecordBatch,
    column: &str,
    bound: f64,
    inclusive: bool,
) -> Result<RecordBatch> {
    let keeps = |v: f64| v > bound || (inclusive && v == bound);
    let (lo, hi) = column_range(batch, column);
    if lo.is_some_and(keeps) {
        return Ok(batch.clone());
    }
    if hi.is_none_or(|hi| !keeps(hi)) {
        return Ok(batch.slice(0, 0));
    }
    let Some(a) = batch.column_by_name(column) else {
        return Ok(batch.clone());
    };
    let keep: BooleanArray = if let Some(a) = a.as_primitive_opt::<Int64Type>() {
        a.iter().map(|v| v.map(|v| keeps(v as f64))).collect()
    } else if let Some(a) = a.as_primitive_opt::<Float64Type>() {
        a.iter().map(|v| v.map(keeps)).collect()
    } else {
        return Ok(batch.clone());
    };
    Ok(filter_record_batch(batch, &keep)?)
}

/// `batch` with exactly the table's columns and types (by name; a missing column is null).
pub(crate) fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => Ok(cast(c, f.data_type())?),
            None => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<_>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

pub(super) fn may_hold(b: &RecordBatch, order: Order, bounds: &Bounds, time: &Bounds) -> bool {
    let by_order = match order.column() {
        Some(c) => {
            let (lo, hi) = column_range(b, c);
            bounds.overlaps(lo, hi)
        }
        None => true,
    };
    let (lo, hi) = column_range(b, TIME_S);
    by_order && time.overlaps(lo, hi)
}

pub(super) fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str) -> Expr {
        datafusion::prelude::col(name)
    }

    fn lit(v: f64) -> Expr {
        datafusion::prelude::lit(v)
    }

    #[test]
    fn bounds_come_from_comparisons_ands_and_between() {
        let f = [
            col("time_s")
                .gt_eq(lit(10.0))
                .and(col("time_s").lt(lit(20.0))),
            lit(15.0).gt(col("time_s")),
        ];
        let b = Bounds::of(&f, "time_s");
        assert_eq!((b.lo, b.hi), (Some(10.0), Some(15.0)));
        let between = col("sample_index").between(
            datafusion::prelude::lit(5i64),
            datafusion::prelude::lit(9i64),
        );
        let b = Bounds::of(&[between], "sample_index");
        assert_eq!((b.lo, b.hi), (Some(5.0), Some(9.0)));
        // An OR says nothing certain about either side.
        let or = col("time_s").gt(lit(1.0)).or(col("time_s").lt(lit(0.0)));
        assert_eq!(Bounds::of(&[or], "time_s"), Bounds::default());
        assert!(!b.overlaps(Some(10.0), Some(12.0)));
        assert!(b.overlaps(Some(9.0), Some(12.0)));
        assert!(b.overlaps(None, None));
    }
}
