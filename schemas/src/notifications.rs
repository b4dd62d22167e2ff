//! Notifications service records: `notifications.events` and the sent-notification dedup
//! state on `notifications.changelog`.

use serde::{Deserialize, Serialize};

use crate::{record_union, records, union_metadata};

records! {
    /// Event: the customer was told the outcome of an order (once per outcome).
    NotificationSent {
        order_id: String, customer_id: String,
        /// `confirmation` or `cancellation`.
        kind: String,
        text: String,
    }
}

/// Changelog record: notifications already sent for an order (dedup).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationState {
    pub order_id: String,
    pub sent: Vec<String>,
}

record_union! {
    /// Everything `notifications.events` may carry.
    NotificationEvent { NotificationSent => "../avro/notifications/NotificationSent.avsc" }
}
union_metadata!(NotificationEvent { NotificationSent });

record_union! {
    /// Everything `notifications.changelog` may carry.
    NotificationChangelog { NotificationState => "../avro/notifications/NotificationState.avsc" }
}
