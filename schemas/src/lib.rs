//! Event and command schemas of supplystream, and the glue that puts them on the wire.
//!
//! This crate owns:
//! - the Avro schemas (`schemas/avro/<service>/<Record>.avsc`, namespace `supplychain.<service>`),
//!   with the shared [`Metadata`](inventory::Metadata) record inlined on load so every
//!   registered schema is self-contained;
//! - the Rust types of those records and the unions of records that share a topic
//!   ([`inventory::InventoryCommand`], [`inventory::InventoryEvent`], …);
//! - the Confluent wire format (magic byte, 4-byte schema id, Avro datum) with
//!   TopicRecordNameStrategy subjects (`<topic>-<record full name>`), in [`codec`];
//! - a registry client ([`registry::Registry`], over schema_registry_converter) and an
//!   in-process registry that speaks the same REST subset ([`registry::embedded`]).
//!
//! It must not touch Kafka: it turns records into bytes and back, nothing more. The codec
//! and registry are the default `registry` feature; the record types alone need neither.
//!
//! ```
//! use schemas::inventory::{InventoryCommand, ReceiveStock, Metadata};
//! use schemas::record::RecordUnion;
//! let cmd = InventoryCommand::ReceiveStock(ReceiveStock {
//!     metadata: Metadata::command("cmd-1", "SKU-1", 0),
//!     sku: "SKU-1".into(), warehouse: "AMS".into(), quantity: 5,
//! });
//! assert_eq!(cmd.record_name(), "supplychain.inventory.ReceiveStock");
//! ```

pub mod billing;
pub mod catalog;
#[cfg(feature = "registry")]
pub mod codec;
pub mod common;
pub mod inventory;
pub mod notifications;
pub mod orders;
pub mod payments;
pub mod products;
pub mod record;
#[cfg(feature = "registry")]
pub mod registry;
pub mod returns;
pub mod saga;
pub mod shipping;
pub mod suppliers;
pub mod upcast;

#[cfg(feature = "registry")]
pub use codec::{DecodeError, Decoder, Encoder};
#[cfg(feature = "registry")]
pub use registry::{Registry, RegistryError};

pub use common::Metadata;
