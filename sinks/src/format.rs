//! Rendering of Arrow batches as text for people and scripts.

use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::Result;

/// How query results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// A boxed text table for people.
    #[default]
    Table,
    /// CSV with a header row.
    Csv,
    /// One JSON object per line.
    Json,
}

impl OutputFormat {
    /// Renders batches as text.
    pub fn render(self, batches: &[RecordBatch]) -> Result<String> {
        match self {
            OutputFormat::Table => {
                Ok(arrow::util::pretty::pretty_format_batches(batches)?.to_string())
            }
            OutputFormat::Csv => {
                let mut out = Vec::new();
                {
                    let mut w = arrow::csv::Writer::new(&mut out);
                    for b in batches {
                        w.write(&flat(b)?)?;
                    }
                }
                Ok(String::from_utf8_lossy(&out).into_owned())
            }
            OutputFormat::Json => {
                let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
                for b in batches {
                    w.write(b)?;
                }
                w.finish()?;
                Ok(String::from_utf8_lossy(&w.into_inner()).into_owned())
            }
        }
    }
}

/// `batch` with every nested column (a list such as `shipments.scan_ids`, a struct, a map)
/// as text, the way the table format prints it (`[a, b]`): CSV has no nested values, and
/// the Arrow CSV writer refuses them.
fn flat(batch: &RecordBatch) -> Result<RecordBatch> {
    let schema = batch.schema();
    if !schema.fields().iter().any(|f| f.data_type().is_nested()) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(fields.capacity());
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        if f.data_type().is_nested() {
            let text = ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default())?;
            let values: StringArray = (0..c.len())
                .map(|i| c.is_valid(i).then(|| text.value(i).to_string()))
                .collect();
            fields.push(Field::new(f.name(), DataType::Utf8, f.is_nullable()));
            columns.push(Arc::new(values));
        } else {
            fields.push(f.as_ref().clone());
            columns.push(c.clone());
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, ListBuilder, StringBuilder};

    /// A list column (e.g. `shipments.scan_ids`) renders in every format; CSV gets its text.
    #[test]
    fn nested_columns_render_in_every_format() {
        let mut ids = ListBuilder::new(StringBuilder::new());
        ids.values().append_value("a");
        ids.values().append_value("b");
        ids.append(true);
        ids.append(false);
        let batch = RecordBatch::try_from_iter([
            ("n", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            ("ids", Arc::new(ids.finish()) as ArrayRef),
        ])
        .unwrap();
        assert_eq!(
            OutputFormat::Csv
                .render(std::slice::from_ref(&batch))
                .unwrap(),
            "n,ids\n1,\"[a, b]\"\n2,\n"
        );
        assert!(
            OutputFormat::Json
                .render(std::slice::from_ref(&batch))
                .unwrap()
                .contains(r#"["a","b"]"#)
        );
        assert!(
            OutputFormat::Table
                .render(&[batch])
                .unwrap()
                .contains("[a, b]")
        );
    }
}
