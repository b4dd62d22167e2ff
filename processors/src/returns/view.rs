//! The `returns` view: one row per return, its status and what it brought back and refunded,
//! folded from `returns.events`. A return's row is all the fold keeps of it (each event moves
//! a return forward once: asked → authorized | rejected → received), so a redelivered event
//! changes nothing and the view resumes from its table.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemas::returns::ReturnEvent;

use super::status::*;
use crate::{Projection, Source};

/// One return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnRow {
    pub order_id: String,
    pub return_id: String,
    /// Authorized, Rejected or Received.
    pub status: String,
    pub reason: Option<String>,
    /// Units asked back (authorized returns).
    pub units: i64,
    pub sellable: i64,
    pub damaged: i64,
    pub refund_cents: i64,
    pub decided_at: i64,
    pub received_at: Option<i64>,
    pub warehouse: Option<String>,
}

/// Every return, by (order, return id).
#[derive(Debug, Default)]
pub struct ReturnsProjection(BTreeMap<(String, String), ReturnRow>);

impl Projection for ReturnsProjection {
    type Event = ReturnEvent;
    type Row = ReturnRow;
    const RESUMES: bool = true;

    fn apply(&mut self, _at: Source<'_>, e: &ReturnEvent) {
        let at = e.metadata().occurred_at;
        let row = |order_id: &str, return_id: &str, status: &str| ReturnRow {
            order_id: order_id.to_owned(),
            return_id: return_id.to_owned(),
            status: status.to_owned(),
            reason: None,
            units: 0,
            sellable: 0,
            damaged: 0,
            refund_cents: 0,
            decided_at: at,
            received_at: None,
            warehouse: None,
        };
        match e {
            ReturnEvent::ReturnAuthorized(a) => {
                self.0
                    .entry((a.order_id.clone(), a.return_id.clone()))
                    .or_insert_with(|| ReturnRow {
                        units: a.lines.iter().map(|l| l.quantity).sum(),
                        ..row(&a.order_id, &a.return_id, AUTHORIZED)
                    });
            }
            ReturnEvent::ReturnRejected(r) => {
                self.0
                    .entry((r.order_id.clone(), r.return_id.clone()))
                    .or_insert_with(|| ReturnRow {
                        reason: Some(r.reason.clone()),
                        ..row(&r.order_id, &r.return_id, REJECTED)
                    });
            }
            ReturnEvent::ReturnReceived(r) => {
                let key = (r.order_id.clone(), r.return_id.clone());
                let current = self
                    .0
                    .entry(key)
                    .or_insert_with(|| row(&r.order_id, &r.return_id, AUTHORIZED));
                if current.status == AUTHORIZED {
                    current.status = RECEIVED.into();
                    current.sellable = r.lines.iter().map(|l| l.sellable).sum();
                    current.damaged = r.lines.iter().map(|l| l.damaged).sum();
                    current.refund_cents = r.refund_cents;
                    current.received_at = Some(at);
                    current.warehouse = Some(r.warehouse.clone());
                }
            }
        }
    }

    fn rows(&self) -> Vec<Cow<'_, ReturnRow>> {
        self.0.values().map(Cow::Borrowed).collect()
    }

    fn restore(rows: Vec<ReturnRow>) -> Option<Self> {
        Some(ReturnsProjection(
            rows.into_iter()
                .map(|r| ((r.order_id.clone(), r.return_id.clone()), r))
                .collect(),
        ))
    }
}
