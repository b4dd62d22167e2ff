//! The billing service's `ledger` projection: every posting of `billing.events`, kept
//! current. Its rows are its whole state (the event ids seen are theirs), so the view
//! resumes from its table.

use std::borrow::Cow;
use std::collections::HashSet;

use schemas::billing::BillingEvent;
use schemas::record::RecordUnion;

use crate::{Projection, Source};

/// One posting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    pub order_id: String,
    /// The billing event (record name): PaymentReceived, InvoiceIssued, CreditNoteIssued.
    pub entry: String,
    /// The document: invoice or credit note id, or the payment id.
    pub document: String,
    pub account: String,
    pub debit_cents: i64,
    pub credit_cents: i64,
    pub occurred_at: i64,
    pub event_id: String,
    pub partition: i32,
    pub offset: i64,
}

/// Every posting, in the order read.
#[derive(Debug, Default)]
pub struct Ledger {
    rows: Vec<LedgerRow>,
    /// Events published twice (at-least-once) post once.
    seen: HashSet<String>,
}

impl Projection for Ledger {
    type Event = BillingEvent;
    type Row = LedgerRow;
    const RESUMES: bool = true;

    fn apply(&mut self, at: Source<'_>, e: &BillingEvent) {
        let meta = e.metadata();
        if !self.seen.insert(meta.event_id.clone()) {
            return;
        }
        let document = match e {
            BillingEvent::PaymentReceived(x) => &x.payment_id,
            BillingEvent::InvoiceIssued(x) => &x.invoice_id,
            BillingEvent::CreditNoteIssued(x) => &x.credit_note_id,
        };
        let name = e.record_name();
        for p in e.postings() {
            self.rows.push(LedgerRow {
                order_id: meta.aggregate_id.clone(),
                entry: name.rsplit('.').next().unwrap_or(name).to_owned(),
                document: document.clone(),
                account: p.account.clone(),
                debit_cents: p.debit_cents,
                credit_cents: p.credit_cents,
                occurred_at: meta.occurred_at,
                event_id: meta.event_id.clone(),
                partition: at.partition,
                offset: at.offset,
            });
        }
    }

    fn rows(&self) -> Vec<Cow<'_, LedgerRow>> {
        self.rows.iter().map(Cow::Borrowed).collect()
    }

    fn restore(rows: Vec<LedgerRow>) -> Option<Self> {
        Some(Ledger {
            seen: rows.iter().map(|r| r.event_id.clone()).collect(),
            rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use schemas::Metadata;
    use schemas::billing::{PaymentReceived, Posting};

    use super::*;

    fn received(id: &str) -> BillingEvent {
        let posting = |account: &str, debit_cents, credit_cents| Posting {
            account: account.into(),
            debit_cents,
            credit_cents,
        };
        PaymentReceived {
            metadata: Metadata::command(id, "O-1", 7),
            order_id: "O-1".into(),
            payment_id: "P-1".into(),
            amount_cents: 500,
            postings: vec![
                posting("cash", 500, 0),
                posting("customer_deposits", 0, 500),
            ],
        }
        .into()
    }

    const AT: Source<'static> = Source {
        topic: "billing.events",
        partition: 2,
        offset: 41,
    };

    #[test]
    fn each_posting_is_a_row_and_an_event_published_twice_posts_once() {
        // Given a payment received, delivered twice
        let mut ledger = Ledger::default();
        ledger.apply(AT, &received("e1"));
        ledger.apply(AT, &received("e1"));
        // Then its two postings are two rows, with the event's source coordinates
        let rows: Vec<LedgerRow> = ledger.rows().into_iter().map(Cow::into_owned).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].entry.as_str(), rows[0].document.as_str()),
            ("PaymentReceived", "P-1")
        );
        assert_eq!((rows[0].debit_cents, rows[1].credit_cents), (500, 500));
        assert_eq!((rows[1].partition, rows[1].offset), (2, 41));
        // And a ledger restored from its rows still knows the event
        let mut back = Ledger::restore(rows.clone()).unwrap();
        back.apply(AT, &received("e1"));
        assert_eq!(back.rows().len(), 2);
        back.apply(AT, &received("e2"));
        assert_eq!(back.rows().len(), 4);
    }
}
