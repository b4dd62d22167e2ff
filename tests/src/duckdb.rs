//! Cross-checks views with DuckDB (through `scripts/duckdb.sh`): the Parquet files must read
//! in an engine that is not ours and give the same answers as DataFusion.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, ensure};
use sinks::{OutputFormat, QueryEngine};

use crate::stack::repo_root;

/// Rows of a CSV text with a header, as fields.
fn rows(csv: &str) -> Vec<Vec<String>> {
    csv.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect()
}

/// `sql` with a CTE for each derived view it names, of the SQL DataFusion registers for it:
/// DuckDB sees only the Parquet files, and must get the same answers from the same text.
pub fn with_derived(sql: &str) -> String {
    let ctes: Vec<String> = sinks::derived::named_in(sql)
        .map(|d| format!("{} AS ({})", d.name, d.sql))
        .collect();
    if ctes.is_empty() {
        return sql.to_owned();
    }
    format!("WITH {} {sql}", ctes.join(", "))
}

/// Runs `sql` on DuckDB over the views in `views`; the header row comes first.
pub fn query(views: &Path, sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let sql = &with_derived(sql);
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/duckdb.sh"))
        .arg(views)
        .arg(sql)
        .output()
        .context("running scripts/duckdb.sh")?;
    ensure!(
        out.status.success(),
        "DuckDB failed on {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(rows(&String::from_utf8(out.stdout)?))
}

/// Runs each query on DataFusion and on DuckDB and demands identical results.
/// Queries should order their rows and select integers and strings (formatting of floats
/// differs between engines).
pub async fn same_answers(views: &Path, queries: &[&str]) -> anyhow::Result<()> {
    let engine = QueryEngine::open(views).await?;
    for sql in queries {
        let ours = rows(&OutputFormat::Csv.render(&engine.sql(sql).await?)?);
        let theirs = query(views, sql)?;
        ensure!(ours.len() > 1, "no rows from {sql}");
        ensure!(
            ours == theirs,
            "DataFusion and DuckDB disagree on {sql}:\n ours   {:?}\n theirs {:?}",
            &ours[..ours.len().min(5)],
            &theirs[..theirs.len().min(5)]
        );
    }
    Ok(())
}
