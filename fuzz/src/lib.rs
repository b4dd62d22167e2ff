//! What the fuzz targets run: the decoders of every record union supplystream reads, and the
//! HTTP API's JSON commands, each checked for more than "does not crash":
//!
//! - whatever decodes encodes again with the current schema and decodes to the same value
//!   (old writer versions included: the upcast or resolved value must be a current record);
//! - a command that decodes is validated, as the service does before its rules run;
//! - a JSON command the API would accept makes a record that travels the same way.
//!
//! Decoders learn every schema up front (ids 1.. in variant order, old writer versions after
//! them), so nothing asks a registry.

use std::fmt::Debug;
use std::sync::LazyLock;

use processors::Validate;
use schemas::record::{RecordUnion, full_name, parse_avsc};
use schemas::{Decoder, Encoder, Registry};

/// Which topics' unions a target decodes.
#[derive(Debug, Clone, Copy)]
pub enum Group {
    Commands,
    Events,
    Changelogs,
}

/// Old writer versions still read: one with an upcaster, one resolved by Avro's rules.
static OLD_WRITERS: LazyLock<Vec<apache_avro::Schema>> = LazyLock::new(|| {
    vec![
        parse_avsc(include_str!(
            "../../schemas/avro/orders/OrderPlaced.v1.avsc"
        )),
        parse_avsc(include_str!(
            "../../schemas/avro/inventory/InventoryReserved.v1.avsc"
        )),
    ]
});

trait Union: Send + Sync {
    /// Decodes `payload` (Confluent-framed); `choice` picks one of the learned ids when the
    /// target frames the datum itself.
    fn run(&self, choice: Option<u8>, payload: &[u8]);
}

struct Harness<T: RecordUnion> {
    decoder: Decoder<T>,
    encoder: Encoder<T>,
    ids: Vec<u32>,
    validate: Option<fn(&T)>,
}

/// A decoder that knows `T`'s current schemas as ids 1.. in variant order (what
/// [`Encoder::with_ids_from`]`(1)` writes). Its registry is never asked: every id the
/// targets frame is learned first.
fn current_decoder<T: RecordUnion>() -> Decoder<T> {
    let mut decoder = Decoder::<T>::new(Registry::new("http://127.0.0.1:9"));
    for (i, schema) in T::schemas().iter().enumerate() {
        decoder
            .learn_schema(i as u32 + 1, schema.clone())
            .expect("a current schema is learned");
    }
    decoder
}

fn harness<T: RecordUnion>(validate: Option<fn(&T)>) -> Box<dyn Union>
where
    T: PartialEq + Debug,
{
    let mut decoder = current_decoder::<T>();
    let mut ids: Vec<u32> = (1..=T::schemas().len() as u32).collect();
    for (j, old) in OLD_WRITERS.iter().enumerate() {
        let id = 1_000 + j as u32;
        // Only where the union has the record (elsewhere it is merely "unexpected").
        if full_name(old).is_some_and(|n| T::names().contains(&n)) {
            decoder
                .learn_schema(id, old.clone())
                .expect("an old writer version is learned");
            ids.push(id);
        }
    }
    Box::new(Harness {
        decoder,
        encoder: Encoder::<T>::with_ids_from(1),
        ids,
        validate,
    })
}

impl<T: RecordUnion + PartialEq + Debug> Union for Harness<T> {
    fn run(&self, choice: Option<u8>, data: &[u8]) {
        let framed;
        let payload = match choice {
            Some(c) => {
                let id = self.ids[c as usize % self.ids.len()];
                framed = [&[0u8][..], &id.to_be_bytes(), data].concat();
                &framed[..]
            }
            None => data,
        };
        let Ok(value) = self.decoder.decode(payload) else {
            return;
        };
        if let Some(validate) = self.validate {
            validate(&value);
        }
        round_trip(&self.decoder, &self.encoder, &value);
    }
}

/// What decodes (or parses) encodes with the current schema and decodes to itself.
fn round_trip<T: RecordUnion + PartialEq + Debug>(
    decoder: &Decoder<T>,
    encoder: &Encoder<T>,
    value: &T,
) {
    let encoded = encoder
        .encode(value)
        .unwrap_or_else(|e| panic!("{value:?} does not encode: {e}"));
    let again = decoder
        .decode(&encoded)
        .unwrap_or_else(|e| panic!("{value:?} encoded does not decode: {e}"));
    assert_eq!(&again, value, "a record changed on its way through Avro");
}

fn validated<T: Validate>(value: &T) {
    // Refused or not, never a panic (checked arithmetic in the rules' first checks).
    let _ = value.validate();
}

macro_rules! unions {
    ($($t:ty $(=> $v:ident)?),+ $(,)?) => {
        vec![$(harness::<$t>(unions!(@validate $t $(, $v)?))),+]
    };
    (@validate $t:ty) => { None };
    (@validate $t:ty, validate) => { Some(validated::<$t> as fn(&$t)) };
}

static COMMANDS: LazyLock<Vec<Box<dyn Union>>> = LazyLock::new(|| {
    use schemas::*;
    unions![
        inventory::InventoryCommand => validate,
        orders::OrderCommand => validate,
        products::CatalogCommand => validate,
        returns::ReturnCommand => validate,
        shipping::TrackingEvent => validate,
        saga::OrdersIn,
        saga::InventorySagaIn,
        saga::PaymentsIn,
        saga::ShippingIn,
        saga::BillingIn,
        saga::NotificationsIn,
        suppliers::SuppliersIn,
        suppliers::ReceivingIn,
        returns::DeliveriesIn,
        returns::RestockingIn,
    ]
});

static EVENTS: LazyLock<Vec<Box<dyn Union>>> = LazyLock::new(|| {
    use schemas::*;
    unions![
        inventory::InventoryEvent,
        inventory::InventoryAlert,
        inventory::ReceivingOut,
        inventory::InventoryReply,
        orders::OrderEvent,
        payments::PaymentReply,
        products::CatalogEvent,
        returns::ReturnEvent,
        returns::DeliveryEvent,
        saga::InventorySagaOut,
        shipping::ShipmentReply,
        suppliers::SupplierEvent,
        billing::BillingEvent,
        notifications::NotificationEvent,
    ]
});

static CHANGELOGS: LazyLock<Vec<Box<dyn Union>>> = LazyLock::new(|| {
    use schemas::*;
    unions![
        inventory::InventoryChangelog,
        inventory::InventoryReceivingChangelog,
        inventory::InventorySagaChangelog,
        orders::OrderChangelog,
        payments::PaymentChangelog,
        products::CatalogChangelog,
        returns::ReturnsChangelog,
        returns::DeliveriesChangelog,
        returns::RestockingChangelog,
        shipping::ShipmentChangelog,
        suppliers::SuppliersChangelog,
        billing::BillingChangelog,
        notifications::NotificationChangelog,
    ]
});

/// `data[0]` picks the union; `data[1]` the schema id the rest is framed with, or, when
/// its top bit is set, the rest is the whole payload, framing and all (hostile framing).
pub fn decode(group: Group, data: &[u8]) {
    let unions = match group {
        Group::Commands => &COMMANDS,
        Group::Events => &EVENTS,
        Group::Changelogs => &CHANGELOGS,
    };
    let [which, how, rest @ ..] = data else {
        return;
    };
    let union = &unions[*which as usize % unions.len()];
    if how & 0x80 == 0 {
        union.run(Some(*how), rest);
    } else {
        union.run(None, rest);
    }
}

trait Json: Send + Sync {
    /// `Some`: the union has record `name`.
    fn run(&self, name: &str, body: serde_json::Value) -> Option<()>;
}

struct JsonHarness<T: RecordUnion> {
    decoder: Decoder<T>,
    encoder: Encoder<T>,
}

impl<T: RecordUnion + Validate + PartialEq + Debug> Json for JsonHarness<T> {
    fn run(&self, name: &str, body: serde_json::Value) -> Option<()> {
        let parsed = T::deserialize_named(name, body)?;
        // As the API does (pipelines::ingress): a body that makes the record and passes the
        // rules' first checks is encoded and written; it must read back as itself.
        if let Ok(value) = parsed
            && value.validate().is_ok()
        {
            round_trip(&self.decoder, &self.encoder, &value);
        }
        Some(())
    }
}

fn json_harness<T: RecordUnion + Validate + PartialEq + Debug>() -> Box<dyn Json> {
    Box::new(JsonHarness {
        decoder: current_decoder::<T>(),
        encoder: Encoder::<T>::with_ids_from(1),
    })
}

/// The unions the API takes JSON for: every service's commands and carriers' scans.
static JSON: LazyLock<Vec<Box<dyn Json>>> = LazyLock::new(|| {
    use schemas::*;
    vec![
        json_harness::<inventory::InventoryCommand>(),
        json_harness::<orders::OrderCommand>(),
        json_harness::<products::CatalogCommand>(),
        json_harness::<returns::ReturnCommand>(),
        json_harness::<shipping::TrackingEvent>(),
    ]
});

/// `<RecordName>[ <Idempotency-Key>]\n<JSON body>`: the record a
/// `POST /commands/<service>/<RecordName>` names, its key header, and its body as a caller
/// sends it, with or without `metadata`: `formats::request::command_metadata` fills it in as
/// the API does before parsing (the clock and a new id fixed).
pub fn command_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some((head, body)) = text.split_once('\n') else {
        return;
    };
    let (name, key) = match head.split_once(' ') {
        Some((name, key)) => (name, Some(key)),
        None => (head, None),
    };
    let Ok(body) = serde_json::from_str::<serde_json::Value>(body) else {
        return;
    };
    let Ok((body, id)) =
        formats::request::command_metadata(body, "sku", key, 0, || "fuzz-id".into())
    else {
        return;
    };
    assert!(body.get("metadata").is_some(), "a body accepted has metadata");
    if let Some(key) = key {
        assert_eq!(id, key, "the Idempotency-Key is the command's id");
    }
    for union in JSON.iter() {
        if union.run(name, body.clone()).is_some() {
            return;
        }
    }
}

/// A local snapshot file (`formats::snapshot`, what a restore reads from the state
/// directory). The first byte picks how the rest is read: odd, it is a body that gets its
/// right checksum appended (a crafted file, which the checksum does not stop); even, it is the
/// whole file. Whatever reads writes back to itself.
pub fn snapshot(data: &[u8]) {
    use formats::snapshot::{Snapshot, seal};
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 {
        seal(&mut bytes);
    }
    if let Ok(s) = Snapshot::from_bytes(&bytes, "fuzzed") {
        let again =
            Snapshot::from_bytes(&s.to_bytes(), "written").expect("a written snapshot reads back");
        assert_eq!(again, s, "a snapshot read, written and read again changed");
    }
}

/// Pipeline definitions (`--definitions DIR`, `formats::definitions`): the input is the text of
/// one or more definition files separated by lines `---`. A set that parses and checks out
/// renders, and its files (`to_toml`) parse back to the same services.
pub fn definitions(data: &[u8]) {
    use formats::definitions::{OwnershipMap, ServiceDef};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sources = text
        .split("\n---\n")
        .enumerate()
        .map(|(i, t)| (format!("file{i}.toml"), t.to_owned()));
    let Ok(map) = OwnershipMap::parse(sources) else {
        return;
    };
    let _ = map.render_text(std::path::Path::new("/state"));
    let _ = map.render_dot();
    let back = OwnershipMap::parse(map.to_toml()).expect("a valid map's own files parse");
    let unsourced = |s: &ServiceDef| ServiceDef {
        source: String::new(),
        ..s.clone()
    };
    assert_eq!(
        back.services().iter().map(unsourced).collect::<Vec<_>>(),
        map.services().iter().map(unsourced).collect::<Vec<_>>(),
        "a map's files read back as another map"
    );
}
