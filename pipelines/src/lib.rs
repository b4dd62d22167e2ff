//! The supplystream runtime: everything that touches Kafka.
//!
//! - [`embedded`]: the zero-install mode (librdkafka's in-process mock cluster and the
//!   in-process schema registry);
//! - [`runtime`]: the one consume–decide–produce loop of every processor; [`view`]: the one
//!   loop of every view; [`error`]: what a fault is and what the loops do about it;
//! - [`registry`]: every service declared once, and everything derived from it;
//! - [`kafka`]: client configuration, topic provisioning, output with transactions or
//!   at-least-once delivery, and the dead-letter queue;
//! - [`inventory`]: the inventory service (consume `inventory.commands` → pure processor →
//!   `inventory.events` + `inventory.changelog`) and its `stock_levels` view;
//! - [`load`]: a seeded command generator for demos, tests and benchmarks;
//! - [`produce`]: JSON lines → Avro commands.
//!
//! Domain rules live in `processors`; Arrow/Parquet in `sinks`; schemas in `schemas`.

pub mod compliance;
pub mod dead_letters;
pub mod embedded;
pub mod error;
pub mod freshness;
#[cfg(feature = "query")]
pub mod http;
#[cfg(feature = "query")]
pub mod ingress;
pub mod inventory;
pub mod kafka;
pub mod load;
pub mod ownership;
pub mod produce;
pub mod registry;
pub mod replay;
pub mod returns;
pub mod runtime;
pub mod saga;
pub mod schemas_cli;
pub mod state;
pub mod topics;
pub mod view;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Where the services run.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Base URL of the Confluent-compatible schema registry.
    pub registry: String,
    /// Delivery guarantee of consume–process–produce.
    pub guarantee: Guarantee,
    /// librdkafka properties set on every client after supplystream's own (like kcat's
    /// `-X key=value`): security, timeouts, fetch sizes.
    pub kafka: Vec<(String, String)>,
}

/// Delivery guarantee of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    /// Kafka transactions: outputs, changelog and input offsets commit atomically.
    ExactlyOnce,
    /// Outputs flushed, then offsets committed; redeliveries are skipped by the per-aggregate
    /// source offset kept in the changelog. Used with the mock broker, which does not isolate
    /// aborted transactions.
    AtLeastOnce,
}

/// A cooperative stop signal shared by the loops of a process.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Asks every loop holding this signal to finish its current batch and return.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether a stop was asked for.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Waits `d`, or less if a stop is asked for meanwhile.
    pub fn sleep(&self, d: std::time::Duration) {
        let until = std::time::Instant::now() + d;
        while !self.is_stopped() {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(std::time::Duration::from_millis(100)));
        }
    }
}
