//! Integration scenarios of supplystream, run by two tiers:
//! - `tests/embedded.rs`: on the embedded broker and registry, inside `cargo test`;
//! - `tests/real_kafka.rs`: on Apache Kafka (KRaft) and Apicurio started by
//!   `scripts/stack.sh`, run by `.ci/run` (set `SUPPLYSTREAM_REAL_KAFKA=1`).
//!
//! Expected outcomes come from [`model`], an independent re-statement of the inventory rules
//! that shares no code with `processors`.

pub mod audit;
pub mod churn;
pub mod duckdb;
pub mod evolution;
pub mod faults;
pub mod hostile;
pub mod http;
pub mod model;
pub mod replay;
pub mod returns;
pub mod saga;
pub mod scenario;
pub mod stack;
pub mod topic;
