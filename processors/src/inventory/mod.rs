//! Inventory: stock per (sku, warehouse), reservations, transfers and counts.
//!
//! The aggregate is one sku across all its warehouses, keyed by sku, so a transfer between
//! warehouses is one atomic decision. Invariants:
//! - available (on-hand − reserved) is never negative at any warehouse;
//! - a reservation id acts once: reserving or releasing it again yields no events;
//! - releasing an unknown reservation is an `InventoryCommandRejected` event, not a panic.

mod aggregate;
mod alerts;
mod projection;
pub mod receiving;
pub mod saga;
#[cfg(test)]
mod tests;

pub use aggregate::{
    Effect, MAX_SPENT_IDS, Position, SPENT_ID_RETENTION_MS, SkuInventory, for_each_effect,
    reservation_changes,
};
pub use alerts::LowStock;
pub use projection::{ProjectedPosition, StockLevel, StockLevelsProjection};
