//! The returns service (reverse logistics): a customer asks to send units of a delivered
//! order back (`RequestReturn` → `ReturnAuthorized` | `ReturnRejected`); the return arrives
//! at a warehouse and is inspected (`ReceiveReturn` → `ReturnReceived`). Inventory restocks
//! the sellable units ([`restocking`], run by inventory: only inventory writes its commands)
//! and payments refunds every unit received at the order's price.
//!
//! One aggregate per **order** (all returns of an order in one place, so "not more than was
//! shipped" holds across several returns), fed by `returns.commands`, the order's own events
//! (`OrderPlaced` for the lines and prices, `OrderCancelled`) and its delivery ([`deliveries`]
//! re-keys carriers' `ParcelDelivered` from shipment to order). It reads every order, so it
//! keeps one changelog record per order and no more: the order's events are facts folded
//! idempotently (only commands are remembered, for dedup), and a delivery is what says the
//! order shipped.
//!
//! Rules of a request: the order was delivered and not cancelled; it is asked for
//! within [`WINDOW_MS`] of the delivery (the request's `occurred_at` against the carrier's
//! scan time); every line was in the order; per sku, the units asked back across the order's
//! authorized returns never exceed the units shipped. A broken rule is a `ReturnRejected`
//! event; a malformed command (no lines, a quantity of 0, a return id used twice, a receipt
//! of a return never authorized or of more than was authorized) is invalid: dead-lettered.

pub mod deliveries;
pub mod restocking;
pub mod view;

use std::collections::BTreeMap;

use schemas::Metadata;
use schemas::returns::*;

use crate::InvalidCommand;
use crate::limits::{Check, MAX_ORDER_LINES, MAX_QUANTITY};
use crate::saga::{Participant, Reaction, caused_by, seen};

pub const SERVICE: &str = "returns";

/// How long after delivery a return may be asked for: 30 days.
pub const WINDOW_MS: i64 = 30 * DAY_MS;
const DAY_MS: i64 = 24 * 3600 * 1000;

pub mod status {
    pub const AUTHORIZED: &str = "Authorized";
    pub const REJECTED: &str = "Rejected";
    pub const RECEIVED: &str = "Received";
}
use status::*;

#[derive(Debug, Clone, Default)]
pub struct Returns;

fn order_of(input: &ReturnsIn) -> &str {
    match input {
        ReturnsIn::RequestReturn(r) => &r.order_id,
        ReturnsIn::ReceiveReturn(r) => &r.order_id,
        ReturnsIn::OrderPlaced(p) => &p.order.order_id,
        ReturnsIn::OrderCancelled(c) => &c.order_id,
        ReturnsIn::OrderDelivered(d) => &d.order_id,
    }
}

fn invalid(command: &'static str, reason: String) -> InvalidCommand {
    InvalidCommand { command, reason }
}

impl Participant for Returns {
    type Input = ReturnsIn;
    type Output = ReturnEvent;
    type State = ReturnsState;

    fn handle(
        &self,
        state: Option<&ReturnsState>,
        input: &ReturnsIn,
        now: i64,
    ) -> Result<Reaction<ReturnsState, ReturnEvent>, InvalidCommand> {
        let cause = input.metadata();
        if state.is_some_and(|s| seen(&s.steps, &cause.event_id)) {
            return Ok(Reaction::none()); // a command delivered again
        }
        let order_id = order_of(input).to_owned();
        let mut s = state.cloned().unwrap_or_else(|| ReturnsState {
            order_id: order_id.clone(),
            version: 0,
            lines: Vec::new(),
            cancelled: false,
            delivered_at: None,
            returns: Vec::new(),
            steps: Vec::new(),
        });
        let meta = |version| caused_by(cause, SERVICE, &order_id, &order_id, version, now, 0);
        let event: Option<ReturnEvent> = match input {
            ReturnsIn::OrderPlaced(p) => {
                s.lines = p.order.lines.clone();
                None
            }
            ReturnsIn::OrderCancelled(_) => {
                s.cancelled = true;
                None
            }
            ReturnsIn::OrderDelivered(d) => {
                // The first delivery scan counts.
                s.delivered_at.get_or_insert(d.delivered_at);
                None
            }
            ReturnsIn::RequestReturn(r) => {
                request_limits(r)?;
                check_request(&s, r)?;
                s.steps.push(cause.event_id.clone());
                let lines = merged(r.lines.iter().map(|l| (l.sku.as_str(), l.quantity)));
                let version = s.version + 1;
                Some(match refusal(&s, cause.occurred_at, &lines) {
                    Some(reason) => {
                        s.returns.push(ReturnCase {
                            return_id: r.return_id.clone(),
                            status: REJECTED.into(),
                            lines: r.lines.clone(),
                            refund_cents: 0,
                        });
                        ReturnRejected {
                            metadata: meta(version),
                            order_id: order_id.clone(),
                            return_id: r.return_id.clone(),
                            reason,
                        }
                        .into()
                    }
                    None => {
                        s.returns.push(ReturnCase {
                            return_id: r.return_id.clone(),
                            status: AUTHORIZED.into(),
                            lines: r.lines.clone(),
                            refund_cents: 0,
                        });
                        ReturnAuthorized {
                            metadata: meta(version),
                            order_id: order_id.clone(),
                            return_id: r.return_id.clone(),
                            lines: r.lines.clone(),
                        }
                        .into()
                    }
                })
            }
            ReturnsIn::ReceiveReturn(r) => {
                receipt_limits(r)?;
                let refund = receipt(&s, r)?;
                s.steps.push(cause.event_id.clone());
                let version = s.version + 1;
                let case = s
                    .returns
                    .iter_mut()
                    .find(|c| c.return_id == r.return_id)
                    .expect("checked by receipt");
                case.status = RECEIVED.into();
                case.refund_cents = refund;
                Some(
                    ReturnReceived {
                        metadata: meta(version),
                        order_id: order_id.clone(),
                        return_id: r.return_id.clone(),
                        warehouse: r.warehouse.clone(),
                        lines: r.lines.clone(),
                        refund_cents: refund,
                    }
                    .into(),
                )
            }
        };
        if event.is_some() {
            s.version += 1;
        } else if state == Some(&s) {
            return Ok(Reaction::none()); // an order event delivered again
        }
        Ok(Reaction::new(s, event.into_iter().collect()))
    }
}

const REQUEST: &str = "supplychain.returns.RequestReturn";
const RECEIVE: &str = "supplychain.returns.ReceiveReturn";

/// Units per sku, lines of one sku added up.
fn merged<'a>(lines: impl Iterator<Item = (&'a str, i64)>) -> BTreeMap<&'a str, i64> {
    let mut out = BTreeMap::new();
    for (sku, n) in lines {
        let units = out.entry(sku).or_insert(0i64);
        *units = units.saturating_add(n);
    }
    out
}

/// What every return command is checked for first: its metadata, ids and line count.
fn check_common(
    command: &'static str,
    m: &Metadata,
    order_id: &str,
    return_id: &str,
    lines: usize,
) -> Result<Check, InvalidCommand> {
    let check = Check::new(command);
    check.metadata(m)?;
    check.id("order_id", order_id)?;
    check.id("return_id", return_id)?;
    check.require(lines <= MAX_ORDER_LINES, || {
        format!("field lines has {lines} lines, more than the limit of {MAX_ORDER_LINES}")
    })?;
    Ok(check)
}

/// The limits of a return request, whatever the order's state.
fn request_limits(r: &RequestReturn) -> Result<(), InvalidCommand> {
    let check = check_common(
        REQUEST,
        &r.metadata,
        &r.order_id,
        &r.return_id,
        r.lines.len(),
    )?;
    r.lines.iter().enumerate().try_for_each(|(i, l)| {
        check.id(format_args!("lines[{i}].sku"), &l.sku)?;
        check.at_most(
            format_args!("lines[{i}].quantity"),
            l.quantity,
            MAX_QUANTITY,
        )
    })
}

/// The limits of a receipt, whatever the order's state.
fn receipt_limits(r: &ReceiveReturn) -> Result<(), InvalidCommand> {
    let check = check_common(
        RECEIVE,
        &r.metadata,
        &r.order_id,
        &r.return_id,
        r.lines.len(),
    )?;
    check.id("warehouse", &r.warehouse)?;
    r.lines.iter().enumerate().try_for_each(|(i, l)| {
        check.id(format_args!("lines[{i}].sku"), &l.sku)?;
        check.in_range(
            format_args!("lines[{i}].sellable"),
            l.sellable,
            MAX_QUANTITY,
        )?;
        check.in_range(format_args!("lines[{i}].damaged"), l.damaged, MAX_QUANTITY)
    })
}

impl crate::Validate for ReturnCommand {
    fn validate(&self) -> Result<(), InvalidCommand> {
        match self {
            ReturnCommand::RequestReturn(r) => request_limits(r),
            ReturnCommand::ReceiveReturn(r) => receipt_limits(r),
        }
    }
}

/// A request that is malformed whatever the order's state.
fn check_request(s: &ReturnsState, r: &RequestReturn) -> Result<(), InvalidCommand> {
    if r.return_id.is_empty() {
        return Err(invalid(REQUEST, "return_id is empty".into()));
    }
    if s.returns.iter().any(|c| c.return_id == r.return_id) {
        return Err(invalid(
            REQUEST,
            format!("return_id {} is already used by this order", r.return_id),
        ));
    }
    if r.lines.is_empty() {
        return Err(invalid(REQUEST, "lines is empty".into()));
    }
    if let Some(l) = r.lines.iter().find(|l| l.quantity <= 0) {
        return Err(invalid(
            REQUEST,
            format!(
                "lines: quantity of {} must be positive, got {}",
                l.sku, l.quantity
            ),
        ));
    }
    Ok(())
}

/// Why a well-formed request is refused (`None`: authorized).
fn refusal(s: &ReturnsState, asked_at: i64, lines: &BTreeMap<&str, i64>) -> Option<String> {
    let order = &s.order_id;
    if s.cancelled {
        return Some(format!("order {order} was cancelled"));
    }
    let Some(delivered) = s.delivered_at else {
        return Some(format!("order {order} has not been delivered"));
    };
    if asked_at.saturating_sub(delivered) > WINDOW_MS {
        return Some(format!(
            "asked {} days after delivery; returns are accepted for {} days",
            asked_at.saturating_sub(delivered) / DAY_MS,
            WINDOW_MS / DAY_MS
        ));
    }
    let shipped = merged(s.lines.iter().map(|l| (l.sku.as_str(), l.quantity)));
    let returned = merged(
        s.returns
            .iter()
            .filter(|c| c.status != REJECTED)
            .flat_map(|c| c.lines.iter().map(|l| (l.sku.as_str(), l.quantity))),
    );
    for (sku, asked) in lines {
        let Some(&delivered) = shipped.get(sku) else {
            return Some(format!("{sku} was not delivered with order {order}"));
        };
        let before = returned.get(sku).copied().unwrap_or(0);
        if asked.saturating_add(before) > delivered {
            return Some(format!(
                "{asked} of {sku} asked back; {delivered} delivered, {before} already returned"
            ));
        }
    }
    None
}

/// The refund of a receipt (every unit received, at the order's price), or why the receipt
/// is invalid.
fn receipt(s: &ReturnsState, r: &ReceiveReturn) -> Result<i64, InvalidCommand> {
    let case = s
        .returns
        .iter()
        .find(|c| c.return_id == r.return_id)
        .ok_or_else(|| {
            invalid(
                RECEIVE,
                format!(
                    "return_id {} was never asked for on order {}",
                    r.return_id, s.order_id
                ),
            )
        })?;
    if case.status != AUTHORIZED {
        return Err(invalid(
            RECEIVE,
            format!("return {} is {}, not Authorized", r.return_id, case.status),
        ));
    }
    if r.warehouse.is_empty() {
        return Err(invalid(RECEIVE, "warehouse is empty".into()));
    }
    if let Some(l) = r.lines.iter().find(|l| l.sellable < 0 || l.damaged < 0) {
        return Err(invalid(
            RECEIVE,
            format!("lines: {} has a negative count", l.sku),
        ));
    }
    let authorized = merged(case.lines.iter().map(|l| (l.sku.as_str(), l.quantity)));
    let received = merged(
        r.lines
            .iter()
            .map(|l| (l.sku.as_str(), l.sellable.saturating_add(l.damaged))),
    );
    let mut refund = 0i64;
    for (sku, units) in received {
        let allowed = authorized.get(sku).copied().unwrap_or(0);
        if units > allowed {
            return Err(invalid(
                RECEIVE,
                format!("lines: {units} of {sku} received, {allowed} authorized"),
            ));
        }
        let price = s
            .lines
            .iter()
            .find(|l| l.sku == sku)
            .map_or(0, |l| l.unit_price_cents);
        refund = refund.saturating_add(price.saturating_mul(units));
    }
    Ok(refund)
}

#[cfg(test)]
mod tests;
