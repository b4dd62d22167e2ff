//! Pure domain logic of supplystream: one module per service.
//!
//! A service's aggregate is a fold: [`Aggregate::apply`] evolves state by one event and
//! [`Aggregate::handle`] decides which events a command yields (business rejections are
//! events too). Nothing here touches Kafka, clocks or I/O, so every rule is a unit test of
//! microseconds; the runtime in `pipelines` feeds records in and ships events out. Saga
//! participants implement [`saga::Participant`] (their shared machinery is in [`saga`]), and
//! every view's fold is a [`Projection`] beside its service, with the row type its table
//! holds.
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

pub mod billing;
pub mod catalog;
pub mod inventory;
pub mod limits;
pub mod notifications;
pub mod orders;
pub mod payments;
pub mod returns;
pub mod saga;
pub mod shipping;
pub mod suppliers;

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

/// Where a record was read: what a projection may keep of it (a row's source coordinates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// A read model: a fold of one topic's events into the rows of one table. Every view of one
/// topic implements it; the view loop in `pipelines` feeds it events and writes its rows.
///
/// Events can arrive twice (at-least-once delivery, a producer's retry): a projection folds
/// each once, by its event id or the aggregate version it carries.
pub trait Projection: Sized {
    type Event;
    type Row: Clone;

    /// Whether the rows are the projection's whole state, so that [`Projection::restore`]
    /// takes it back from its table; `false` (the default): it is rebuilt from its topic.
    const RESUMES: bool = false;

    /// The partitions of its topic, once known (for per-partition progress, e.g. watermarks).
    fn assigned(&mut self, _partitions: &[i32]) {}

    /// Folds one event read at `at`.
    fn apply(&mut self, at: Source<'_>, event: &Self::Event);

    /// Whether `partition` has been read to its end (before every write of the rows).
    fn idle(&mut self, _partition: i32, _idle: bool) {}

    /// The rows as they stand, borrowed where the projection keeps them.
    fn rows(&self) -> Vec<std::borrow::Cow<'_, Self::Row>>;

    /// The projection its rows describe; `None` if they are not its whole state (see
    /// [`Projection::RESUMES`]).
    fn restore(_rows: Vec<Self::Row>) -> Option<Self> {
        None
    }
}

/// The checks a service's rules make first, before any state: a record a caller sends is
/// checked with them before it is written, so an invalid command is refused at the API (a
/// 400 naming the field) instead of being written and dead-lettered later. The rules run
/// the same checks again on every record they read, whoever wrote it.
pub trait Validate {
    fn validate(&self) -> Result<(), InvalidCommand>;
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
