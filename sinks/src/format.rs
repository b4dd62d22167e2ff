//! Rendering of Arrow batches as text for people and scripts.

use arrow::record_batch::RecordBatch;

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
                        w.write(b)?;
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
