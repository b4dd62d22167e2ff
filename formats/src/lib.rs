//! What supplystream reads from outside, free of Kafka and DataFusion: pipeline definitions
//! ([`definitions`]), local state snapshots ([`snapshot`]) and the metadata the HTTP API adds
//! to a caller's body ([`request`]). Pure parsing and checking; the callers
//! (`pipelines::ownership`, `pipelines::state`, `pipelines::http`) add the service registry,
//! the clock and the Kafka side.

pub mod definitions;
pub mod request;
pub mod snapshot;
