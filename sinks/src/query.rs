//! SQL over the views with DataFusion.
//!
//! Every subdirectory of the views directory that holds Parquet files is registered as a
//! table named after the directory (every `*.parquet` in it: `sagas/part-0.parquet`, or
//! `stock_levels/partition-<p>.parquet` per partition), so they are `sagas` and `stock_levels`; and
//! every [derived view](crate::derived) whose base tables are there, as a SQL view.
//!
//! ```no_run
//! # async fn demo() -> sinks::Result<()> {
//! let engine = sinks::QueryEngine::open(std::path::Path::new("data/views")).await?;
//! let batches = engine.sql("SELECT sku, sum(available) FROM stock_levels GROUP BY sku").await?;
//! println!("{}", sinks::OutputFormat::Table.render(&batches)?);
//! # Ok(()) }
//! ```

use std::path::Path;

use arrow::record_batch::RecordBatch;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::{ParquetReadOptions, SQLOptions, SessionContext};

#[cfg(test)]
use crate::OutputFormat;
use crate::{Error, Result};

/// A DataFusion session with every view registered.
pub struct QueryEngine {
    ctx: SessionContext,
    tables: Vec<String>,
}

impl QueryEngine {
    /// Registers the views found under `views_dir`. Each query reads every file as it was
    /// when the query listed it, even if a writer renames a new one over it meanwhile (see
    /// [`PinnedFs`](crate::pinned::PinnedFs)).
    pub async fn open(views_dir: &Path) -> Result<Self> {
        // information_schema: `SHOW TABLES`, `SHOW COLUMNS FROM t` and the
        // `information_schema` tables, for analysts finding their way.
        let ctx = SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new().with_information_schema(true),
        );
        ctx.register_object_store(
            ObjectStoreUrl::local_filesystem().as_ref(),
            std::sync::Arc::new(crate::pinned::PinnedFs::new()),
        );
        let mut tables = Vec::new();
        let entries = match std::fs::read_dir(views_dir) {
            Ok(entries) => entries.collect::<Result<Vec<_>, _>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
        .map_err(|source| Error::Io {
            view: "*".into(),
            path: views_dir.into(),
            source,
        })?;
        for entry in entries {
            let path = entry.path();
            let has_parquet = std::fs::read_dir(&path)
                .map(|files| {
                    files
                        .flatten()
                        .any(|f| f.path().extension().is_some_and(|e| e == "parquet"))
                })
                .unwrap_or(false);
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if has_parquet {
                let url = format!("{}/", path.display());
                ctx.register_parquet(name, &url, ParquetReadOptions::default())
                    .await?;
                tables.push(name.to_owned());
            }
        }
        // Derived views whose base tables are all here.
        for d in crate::derived::DERIVED {
            if d.from.iter().all(|t| tables.iter().any(|have| have == t)) {
                ctx.sql(&format!("CREATE VIEW {} AS {}", d.name, d.sql))
                    .await?;
                tables.push(d.name.to_owned());
            }
        }
        tables.sort();
        Ok(QueryEngine { ctx, tables })
    }

    /// Registers an in-memory table (e.g. the `views` system table) beside the views.
    pub fn register_batch(&mut self, name: &str, batch: RecordBatch) -> Result<()> {
        let table = datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        self.ctx.register_table(name, std::sync::Arc::new(table))?;
        self.tables.push(name.to_owned());
        Ok(())
    }

    /// Names of the registered views.
    pub fn tables(&self) -> &[String] {
        &self.tables
    }

    /// Runs one SQL query and collects the result. Statements that would change anything
    /// are refused with [`Error::ReadOnly`] before they run: DDL (`CREATE EXTERNAL TABLE`
    /// would read any file the process can; `DROP`), DML (`COPY … TO` would write one,
    /// `INSERT`) and `SET`/`PREPARE`-style statements.
    pub async fn sql(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        let plan = self.ctx.state().create_logical_plan(sql).await?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| Error::ReadOnly {
                reason: e.strip_backtrace(),
            })?;
        Ok(self.ctx.execute_logical_plan(plan).await?.collect().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stock_levels::{StockLevel, VIEW, to_batch};
    use crate::table::SnapshotTable;

    #[tokio::test]
    async fn views_are_queryable_by_sql() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<StockLevel> = (0..10)
            .map(|i| StockLevel {
                sku: format!("SKU-{}", i % 3),
                warehouse: format!("W{i}"),
                on_hand: i,
                reserved: i / 2,
                version: 1,
                updated_at: 0,
            })
            .collect();
        SnapshotTable::open(dir.path(), VIEW)
            .unwrap()
            .replace(&to_batch(&rows).unwrap(), "")
            .unwrap();
        let engine = QueryEngine::open(dir.path()).await.unwrap();
        assert_eq!(engine.tables(), ["stock_levels"]);
        let batches = engine
            .sql("SELECT sku, sum(on_hand) AS on_hand, sum(available) AS available FROM stock_levels GROUP BY sku ORDER BY sku")
            .await
            .unwrap();
        let csv = OutputFormat::Csv.render(&batches).unwrap();
        // SKU-0: i = 0,3,6,9 → on_hand 18, reserved 0+1+3+4 = 8
        assert_eq!(
            csv,
            "sku,on_hand,available\nSKU-0,18,10\nSKU-1,12,7\nSKU-2,15,8\n"
        );
        let json = OutputFormat::Json.render(&batches).unwrap();
        assert!(
            json.starts_with("{\"sku\":\"SKU-0\",\"on_hand\":18,\"available\":10}"),
            "{json}"
        );
        assert!(
            OutputFormat::Table
                .render(&batches)
                .unwrap()
                .contains("| SKU-1 | 12")
        );
    }

    /// The query side only reads: every statement that would write a file, read one that
    /// is not a view, or change a table is refused before it runs, as the caller's fault.
    #[tokio::test]
    async fn statements_that_change_anything_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let level = StockLevel {
            sku: "SKU-1".into(),
            warehouse: "W".into(),
            on_hand: 7,
            reserved: 0,
            version: 1,
            updated_at: 0,
        };
        SnapshotTable::open(dir.path(), VIEW)
            .unwrap()
            .replace(&to_batch(&[level]).unwrap(), "")
            .unwrap();
        let engine = QueryEngine::open(dir.path()).await.unwrap();
        let written = dir.path().join("stock_levels").join("written.parquet");
        let secret = dir.path().join("secret.csv");
        std::fs::write(&secret, "a\n42\n").unwrap();
        for (sql, what) in [
            (
                format!("COPY (SELECT 1 AS x) TO '{}'", written.display()),
                "COPY",
            ),
            (
                format!("COPY stock_levels TO '{}'", written.display()),
                "COPY",
            ),
            (
                format!(
                    "CREATE EXTERNAL TABLE s STORED AS CSV LOCATION '{}'",
                    secret.display()
                ),
                "CreateExternalTable",
            ),
            ("DROP TABLE stock_levels".to_owned(), "DropTable"),
            (
                "CREATE TABLE t AS SELECT 1 AS x".to_owned(),
                "CreateMemoryTable",
            ),
            (
                "INSERT INTO stock_levels SELECT * FROM stock_levels".to_owned(),
                "Insert",
            ),
            (
                "SET datafusion.execution.batch_size = 1".to_owned(),
                "SetVariable",
            ),
        ] {
            let e = engine.sql(&sql).await.expect_err(&sql);
            assert!(matches!(e, Error::ReadOnly { .. }), "{sql}: {e:?}");
            assert!(!e.is_internal(), "{sql}: the caller's fault");
            let message = e.to_string();
            assert!(
                message.contains("read-only") && message.contains(what),
                "{sql}: {message}"
            );
        }
        assert!(!written.exists(), "a refused COPY wrote a file");
        let batches = engine
            .sql("SELECT sum(on_hand) AS n FROM stock_levels")
            .await
            .unwrap();
        assert_eq!(OutputFormat::Csv.render(&batches).unwrap(), "n\n7\n");
        // Reading queries of every kind still run.
        for sql in [
            "EXPLAIN SELECT * FROM stock_levels",
            "WITH s AS (SELECT sku FROM stock_levels) SELECT count(*) FROM s",
            "SHOW TABLES",
            "SHOW COLUMNS FROM stock_levels",
            "SELECT table_name FROM information_schema.tables",
        ] {
            engine.sql(sql).await.expect(sql);
        }
    }

    /// A view file renamed over while queries run: every query answers with the old or the
    /// new table. (DataFusion lists a directory, then reads each file at the size it listed:
    /// a file replaced in between read as "Corrupt footer" before queries were retried.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queries_see_a_replaced_view_whole() {
        let dir = tempfile::tempdir().unwrap();
        let table = SnapshotTable::open(dir.path(), VIEW).unwrap();
        let level = |i: i64| StockLevel {
            sku: format!("SKU-{i:05}"),
            warehouse: "W".into(),
            on_hand: i,
            reserved: 0,
            version: 1,
            updated_at: 0,
        };
        let small = to_batch(&(0..10).map(level).collect::<Vec<_>>()).unwrap();
        let large = to_batch(&(0..3000).map(level).collect::<Vec<_>>()).unwrap();
        table.replace(&small, "").unwrap();
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let replaced = std::sync::Arc::new(AtomicU64::new(0));
        let writer = {
            let (table, stop, replaced) = (table.clone(), stop.clone(), replaced.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let n = replaced.load(Ordering::Relaxed);
                    let batch = if n.is_multiple_of(2) { &large } else { &small };
                    table.replace(batch, "").unwrap();
                    replaced.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let mut failures = Vec::new();
        let (mut queries, cap) = (
            0,
            std::time::Instant::now() + std::time::Duration::from_secs(60),
        );
        // At least 300 queries over at least 100 replacements (a busy machine slows the writer).
        while queries < 300
            || (replaced.load(Ordering::Relaxed) < 100 && std::time::Instant::now() < cap)
        {
            queries += 1;
            let answer = async {
                let engine = QueryEngine::open(dir.path()).await?;
                let batches = engine.sql("SELECT count(*) AS n FROM stock_levels").await?;
                OutputFormat::Csv.render(&batches)
            };
            match answer.await {
                Ok(csv) if csv == "n\n10\n" || csv == "n\n3000\n" => {}
                other => failures.push(format!("{other:?}")),
            }
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        let replaced = replaced.load(Ordering::Relaxed);
        assert!(
            replaced >= 100,
            "the file was replaced {replaced} times only"
        );
        assert!(
            failures.is_empty(),
            "{} of {queries} queries failed while the file was replaced {replaced} times; first: {}",
            failures.len(),
            failures[0]
        );
    }

    /// Between a compaction's merge and its deletes the audit trail's directory holds the
    /// merged part and the parts it merged: a query sees each row once.
    #[tokio::test]
    async fn a_compaction_cut_short_shows_each_audit_row_once() {
        use crate::audit::{AuditRow, AuditTable, Checkpoint};
        let dir = tempfile::tempdir().unwrap();
        let table = AuditTable::open(dir.path()).unwrap();
        let mut prev = String::new();
        let rows: Vec<AuditRow> = (0..30)
            .map(|o| {
                let row = AuditRow {
                    topic: "orders.events".into(),
                    offset: o,
                    ..AuditRow::default()
                }
                .link(&prev);
                prev = row.hash.clone();
                row
            })
            .collect();
        for chunk in rows.chunks(10) {
            table.append(chunk, &Checkpoint::default()).unwrap();
        }
        table
            .write_part(
                &dir.path()
                    .join(crate::audit::VIEW)
                    .join("part-00000002~00000001.parquet"),
                &rows[..20],
                &Checkpoint::default(),
            )
            .unwrap();
        let engine = QueryEngine::open(dir.path()).await.unwrap();
        let batches = engine
            .sql("SELECT count(*) AS n, count(DISTINCT \"offset\") AS offsets FROM audit_trail")
            .await
            .unwrap();
        assert_eq!(
            OutputFormat::Csv.render(&batches).unwrap(),
            "n,offsets\n30,30\n"
        );
    }

    #[tokio::test]
    async fn derived_views_answer_from_their_base_tables() {
        use crate::ledger::{self, LedgerRow};
        let dir = tempfile::tempdir().unwrap();
        let row = |order: &str, entry: &str, account: &str, d: i64, c: i64, at: i64| LedgerRow {
            order_id: order.into(),
            entry: entry.into(),
            document: format!("{entry}-{order}"),
            account: account.into(),
            debit_cents: d,
            credit_cents: c,
            occurred_at: at,
            event_id: format!("{entry}-{order}"),
            partition: 0,
            offset: 0,
        };
        let day = 86_400_000;
        let rows = vec![
            // O-1: paid 500, invoiced on day 1.
            row("O-1", "PaymentReceived", "cash", 500, 0, 10),
            row("O-1", "PaymentReceived", "customer_deposits", 0, 500, 10),
            row("O-1", "InvoiceIssued", "customer_deposits", 500, 0, day + 5),
            row("O-1", "InvoiceIssued", "revenue", 0, 500, day + 5),
            // O-2: paid 300, refunded on day 1.
            row("O-2", "PaymentReceived", "cash", 300, 0, 20),
            row("O-2", "PaymentReceived", "customer_deposits", 0, 300, 20),
            row(
                "O-2",
                "CreditNoteIssued",
                "customer_deposits",
                300,
                0,
                day + 9,
            ),
            row("O-2", "CreditNoteIssued", "cash", 0, 300, day + 9),
        ];
        SnapshotTable::open(dir.path(), ledger::VIEW)
            .unwrap()
            .replace(&ledger::to_batch(&rows).unwrap(), "")
            .unwrap();
        let engine = QueryEngine::open(dir.path()).await.unwrap();
        assert_eq!(engine.tables(), ["ledger", "revenue", "sales_by_day"]);
        let csv = |sql: &'static str| {
            let engine = &engine;
            async move {
                OutputFormat::Csv
                    .render(&engine.sql(sql).await.unwrap())
                    .unwrap()
            }
        };
        assert_eq!(
            csv("SELECT * FROM revenue ORDER BY order_id").await,
            "order_id,captured_cents,refunded_cents,revenue_cents\nO-1,500,0,500\nO-2,300,300,0\n"
        );
        assert_eq!(
            csv("SELECT * FROM sales_by_day ORDER BY day").await,
            "day,invoices,revenue_cents,refunded_cents\n1970-01-01,0,0,0\n1970-01-02,1,500,300\n"
        );
    }

    #[tokio::test]
    async fn an_unknown_table_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let engine = QueryEngine::open(dir.path()).await.unwrap();
        let err = engine
            .sql("SELECT * FROM nope")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[tokio::test]
    async fn a_point_lookup_reads_one_row_group_of_a_sorted_view() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<StockLevel> = (0..300_000)
            .map(|i| StockLevel {
                sku: format!("SKU-{i:06}"),
                warehouse: "AMS".into(),
                on_hand: i,
                reserved: 0,
                version: 1,
                updated_at: 0,
            })
            .collect();
        SnapshotTable::open(dir.path(), VIEW)
            .unwrap()
            .replace(&to_batch(&rows).unwrap(), "")
            .unwrap();
        let engine = QueryEngine::open(dir.path()).await.unwrap();
        let found = engine
            .sql("SELECT on_hand FROM stock_levels WHERE sku = 'SKU-250000'")
            .await
            .unwrap();
        assert_eq!(
            OutputFormat::Csv.render(&found).unwrap(),
            "on_hand\n250000\n"
        );
        let plan = OutputFormat::Csv
            .render(
                &engine
                    .sql(
                        "EXPLAIN ANALYZE SELECT on_hand FROM stock_levels WHERE sku = 'SKU-250000'",
                    )
                    .await
                    .unwrap(),
            )
            .unwrap();
        // 300,000 rows in 5 row groups: 4 pruned by statistics, 1 read.
        assert!(
            plan.contains("row_groups_pruned_statistics=5 total \u{2192} 1 matched"),
            "{plan}"
        );
    }
}
