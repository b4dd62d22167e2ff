//! The file formats supplystream reads: pipeline definitions ([`definitions`]) and local state
//! snapshots ([`snapshot`]). Pure parsing and checking; the callers (`pipelines::ownership`,
//! `pipelines::state`) add the service registry and the Kafka side.

pub mod definitions;
pub mod snapshot;
