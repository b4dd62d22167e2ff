//! Inventory's saga participant: reserves all lines of an order, or none.
//!
//! Stock lives in per-sku aggregates (partitioned by sku), an order's lines span skus, so the
//! participant is keyed by order and fans out: one `ReserveStock` per line to
//! `inventory.commands` (keyed by sku, `reply-to: inventory.reservations`); the sku
//! aggregates answer each line there, keyed by order; once every line has answered it replies
//! `StockReserved`, or releases what it got and replies `StockReservationFailed`.

use schemas::Metadata;
use schemas::inventory::*;
use schemas::orders::OrderContext;
use schemas::saga::{InventorySagaIn, InventorySagaOut};

use crate::InvalidCommand;
use crate::saga::{Participant, Reaction, caused_by, remember};

pub const SERVICE: &str = "inventory";

pub mod status {
    pub const RESERVING: &str = "Reserving";
    pub const RESERVED: &str = "Reserved";
    pub const FAILED: &str = "Failed";
    pub const RELEASED: &str = "Released";
    /// Compensated before the order arrived: a late order is not reserved.
    pub const COMPENSATED: &str = "Compensated";

    pub const LINE_PENDING: &str = "Pending";
    pub const LINE_RESERVED: &str = "Reserved";
    pub const LINE_REJECTED: &str = "Rejected";
    pub const LINE_RELEASED: &str = "Released";
    pub const LINE_DISPATCHED: &str = "Dispatched";
    /// Confirmed: every line's stock left the warehouse.
    pub const DISPATCHED: &str = "Dispatched";
}
use status::*;

#[derive(Debug, Clone, Default)]
pub struct InventorySaga;

/// Reservation id of line `i` of an order (the sku aggregate acts once per id).
pub fn reservation_id(order_id: &str, i: usize) -> String {
    format!("{order_id}/{i}")
}

struct Out<'a> {
    cause: &'a Metadata,
    order_id: &'a str,
    now: i64,
    emit: Vec<InventorySagaOut>,
}

impl Out<'_> {
    fn meta(&self, aggregate_id: &str, version: i64) -> Metadata {
        caused_by(
            self.cause,
            SERVICE,
            self.order_id,
            aggregate_id,
            version,
            self.now,
            self.emit.len(),
        )
    }

    /// Releases every reserved line (per-sku commands); returns how many.
    fn release(&mut self, s: &mut OrderReservation) -> i32 {
        let mut n = 0;
        for line in s.lines.iter_mut().filter(|l| l.status == LINE_RESERVED) {
            line.status = LINE_RELEASED.into();
            let metadata = self.meta(&line.sku, -1);
            self.emit.push(
                ReleaseReservation {
                    metadata,
                    reservation_id: line.reservation_id.clone(),
                    sku: line.sku.clone(),
                }
                .into(),
            );
            n += 1;
        }
        n
    }

    fn released(&mut self, s: &OrderReservation, lines: i32) {
        let metadata = self.meta(&s.order_id, s.version);
        self.emit.push(
            StockReleased {
                metadata,
                order_id: s.order_id.clone(),
                lines_released: lines,
            }
            .into(),
        );
    }
}

/// Once no line is pending, the order's outcome: reserved, failed, or released.
fn settle(s: &mut OrderReservation, out: &mut Out<'_>) {
    if s.status != RESERVING || s.lines.iter().any(|l| l.status == LINE_PENDING) {
        return;
    }
    s.version += 1;
    if s.release_pending {
        s.status = RELEASED.into();
        let n = out.release(s);
        out.released(s, n);
    } else if s.lines.iter().all(|l| l.status == LINE_RESERVED) {
        s.status = RESERVED.into();
        let metadata = out.meta(&s.order_id, s.version);
        let order = s.order.clone().expect("a reserving order has its context");
        out.emit.push(StockReserved { metadata, order }.into());
    } else {
        s.status = FAILED.into();
        out.release(s);
        let metadata = out.meta(&s.order_id, s.version);
        let reason = s
            .reason
            .clone()
            .unwrap_or_else(|| "a line was rejected".into());
        out.emit.push(
            StockReservationFailed {
                metadata,
                order_id: s.order_id.clone(),
                reason,
            }
            .into(),
        );
    }
}

fn new_state(order_id: &str, order: Option<&OrderContext>) -> OrderReservation {
    OrderReservation {
        order_id: order_id.to_owned(),
        version: 0,
        status: String::new(),
        lines: Vec::new(),
        order: order.cloned(),
        release_pending: false,
        reason: None,
        steps: Vec::new(),
    }
}

impl Participant for InventorySaga {
    type Input = InventorySagaIn;
    type Output = InventorySagaOut;
    type State = OrderReservation;

    fn handle(
        &self,
        state: Option<&OrderReservation>,
        input: &InventorySagaIn,
        now: i64,
    ) -> Result<Reaction<OrderReservation, InventorySagaOut>, InvalidCommand> {
        let cause = input.metadata();
        let Some(order_id) = cause.saga_id.clone() else {
            return Err(InvalidCommand {
                command: "supplychain.inventory saga message",
                reason: "field metadata.saga_id is null; saga messages carry their saga id".into(),
            });
        };
        let Some(mut s) = remember(
            state,
            &cause.event_id,
            |s| &mut s.steps,
            || new_state(&order_id, None),
        ) else {
            return Ok(Reaction::none());
        };
        let mut out = Out {
            cause,
            order_id: &order_id,
            now,
            emit: Vec::new(),
        };
        match input {
            InventorySagaIn::OrderPlaced(e) => {
                if s.status.is_empty() {
                    s.status = RESERVING.into();
                    s.order = Some(e.order.clone());
                    s.version += 1;
                    for (i, line) in e.order.lines.iter().enumerate() {
                        let id = reservation_id(&order_id, i);
                        let metadata = out.meta(&line.sku, -1);
                        out.emit.push(
                            ReserveStock {
                                metadata,
                                reservation_id: id.clone(),
                                sku: line.sku.clone(),
                                warehouse: line.warehouse.clone(),
                                quantity: line.quantity,
                            }
                            .into(),
                        );
                        s.lines.push(LineReservation {
                            reservation_id: id,
                            sku: line.sku.clone(),
                            warehouse: line.warehouse.clone(),
                            quantity: line.quantity,
                            status: LINE_PENDING.into(),
                        });
                    }
                }
                // Otherwise a late order after compensation, or a duplicate: nothing to do.
            }
            InventorySagaIn::InventoryReserved(e) => {
                if let Some(line) = s
                    .lines
                    .iter_mut()
                    .find(|l| l.reservation_id == e.reservation_id && l.status == LINE_PENDING)
                {
                    line.status = LINE_RESERVED.into();
                    settle(&mut s, &mut out);
                }
            }
            InventorySagaIn::ReservationRejected(e) => {
                if let Some(line) = s
                    .lines
                    .iter_mut()
                    .find(|l| l.reservation_id == e.reservation_id && l.status == LINE_PENDING)
                {
                    line.status = LINE_REJECTED.into();
                    if s.reason.is_none() {
                        s.reason = Some(format!(
                            "{} at {}: {} wanted, {} available",
                            e.sku, e.warehouse, e.quantity, e.available
                        ));
                    }
                    settle(&mut s, &mut out);
                }
            }
            // Releases are not awaited: a release of a held reservation cannot fail.
            InventorySagaIn::InventoryReleased(_) => {}
            // The order is confirmed and handed to the carrier: its stock leaves the
            // warehouse (on hand and reserved drop), once.
            InventorySagaIn::OrderConfirmed(_) => {
                if s.status == RESERVED {
                    s.status = DISPATCHED.into();
                    s.version += 1;
                    for line in s.lines.iter_mut().filter(|l| l.status == LINE_RESERVED) {
                        line.status = LINE_DISPATCHED.into();
                        let metadata = out.meta(&line.sku, -1);
                        out.emit.push(
                            DispatchStock {
                                metadata,
                                reservation_id: line.reservation_id.clone(),
                                sku: line.sku.clone(),
                            }
                            .into(),
                        );
                    }
                }
            }
            InventorySagaIn::PaymentDeclined(_) | InventorySagaIn::PaymentRefunded(_) => {
                match s.status.as_str() {
                    RESERVED => {
                        s.status = RELEASED.into();
                        s.version += 1;
                        let n = out.release(&mut s);
                        out.released(&s, n);
                    }
                    // Lines still in flight: release them as they land, then answer.
                    RESERVING => s.release_pending = true,
                    "" => {
                        s.status = COMPENSATED.into();
                        s.version += 1;
                        out.released(&s, 0);
                    }
                    // Failed, released or compensated already: answer again (a retry).
                    _ => {
                        s.version += 1;
                        out.released(&s, 0);
                    }
                }
            }
        }
        let emit = out.emit;
        Ok(Reaction::new(s, emit))
    }
}
