//! A current-state table: Parquet files replaced atomically, one per view or one per input
//! partition.
//!
//! Current-state views (e.g. `stock_levels`) are small relative to the event log (one row per
//! key), so each flush writes the whole table to `<dir>/<view>/part-0.parquet.tmp`, fsyncs it
//! and renames it over `part-0.parquet`. A view kept per partition (each instance of a
//! scaled-out service writes the partitions it owns) writes `partition-<p>.parquet` the same
//! way, one file per partition: the table is the union of the directory's `*.parquet` files,
//! for DataFusion and for any other engine. A reader that opens the file once sees the old or
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

/// The file of partition `p` of a view kept per partition.
pub fn partition_file(p: i32) -> String {
    format!("partition-{p}.parquet")
}

/// Rows per Parquet row group. Views are written sorted by their lookup key, so with
/// row groups of this size a point lookup (`WHERE sku = …`) reads one row group and prunes
/// the rest by their min/max statistics; the default (1M rows) made every view one group.
pub const ROW_GROUP_ROWS: usize = 64 * 1024;

/// One view's directory and file (the whole table, or one partition's part of it).
#[derive(Debug, Clone)]
pub struct SnapshotTable {
    view: String,
    dir: PathBuf,
    file: String,
}

impl SnapshotTable {
    /// The table of `view` under `views_dir`, one file (directory created if missing).
    pub fn open(views_dir: &Path, view: &str) -> Result<Self> {
        Self::open_file(views_dir, view, FILE.to_owned())
    }

    /// The part of `view` that holds input partition `p` ([`partition_file`]).
    pub fn open_partition(views_dir: &Path, view: &str, p: i32) -> Result<Self> {
        Self::open_file(views_dir, view, partition_file(p))
    }

    fn open_file(views_dir: &Path, view: &str, file: String) -> Result<Self> {
        let dir = views_dir.join(view);
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            view: view.into(),
            path: dir.clone(),
            source,
        })?;
        Ok(SnapshotTable {
            view: view.into(),
            dir,
            file,
        })
    }

    /// Path of the live file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.file)
    }

    /// The view's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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
        let tmp = self.dir.join(format!("{}.tmp", self.file));
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

    /// The checkpoint stored with the live file, read from its footer only; `None` if it
    /// was never written.
    pub fn checkpoint(&self) -> Result<Option<String>> {
        let path = self.path();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(&path)(e)),
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(self.parquet())?;
        Ok(Some(checkpoint_of(&builder)))
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

/// The checkpoints stored with `view` under `views_dir`, one per live file (the whole
/// table's `part-0.parquet`, or each partition's `partition-<p>.parquet`), read from the files' footers only (no rows:
/// freshness checks poll them), without creating anything; empty if never written. A file
/// replaced or removed while the directory is listed is read as it is then, or skipped.
pub fn stored_checkpoints(views_dir: &Path, view: &str) -> Result<Vec<String>> {
    let dir = views_dir.join(view);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io {
            view: view.into(),
            path,
            source,
        }
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&dir)(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(io(&dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == FILE || (name.starts_with("partition-") && name.ends_with(".parquet")) {
            files.push(path);
        }
    }
    files.sort();
    let mut checkpoints = Vec::new();
    for path in files {
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&path)(e)),
        };
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| Error::Parquet {
                view: view.into(),
                source,
            })?;
        checkpoints.push(checkpoint_of(&builder));
    }
    Ok(checkpoints)
}

/// Every row of `view` under `views_dir`: the batches of its live files (the whole
/// table's, or each partition's, in file-name order); `None` if none was written.
pub fn load_all(views_dir: &Path, view: &str) -> Result<Option<Vec<RecordBatch>>> {
    let mut names: Vec<String> = match std::fs::read_dir(views_dir.join(view)) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|n| n == FILE || (n.starts_with("partition-") && n.ends_with(".parquet")))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                view: view.into(),
                path: views_dir.join(view),
                source,
            });
        }
    };
    if names.is_empty() {
        return Ok(None);
    }
    names.sort();
    let mut batches = Vec::new();
    for name in names {
        let table = SnapshotTable::open_file(views_dir, view, name)?;
        if let Some((b, _)) = table.load()? {
            batches.extend(b);
        }
    }
    Ok(Some(batches))
}

/// Removes `view`'s files under `views_dir` that `keep` refuses (by file name), e.g. the
/// whole-table file once the view is kept per partition; returns how many went.
pub fn remove_files(views_dir: &Path, view: &str, keep: impl Fn(&str) -> bool) -> Result<usize> {
    let dir = views_dir.join(view);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io {
            view: view.into(),
            path,
            source,
        }
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(&dir)(e)),
    };
    let mut removed = 0;
    for entry in entries {
        let path = entry.map_err(io(&dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".parquet") && !keep(name) {
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
    }
    Ok(removed)
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
pub struct Columns<'a> {
    view: &'static str,
    batch: &'a RecordBatch,
}

impl<'a> Columns<'a> {
    pub fn new(
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

/// How a row field is held in an Arrow column: its type, and the conversions both ways.
/// The kinds in [`col`] cover the views' fields; [`columns!`](crate::columns) declares a
/// table from them.
pub trait Column {
    /// The row field's type.
    type Value;
    /// The column's field (its type and nullability).
    fn field(name: &str) -> arrow::datatypes::Field;
    /// The column of `values`.
    fn array<'a>(values: impl Iterator<Item = &'a Self::Value>) -> arrow::array::ArrayRef
    where
        Self::Value: 'a;
    /// Row `i` of `array`, which [`Columns::new`] checked is of [`Column::field`]'s type.
    fn value(array: &dyn arrow::array::Array, i: usize) -> Self::Value;
}

/// Column kinds: text, 64-bit and 32-bit integers, booleans and UTC millisecond timestamps,
/// each also nullable (`Opt…`, for `Option` fields), and lists of text.
pub mod col {
    use std::sync::Arc;

    use arrow::array::{
        Array, ArrayRef, BooleanArray, Int32Array, Int64Array, ListArray, ListBuilder, StringArray,
        StringBuilder, TimestampMillisecondArray,
    };
    use arrow::datatypes::{DataType, Field, TimeUnit};

    use super::Column;

    fn time() -> DataType {
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
    }

    fn of<T: Array + 'static>(a: &dyn Array) -> &T {
        a.as_any()
            .downcast_ref::<T>()
            .expect("Columns::new checked the schema")
    }

    macro_rules! kind {
        ($(#[$doc:meta])* $kind:ident, $value:ty, $data:expr, $nullable:expr, $array:ty,
         |$vs:ident| $build:expr, |$a:ident, $i:ident| $read:expr) => {
            $(#[$doc])*
            pub struct $kind;

            impl Column for $kind {
                type Value = $value;
                fn field(name: &str) -> Field {
                    Field::new(name, $data, $nullable)
                }
                fn array<'a>($vs: impl Iterator<Item = &'a $value>) -> ArrayRef {
                    Arc::new($build)
                }
                fn value(a: &dyn Array, $i: usize) -> $value {
                    let $a = of::<$array>(a);
                    $read
                }
            }
        };
    }

    kind!(/** `Utf8`, not null. */ Text, String, DataType::Utf8, false, StringArray,
        |vs| StringArray::from_iter_values(vs), |a, i| a.value(i).to_owned());
    kind!(/** `Utf8`, nullable. */ OptText, Option<String>, DataType::Utf8, true, StringArray,
        |vs| vs.map(|v| v.as_deref()).collect::<StringArray>(),
        |a, i| a.is_valid(i).then(|| a.value(i).to_owned()));
    kind!(/** `Int64`, not null. */ Int, i64, DataType::Int64, false, Int64Array,
        |vs| Int64Array::from_iter_values(vs.copied()), |a, i| a.value(i));
    kind!(/** `Int64`, nullable. */ OptInt, Option<i64>, DataType::Int64, true, Int64Array,
        |vs| vs.copied().collect::<Int64Array>(), |a, i| a.is_valid(i).then(|| a.value(i)));
    kind!(/** `Int32`, not null. */ Int32, i32, DataType::Int32, false, Int32Array,
        |vs| Int32Array::from_iter_values(vs.copied()), |a, i| a.value(i));
    kind!(/** `Boolean`, not null. */ Bool, bool, DataType::Boolean, false, BooleanArray,
        |vs| vs.map(|v| Some(*v)).collect::<BooleanArray>(), |a, i| a.value(i));
    kind!(/** UTC millisecond timestamp, not null. */ Time, i64, time(), false,
        TimestampMillisecondArray,
        |vs| TimestampMillisecondArray::from_iter_values(vs.copied()).with_timezone("UTC"),
        |a, i| a.value(i));
    fn text_item() -> Arc<Field> {
        Arc::new(Field::new_list_field(DataType::Utf8, false))
    }

    kind!(/** A list of `Utf8`, not null (e.g. the event ids a row has counted). */ TextList,
    Vec<String>, DataType::List(text_item()), false, ListArray,
    |vs| {
        let mut list = ListBuilder::new(StringBuilder::new()).with_field(text_item());
        for v in vs {
            v.iter().for_each(|s| list.values().append_value(s));
            list.append(true);
        }
        list.finish()
    },
    |a, i| {
        let items = a.value(i);
        let items = of::<StringArray>(items.as_ref());
        items.iter().map(|s| s.unwrap_or_default().to_owned()).collect()
    });
    kind!(/** UTC millisecond timestamp, nullable. */ OptTime, Option<i64>, time(), true,
        TimestampMillisecondArray,
        |vs| vs.copied().collect::<TimestampMillisecondArray>().with_timezone("UTC"),
        |a, i| a.is_valid(i).then(|| a.value(i)));
}

/// Declares a view's table from one list of its columns, in order: the Arrow schema
/// (`SCHEMA`), `to_batch` (rows sorted by `order`), `from_batches` (refusing a table of
/// another layout) and the [`Table`] `$table`. Each column is one of
/// - `field: Kind`: the row's field, of a [`col`] kind;
/// - `"name" => field: Kind`: the same under another column name (e.g. a Rust keyword);
/// - `name: Kind = |r| expr`: computed from the row when written, not read back.
///
/// Prove the declaration with [`round_trip`] in the module's tests.
///
/// ```ignore
/// sinks::columns! {
///     StockLevelsTable, StockLevel, "stock_levels", order: |r| (&r.sku, &r.warehouse),
///     sku: Text, on_hand: Int, reserved: Int, available: Int = |r| r.on_hand - r.reserved,
/// }
/// ```
#[macro_export]
macro_rules! columns {
    ($table:ident, $row:ident, $name:expr, order: |$r:ident| $key:expr, $($spec:tt)+) => {
        $crate::columns!(@parse [$table $row ($name) $r ($key)] [] [] $($spec)+);
    };
    // A field under its own name.
    (@parse $head:tt [$($cols:tt)*] [$($inits:tt)*]
        $field:ident : $kind:ident = |$x:ident| $e:expr $(, $($rest:tt)*)?) => {
        $crate::columns!(@parse $head
            [$($cols)* (stringify!($field), $kind, (computed $x $e))]
            [$($inits)*] $($($rest)*)?);
    };
    (@parse $head:tt [$($cols:tt)*] [$($inits:tt)*]
        $field:ident : $kind:ident $(, $($rest:tt)*)?) => {
        $crate::columns!(@parse $head
            [$($cols)* (stringify!($field), $kind, (field $field))]
            [$($inits)* ($field, stringify!($field), $kind)] $($($rest)*)?);
    };
    (@parse $head:tt [$($cols:tt)*] [$($inits:tt)*]
        $column:literal => $field:ident : $kind:ident $(, $($rest:tt)*)?) => {
        $crate::columns!(@parse $head
            [$($cols)* ($column, $kind, (field $field))]
            [$($inits)* ($field, $column, $kind)] $($($rest)*)?);
    };
    (@array $rows:ident, $kind:ident, (field $field:ident)) => {
        <$crate::table::col::$kind as $crate::table::Column>::array($rows.iter().map(|r| &r.$field))
    };
    (@array $rows:ident, $kind:ident, (computed $x:ident $e:expr)) => {{
        let values: Vec<_> = $rows.iter().map(|$x| $e).collect();
        <$crate::table::col::$kind as $crate::table::Column>::array(values.iter())
    }};
    (@parse [$table:ident $row:ident ($name:expr) $r:ident ($key:expr)]
        [$(($col:expr, $kind:ident, $how:tt))+]
        [$(($ifield:ident, $icol:expr, $ikind:ident))*]) => {
        static SCHEMA: std::sync::LazyLock<arrow::datatypes::SchemaRef> =
            std::sync::LazyLock::new(|| {
                std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
                    $(<$crate::table::col::$kind as $crate::table::Column>::field($col)),+
                ]))
            });

        /// The batch of `rows`, in the table's order.
        pub fn to_batch<'a>(
            rows: impl IntoIterator<Item = &'a $row>,
        ) -> $crate::Result<arrow::record_batch::RecordBatch> {
            let mut rows: Vec<&$row> = rows.into_iter().collect();
            rows.sort_by(|a, b| {
                let first = {
                    let $r = *a;
                    $key
                };
                let second = {
                    let $r = *b;
                    $key
                };
                first.cmp(&second)
            });
            Ok(arrow::record_batch::RecordBatch::try_new(
                SCHEMA.clone(),
                vec![$($crate::columns!(@array rows, $kind, $how)),+],
            )?)
        }

        /// The rows of batches of this table (to resume after a restart); an error if the
        /// table was written with another layout.
        pub fn from_batches(
            batches: &[arrow::record_batch::RecordBatch],
        ) -> $crate::Result<Vec<$row>> {
            let mut rows = Vec::new();
            for b in batches {
                $crate::table::Columns::new($name, &SCHEMA, b)?;
                for i in 0..b.num_rows() {
                    rows.push($row {
                        $($ifield: <$crate::table::col::$ikind as $crate::table::Column>::value(
                            b.column_by_name($icol).expect("checked").as_ref(),
                            i,
                        )),*
                    });
                }
            }
            Ok(rows)
        }

        $crate::table!($table, $row, $name);
    };
}

/// Writes `rows` as table `T` and reads them back: a declaration's test (both ways, every
/// column). `rows` must be in the table's order.
pub fn round_trip<T: Table<Row: PartialEq + std::fmt::Debug>>(rows: Vec<T::Row>) {
    let refs: Vec<&T::Row> = rows.iter().collect();
    let batch = T::to_batch(&refs).expect("to_batch");
    assert_eq!(T::from_batches(&[batch]).expect("from_batches"), rows);
}
