//! Records shared by every service: the message metadata.

use serde::{Deserialize, Serialize};

/// Metadata carried by every command and event (see `avro/common/Metadata.avsc`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// UUID of this message (for commands, the command id).
    pub event_id: String,
    /// Aggregate id; also the Kafka key.
    pub aggregate_id: String,
    /// Events: version after this event. Commands: expected version, or -1 for any.
    pub aggregate_version: i64,
    /// Milliseconds since the Unix epoch.
    pub occurred_at: i64,
    /// Id shared by everything one business request caused.
    pub correlation_id: String,
    /// Id of the message that caused this one.
    pub causation_id: Option<String>,
    /// Saga this message belongs to, if any.
    pub saga_id: Option<String>,
    /// Tenant owning the data.
    pub tenant_id: String,
    /// Region the data must stay in.
    pub region: String,
}

impl Metadata {
    /// Metadata for a new command on `aggregate_id`, its own correlation root, any version.
    pub fn command(id: &str, aggregate_id: &str, occurred_at: i64) -> Self {
        Metadata {
            event_id: id.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            aggregate_version: -1,
            occurred_at,
            correlation_id: id.to_owned(),
            causation_id: None,
            saga_id: None,
            tenant_id: "default".to_owned(),
            region: "default".to_owned(),
        }
    }
}

/// Records (and unions of records) that carry [`Metadata`].
pub trait HasMetadata {
    fn metadata(&self) -> &Metadata;
}
