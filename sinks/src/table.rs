//! A current-state table: one Parquet file per view, replaced atomically.
//!
//! Current-state views (e.g. `stock_levels`) are small relative to the event log (one row per
//! key), so each flush writes the whole table to `<dir>/<view>/part-0.parquet.tmp`, fsyncs it
//! and renames it over `part-0.parquet`. A reader that opens the file once sees the old or
//! the new file, never half of one; DataFusion reopens it per read, and reads it through
//! [`PinnedFs`](crate::pinned::PinnedFs) for that reason. Flushes are batched by the runtime (every N ms, only when changed), never per record.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::{Error, Result};

/// A table's declaration: the rows a view writes and their Arrow form, both ways.
pub trait Table {
    type Row: Clone;
    /// The table's (and its view's) name.
    const NAME: &'static str;
    /// The batch of `rows`, in the table's order.
    fn to_batch(rows: &[&Self::Row]) -> Result<RecordBatch>;
    /// The rows of a stored table (for a view that resumes from it).
    fn from_batches(batches: &[RecordBatch]) -> Result<Vec<Self::Row>>;
}

/// Declares `$table` as the [`Table`] of rows `$row` named `$name`, over the module's
/// `to_batch` and `from_batches`.
#[macro_export]
macro_rules! table {
    ($table:ident, $row:ty, $name:expr) => {
        /// The table's declaration.
        pub struct $table;

        impl $crate::table::Table for $table {
            type Row = $row;
            const NAME: &'static str = $name;
            fn to_batch(rows: &[&$row]) -> $crate::Result<arrow::record_batch::RecordBatch> {
                to_batch(rows.iter().copied())
            }
            fn from_batches(
                batches: &[arrow::record_batch::RecordBatch],
            ) -> $crate::Result<Vec<$row>> {
                from_batches(batches)
            }
        }
    };
}

/// Key of the checkpoint in the Parquet key-value metadata.
pub const CHECKPOINT_KEY: &str = "supplystream.checkpoint";
const FILE: &str = "part-0.parquet";

/// Rows per Parquet row group. Views are written sorted by their lookup key, so with
/// row groups of this size a point lookup (`WHERE sku = …`) reads one row group and prunes
/// the rest by their min/max statistics; the default (1M rows) made every view one group.
pub const ROW_GROUP_ROWS: usize = 64 * 1024;

/// One view's directory and file.
#[derive(Debug, Clone)]
pub struct SnapshotTable {
    view: String,
    dir: PathBuf,
}

impl SnapshotTable {
    /// The table of `view` under `views_dir` (created if missing).
    pub fn open(views_dir: &Path, view: &str) -> Result<Self> {
        let dir = views_dir.join(view);
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            view: view.into(),
            path: dir.clone(),
            source,
        })?;
        Ok(SnapshotTable {
            view: view.into(),
            dir,
        })
    }

    /// Path of the live file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        let path = path.to_path_buf();
        move |source| Error::Io {
            view: self.view.clone(),
            path,
            source,
        }
    }

    fn parquet(&self) -> impl FnOnce(parquet::errors::ParquetError) -> Error + '_ {
        move |source| Error::Parquet {
            view: self.view.clone(),
            source,
        }
    }

    /// Replaces the table with `batch`, recording `checkpoint` (opaque text) with it.
    pub fn replace(&self, batch: &RecordBatch, checkpoint: &str) -> Result<()> {
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let file = File::create(&tmp).map_err(self.io(&tmp))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_key_value_metadata(Some(vec![KeyValue::new(
                CHECKPOINT_KEY.into(),
                checkpoint.to_owned(),
            )]))
            .build();
        let mut writer =
            ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(self.parquet())?;
        writer.write(batch).map_err(self.parquet())?;
        let file = writer.into_inner().map_err(self.parquet())?;
        file.sync_all().map_err(self.io(&tmp))?;
        std::fs::rename(&tmp, self.path()).map_err(self.io(&tmp))?;
        Ok(())
    }

    /// The current contents and checkpoint, or `None` if the view was never written.
    pub fn load(&self) -> Result<Option<(Vec<RecordBatch>, String)>> {
        let path = self.path();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(&path)(e)),
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(self.parquet())?;
        let checkpoint = checkpoint_of(&builder);
        let batches = builder
            .build()
            .map_err(self.parquet())?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some((batches, checkpoint)))
    }

    /// Schema-only check helper for callers that build batches.
    pub fn view(&self) -> &str {
        &self.view
    }
}

/// The checkpoint text in a Parquet file's footer (the builder has read only the footer).
pub(crate) fn checkpoint_of<T>(
    builder: &parquet::arrow::arrow_reader::ArrowReaderBuilder<T>,
) -> String {
    builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|kv| kv.key == CHECKPOINT_KEY))
        .and_then(|kv| kv.value.clone())
        .unwrap_or_default()
}

/// The checkpoint stored with `view` under `views_dir`, read from the file's footer only (no
/// rows: freshness checks poll it), without creating anything; `None` if never written.
pub fn stored_checkpoint(views_dir: &Path, view: &str) -> Result<Option<String>> {
    let path = views_dir.join(view).join(FILE);
    let io = |source| Error::Io {
        view: view.into(),
        path: path.clone(),
        source,
    };
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| Error::Parquet {
            view: view.into(),
            source,
        })?;
    Ok(Some(checkpoint_of(&builder)))
}

/// Shorthand used by view modules.
pub(crate) fn batch(
    schema: Arc<arrow::datatypes::Schema>,
    columns: Vec<arrow::array::ArrayRef>,
) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// The columns of one batch of a view, read back (to resume after a restart): the batch must
/// have the view's current `schema`, and each column the type asked for; an error names the
/// view and what differs.
pub(crate) struct Columns<'a> {
    view: &'static str,
    batch: &'a RecordBatch,
}

impl<'a> Columns<'a> {
    pub(crate) fn new(
        view: &'static str,
        schema: &arrow::datatypes::Schema,
        batch: &'a RecordBatch,
    ) -> Result<Self> {
        if batch.schema().fields() != schema.fields() {
            return Err(Error::Layout {
                view: view.into(),
                reason: format!("schema {:?} is not the current one", batch.schema()),
            });
        }
        Ok(Columns { view, batch })
    }

    /// Column `i` as a `T`.
    pub(crate) fn get<T: arrow::array::Array + 'static>(&self, i: usize) -> Result<&'a T> {
        self.batch
            .column(i)
            .as_any()
            .downcast_ref::<T>()
            .ok_or_else(|| Error::Layout {
                view: self.view.into(),
                reason: format!("column {}", self.batch.schema().field(i).name()),
            })
    }
}

/// Row `i` of a nullable string column.
pub(crate) fn text_at(a: &arrow::array::StringArray, i: usize) -> Option<String> {
    use arrow::array::Array;
    a.is_valid(i).then(|| a.value(i).to_owned())
}

/// Row `i` of a nullable primitive column (e.g. a timestamp).
pub(crate) fn value_at<T: arrow::datatypes::ArrowPrimitiveType>(
    a: &arrow::array::PrimitiveArray<T>,
    i: usize,
) -> Option<T::Native> {
    use arrow::array::Array;
    a.is_valid(i).then(|| a.value(i))
}
