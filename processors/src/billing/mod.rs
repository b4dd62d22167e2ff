//! The billing service: a balanced double-entry ledger of the order business. A captured
//! payment is held as the customer's deposit (`PaymentReceived`); a confirmed order is
//! invoiced from it (`InvoiceIssued`); a refund issues a credit note (`CreditNoteIssued`).
//! Every event carries its ledger entry, whose debits equal its credits, so the ledger
//! balances by construction; `revenue` is the confirmed orders' totals, and
//! captured − refunded = revenue once every saga has ended.
//!
//! Event-sourced like payments and shipping: it decides events and its state is their fold
//! ([`evolve`]), rebuildable from `billing.events` alone.

pub mod ledger;

use schemas::billing::accounts::*;
use schemas::billing::*;
use schemas::record::RecordUnion;
use schemas::saga::BillingIn;

use crate::InvalidCommand;
use crate::limits::{Check, MAX_ORDER_TOTAL_CENTS};
use crate::saga::{Participant, Reaction, caused_by, saga_of, seen};

pub const SERVICE: &str = "billing";

#[derive(Debug, Clone, Default)]
pub struct Billing;

fn entry(debit: &str, credit: &str, cents: i64) -> Vec<Posting> {
    vec![
        Posting {
            account: debit.into(),
            debit_cents: cents,
            credit_cents: 0,
        },
        Posting {
            account: credit.into(),
            debit_cents: 0,
            credit_cents: cents,
        },
    ]
}

impl Participant for Billing {
    type Input = BillingIn;
    type Output = BillingEvent;
    type State = BillingState;

    fn handle(
        &self,
        state: Option<&BillingState>,
        input: &BillingIn,
        now: i64,
    ) -> Result<Reaction<BillingState, BillingEvent>, InvalidCommand> {
        let cause = input.metadata();
        let order_id = saga_of(cause);
        if state.is_some_and(|s| seen(&s.steps, &cause.event_id)) {
            return Ok(Reaction::none());
        }
        // Amounts come from other services' replies; one outside what an order can total
        // is not booked (it would break the ledger's sums), it is dead-lettered.
        let (field, amount) = match input {
            BillingIn::PaymentCaptured(p) => ("amount_cents", p.amount_cents),
            BillingIn::PaymentRefunded(r) => ("amount_cents", r.amount_cents.max(0)),
            BillingIn::OrderConfirmed(c) => ("total_cents", c.total_cents),
        };
        Check::new(input.record_name()).in_range(field, amount, MAX_ORDER_TOTAL_CENTS)?;
        let version = state.map_or(0, |s| s.version) + 1;
        let meta = caused_by(cause, SERVICE, &order_id, &order_id, version, now, 0);
        let event: BillingEvent = match input {
            BillingIn::PaymentCaptured(p) => PaymentReceived {
                metadata: meta,
                order_id: order_id.clone(),
                payment_id: p.payment_id.clone(),
                amount_cents: p.amount_cents,
                postings: entry(CASH, CUSTOMER_DEPOSITS, p.amount_cents),
            }
            .into(),
            // Refunds of nothing (a compensation that found nothing captured) post nothing.
            BillingIn::PaymentRefunded(r) if r.amount_cents <= 0 => return Ok(Reaction::none()),
            BillingIn::PaymentRefunded(r) => CreditNoteIssued {
                metadata: meta,
                credit_note_id: format!("CN-{order_id}-{version}"),
                order_id: order_id.clone(),
                amount_cents: r.amount_cents,
                postings: entry(CUSTOMER_DEPOSITS, CASH, r.amount_cents),
            }
            .into(),
            BillingIn::OrderConfirmed(c) => {
                if state.is_some_and(|s| s.invoice_id.is_some()) {
                    return Ok(Reaction::none()); // one invoice per order
                }
                InvoiceIssued {
                    metadata: meta,
                    invoice_id: format!("INV-{order_id}"),
                    order_id: order_id.clone(),
                    customer_id: c.customer_id.clone(),
                    amount_cents: c.total_cents,
                    postings: entry(CUSTOMER_DEPOSITS, REVENUE, c.total_cents),
                }
                .into()
            }
        };
        Ok(Reaction::new(evolve(state, &event), vec![event]))
    }
}

/// An order's billing after `event`: the fold that rebuilds billing from `billing.events`.
pub fn evolve(state: Option<&BillingState>, event: &BillingEvent) -> BillingState {
    let meta = event.metadata();
    let mut s = state.cloned().unwrap_or_else(|| BillingState {
        order_id: saga_of(meta),
        version: 0,
        received_cents: 0,
        invoiced_cents: 0,
        credited_cents: 0,
        invoice_id: None,
        steps: Vec::new(),
    });
    match event {
        BillingEvent::PaymentReceived(e) => {
            s.received_cents = s.received_cents.saturating_add(e.amount_cents)
        }
        BillingEvent::InvoiceIssued(e) => {
            s.invoiced_cents = s.invoiced_cents.saturating_add(e.amount_cents);
            s.invoice_id = Some(e.invoice_id.clone());
        }
        BillingEvent::CreditNoteIssued(e) => {
            s.credited_cents = s.credited_cents.saturating_add(e.amount_cents)
        }
    }
    s.version = s.version.max(meta.aggregate_version);
    if let Some(cause) = &meta.causation_id
        && !seen(&s.steps, cause)
    {
        s.steps.push(cause.clone());
    }
    s
}

#[cfg(test)]
mod tests {
    use schemas::Metadata;
    use schemas::orders::{OrderConfirmed, OrderContext};
    use schemas::payments::{PaymentCaptured, PaymentRefunded};

    use super::*;

    fn meta(id: &str) -> Metadata {
        Metadata {
            saga_id: Some("O-1".into()),
            ..Metadata::command(id, "O-1", 0)
        }
    }

    fn captured(id: &str) -> BillingIn {
        PaymentCaptured {
            metadata: meta(id),
            order: OrderContext {
                order_id: "O-1".into(),
                customer_id: "C-1".into(),
                lines: vec![],
                total_cents: 500,
                payment_method: "visa".into(),
                ship_to_country: "NL".into(),
                ship_to_postcode: "1".into(),
            },
            payment_id: "PAY-O-1".into(),
            amount_cents: 500,
        }
        .into()
    }

    fn run(inputs: &[BillingIn]) -> (Option<BillingState>, Vec<BillingEvent>) {
        let mut state = None;
        let mut events = Vec::new();
        for i in inputs {
            let r = Billing.handle(state.as_ref(), i, 1).unwrap();
            if let Some(s) = r.state {
                state = Some(s);
            }
            events.extend(r.emit);
        }
        (state, events)
    }

    fn balance(events: &[BillingEvent], account: &str) -> i64 {
        events
            .iter()
            .flat_map(|e| e.postings())
            .filter(|p| p.account == account)
            .map(|p| p.credit_cents - p.debit_cents)
            .sum()
    }

    #[test]
    fn a_confirmed_order_is_invoiced_once_from_its_deposit() {
        let confirmed: BillingIn = OrderConfirmed {
            metadata: meta("conf"),
            order_id: "O-1".into(),
            customer_id: "C-1".into(),
            total_cents: 500,
            shipment_id: "S".into(),
            carrier: "UPS".into(),
        }
        .into();
        let (state, events) = run(&[captured("cap"), confirmed.clone(), confirmed]);
        assert_eq!(events.len(), 2, "one deposit, one invoice: {events:?}");
        assert_eq!(balance(&events, REVENUE), 500);
        assert_eq!(balance(&events, CUSTOMER_DEPOSITS), 0);
        assert_eq!(balance(&events, CASH), -500, "cash is debited (an asset)");
        let state = state.unwrap();
        assert_eq!(state.invoice_id.as_deref(), Some("INV-O-1"));
        // The state is the fold of the events.
        let folded = events.iter().fold(None, |s: Option<BillingState>, e| {
            Some(evolve(s.as_ref(), e))
        });
        assert_eq!(folded, Some(state));
    }

    #[test]
    fn a_refund_issues_a_credit_note_and_nothing_is_left_on_deposit() {
        let refund = |id: &str, amount| -> BillingIn {
            PaymentRefunded {
                metadata: meta(id),
                order_id: "O-1".into(),
                payment_id: "PAY-O-1".into(),
                amount_cents: amount,
            }
            .into()
        };
        let (_, events) = run(&[
            captured("cap"),
            refund("r1", 500),
            refund("r2", 0),
            refund("r1", 500),
        ]);
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(matches!(events[1], BillingEvent::CreditNoteIssued(_)));
        for account in [CASH, CUSTOMER_DEPOSITS, REVENUE] {
            assert_eq!(balance(&events, account), 0, "{account}");
        }
        for e in &events {
            let (d, c) = e
                .postings()
                .iter()
                .fold((0, 0), |(d, c), p| (d + p.debit_cents, c + p.credit_cents));
            assert_eq!(d, c, "every entry balances");
        }
    }
}
