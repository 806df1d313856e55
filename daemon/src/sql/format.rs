//! A query's result written out: an aligned text table, CSV (with a header), JSON (an array of
//! objects, one per row) or an Arrow IPC stream (`application/vnd.apache.arrow.stream`).

use std::str::FromStr;

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Json,
    Arrow,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "table" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            "arrow" => Ok(Format::Arrow),
            other => Err(format!(
                "unknown format `{other}` (table, csv, json or arrow)"
            )),
        }
    }
}

impl Format {
    /// The format an HTTP `Accept` header asks for (JSON when it names none we write).
    pub fn from_accept(accept: Option<&str>) -> Format {
        let accept = accept.unwrap_or("");
        if accept.contains("application/vnd.apache.arrow.stream") {
            Format::Arrow
        } else if accept.contains("text/csv") {
            Format::Csv
        } else if accept.contains("text/plain") {
            Format::Table
        } else {
            Format::Json
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Table => "text/plain; charset=utf-8",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Json => "application/json",
            Format::Arrow => "application/vnd.apache.arrow.stream",
        }
    }

    /// The whole result in this format.
    pub fn write(self, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
        let mut out = Vec::new();
        match self {
            Format::Table => {
                let text = arrow::util::pretty::pretty_format_batches(batches)?;
                out.extend_from_slice(format!("{text}\n").as_bytes());
                let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                out.extend_from_slice(format!("{rows} row(s)\n").as_bytes());
            }
            Format::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out);
                if batches.is_empty() {
                    w.write(&RecordBatch::new_empty(schema.clone()))?;
                }
                for b in batches {
                    w.write(b)?;
                }
            }
            Format::Json => {
                let mut w = arrow::json::ArrayWriter::new(&mut out);
                for b in batches {
                    w.write(b)?;
                }
                w.finish()?;
                if batches.iter().all(|b| b.num_rows() == 0) {
                    // The writer writes nothing for no rows; an empty result is still an array.
                    out = b"[]".to_vec();
                }
                out.push(b'\n');
            }
            Format::Arrow => {
                let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, schema)?;
                for b in batches {
                    w.write(b)?;
                }
                w.finish()?;
            }
        }
        Ok(out)
    }
}
