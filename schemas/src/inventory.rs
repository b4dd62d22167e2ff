//! Inventory service records: commands on `inventory.commands`, events on `inventory.events`,
//! and the state snapshot on the compacted `inventory.changelog`.
//!
//! Field names and types mirror `schemas/avro/inventory/*.avsc`; the tests below round-trip
//! every record through its schema, so the two cannot drift apart silently.

use serde::{Deserialize, Serialize};

use crate::{record_union, records, union_metadata};

pub use crate::common::Metadata;

records! {
    /// Command: goods arrived at a warehouse.
    ReceiveStock { sku: String, warehouse: String, quantity: i64 }
    /// Command: hold stock for an order; a reservation id acts once.
    ReserveStock { reservation_id: String, sku: String, warehouse: String, quantity: i64 }
    /// Command: give back a reservation's stock.
    ReleaseReservation { reservation_id: String, sku: String }
    /// Command: a reservation's stock leaves the warehouse (its order was confirmed).
    DispatchStock { reservation_id: String, sku: String }
    /// Command: correct on-hand stock by `delta` (damage, loss, found goods).
    AdjustStock { sku: String, warehouse: String, delta: i64, reason: String }
    /// Command: move stock between two warehouses of one sku.
    TransferStock { sku: String, from_warehouse: String, to_warehouse: String, quantity: i64 }
    /// Command: a physical count of one position.
    AuditStock { sku: String, warehouse: String, counted: i64 }

    /// Event: on-hand stock increased by a receipt.
    InventoryReceived { sku: String, warehouse: String, quantity: i64 }
    /// Event: stock held for a reservation (v2: `expires_at`; v1 records read with `None`).
    InventoryReserved {
        reservation_id: String, sku: String, warehouse: String, quantity: i64,
        /// When the hold lapses unless the order proceeds (epoch ms); `None` in v1 records.
        expires_at: Option<i64>,
    }
    /// Event: a reservation could not be made.
    ReservationRejected {
        reservation_id: String, sku: String, warehouse: String, quantity: i64,
        /// Stock that was available when the reservation was refused.
        available: i64,
        reason: String,
    }
    /// Event: a reservation's stock became available again.
    InventoryReleased { reservation_id: String, sku: String, warehouse: String, quantity: i64 }
    /// Event: a reservation's stock was shipped; on hand and reserved drop by its quantity.
    InventoryDispatched { reservation_id: String, sku: String, warehouse: String, quantity: i64 }
    /// Event: on-hand stock corrected.
    InventoryAdjusted { sku: String, warehouse: String, delta: i64, reason: String }
    /// Event: stock moved between warehouses.
    InventoryTransferred { sku: String, from_warehouse: String, to_warehouse: String, quantity: i64 }
    /// Event: a physical count was recorded; on-hand is now the count.
    InventoryAudited { sku: String, warehouse: String, expected: i64, counted: i64 }
    /// Alert (on `inventory.alerts`): an event left a position's available stock below the
    /// low-stock threshold (crossing it, or a receipt not lifting it back).
    StockLow { sku: String, warehouse: String, available: i64, threshold: i64 }
    /// Event: a well-formed command broke a business rule (other than a reservation).
    InventoryCommandRejected {
        sku: String,
        /// Record name of the rejected command.
        command: String,
        command_id: String,
        reason: String,
    }
}

/// Stock of one sku at one warehouse, as kept in the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockPosition {
    pub warehouse: String,
    pub on_hand: i64,
    pub reserved: i64,
}

/// Changelog record: version, last applied command and positions of one sku's aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventorySnapshot {
    pub sku: String,
    pub version: i64,
    /// Partition of `inventory.commands` the last applied command came from.
    pub source_partition: i32,
    /// Offset of the last applied command; a redelivery at or below it is skipped.
    pub source_offset: i64,
    pub positions: Vec<StockPosition>,
    /// The latest `spent_at` of a reservation id the sku forgot (v2; -1: none).
    #[serde(default = "none_forgotten")]
    pub forgotten_until: i64,
}

fn none_forgotten() -> i64 {
    -1
}

/// Changelog record: one reservation of a sku, open or closed (closed ids act once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationState {
    pub sku: String,
    pub reservation_id: String,
    pub warehouse: String,
    pub quantity: i64,
    pub open: bool,
    /// Aggregate version after the event that opened or closed it.
    pub version: i64,
    /// Refused, never held (v2; false in v1 records).
    #[serde(default)]
    pub refused: bool,
    /// When the id was spent: closed or refused (v3; 0 for an open one and in older records).
    #[serde(default)]
    pub spent_at: i64,
}

/// Changelog record: the idempotency key of a command one sku applied (its last
/// [`REMEMBERED_KEYS`] are kept), so a client's retry is applied once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RememberedKey {
    pub sku: String,
    pub key: String,
    /// Keyed commands the sku had applied before this one.
    pub seq: i64,
    /// Aggregate version after the command.
    pub version: i64,
}

/// Idempotency keys one sku remembers: a retry is recognised as long as fewer than this
/// many other keyed commands for the same sku were applied after the first attempt.
pub const REMEMBERED_KEYS: i64 = 64;

impl RememberedKey {
    /// Its key on the changelog: one slot per `seq % REMEMBERED_KEYS`, so a sku's records
    /// are bounded by construction (a slot is overwritten as keys wrap). The separator is a
    /// control character, which no id may contain, so it never meets a reservation's key.
    pub fn changelog_key(&self) -> String {
        format!("{}\u{1f}{}", self.sku, self.seq.rem_euclid(REMEMBERED_KEYS))
    }
}

impl ReservationState {
    /// Its key on the changelog: the latest state per reservation survives compaction.
    pub fn changelog_key(&self) -> String {
        Self::key_of(&self.sku, &self.reservation_id)
    }

    /// The changelog key of reservation `id` of `sku`.
    pub fn key_of(sku: &str, id: &str) -> String {
        format!("{sku}/{id}")
    }
}

record_union! {
    /// Everything `inventory.commands` may carry.
    InventoryCommand {
        ReceiveStock => "../avro/inventory/ReceiveStock.avsc",
        ReserveStock => "../avro/inventory/ReserveStock.avsc",
        ReleaseReservation => "../avro/inventory/ReleaseReservation.avsc",
        AdjustStock => "../avro/inventory/AdjustStock.avsc",
        TransferStock => "../avro/inventory/TransferStock.avsc",
        AuditStock => "../avro/inventory/AuditStock.avsc",
        DispatchStock => "../avro/inventory/DispatchStock.avsc",
    }
}

record_union! {
    /// Everything `inventory.events` may carry.
    InventoryEvent {
        InventoryReceived => "../avro/inventory/InventoryReceived.avsc",
        InventoryReserved => "../avro/inventory/InventoryReserved.avsc",
        ReservationRejected => "../avro/inventory/ReservationRejected.avsc",
        InventoryReleased => "../avro/inventory/InventoryReleased.avsc",
        InventoryAdjusted => "../avro/inventory/InventoryAdjusted.avsc",
        InventoryTransferred => "../avro/inventory/InventoryTransferred.avsc",
        InventoryAudited => "../avro/inventory/InventoryAudited.avsc",
        InventoryCommandRejected => "../avro/inventory/InventoryCommandRejected.avsc",
        InventoryDispatched => "../avro/inventory/InventoryDispatched.avsc",
    }
}

/// Changelog record of `inventory-receiving`: the purchase-order receipts of one sku it has
/// booked as `ReceiveStock` commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivingState {
    pub sku: String,
    /// Suppliers' version of the last receipt handled (redeliveries at or below are skipped).
    pub last_version: i64,
    pub receipts: i64,
    pub received_quantity: i64,
}

record_union! {
    /// Everything `inventory.alerts` may carry.
    InventoryAlert { StockLow => "../avro/inventory/StockLow.avsc" }
}
union_metadata!(InventoryAlert { StockLow });

record_union! {
    /// What inventory-receiving writes (on `inventory.commands`).
    ReceivingOut { ReceiveStock => "../avro/inventory/ReceiveStock.avsc" }
}
union_metadata!(ReceivingOut { ReceiveStock });

record_union! {
    /// Everything `inventory.receiving-changelog` may carry.
    InventoryReceivingChangelog { ReceivingState => "../avro/inventory/ReceivingState.avsc" }
}

record_union! {
    /// Everything `inventory.changelog` may carry.
    InventoryChangelog {
        InventorySnapshot => "../avro/inventory/InventorySnapshot.avsc",
        ReservationState => "../avro/inventory/ReservationState.avsc",
        RememberedKey => "../avro/inventory/RememberedKey.avsc",
    }
}

union_metadata!(InventoryCommand {
    ReceiveStock,
    ReserveStock,
    ReleaseReservation,
    AdjustStock,
    TransferStock,
    AuditStock,
    DispatchStock,
});

impl InventoryCommand {
    /// The aggregate (sku) the command addresses; also its Kafka key.
    pub fn sku(&self) -> &str {
        match self {
            InventoryCommand::ReceiveStock(c) => &c.sku,
            InventoryCommand::ReserveStock(c) => &c.sku,
            InventoryCommand::ReleaseReservation(c) => &c.sku,
            InventoryCommand::AdjustStock(c) => &c.sku,
            InventoryCommand::TransferStock(c) => &c.sku,
            InventoryCommand::AuditStock(c) => &c.sku,
            InventoryCommand::DispatchStock(c) => &c.sku,
        }
    }
}

union_metadata!(InventoryEvent {
    InventoryReceived,
    InventoryReserved,
    ReservationRejected,
    InventoryReleased,
    InventoryAdjusted,
    InventoryTransferred,
    InventoryAudited,
    InventoryCommandRejected,
    InventoryDispatched,
});

impl InventoryEvent {
    /// The sku aggregate the event belongs to; also its Kafka key.
    pub fn sku(&self) -> &str {
        &self.metadata().aggregate_id
    }
}

records! {
    /// Saga reply on `inventory.replies`: every line of the order is reserved.
    StockReserved { order: crate::orders::OrderContext }
    /// Saga reply: some line could not be reserved; nothing stays reserved.
    StockReservationFailed { order_id: String, reason: String }
    /// Saga reply (compensation): the order's reservations were released; `lines_released`
    /// is 0 when nothing was held.
    StockReleased { order_id: String, lines_released: i32 }
}

/// One line of an order's reservation, as the inventory saga participant tracks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineReservation {
    pub reservation_id: String,
    pub sku: String,
    pub warehouse: String,
    pub quantity: i64,
    /// Pending, Reserved, Rejected, Released.
    pub status: String,
}

/// Changelog record (keyed by order id): the inventory saga participant's reservation of one
/// order's lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderReservation {
    pub order_id: String,
    pub version: i64,
    /// Reserving, Reserved, Failed, Released, Compensated.
    pub status: String,
    pub lines: Vec<LineReservation>,
    pub order: Option<crate::orders::OrderContext>,
    /// A compensation arrived while lines were still pending: release them as they land.
    pub release_pending: bool,
    pub reason: Option<String>,
    pub steps: Vec<String>,
}

record_union! {
    /// Everything `inventory.replies` may carry.
    InventoryReply {
        StockReserved => "../avro/inventory/StockReserved.avsc",
        StockReservationFailed => "../avro/inventory/StockReservationFailed.avsc",
        StockReleased => "../avro/inventory/StockReleased.avsc",
    }
}
union_metadata!(InventoryReply {
    StockReserved,
    StockReservationFailed,
    StockReleased
});

record_union! {
    /// Everything `inventory.saga-changelog` may carry.
    InventorySagaChangelog { OrderReservation => "../avro/inventory/OrderReservation.avsc" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordUnion;
    use crate::record::testing::round_trip;

    fn meta() -> Metadata {
        Metadata {
            causation_id: Some("c".into()),
            saga_id: None,
            ..Metadata::command("id", "SKU-1", 1_700_000_000_000)
        }
    }

    #[test]
    fn every_record_round_trips_through_its_schema() {
        let m = meta();
        let s = || "SKU-1".to_string();
        let w = || "AMS".to_string();
        let r = || "R-1".to_string();
        round_trip(InventoryCommand::from(ReceiveStock {
            metadata: m.clone(),
            sku: s(),
            warehouse: w(),
            quantity: 3,
        }));
        round_trip(InventoryCommand::from(ReserveStock {
            metadata: m.clone(),
            reservation_id: r(),
            sku: s(),
            warehouse: w(),
            quantity: 3,
        }));
        round_trip(InventoryCommand::from(ReleaseReservation {
            metadata: m.clone(),
            reservation_id: r(),
            sku: s(),
        }));
        round_trip(InventoryCommand::from(AdjustStock {
            metadata: m.clone(),
            sku: s(),
            warehouse: w(),
            delta: -2,
            reason: "damaged".into(),
        }));
        round_trip(InventoryCommand::from(TransferStock {
            metadata: m.clone(),
            sku: s(),
            from_warehouse: w(),
            to_warehouse: "BER".into(),
            quantity: 1,
        }));
        round_trip(InventoryCommand::from(AuditStock {
            metadata: m.clone(),
            sku: s(),
            warehouse: w(),
            counted: 7,
        }));
        round_trip(InventoryEvent::from(InventoryReceived {
            metadata: m.clone(),
            sku: s(),
            warehouse: w(),
            quantity: 3,
        }));
        round_trip(InventoryEvent::from(InventoryReserved {
            metadata: m.clone(),
            reservation_id: r(),
            sku: s(),
            warehouse: w(),
            quantity: 3,
            expires_at: Some(1_700_000_900_000),
        }));
        round_trip(InventoryEvent::from(ReservationRejected {
            metadata: m.clone(),
            reservation_id: r(),
            sku: s(),
            warehouse: w(),
            quantity: 3,
            available: 1,
            reason: "insufficient".into(),
        }));
        round_trip(InventoryEvent::from(InventoryReleased {
            metadata: m.clone(),
            reservation_id: r(),
            sku: s(),
            warehouse: w(),
            quantity: 3,
        }));
        round_trip(InventoryEvent::from(InventoryAdjusted {
            metadata: m.clone(),
            sku: s(),
            warehouse: w(),
            delta: 4,
            reason: "found".into(),
        }));
        round_trip(InventoryEvent::from(InventoryTransferred {
            metadata: m.clone(),
            sku: s(),
            from_warehouse: w(),
            to_warehouse: "BER".into(),
            quantity: 2,
        }));
        round_trip(InventoryEvent::from(InventoryAudited {
            metadata: m.clone(),
            sku: s(),
            warehouse: w(),
            expected: 5,
            counted: 4,
        }));
        round_trip(InventoryEvent::from(InventoryCommandRejected {
            metadata: m.clone(),
            sku: s(),
            command: "x".into(),
            command_id: "id".into(),
            reason: "no".into(),
        }));
        round_trip(InventoryChangelog::from(InventorySnapshot {
            sku: s(),
            version: 9,
            source_partition: 2,
            source_offset: 41,
            positions: vec![StockPosition {
                warehouse: w(),
                on_hand: 5,
                reserved: 2,
            }],
            forgotten_until: 7,
        }));
        round_trip(InventoryChangelog::from(ReservationState {
            sku: s(),
            reservation_id: r(),
            warehouse: w(),
            quantity: 2,
            open: true,
            version: 8,
            refused: false,
            spent_at: 0,
        }));
        let remembered = RememberedKey {
            sku: s(),
            key: "retry-1".into(),
            seq: 65,
            version: 3,
        };
        assert_eq!(remembered.changelog_key(), format!("{}\u{1f}1", s()));
        round_trip(InventoryChangelog::from(remembered));
    }

    #[test]
    fn union_names_follow_the_avsc_namespaces() {
        assert_eq!(
            InventoryCommand::names()[0],
            "supplychain.inventory.ReceiveStock"
        );
        assert_eq!(InventoryEvent::names().len(), 9);
        assert_eq!(
            InventoryChangelog::names()[0],
            "supplychain.inventory.InventorySnapshot"
        );
    }
}
