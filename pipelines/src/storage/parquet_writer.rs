//! Record batches to a Parquet file, as parquet-rs' `ArrowWriter` writes them (same schema, same
//! row-group and page limits, same Arrow schema in the footer), except that raw Int16 channels
//! (top-level, non-nullable, DELTA_BINARY_PACKED: a probe's samples) are encoded by
//! [`super::int16_delta`] and compressed here: in parquet-rs' generic encoder they took nearly
//! half of a probe's conversion time. Every other column goes through parquet-rs' own column
//! writers.

use std::io::Write;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Int16Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnWriter, ArrowRowGroupWriterFactory};
use parquet::arrow::{add_encoded_arrow_schema_to_metadata, ArrowSchemaConverter};
use parquet::basic::{
    BoundaryOrder, Compression, Encoding, EncodingMask, PageType, Type as PhysicalType,
};
use parquet::column::page::{CompressedPage, Page, PageWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::errors::{ParquetError, Result};
use parquet::file::metadata::{
    ColumnChunkMetaData, ColumnIndexBuilder, OffsetIndexBuilder, PageEncodingStats,
};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::statistics::ValueStatistics;
use parquet::file::writer::{SerializedFileWriter, SerializedPageWriter, TrackedWrite};
use parquet::schema::types::{ColumnDescPtr, ColumnPath};

use super::int16_delta;

pub struct ParquetWriter<W: Write + Send> {
    file: SerializedFileWriter<W>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    /// Per top-level field: encoded here, or by this many parquet-rs leaf writers.
    plan: Vec<Plan>,
    pages: PageSettings,
    in_progress: Option<RowGroup>,
}

enum Plan {
    Int16Delta {
        descr: ColumnDescPtr,
        statistics: EnabledStatistics,
    },
    Leaves(usize),
}

/// What every hand-encoded column shares: the page limits and one zstd context.
struct PageSettings {
    rows: usize,
    bytes: usize,
    compression: Compression,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    scratch: Vec<u8>,
}

struct RowGroup {
    columns: Vec<Column>,
    rows: usize,
}

enum Column {
    Arrow(Vec<ArrowColumnWriter>),
    Int16(Box<Int16Chunk>),
}

/// The factory of parquet-rs' writers for the fields `plan` leaves to them, and for no other.
/// Its factory makes a writer for every leaf of the schema it is given, and each reserves 1 MiB
/// (its delta encoder's bit writer): for a probe's 384 channels encoded here, 384 MiB of fresh
/// pages per row group, a seventh of a raw store's time. So it is given a file writer of those
/// fields alone, writing nowhere; their column descriptors equal the real file's (same path,
/// type and levels), which `append_to_row_group` checks.
fn delegated_writers(
    schema: &SchemaRef,
    plan: &[Plan],
    props: &WriterProperties,
) -> Result<ArrowRowGroupWriterFactory> {
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .zip(plan)
        .filter(|(_, plan)| matches!(plan, Plan::Leaves(_)))
        .map(|(field, _)| field.clone())
        .collect();
    let delegated = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    let parquet_schema = ArrowSchemaConverter::new()
        .with_coerce_types(props.coerce_types())
        .convert(&delegated)?;
    let shadow = SerializedFileWriter::new(
        std::io::sink(),
        parquet_schema.root_schema_ptr(),
        Arc::new(props.clone()),
    )?;
    Ok(ArrowRowGroupWriterFactory::new(&shadow, delegated))
}

impl<W: Write + Send> ParquetWriter<W> {
    pub fn try_new(out: W, schema: SchemaRef, mut props: WriterProperties) -> Result<Self> {
        let parquet_schema = ArrowSchemaConverter::new()
            .with_coerce_types(props.coerce_types())
            .convert(&schema)?;
        add_encoded_arrow_schema_to_metadata(&schema, &mut props);
        let compression = props.compression(&ColumnPath::new(Vec::new()));
        let zstd = match compression {
            Compression::ZSTD(level) => Some(
                zstd::bulk::Compressor::new(level.compression_level())
                    .map_err(|e| ParquetError::External(Box::new(e)))?,
            ),
            _ => None,
        };
        let pages = PageSettings {
            rows: props.data_page_row_count_limit().max(1),
            bytes: props.data_page_size_limit().max(1),
            compression,
            zstd,
            scratch: Vec::new(),
        };
        let mut plan: Vec<Plan> = schema.fields().iter().map(|_| Plan::Leaves(0)).collect();
        for (leaf, descr) in parquet_schema.columns().iter().enumerate() {
            let root = parquet_schema.get_column_root_idx(leaf);
            let Plan::Leaves(n) = &mut plan[root] else {
                continue;
            };
            *n += 1;
            let field = &schema.fields()[root];
            let path = descr.path();
            let ours = *field.data_type() == DataType::Int16
                && !field.is_nullable()
                && path.parts().len() == 1
                && props.encoding(path) == Some(Encoding::DELTA_BINARY_PACKED)
                && !props.dictionary_enabled(path)
                && props.bloom_filter_properties(path).is_none()
                && props.compression(path) == compression
                && matches!(
                    compression,
                    Compression::ZSTD(_) | Compression::UNCOMPRESSED
                );
            if ours {
                plan[root] = Plan::Int16Delta {
                    descr: descr.clone(),
                    statistics: props.statistics_enabled(path),
                };
            }
        }
        let factory = delegated_writers(&schema, &plan, &props)?;
        let file =
            SerializedFileWriter::new(out, parquet_schema.root_schema_ptr(), Arc::new(props))?;
        Ok(ParquetWriter {
            file,
            factory,
            schema,
            plan,
            pages,
            in_progress: None,
        })
    }

    /// Encodes `batch`, closing row groups at the properties' row and byte limits as
    /// `ArrowWriter` does.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.schema().fields() != self.schema.fields() {
            return Err(ParquetError::General(
                "record batch schema differs from the file's".into(),
            ));
        }
        let props = self.file.properties().clone();
        let (max_rows, max_bytes) = (props.max_row_group_row_count(), props.max_row_group_bytes());
        let mut rest = batch.clone();
        while rest.num_rows() > 0 {
            if self.in_progress.is_none() {
                self.in_progress = Some(self.new_row_group()?);
            }
            let Some(group) = self.in_progress.as_mut() else {
                continue;
            };
            let mut take = rest.num_rows();
            if let Some(max) = max_rows {
                take = take.min(max.saturating_sub(group.rows).max(1));
            }
            if let (Some(max), true) = (max_bytes, group.rows > 0) {
                let row_bytes = (group.estimated_bytes() / group.rows).max(1);
                take = take.min(max.saturating_sub(group.estimated_bytes()) / row_bytes);
            }
            if take == 0 {
                self.flush()?;
                continue;
            }
            group.write(&self.schema, &rest.slice(0, take), &mut self.pages)?;
            rest = rest.slice(take, rest.num_rows() - take);
            let full = max_rows.is_some_and(|m| group.rows >= m)
                || max_bytes.is_some_and(|m| group.estimated_bytes() >= m);
            if full {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn new_row_group(&self) -> Result<RowGroup> {
        let mut leaves = self
            .factory
            .create_column_writers(self.file.flushed_row_groups().len())?
            .into_iter();
        let columns = self
            .plan
            .iter()
            .map(|plan| match plan {
                Plan::Leaves(n) => Column::Arrow(leaves.by_ref().take(*n).collect()),
                Plan::Int16Delta { descr, statistics } => {
                    Column::Int16(Box::new(Int16Chunk::new(descr.clone(), *statistics)))
                }
            })
            .collect();
        Ok(RowGroup { columns, rows: 0 })
    }

    /// Writes the buffered rows as a row group.
    fn flush(&mut self) -> Result<()> {
        let Some(group) = self.in_progress.take() else {
            return Ok(());
        };
        let mut out = self.file.next_row_group()?;
        for column in group.columns {
            match column {
                Column::Arrow(writers) => {
                    for w in writers {
                        w.close()?.append_to_row_group(&mut out)?;
                    }
                }
                Column::Int16(chunk) => {
                    let (bytes, close) = chunk.close(&mut self.pages)?;
                    out.append_column(&bytes, close)?;
                }
            }
        }
        out.close()?;
        Ok(())
    }

    /// Writes what is buffered and the footer.
    pub fn close(mut self) -> Result<()> {
        self.flush()?;
        self.file.close().map(drop)
    }
}

impl RowGroup {
    fn write(
        &mut self,
        schema: &SchemaRef,
        batch: &RecordBatch,
        pages: &mut PageSettings,
    ) -> Result<()> {
        for ((column, field), array) in self
            .columns
            .iter_mut()
            .zip(schema.fields())
            .zip(batch.columns())
        {
            match column {
                Column::Arrow(writers) => {
                    for (w, leaf) in writers.iter_mut().zip(compute_leaves(field, array)?) {
                        w.write(&leaf)?;
                    }
                }
                Column::Int16(chunk) => chunk.push(int16_values(array)?, pages)?,
            }
        }
        self.rows += batch.num_rows();
        Ok(())
    }

    fn estimated_bytes(&self) -> usize {
        self.columns
            .iter()
            .map(|c| match c {
                Column::Arrow(w) => w.iter().map(|w| w.get_estimated_total_bytes()).sum(),
                Column::Int16(chunk) => chunk.estimated_bytes(),
            })
            .sum()
    }
}

fn int16_values(array: &ArrayRef) -> Result<&[i16]> {
    match array.as_primitive_opt::<Int16Type>() {
        Some(a) if a.null_count() == 0 => Ok(a.values()),
        _ => Err(ParquetError::General(
            "a non-nullable Int16 column holds nulls or another type".into(),
        )),
    }
}

/// One Int16 column chunk in the making: the page being filled, and the finished pages with
/// their headers as they will lie in the file.
struct Int16Chunk {
    descr: ColumnDescPtr,
    statistics: EnabledStatistics,
    page: Vec<i16>,
    sink: TrackedWrite<Vec<u8>>,
    offsets: OffsetIndexBuilder,
    /// Each page's smallest and largest value, for the column index and statistics.
    bounds: Vec<(i16, i16)>,
    rows: u64,
    uncompressed: u64,
}

impl Int16Chunk {
    fn new(descr: ColumnDescPtr, statistics: EnabledStatistics) -> Self {
        Int16Chunk {
            descr,
            statistics,
            page: Vec::new(),
            sink: TrackedWrite::new(Vec::new()),
            offsets: OffsetIndexBuilder::new(),
            bounds: Vec::new(),
            rows: 0,
            uncompressed: 0,
        }
    }

    fn estimated_bytes(&self) -> usize {
        self.sink.bytes_written() + self.page.len() * 2
    }

    fn push(&mut self, mut values: &[i16], settings: &mut PageSettings) -> Result<()> {
        while !values.is_empty() {
            let take = values.len().min(settings.rows - self.page.len());
            self.page.extend_from_slice(&values[..take]);
            values = &values[take..];
            // Encoded Int16 takes at most ~2.2 bytes a value: close the page before that could
            // pass the byte limit.
            if self.page.len() >= settings.rows || self.page.len() * 9 / 4 >= settings.bytes {
                self.write_page(settings)?;
            }
        }
        Ok(())
    }

    fn write_page(&mut self, settings: &mut PageSettings) -> Result<()> {
        if self.page.is_empty() {
            return Ok(());
        }
        let encoded = &mut settings.scratch;
        encoded.clear();
        int16_delta::encode(&self.page, encoded);
        let data = match &mut settings.zstd {
            Some(z) => z
                .compress(encoded)
                .map_err(|e| ParquetError::External(Box::new(e)))?,
            None => encoded.clone(),
        };
        let (min, max) = self
            .page
            .iter()
            .fold((i16::MAX, i16::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let page = Page::DataPage {
            buf: Bytes::from(data),
            num_values: self.page.len() as u32,
            encoding: Encoding::DELTA_BINARY_PACKED,
            def_level_encoding: Encoding::RLE,
            rep_level_encoding: Encoding::RLE,
            statistics: None,
        };
        let page = CompressedPage::new(page, encoded.len());
        let spec = SerializedPageWriter::new(&mut self.sink).write_page(page)?;
        self.offsets
            .append_offset_and_size(spec.offset as i64, spec.compressed_size as i32);
        self.offsets.append_row_count(self.page.len() as i64);
        self.bounds.push((min, max));
        self.rows += self.page.len() as u64;
        self.uncompressed += spec.uncompressed_size as u64;
        self.page.clear();
        Ok(())
    }

    /// The chunk's bytes (offsets from 0) and what `append_column` needs to place them.
    fn close(mut self, settings: &mut PageSettings) -> Result<(Bytes, ColumnCloseResult)> {
        self.write_page(settings)?;
        let bytes = Bytes::from(self.sink.into_inner()?);
        let mut meta = ColumnChunkMetaData::builder(self.descr.clone())
            .set_compression(settings.compression)
            .set_encodings_mask(EncodingMask::new_from_encodings(
                [Encoding::RLE, Encoding::DELTA_BINARY_PACKED].iter(),
            ))
            .set_page_encoding_stats(vec![PageEncodingStats {
                page_type: PageType::DATA_PAGE,
                encoding: Encoding::DELTA_BINARY_PACKED,
                count: self.bounds.len() as i32,
            }])
            .set_total_compressed_size(bytes.len() as i64)
            .set_total_uncompressed_size(self.uncompressed as i64)
            .set_num_values(self.rows as i64)
            .set_data_page_offset(0);
        let range = self
            .bounds
            .iter()
            .copied()
            .reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)));
        let with_stats = self.statistics != EnabledStatistics::None;
        if let (true, Some((min, max))) = (with_stats, range) {
            let stats = ValueStatistics::<i32>::new(
                Some(min.into()),
                Some(max.into()),
                None,
                Some(0),
                false,
            )
            .with_backwards_compatible_min_max(true);
            meta = meta.set_statistics(stats.into());
        }
        let column_index = match self.statistics {
            EnabledStatistics::Page if !self.bounds.is_empty() => Some(column_index(&self.bounds)?),
            _ => None,
        };
        let close = ColumnCloseResult {
            bytes_written: bytes.len() as u64,
            rows_written: self.rows,
            metadata: meta.build()?,
            bloom_filter: None,
            column_index,
            offset_index: Some(self.offsets.build()),
        };
        Ok((bytes, close))
    }
}

/// The column index of pages with these bounds, its boundary order decided as parquet-rs does.
fn column_index(bounds: &[(i16, i16)]) -> Result<ColumnIndexMetaData> {
    let mut index = ColumnIndexBuilder::new(PhysicalType::INT32);
    for &(min, max) in bounds {
        let le = |v: i16| i32::from(v).to_le_bytes().to_vec();
        index.append(false, le(min), le(max), 0);
    }
    let ascending = bounds
        .windows(2)
        .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1);
    let descending = bounds
        .windows(2)
        .all(|w| w[0].0 >= w[1].0 && w[0].1 >= w[1].1);
    index.set_boundary_order(match (ascending, descending) {
        (true, _) => BoundaryOrder::ASCENDING,
        (false, true) => BoundaryOrder::DESCENDING,
        (false, false) => BoundaryOrder::UNORDERED,
    });
    index.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{writer_properties, ParquetOptions};
    use arrow::array::{Int16Array, Int64Array};
    use arrow::compute::concat_batches;
    use arrow::datatypes::{Field, Schema};
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    use parquet::arrow::ArrowWriter;
    use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
    use proptest::prelude::*;

    fn schema(channels: usize) -> SchemaRef {
        let mut fields = vec![Field::new("sample_index", DataType::Int64, false)];
        fields.extend((0..channels).map(|c| Field::new(format!("c{c}"), DataType::Int16, false)));
        Arc::new(Schema::new(fields))
    }

    /// `channels[c]` are the values of channel c, cut into batches of `batch_rows`.
    fn batches(channels: &[Vec<i16>], batch_rows: usize) -> Vec<RecordBatch> {
        let rows = channels[0].len();
        let all = RecordBatch::try_new(
            schema(channels.len()),
            std::iter::once(Arc::new(Int64Array::from_iter_values(0..rows as i64)) as ArrayRef)
                .chain(
                    channels
                        .iter()
                        .map(|c| Arc::new(Int16Array::from(c.clone())) as _),
                )
                .collect(),
        )
        .unwrap();
        (0..rows)
            .step_by(batch_rows.max(1))
            .map(|at| all.slice(at, batch_rows.min(rows - at)))
            .collect()
    }

    fn props(opts: &ParquetOptions, schema: &Schema, compressed: bool) -> WriterProperties {
        let props = writer_properties(schema, opts).unwrap();
        if compressed {
            return props;
        }
        props
            .into_builder()
            .set_compression(Compression::UNCOMPRESSED)
            .build()
    }

    fn ours(batches: &[RecordBatch], props: WriterProperties) -> Bytes {
        let mut out = Vec::new();
        let mut w = ParquetWriter::try_new(&mut out, batches[0].schema(), props).unwrap();
        for b in batches {
            w.write(b).unwrap();
        }
        w.close().unwrap();
        out.into()
    }

    /// The peer: parquet-rs' own writer with the same properties.
    fn arrow_writer(batches: &[RecordBatch], props: WriterProperties) -> Bytes {
        let mut out = Vec::new();
        let mut w = ArrowWriter::try_new(&mut out, batches[0].schema(), Some(props)).unwrap();
        for b in batches {
            w.write(b).unwrap();
        }
        w.close().unwrap();
        out.into()
    }

    /// Everything parquet-rs reads back from a file, with the page indexes.
    fn read(file: Bytes) -> (RecordBatch, Arc<ParquetMetaData>) {
        let opts = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required);
        let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(file, opts).unwrap();
        let meta = builder.metadata().clone();
        let schema = builder.schema().clone();
        let batches: Vec<_> = builder.build().unwrap().map(Result::unwrap).collect();
        (concat_batches(&schema, &batches).unwrap(), meta)
    }

    /// Our file reads back as the input, with row groups near the byte limit, parquet-rs'
    /// statistics and encodings, each page within the row limit and the column index holding
    /// each page's true bounds.
    fn check(channels: &[Vec<i16>], batch_rows: usize, opts: &ParquetOptions, compressed: bool) {
        let input = batches(channels, batch_rows);
        let schema = input[0].schema();
        let (got, meta) = read(ours(&input, props(opts, &schema, compressed)));
        let (_, peer) = read(arrow_writer(&input, props(opts, &schema, compressed)));
        assert_eq!(got, concat_batches(&schema, &input).unwrap());
        let groups = meta.row_groups();
        let mut first_row = 0;
        for (g, ours) in groups.iter().enumerate() {
            // Row groups close near the byte limit (estimates differ from parquet-rs' a little).
            let bytes: i64 = ours.columns().iter().map(|c| c.compressed_size()).sum();
            let limit = opts.max_row_group_bytes as i64;
            assert!(bytes <= limit + limit / 10, "row group {g}: {bytes} bytes");
            assert!(
                g + 1 == groups.len() || bytes >= limit / 2,
                "row group {g}: {bytes}"
            );
            // Where parquet-rs also wrote one row group, its statistics must be ours.
            let theirs = peer
                .row_groups()
                .first()
                .filter(|_| peer.num_row_groups() == 1);
            for (c, a) in ours.columns().iter().enumerate() {
                let b = &peer.row_groups()[0].columns()[c];
                assert_eq!(a.encodings_mask(), b.encodings_mask(), "column {c}");
                if let (Some(theirs), 1) = (theirs, groups.len()) {
                    assert_eq!(
                        a.statistics(),
                        theirs.columns()[c].statistics(),
                        "column {c}"
                    );
                }
                let (Some(values), ColumnIndexMetaData::INT32(index)) = (
                    channels.get(c.wrapping_sub(1)),
                    &meta.column_index().unwrap()[g][c],
                ) else {
                    continue;
                };
                let pages = meta.offset_index().unwrap()[g][c].page_locations();
                for (p, page) in pages.iter().enumerate() {
                    let end = pages
                        .get(p + 1)
                        .map_or(ours.num_rows(), |n| n.first_row_index);
                    let rows = page.first_row_index as usize..end as usize;
                    assert!(rows.len() <= opts.data_page_rows);
                    let values = &values[first_row + rows.start..first_row + rows.end];
                    let min = i32::from(*values.iter().min().unwrap());
                    let max = i32::from(*values.iter().max().unwrap());
                    assert_eq!((index.min_values()[p], index.max_values()[p]), (min, max));
                }
            }
            first_row += ours.num_rows() as usize;
        }
    }

    /// Uncompressed and one page per column chunk, our file is parquet-rs' byte for byte: the
    /// encoding, page headers, statistics, page index and footer are the same.
    #[test]
    fn one_page_chunks_are_parquet_rs_byte_for_byte() {
        let wave = |n: usize, k: usize| -> Vec<i16> {
            (0..n).map(|i| ((i * k) % 601) as i16 - 300).collect()
        };
        let extremes: Vec<i16> = (0..1000)
            .map(|i| if i % 2 == 0 { i16::MIN } else { i16::MAX })
            .collect();
        let opts = ParquetOptions::default();
        let mut cases = vec![vec![
            wave(1000, 7919),
            extremes,
            vec![-3; 1000],
            wave(1000, 13),
        ]];
        cases.extend(
            [1, 2, 31, 32, 33, 127, 128, 129, 130, 257, 30_000].map(|n| vec![wave(n, 7919)]),
        );
        for channels in cases {
            let input = batches(&channels, 100);
            let props = || props(&opts, &input[0].schema(), false);
            assert!(ours(&input, props()) == arrow_writer(&input, props()));
        }
    }

    fn small_pages() -> ParquetOptions {
        ParquetOptions {
            data_page_rows: 300,
            max_row_group_bytes: 20_000,
            ..ParquetOptions::default()
        }
    }

    #[test]
    fn pages_and_row_groups_split_like_parquet_rs() {
        let wave: Vec<i16> = (0..30_001)
            .map(|i| ((i * 7919) % 601) as i16 - 300)
            .collect();
        for compressed in [false, true] {
            check(
                &[wave.clone(), wave.clone()],
                4096,
                &ParquetOptions::default(),
                compressed,
            );
            check(
                &[wave.clone(), wave.clone()],
                77,
                &small_pages(),
                compressed,
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn any_samples_match_parquet_rs(
            (channels, batch_rows) in (1usize..5, 1usize..900).prop_flat_map(|(c, rows)| (
                prop::collection::vec(
                    prop_oneof![
                        prop::collection::vec(any::<i16>(), rows),
                        prop::collection::vec(-40i16..40, rows),
                    ],
                    c,
                ),
                1usize..400,
            )),
            compressed in any::<bool>(),
        ) {
            check(&channels, batch_rows, &small_pages(), compressed);
        }
    }
}
