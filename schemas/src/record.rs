//! Records and unions of records that share one topic.
//!
//! Many record types share a topic (`inventory.commands` carries `ReceiveStock`,
//! `ReserveStock`, …). A [`RecordUnion`] is the Rust enum of those types; the writer schema id
//! of each Kafka record says which variant it is. Schemas are parsed once per process.

use std::sync::OnceLock;

pub use apache_avro::Schema;
use apache_avro::{
    AvroResult, reader::datum::GenericDatumReader, types::Value, writer::datum::GenericDatumWriter,
};

/// Named records shared between schemas, inlined on load (first mention defines, later mentions
/// refer by name), in dependency order: a record is inlined before the records it mentions.
const SHARED: &[(&str, &str)] = &[
    (
        "\"supplychain.common.Metadata\"",
        include_str!("../avro/common/Metadata.avsc"),
    ),
    (
        "\"supplychain.orders.OrderContext\"",
        include_str!("../avro/orders/OrderContext.avsc"),
    ),
    (
        "\"supplychain.orders.OrderLine\"",
        include_str!("../avro/orders/OrderLine.avsc"),
    ),
    (
        "\"supplychain.billing.Posting\"",
        include_str!("../avro/billing/Posting.avsc"),
    ),
];

/// Parses an `.avsc` text, inlining the shared records it names (see `SHARED`), so every
/// registered schema is self-contained.
///
/// # Panics
/// On an invalid schema: the schemas are compiled into the binary and tested, so this is a
/// programming error, not bad input.
pub fn parse_avsc(text: &str) -> Schema {
    let mut inlined = text.to_owned();
    for (reference, definition) in SHARED {
        inlined = inlined.replacen(reference, definition, 1);
    }
    Schema::parse_str(&inlined).unwrap_or_else(|e| panic!("invalid bundled schema: {e}\n{text}"))
}

/// Full name (`namespace.name`) of a named schema.
pub fn full_name(schema: &Schema) -> Option<String> {
    match schema {
        Schema::Record(r) => Some(r.name.fullname(None)),
        Schema::Enum(e) => Some(e.name.fullname(None)),
        Schema::Fixed(f) => Some(f.name.fullname(None)),
        _ => None,
    }
}

/// A closed set of record types that share a topic.
pub trait RecordUnion: Sized + Send + Sync + 'static {
    /// Current (reader) schema of each variant, in variant order.
    fn schemas() -> &'static [Schema];
    /// Full record names of each variant, in variant order.
    fn names() -> &'static [String];
    /// Index of this value's variant.
    fn variant(&self) -> usize;
    /// Serializes the inner record with the serde path (no `Value` in between).
    fn write(&self, writer: &GenericDatumWriter<'_>, buf: &mut Vec<u8>) -> AvroResult<usize>;
    /// Deserializes variant `index` with the serde path; the writer schema equals ours.
    fn read(index: usize, reader: &GenericDatumReader<'_>, bytes: &mut &[u8]) -> AvroResult<Self>;
    /// Builds variant `index` from a value already resolved to our schema.
    fn from_resolved(index: usize, value: Value) -> AvroResult<Self>;
    /// Short names of the records (the Rust type, e.g. `ReceiveStock`), as an API names
    /// them, in variant order.
    fn short_names() -> &'static [&'static str];
    /// Deserializes the record whose short name is `name` from `d` (any serde format, e.g.
    /// JSON); `None`: the union has no such record.
    fn deserialize_named<'de, D: serde::Deserializer<'de>>(
        name: &str,
        d: D,
    ) -> Option<Result<Self, D::Error>>;

    /// Full name of this value's record type.
    fn record_name(&self) -> &'static str {
        &Self::names()[self.variant()]
    }
}

/// Parses `texts` once per process (per union type).
#[doc(hidden)]
pub fn schemas_once(cell: &'static OnceLock<Vec<Schema>>, texts: &[&str]) -> &'static [Schema] {
    cell.get_or_init(|| texts.iter().map(|t| parse_avsc(t)).collect())
}

/// Declares a [`RecordUnion`] enum over record structs, each with its `.avsc` file.
#[macro_export]
macro_rules! record_union {
    ($(#[$meta:meta])* $union:ident { $($variant:ident => $file:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub enum $union { $($variant($variant)),+ }

        $(impl From<$variant> for $union {
            fn from(v: $variant) -> Self { $union::$variant(v) }
        })+

        impl $crate::record::RecordUnion for $union {
            fn schemas() -> &'static [apache_avro::Schema] {
                static CELL: std::sync::OnceLock<Vec<apache_avro::Schema>> = std::sync::OnceLock::new();
                $crate::record::schemas_once(&CELL, &[$(include_str!($file)),+])
            }
            fn names() -> &'static [String] {
                static CELL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
                CELL.get_or_init(|| Self::schemas().iter()
                    .map(|s| $crate::record::full_name(s).expect("records are named")).collect())
            }
            #[allow(irrefutable_let_patterns, unreachable_code)]
            fn variant(&self) -> usize {
                let mut i = 0usize;
                $(if let $union::$variant(_) = self { return i; } i += 1;)+
                unreachable!("{i} variants")
            }
            fn write(&self, writer: &apache_avro::writer::datum::GenericDatumWriter<'_>, buf: &mut Vec<u8>)
                -> apache_avro::AvroResult<usize> {
                match self { $($union::$variant(v) => writer.write_ser(buf, v)),+ }
            }
            fn read(index: usize, reader: &apache_avro::reader::datum::GenericDatumReader<'_>, bytes: &mut &[u8])
                -> apache_avro::AvroResult<Self> {
                let mut i = 0usize;
                $(if index == i { return reader.read_deser::<$variant>(bytes).map($union::$variant); } i += 1;)+
                unreachable!("variant {index} of {i}")
            }
            fn from_resolved(index: usize, value: apache_avro::types::Value) -> apache_avro::AvroResult<Self> {
                let mut i = 0usize;
                $(if index == i { return apache_avro::from_value::<$variant>(&value).map($union::$variant); } i += 1;)+
                unreachable!("variant {index} of {i}")
            }
            fn short_names() -> &'static [&'static str] {
                &[$(stringify!($variant)),+]
            }
            fn deserialize_named<'de, D: serde::Deserializer<'de>>(name: &str, d: D)
                -> Option<Result<Self, D::Error>> {
                $(if name == stringify!($variant) {
                    return Some(<$variant as serde::Deserialize>::deserialize(d).map($union::$variant));
                })+
                None
            }
        }
    };
}

/// Declares record structs that carry [`Metadata`](crate::common::Metadata) first.
#[macro_export]
macro_rules! records {
    ($($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident : $ty:ty),* $(,)? })+) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
            pub struct $name {
                /// Message metadata.
                pub metadata: $crate::common::Metadata,
                $($(#[$fdoc])* pub $field: $ty,)*
            }
        )+
    };
}

/// Adds `metadata()` to a union whose records all carry metadata.
#[macro_export]
macro_rules! union_metadata {
    ($union:ident { $($variant:ident),+ $(,)? }) => {
        impl $union {
            /// The record's metadata.
            pub fn metadata(&self) -> &$crate::common::Metadata {
                match self { $($union::$variant(r) => &r.metadata),+ }
            }
        }

        impl $crate::common::HasMetadata for $union {
            fn metadata(&self) -> &$crate::common::Metadata {
                $union::metadata(self)
            }
        }
    };
}

/// Test support shared by the record modules.
#[cfg(test)]
pub(crate) mod testing {
    use apache_avro::{reader::datum::GenericDatumReader, writer::datum::GenericDatumWriter};

    use super::RecordUnion;

    /// Writes `value` with its schema and reads it back through the serde path and the
    /// generic (`Value`) path: both must give `value`.
    pub(crate) fn round_trip<T: RecordUnion + std::fmt::Debug + PartialEq>(value: T) {
        let schema = &T::schemas()[value.variant()];
        let writer = GenericDatumWriter::builder(schema).build().unwrap();
        let mut buf = Vec::new();
        value.write(&writer, &mut buf).unwrap();
        let reader = GenericDatumReader::builder(schema).build().unwrap();
        let back = T::read(value.variant(), &reader, &mut buf.as_slice()).unwrap();
        assert_eq!(back, value);
        let value_path = reader.read_value(&mut buf.as_slice()).unwrap();
        assert_eq!(
            T::from_resolved(value.variant(), value_path).unwrap(),
            value
        );
    }
}
