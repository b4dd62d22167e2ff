//! Pure domain logic of supplystream: one module per service.
//!
//! A service's aggregate is a fold: [`Aggregate::apply`] evolves state by one event and
//! [`Aggregate::handle`] decides which events a command yields (business rejections are
//! events too). Nothing here touches Kafka, clocks or I/O, so every rule is a unit test of
//! microseconds; the runtime in `pipelines` feeds records in and ships events out.
//!
//! ```
//! use processors::Aggregate;
//! use processors::inventory::SkuInventory;
//! use schemas::inventory::{InventoryCommand, Metadata, ReceiveStock};
//!
//! let mut stock = SkuInventory::new("SKU-1");
//! let receive = InventoryCommand::ReceiveStock(ReceiveStock {
//!     metadata: Metadata::command("cmd-1", "SKU-1", 0),
//!     sku: "SKU-1".into(), warehouse: "AMS".into(), quantity: 5,
//! });
//! let events = stock.handle(&receive).unwrap();
//! events.iter().for_each(|e| stock.apply(e));
//! assert_eq!(stock.position("AMS").available(), 5);
//! ```

pub mod catalog;
pub mod inventory;
pub mod saga;
pub mod suppliers;
pub mod windows;

/// An event-sourced aggregate: state = fold of its events.
pub trait Aggregate {
    /// What callers ask for.
    type Command;
    /// What happened; also the unit of persistence.
    type Event;

    /// Decides the events a command yields against the current state. `Err` means the
    /// command itself is invalid (a caller bug or bad input: dead-letter it); a well-formed
    /// command that breaks a business rule yields a rejection event instead.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, InvalidCommand>;

    /// Evolves the state by one event. Never fails: events are facts.
    fn apply(&mut self, event: &Self::Event);
}

/// A command that cannot be processed at all; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {command}: {reason}")]
pub struct InvalidCommand {
    /// Record name of the command.
    pub command: &'static str,
    /// What is wrong, naming the field.
    pub reason: String,
}
