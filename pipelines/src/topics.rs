//! Topic names and ownership of the services (database per service).

/// Topics owned by the inventory service.
pub mod inventory {
    /// Commands in (written by producers, read by the inventory service).
    pub const COMMANDS: &str = "inventory.commands";
    /// The event log (kept forever).
    pub const EVENTS: &str = "inventory.events";
    /// Replies to saga steps.
    pub const REPLIES: &str = "inventory.replies";
    /// State snapshots per sku (compacted), co-partitioned with `COMMANDS`.
    pub const CHANGELOG: &str = "inventory.changelog";
    /// Dead letters with reasons in headers.
    pub const DLQ: &str = "inventory.dlq";
    /// Consumer group of the service.
    pub const GROUP: &str = "inventory";
}

/// Headers written on dead letters.
pub mod dlq_headers {
    pub const REASON: &str = "dlq.reason";
    pub const KIND: &str = "dlq.error.kind";
    pub const SOURCE_TOPIC: &str = "dlq.source.topic";
    pub const SOURCE_PARTITION: &str = "dlq.source.partition";
    pub const SOURCE_OFFSET: &str = "dlq.source.offset";
    pub const SERVICE: &str = "dlq.service";
}
