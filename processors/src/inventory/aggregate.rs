use std::collections::{BTreeMap, VecDeque};

use schemas::inventory::*;
use schemas::record::RecordUnion;
use uuid::Uuid;

use crate::limits::{Check, MAX_ON_HAND, MAX_QUANTITY};
use crate::{Aggregate, InvalidCommand};

/// Stock of one sku at one warehouse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub on_hand: i64,
    pub reserved: i64,
}

impl Position {
    /// Stock that can still be reserved, moved or written off.
    pub fn available(&self) -> i64 {
        self.on_hand.saturating_sub(self.reserved)
    }

    /// Applies one effect of an event. Saturating: the rules never decide an event that
    /// passes the limits, but a view folds whatever its topic holds, and a record written
    /// there by someone else must not panic (or wrap) the fold.
    pub fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::OnHand(delta) => self.on_hand = self.on_hand.saturating_add(delta),
            Effect::Reserved(delta) => self.reserved = self.reserved.saturating_add(delta),
            Effect::Counted(count) => self.on_hand = count,
        }
    }
}

/// How an event changes one position; shared by the aggregate and the read models so the
/// stock arithmetic exists once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    OnHand(i64),
    Reserved(i64),
    Counted(i64),
}

/// Calls `f(warehouse, effect)` for each position `event` changes.
pub fn for_each_effect<'e>(event: &'e InventoryEvent, mut f: impl FnMut(&'e str, Effect)) {
    match event {
        InventoryEvent::InventoryReceived(e) => f(&e.warehouse, Effect::OnHand(e.quantity)),
        InventoryEvent::InventoryReserved(e) => f(&e.warehouse, Effect::Reserved(e.quantity)),
        InventoryEvent::InventoryReleased(e) => f(&e.warehouse, Effect::Reserved(-e.quantity)),
        InventoryEvent::InventoryAdjusted(e) => f(&e.warehouse, Effect::OnHand(e.delta)),
        InventoryEvent::InventoryTransferred(e) => {
            f(&e.from_warehouse, Effect::OnHand(-e.quantity));
            f(&e.to_warehouse, Effect::OnHand(e.quantity));
        }
        InventoryEvent::InventoryAudited(e) => f(&e.warehouse, Effect::Counted(e.counted)),
        InventoryEvent::InventoryDispatched(e) => {
            f(&e.warehouse, Effect::OnHand(-e.quantity));
            f(&e.warehouse, Effect::Reserved(-e.quantity));
        }
        InventoryEvent::ReservationRejected(_) | InventoryEvent::InventoryCommandRejected(_) => {}
    }
}

/// The inventory aggregate of one sku.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkuInventory {
    sku: String,
    version: i64,
    positions: BTreeMap<String, Position>,
    /// Open reservations: id → (warehouse, quantity).
    reservations: BTreeMap<String, (String, i64)>,
    /// Spent reservation ids (closed, or refused: a duplicate of a refused request must not
    /// succeed once stock comes in), within the horizon: the last [`MAX_SPENT_IDS`], spent
    /// within [`SPENT_ID_RETENTION_MS`] of the newest.
    spent: BTreeMap<String, Spent>,
    /// The same ids, in the order they were spent (by version): the oldest is forgotten first.
    spent_order: VecDeque<String>,
    /// The latest `at` of a forgotten id (-1: none): a `ReserveStock` of an unknown id at or
    /// before it may be a duplicate of one, and is refused.
    forgotten_until: i64,
    /// The latest `at` of any spent id, forgotten or not.
    newest_spent: i64,
}

impl Default for SkuInventory {
    fn default() -> Self {
        SkuInventory {
            sku: String::new(),
            version: 0,
            positions: BTreeMap::new(),
            reservations: BTreeMap::new(),
            spent: BTreeMap::new(),
            spent_order: VecDeque::new(),
            forgotten_until: -1,
            newest_spent: -1,
        }
    }
}

/// A spent reservation id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spent {
    /// Refused (never held) rather than closed: unknown to `ReleaseReservation`.
    refused: bool,
    /// Aggregate version after the event that spent it.
    version: i64,
    /// `occurred_at` of that event.
    at: i64,
}

/// Spent reservation ids one sku remembers at most (the oldest is forgotten first).
pub const MAX_SPENT_IDS: usize = 10_000;
/// How long (event time) a sku remembers a spent reservation id after its newest one.
pub const SPENT_ID_RETENTION_MS: i64 = 24 * 60 * 60 * 1000;

/// Namespace of the deterministic event ids (UUID v5 of command id and event index), so a
/// replay of the same command yields byte-identical events.
/// How long a reservation holds stock for an order that does not proceed (informational:
/// carried by `InventoryReserved.expires_at`; releases come from the saga's compensations).
pub const RESERVATION_HOLD_MS: i64 = 15 * 60 * 1000;

const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5c1e_a5e0_51d7_4a3b_9d7e_6e1b_0c0f_fee1);

impl SkuInventory {
    /// The empty aggregate of `sku`.
    pub fn new(sku: &str) -> Self {
        SkuInventory {
            sku: sku.to_owned(),
            ..Default::default()
        }
    }

    /// Sku of the aggregate.
    pub fn sku(&self) -> &str {
        &self.sku
    }

    /// Number of events applied.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// Stock at `warehouse` (zero if never seen).
    pub fn position(&self, warehouse: &str) -> Position {
        self.positions.get(warehouse).copied().unwrap_or_default()
    }

    /// All positions, by warehouse.
    pub fn positions(&self) -> impl Iterator<Item = (&str, Position)> {
        self.positions.iter().map(|(w, p)| (w.as_str(), *p))
    }

    /// Whether reservation `id` is open.
    pub fn is_reserved(&self, id: &str) -> bool {
        self.reservations.contains_key(id)
    }

    /// Restores the aggregate from its changelog records: the sku's snapshot and its
    /// reservation records, in any order. Reservation records newer than the snapshot come
    /// from a batch whose snapshot never landed (possible only at-least-once); the command
    /// that made them is redelivered and makes them again, so they are ignored. Records of
    /// ids past the horizon (an uncompacted changelog still holds them before their
    /// tombstones) are forgotten again by the same rule.
    pub fn restore<'a>(
        snapshot: &InventorySnapshot,
        reservations: impl IntoIterator<Item = &'a ReservationState>,
    ) -> Self {
        let mut state = SkuInventory {
            sku: snapshot.sku.clone(),
            version: snapshot.version,
            positions: snapshot
                .positions
                .iter()
                .map(|p| {
                    (
                        p.warehouse.clone(),
                        Position {
                            on_hand: p.on_hand,
                            reserved: p.reserved,
                        },
                    )
                })
                .collect(),
            forgotten_until: snapshot.forgotten_until,
            newest_spent: snapshot.forgotten_until,
            ..Default::default()
        };
        for r in reservations
            .into_iter()
            .filter(|r| r.version <= snapshot.version)
        {
            // A closed reservation stays closed whichever record comes first (before
            // compaction the changelog holds both the opening and the closing record).
            if r.refused || !r.open {
                state.reservations.remove(&r.reservation_id);
                let spent = Spent {
                    refused: r.refused,
                    version: r.version,
                    at: r.spent_at,
                };
                state.spent.insert(r.reservation_id.clone(), spent);
            } else if !state.spent.contains_key(&r.reservation_id) {
                state
                    .reservations
                    .insert(r.reservation_id.clone(), (r.warehouse.clone(), r.quantity));
            }
        }
        let mut order: Vec<(i64, &String)> =
            state.spent.iter().map(|(id, s)| (s.version, id)).collect();
        order.sort_unstable();
        state.spent_order = order.into_iter().map(|(_, id)| id.clone()).collect();
        state.newest_spent = state
            .spent
            .values()
            .map(|s| s.at)
            .fold(state.newest_spent, i64::max);
        state.forget_past_horizon();
        state
    }

    /// Records `id` spent by the event at `version`, `at`; the ids this puts past the
    /// horizon are forgotten and returned (their changelog records are to be deleted).
    fn spend(&mut self, id: &str, refused: bool, version: i64, at: i64) -> Vec<String> {
        let spent = Spent {
            refused,
            version,
            at,
        };
        if self.spent.insert(id.to_owned(), spent).is_some() {
            // Spent twice (a log written by someone else): it moves to the back.
            self.spent_order.retain(|s| s != id);
        }
        self.spent_order.push_back(id.to_owned());
        self.newest_spent = self.newest_spent.max(at);
        self.forget_past_horizon()
    }

    /// Forgets the oldest spent ids while there are more than [`MAX_SPENT_IDS`] or the
    /// oldest was spent more than [`SPENT_ID_RETENTION_MS`] before the newest.
    fn forget_past_horizon(&mut self) -> Vec<String> {
        let mut forgotten = Vec::new();
        while let Some(oldest) = self.spent_order.front() {
            let at = self.spent.get(oldest).map_or(i64::MIN, |s| s.at);
            let expired = at < self.newest_spent.saturating_sub(SPENT_ID_RETENTION_MS);
            if self.spent_order.len() <= MAX_SPENT_IDS && !expired {
                break;
            }
            let id = self.spent_order.pop_front().expect("a front");
            self.spent.remove(&id);
            self.forgotten_until = self.forgotten_until.max(at);
            forgotten.push(id);
        }
        forgotten
    }

    /// Applies `event` (as [`Aggregate::apply`]) and returns the reservation ids it put past
    /// the horizon, forgotten: their changelog records are to be deleted.
    pub fn apply_forgetting(&mut self, event: &InventoryEvent) -> Vec<String> {
        for_each_effect(event, |warehouse, effect| {
            self.position_mut(warehouse).apply(effect)
        });
        let m = event.metadata();
        let forgotten = match event {
            InventoryEvent::InventoryReserved(e) => {
                self.reservations
                    .insert(e.reservation_id.clone(), (e.warehouse.clone(), e.quantity));
                Vec::new()
            }
            InventoryEvent::InventoryReleased(InventoryReleased { reservation_id, .. })
            | InventoryEvent::InventoryDispatched(InventoryDispatched { reservation_id, .. }) => {
                self.reservations.remove(reservation_id);
                self.spend(reservation_id, false, m.aggregate_version, m.occurred_at)
            }
            InventoryEvent::ReservationRejected(e) => {
                self.spend(&e.reservation_id, true, m.aggregate_version, m.occurred_at)
            }
            _ => Vec::new(),
        };
        if self.sku.is_empty() {
            self.sku = event.sku().to_owned();
        }
        self.version = m.aggregate_version;
        forgotten
    }

    /// The latest time of a reservation id this sku forgot (-1: none).
    pub fn forgotten_until(&self) -> i64 {
        self.forgotten_until
    }

    /// The changelog snapshot (version, positions), stamped with the last applied source
    /// record. Reservations go to the changelog as separate records: [`reservation_changes`].
    pub fn snapshot(&self, source_partition: i32, source_offset: i64) -> InventorySnapshot {
        InventorySnapshot {
            sku: self.sku.clone(),
            version: self.version,
            source_partition,
            source_offset,
            positions: self
                .positions
                .iter()
                .map(|(w, p)| StockPosition {
                    warehouse: w.clone(),
                    on_hand: p.on_hand,
                    reserved: p.reserved,
                })
                .collect(),
            forgotten_until: self.forgotten_until,
        }
    }

    /// Every reservation record of the aggregate (open, closed and refused ids): with
    /// [`SkuInventory::snapshot`], what a changelog rebuilt from the event log holds.
    pub fn reservation_records(&self) -> Vec<ReservationState> {
        let record =
            |id: &String, warehouse: &str, quantity, spent: Option<&Spent>| ReservationState {
                sku: self.sku.clone(),
                reservation_id: id.clone(),
                warehouse: warehouse.to_owned(),
                quantity,
                open: spent.is_none(),
                version: spent.map_or(self.version, |s| s.version),
                refused: spent.is_some_and(|s| s.refused),
                spent_at: spent.map_or(0, |s| s.at),
            };
        let open = self
            .reservations
            .iter()
            .map(|(id, (w, q))| record(id, w, *q, None));
        let spent = self
            .spent_order
            .iter()
            .map(|id| record(id, "", 0, self.spent.get(id)));
        open.chain(spent).collect()
    }

    fn position_mut(&mut self, warehouse: &str) -> &mut Position {
        self.positions.entry(warehouse.to_owned()).or_default()
    }
}

/// The changelog records of the reservations `events` opened or closed.
pub fn reservation_changes(
    events: &[InventoryEvent],
) -> impl Iterator<Item = ReservationState> + '_ {
    events.iter().filter_map(|e| {
        let (r, open) = match e {
            InventoryEvent::InventoryReserved(r) => {
                ((&r.sku, &r.reservation_id, &r.warehouse, r.quantity), true)
            }
            InventoryEvent::InventoryReleased(r) => {
                ((&r.sku, &r.reservation_id, &r.warehouse, r.quantity), false)
            }
            InventoryEvent::InventoryDispatched(r) => {
                ((&r.sku, &r.reservation_id, &r.warehouse, r.quantity), false)
            }
            // A refused reservation id is spent too: a duplicate of the request must not
            // succeed later, when stock has come in, and hold stock nobody waits for.
            InventoryEvent::ReservationRejected(r) => {
                ((&r.sku, &r.reservation_id, &r.warehouse, 0), false)
            }
            _ => return None,
        };
        let refused = matches!(e, InventoryEvent::ReservationRejected(_));
        let m = e.metadata();
        Some(ReservationState {
            sku: r.0.clone(),
            reservation_id: r.1.clone(),
            warehouse: r.2.clone(),
            quantity: r.3,
            open,
            version: m.aggregate_version,
            refused,
            spent_at: if open { 0 } else { m.occurred_at },
        })
    })
}

/// Builds events for one command: metadata derived from the command, versions consecutive.
struct Outcome<'a> {
    command: &'a Metadata,
    sku: &'a str,
    next_version: i64,
    events: Vec<InventoryEvent>,
}

impl Outcome<'_> {
    fn meta(&self) -> Metadata {
        let version = self.next_version + self.events.len() as i64;
        Metadata {
            // Command id and the version the event creates: the same command handled again
            // from the same state (a redelivery before its effects were committed) yields the
            // same ids, while the same command id handled again later (a duplicate that
            // decides anew, e.g. a second rejection) yields new ones: one id, one event.
            event_id: Uuid::new_v5(
                &EVENT_ID_NAMESPACE,
                format!("{}/{}/{version}", self.sku, self.command.event_id).as_bytes(),
            )
            .to_string(),
            aggregate_id: self.sku.to_owned(),
            aggregate_version: version,
            occurred_at: self.command.occurred_at,
            correlation_id: self.command.correlation_id.clone(),
            causation_id: Some(self.command.event_id.clone()),
            saga_id: self.command.saga_id.clone(),
            tenant_id: self.command.tenant_id.clone(),
            region: self.command.region.clone(),
        }
    }

    fn push(&mut self, build: impl FnOnce(Metadata) -> InventoryEvent) {
        let event = build(self.meta());
        self.events.push(event);
    }

    fn reject(&mut self, command: &'static str, reason: String) {
        let sku = self.sku.to_owned();
        let command_id = self.command.event_id.clone();
        self.push(|metadata| {
            InventoryCommandRejected {
                metadata,
                sku,
                command: command.to_owned(),
                command_id,
                reason,
            }
            .into()
        });
    }
}

fn validate(command: &InventoryCommand, sku: &str) -> Result<(), InvalidCommand> {
    let check = Check::new(command.record_name());
    let m = command.metadata();
    check.sku("sku", command.sku())?;
    check.require(command.sku() == sku, || {
        format!(
            "field sku is {:?} but the command was routed to aggregate {sku:?}",
            command.sku()
        )
    })?;
    check.require(m.aggregate_id == command.sku(), || {
        format!(
            "metadata.aggregate_id {:?} differs from sku {:?}",
            m.aggregate_id,
            command.sku()
        )
    })?;
    check.metadata(m)?;
    match command {
        InventoryCommand::ReceiveStock(c) => {
            check.id("warehouse", &c.warehouse)?;
            check.quantity("quantity", c.quantity)
        }
        InventoryCommand::ReserveStock(c) => {
            check.id("reservation_id", &c.reservation_id)?;
            check.id("warehouse", &c.warehouse)?;
            check.quantity("quantity", c.quantity)
        }
        InventoryCommand::ReleaseReservation(c) => check.id("reservation_id", &c.reservation_id),
        InventoryCommand::DispatchStock(c) => check.id("reservation_id", &c.reservation_id),
        InventoryCommand::AdjustStock(c) => {
            check.id("warehouse", &c.warehouse)?;
            check.text("reason", &c.reason)?;
            check.require(c.delta != 0, || "field delta must not be zero".into())?;
            check.require(c.delta.unsigned_abs() <= MAX_QUANTITY as u64, || {
                format!(
                    "field delta is {}, beyond the limit of {MAX_QUANTITY} either way",
                    c.delta
                )
            })
        }
        InventoryCommand::TransferStock(c) => {
            check.id("from_warehouse", &c.from_warehouse)?;
            check.id("to_warehouse", &c.to_warehouse)?;
            check.require(c.from_warehouse != c.to_warehouse, || {
                format!(
                    "fields from_warehouse and to_warehouse are both {:?}",
                    c.from_warehouse
                )
            })?;
            check.quantity("quantity", c.quantity)
        }
        InventoryCommand::AuditStock(c) => {
            check.id("warehouse", &c.warehouse)?;
            check.in_range("counted", c.counted, MAX_ON_HAND)
        }
    }
}

impl crate::Validate for InventoryCommand {
    fn validate(&self) -> Result<(), InvalidCommand> {
        validate(self, self.sku())
    }
}

/// Why stock arriving at a position would pass [`MAX_ON_HAND`], if it would.
fn over_capacity(p: Position, warehouse: &str, quantity: i64) -> Option<String> {
    let after = p.on_hand.saturating_add(quantity);
    (after > MAX_ON_HAND).then(|| {
        format!(
            "{quantity} more would bring on-hand at {warehouse} to {after}, past the limit of \
             {MAX_ON_HAND}"
        )
    })
}

impl Aggregate for SkuInventory {
    type Command = InventoryCommand;
    type Event = InventoryEvent;

    fn handle(&self, command: &InventoryCommand) -> Result<Vec<InventoryEvent>, InvalidCommand> {
        validate(command, &self.sku)?;
        let m = command.metadata();
        let mut out = Outcome {
            command: m,
            sku: &self.sku,
            next_version: self.version + 1,
            events: Vec::new(),
        };
        let name = command.record_name();
        if m.aggregate_version >= 0 && m.aggregate_version != self.version {
            out.reject(
                name,
                format!(
                    "expected version {}, aggregate is at {}",
                    m.aggregate_version, self.version
                ),
            );
            return Ok(out.events);
        }
        match command {
            InventoryCommand::ReceiveStock(c) => {
                match over_capacity(self.position(&c.warehouse), &c.warehouse, c.quantity) {
                    Some(reason) => out.reject(name, reason),
                    None => out.push(|metadata| {
                        InventoryReceived {
                            metadata,
                            sku: c.sku.clone(),
                            warehouse: c.warehouse.clone(),
                            quantity: c.quantity,
                        }
                        .into()
                    }),
                }
            }
            InventoryCommand::ReserveStock(c) => {
                if self.reservations.contains_key(&c.reservation_id)
                    || self.spent.contains_key(&c.reservation_id)
                {
                    // Acts once: a repeated reservation id is a duplicate delivery, not a new request.
                } else if m.occurred_at <= self.forgotten_until {
                    // Past the horizon: it may be a duplicate of an id forgotten since.
                    let reason = format!(
                        "requested at {}, not after {}, the latest time of a reservation id \
                         this sku has forgotten: it may be a duplicate of one",
                        m.occurred_at, self.forgotten_until
                    );
                    out.push(|metadata| {
                        ReservationRejected {
                            metadata,
                            reservation_id: c.reservation_id.clone(),
                            sku: c.sku.clone(),
                            warehouse: c.warehouse.clone(),
                            quantity: c.quantity,
                            available: self.position(&c.warehouse).available(),
                            reason,
                        }
                        .into()
                    });
                } else {
                    let available = self.position(&c.warehouse).available();
                    if available >= c.quantity {
                        out.push(|metadata| {
                            let expires_at =
                                Some(metadata.occurred_at.saturating_add(RESERVATION_HOLD_MS));
                            InventoryReserved {
                                metadata,
                                reservation_id: c.reservation_id.clone(),
                                sku: c.sku.clone(),
                                warehouse: c.warehouse.clone(),
                                quantity: c.quantity,
                                expires_at,
                            }
                            .into()
                        });
                    } else {
                        out.push(|metadata| {
                            ReservationRejected {
                                metadata,
                                reservation_id: c.reservation_id.clone(),
                                sku: c.sku.clone(),
                                warehouse: c.warehouse.clone(),
                                quantity: c.quantity,
                                available,
                                reason: format!(
                                    "insufficient stock: {available} available, {} requested",
                                    c.quantity
                                ),
                            }
                            .into()
                        });
                    }
                }
            }
            // Releasing and dispatching both close an open reservation, once: a closed id
            // is a duplicate (nothing happens), an unknown one a rejection.
            InventoryCommand::ReleaseReservation(ReleaseReservation { reservation_id, .. })
            | InventoryCommand::DispatchStock(DispatchStock { reservation_id, .. }) => {
                match self.reservations.get(reservation_id) {
                    Some((warehouse, quantity)) => out.push(|metadata| {
                        let (reservation_id, sku) = (reservation_id.clone(), self.sku.clone());
                        let (warehouse, quantity) = (warehouse.clone(), *quantity);
                        if matches!(command, InventoryCommand::DispatchStock(_)) {
                            InventoryDispatched {
                                metadata,
                                reservation_id,
                                sku,
                                warehouse,
                                quantity,
                            }
                            .into()
                        } else {
                            InventoryReleased {
                                metadata,
                                reservation_id,
                                sku,
                                warehouse,
                                quantity,
                            }
                            .into()
                        }
                    }),
                    None if self.spent.get(reservation_id).is_some_and(|s| !s.refused) => {}
                    None => out.reject(name, format!("unknown reservation {reservation_id:?}")),
                }
            }
            InventoryCommand::AdjustStock(c) => {
                let p = self.position(&c.warehouse);
                let after = p.on_hand.saturating_add(c.delta);
                if after < p.reserved {
                    out.reject(
                        name,
                        format!(
                            "adjusting by {} would leave on-hand {after} below reserved {} at {}",
                            c.delta, p.reserved, c.warehouse
                        ),
                    );
                } else if let Some(reason) = over_capacity(p, &c.warehouse, c.delta) {
                    out.reject(name, reason);
                } else {
                    out.push(|metadata| {
                        InventoryAdjusted {
                            metadata,
                            sku: c.sku.clone(),
                            warehouse: c.warehouse.clone(),
                            delta: c.delta,
                            reason: c.reason.clone(),
                        }
                        .into()
                    });
                }
            }
            InventoryCommand::TransferStock(c) => {
                let available = self.position(&c.from_warehouse).available();
                let to = self.position(&c.to_warehouse);
                if available < c.quantity {
                    out.reject(
                        name,
                        format!(
                            "insufficient stock at {}: {available} available, {} requested",
                            c.from_warehouse, c.quantity
                        ),
                    );
                } else if let Some(reason) = over_capacity(to, &c.to_warehouse, c.quantity) {
                    out.reject(name, reason);
                } else {
                    out.push(|metadata| {
                        InventoryTransferred {
                            metadata,
                            sku: c.sku.clone(),
                            from_warehouse: c.from_warehouse.clone(),
                            to_warehouse: c.to_warehouse.clone(),
                            quantity: c.quantity,
                        }
                        .into()
                    });
                }
            }
            InventoryCommand::AuditStock(c) => {
                let p = self.position(&c.warehouse);
                if c.counted < p.reserved {
                    out.reject(
                        name,
                        format!(
                            "count {} at {} is below the {} reserved; release reservations first",
                            c.counted, c.warehouse, p.reserved
                        ),
                    );
                } else {
                    out.push(|metadata| {
                        InventoryAudited {
                            metadata,
                            sku: c.sku.clone(),
                            warehouse: c.warehouse.clone(),
                            expected: p.on_hand,
                            counted: c.counted,
                        }
                        .into()
                    });
                }
            }
        }
        Ok(out.events)
    }

    fn apply(&mut self, event: &InventoryEvent) {
        self.apply_forgetting(event);
    }
}
