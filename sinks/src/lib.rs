//! Analytics sinks: materialized views as Parquet tables, and the DataFusion query engine
//! analysts use over them.
//!
//! This crate knows Arrow and Parquet, not Kafka: the projections in `processors` fold
//! events into rows (their row types are re-exported here), each module declares its table
//! (`table!`: rows ⇄ batch), and the view loop in `pipelines` hands the rows here with the
//! source offsets they reflect. A view's offsets are stored inside
//! the Parquet file it writes (key-value metadata `supplystream.checkpoint`), so data and
//! position commit together with one atomic rename; on restart the view resumes from there.
//! Kafka consumer-group offsets of view consumers are informational only.
//!
//! The DataFusion engine is the `query` feature (default): writers such as benchmarks can
//! leave it out.
//!
//! Files are plain Parquet (Snappy), readable by DuckDB, Spark or any other engine.

pub mod audit;
pub mod derived;
pub mod format;
pub mod ledger;
#[cfg(feature = "query")]
pub mod pinned;
pub mod products;
pub mod purchasing;
#[cfg(feature = "query")]
pub mod query;
pub mod returns;
pub mod sagas;
pub mod shipments;
pub mod stock_levels;
pub mod table;
pub mod windows;

pub use format::OutputFormat;
#[cfg(feature = "query")]
pub use query::QueryEngine;
pub use table::SnapshotTable;

/// Errors of the sinks crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("view {view}: I/O on {path}: {source}")]
    Io {
        view: String,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("view {view}: Parquet: {source}")]
    Parquet {
        view: String,
        source: parquet::errors::ParquetError,
    },
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[cfg(feature = "query")]
    #[error("query failed: {0}")]
    Query(#[from] datafusion::error::DataFusionError),
    #[error("view {view}: unexpected column layout: {reason}")]
    Layout { view: String, reason: String },
    /// A statement that would change something (DDL, `INSERT`, `COPY … TO`, `SET`): the
    /// views belong to the services that fold them, and the query side only reads.
    #[cfg(feature = "query")]
    #[error(
        "only queries are answered: the views are read-only here, changed only by the services that own them ({reason})"
    )]
    ReadOnly { reason: String },
    /// A file does not match the digest written beside it.
    #[error("view {view}: {path} was changed after it was written: {reason}")]
    Altered {
        view: String,
        path: std::path::PathBuf,
        reason: String,
    },
}

impl Error {
    /// Whether the fault is on this side (a file that cannot be read, the engine), not in
    /// the query: an HTTP API answers 500 for these and 400 for the rest (SQL that does not
    /// parse or plan, a cast or a division that fails on the data).
    pub fn is_internal(&self) -> bool {
        match self {
            Error::Io { .. } | Error::Parquet { .. } | Error::Layout { .. } => true,
            Error::Altered { .. } => true,
            Error::Arrow(_) => false,
            #[cfg(feature = "query")]
            Error::Query(e) => internal(e),
            #[cfg(feature = "query")]
            Error::ReadOnly { .. } => false,
        }
    }
}

#[cfg(feature = "query")]
fn internal(e: &datafusion::error::DataFusionError) -> bool {
    use datafusion::error::DataFusionError as E;
    match e {
        E::ParquetError(_)
        | E::ObjectStore(_)
        | E::IoError(_)
        | E::Internal(_)
        | E::ExecutionJoin(_)
        | E::ResourcesExhausted(_)
        | E::External(_) => true,
        E::Context(_, inner) | E::Diagnostic(_, inner) => internal(inner),
        E::Shared(inner) => internal(inner),
        E::Collection(all) => all.iter().any(internal),
        _ => false,
    }
}

/// Result alias of the sinks crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
