//! Topic names and ownership of the services (database per service).

/// Topics owned by the inventory service.
pub mod inventory {
    /// Commands in (written by producers, read by the inventory service).
    pub const COMMANDS: &str = "inventory.commands";
    /// The event log (kept forever).
    pub const EVENTS: &str = "inventory.events";
    /// Replies to saga steps.
    pub const REPLIES: &str = "inventory.replies";
    /// Per-line answers of the sku aggregates to the saga participant's commands, keyed by
    /// saga id (the `reply-to` of its `ReserveStock` commands).
    pub const RESERVATIONS: &str = "inventory.reservations";
    /// State snapshots per sku (compacted), co-partitioned with `COMMANDS`.
    pub const CHANGELOG: &str = "inventory.changelog";
    /// Dead letters with reasons in headers.
    pub const DLQ: &str = "inventory.dlq";
    /// Low-stock alerts, keyed by sku (read by suppliers).
    pub const ALERTS: &str = schemas::saga::topics::INVENTORY_ALERTS;
    /// State of `inventory-receiving` (receipts booked per sku), co-partitioned with
    /// `suppliers.events`.
    pub const RECEIVING_CHANGELOG: &str = "inventory.receiving-changelog";
    /// Consumer group of the service.
    pub const GROUP: &str = "inventory";
}

/// Topics of the order-fulfilment saga besides the inventory ones (the shared names of
/// saga messages are in `schemas::saga::topics`).
pub mod saga {
    pub const ORDERS_CHANGELOG: &str = "orders.changelog";
    pub const ORDERS_DLQ: &str = "orders.dlq";
    /// State of inventory's saga participant (per order), beside the per-sku changelog.
    pub const INVENTORY_SAGA_CHANGELOG: &str = "inventory.saga-changelog";
    pub const PAYMENTS_CHANGELOG: &str = "payments.changelog";
    pub const PAYMENTS_DLQ: &str = "payments.dlq";
    pub const SHIPPING_CHANGELOG: &str = "shipping.changelog";
    pub const SHIPPING_DLQ: &str = "shipping.dlq";
    pub const NOTIFICATIONS_CHANGELOG: &str = "notifications.changelog";
    pub const NOTIFICATIONS_DLQ: &str = "notifications.dlq";
    pub const BILLING_CHANGELOG: &str = "billing.changelog";
    pub const BILLING_DLQ: &str = "billing.dlq";
    pub const CATALOG_CHANGELOG: &str = "catalog.changelog";
    pub const CATALOG_DLQ: &str = "catalog.dlq";
    pub const SUPPLIERS_CHANGELOG: &str = "suppliers.changelog";
    pub const SUPPLIERS_DLQ: &str = "suppliers.dlq";
}

/// Headers written on dead letters.
pub mod dlq_headers {
    pub const REASON: &str = "dlq.reason";
    pub const KIND: &str = "dlq.error.kind";
    pub const SOURCE_TOPIC: &str = "dlq.source.topic";
    pub const SOURCE_PARTITION: &str = "dlq.source.partition";
    pub const SOURCE_OFFSET: &str = "dlq.source.offset";
    pub const SERVICE: &str = "dlq.service";
    /// On a dead letter whose payload was cut to fit the record size limit: the original
    /// payload's length (the whole record stays at its source offset).
    pub const TRUNCATED: &str = "dlq.truncated";
}

/// Headers on saga messages (transport details; the same ids are in the record's metadata).
pub mod saga_headers {
    pub const SAGA_ID: &str = "saga-id";
    pub const CORRELATION_ID: &str = "correlation-id";
    pub const CAUSATION_ID: &str = "causation-id";
    /// The topic the answer to this message is expected on.
    pub const REPLY_TO: &str = "reply-to";
}

/// Header of a command a producer may send again (a client retrying after a timeout): its
/// value is the command's idempotency key, and a service that remembers keys (inventory)
/// applies the command once however often it arrives. The HTTP API sets it from the
/// request's `Idempotency-Key`.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The idempotency key `message` carries, if any; an error naming what is wrong with it
/// (not UTF-8, empty, too long, a control character).
pub fn idempotency_key(message: &impl rdkafka::message::Message) -> Result<Option<&str>, String> {
    use rdkafka::message::Headers;
    let Some(h) = message
        .headers()
        .and_then(|hs| hs.iter().find(|h| h.key == IDEMPOTENCY_KEY))
    else {
        return Ok(None);
    };
    let key = std::str::from_utf8(h.value.unwrap_or_default())
        .map_err(|_| format!("header {IDEMPOTENCY_KEY} is not UTF-8"))?;
    check_idempotency_key(key)?;
    Ok(Some(key))
}

/// An idempotency key's rule: an id's (1 to [`MAX_ID_BYTES`] bytes, no control
/// characters).
///
/// [`MAX_ID_BYTES`]: processors::limits::MAX_ID_BYTES
pub fn check_idempotency_key(key: &str) -> Result<(), String> {
    use processors::limits::MAX_ID_BYTES;
    if key.is_empty() {
        Err(format!("header {IDEMPOTENCY_KEY} is empty"))
    } else if key.len() > MAX_ID_BYTES {
        Err(format!(
            "header {IDEMPOTENCY_KEY} is {} bytes, more than the limit of {MAX_ID_BYTES}",
            key.len()
        ))
    } else if key.chars().any(char::is_control) {
        Err(format!(
            "header {IDEMPOTENCY_KEY} contains a control character: {key:?}"
        ))
    } else {
        Ok(())
    }
}

/// The value of header `name` on `message`, if present and UTF-8.
pub fn header<'m>(message: &'m impl rdkafka::message::Message, name: &str) -> Option<&'m str> {
    use rdkafka::message::Headers;
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}
