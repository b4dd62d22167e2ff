//! Billing service records: events on `billing.events` (each a balanced double-entry ledger
//! entry) and the per-order billing state on `billing.changelog`.

use serde::{Deserialize, Serialize};

use crate::{record_union, records, union_metadata};

/// One line of a ledger entry: an account debited or credited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    /// `cash`, `customer_deposits` or `revenue`.
    pub account: String,
    pub debit_cents: i64,
    pub credit_cents: i64,
}

/// Ledger accounts.
pub mod accounts {
    pub const CASH: &str = "cash";
    /// Money captured for orders not yet invoiced (or refunded).
    pub const CUSTOMER_DEPOSITS: &str = "customer_deposits";
    pub const REVENUE: &str = "revenue";
}

records! {
    /// Event: a captured payment, held as the customer's deposit (debit cash, credit
    /// customer_deposits).
    PaymentReceived { order_id: String, payment_id: String, amount_cents: i64, postings: Vec<Posting> }
    /// Event: the invoice of a confirmed order, settled from the deposit (debit
    /// customer_deposits, credit revenue).
    InvoiceIssued {
        invoice_id: String, order_id: String, customer_id: String, amount_cents: i64,
        postings: Vec<Posting>,
    }
    /// Event: a credit note for a refund (debit customer_deposits, credit cash).
    CreditNoteIssued { credit_note_id: String, order_id: String, amount_cents: i64, postings: Vec<Posting> }
}

/// Changelog record: what billing recorded for one order (the fold of its events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingState {
    pub order_id: String,
    pub version: i64,
    pub received_cents: i64,
    pub invoiced_cents: i64,
    pub credited_cents: i64,
    pub invoice_id: Option<String>,
    /// Causation ids of its events (dedup).
    pub steps: Vec<String>,
}

record_union! {
    /// Everything `billing.events` may carry.
    BillingEvent {
        PaymentReceived => "../avro/billing/PaymentReceived.avsc",
        InvoiceIssued => "../avro/billing/InvoiceIssued.avsc",
        CreditNoteIssued => "../avro/billing/CreditNoteIssued.avsc",
    }
}
union_metadata!(BillingEvent {
    PaymentReceived,
    InvoiceIssued,
    CreditNoteIssued
});

impl BillingEvent {
    /// The ledger entry the event posts.
    pub fn postings(&self) -> &[Posting] {
        match self {
            BillingEvent::PaymentReceived(e) => &e.postings,
            BillingEvent::InvoiceIssued(e) => &e.postings,
            BillingEvent::CreditNoteIssued(e) => &e.postings,
        }
    }
}

record_union! {
    /// Everything `billing.changelog` may carry.
    BillingChangelog { BillingState => "../avro/billing/BillingState.avsc" }
}
