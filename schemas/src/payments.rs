//! Payments service records: saga replies on `payments.replies` and the payment state on
//! `payments.changelog`.

use serde::{Deserialize, Serialize};

use crate::orders::OrderContext;
use crate::{record_union, records, union_metadata};

records! {
    /// Reply: the order's total was charged.
    PaymentCaptured { order: OrderContext, payment_id: String, amount_cents: i64 }
    /// Reply: the charge was declined.
    PaymentDeclined { order_id: String, payment_id: String, reason: String }
    /// Reply (compensation): what this reply refunded; 0 when nothing was captured or it was
    /// refunded already.
    PaymentRefunded { order_id: String, payment_id: String, amount_cents: i64 }
}

/// Changelog record: one order's payment (idempotency key = saga id + step).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentState {
    pub order_id: String,
    pub version: i64,
    pub payment_id: String,
    /// Captured, Declined, Refunded, Compensated.
    pub status: String,
    pub captured_cents: i64,
    pub refunded_cents: i64,
    pub steps: Vec<String>,
}

record_union! {
    /// Everything `payments.replies` may carry.
    PaymentReply {
        PaymentCaptured => "../avro/payments/PaymentCaptured.avsc",
        PaymentDeclined => "../avro/payments/PaymentDeclined.avsc",
        PaymentRefunded => "../avro/payments/PaymentRefunded.avsc",
    }
}
union_metadata!(PaymentReply {
    PaymentCaptured,
    PaymentDeclined,
    PaymentRefunded
});

record_union! {
    /// Everything `payments.changelog` may carry.
    PaymentChangelog { PaymentState => "../avro/payments/PaymentState.avsc" }
}
