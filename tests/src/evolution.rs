//! Schema evolution end to end against a registry: old and new writer versions interleaved on
//! one topic decode into the current types, with defaults and upcasts; incompatible changes
//! are refused with a reason. Run on the in-process registry (`tests/embedded.rs`) and on
//! Apicurio (`tests/real_kafka.rs`); `prefix` keeps its subjects apart from the services'.

use apache_avro::Schema;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use schemas::codec::{Decoder, Encoder, subject};
use schemas::inventory::{InventoryEvent, InventoryReserved};
use schemas::orders::{OrderEvent, OrderLine, OrderPlaced};
use schemas::record::parse_avsc;
use schemas::{Metadata, Registry};

const RESERVED_V1: &str = include_str!("../../schemas/avro/inventory/InventoryReserved.v1.avsc");
const PLACED_V1: &str = include_str!("../../schemas/avro/orders/OrderPlaced.v1.avsc");

fn metadata_value(id: &str) -> Value {
    Value::Record(vec![
        ("event_id".into(), Value::String(id.into())),
        ("aggregate_id".into(), Value::String("agg".into())),
        ("aggregate_version".into(), Value::Long(1)),
        (
            "occurred_at".into(),
            Value::TimestampMillis(1_700_000_000_000),
        ),
        ("correlation_id".into(), Value::String(id.into())),
        (
            "causation_id".into(),
            Value::Union(0, Box::new(Value::Null)),
        ),
        ("saga_id".into(), Value::Union(0, Box::new(Value::Null))),
        ("tenant_id".into(), Value::String("default".into())),
        ("region".into(), Value::String("default".into())),
    ])
}

/// Confluent-frames `value` written with `schema` under registered id `id`.
fn frame(id: u32, schema: &Schema, value: Value) -> anyhow::Result<Vec<u8>> {
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    let writer = GenericDatumWriter::builder(schema).build()?;
    writer.write_value(&mut out, value)?;
    Ok(out)
}

fn reserved_v1(id: &str) -> Value {
    Value::Record(vec![
        ("metadata".into(), metadata_value(id)),
        ("reservation_id".into(), Value::String(format!("R-{id}"))),
        ("sku".into(), Value::String("SKU-1".into())),
        ("warehouse".into(), Value::String("AMS".into())),
        ("quantity".into(), Value::Long(2)),
    ])
}

fn reserved_v2(id: &str) -> InventoryEvent {
    InventoryEvent::from(InventoryReserved {
        metadata: Metadata::command(id, "agg", 1_700_000_000_000),
        reservation_id: format!("R-{id}"),
        sku: "SKU-1".into(),
        warehouse: "AMS".into(),
        quantity: 2,
        expires_at: Some(1_700_000_900_000),
    })
}

/// Both checks, on the registry at `url`, with subjects under topics `<prefix><topic>`.
pub async fn schema_evolution(url: &str, prefix: &str) -> anyhow::Result<()> {
    interleaved_versions_decode_into_the_current_types(url, prefix).await?;
    an_incompatible_change_is_refused_with_the_reason(url, prefix).await
}

async fn interleaved_versions_decode_into_the_current_types(
    url: &str,
    prefix: &str,
) -> anyhow::Result<()> {
    let registry = Registry::new(url);

    // InventoryReserved: v1 registered first (as deployed before), then v2 adds expires_at.
    let v1 = parse_avsc(RESERVED_V1);
    let topic = &format!("{prefix}inventory.events");
    let name = "supplychain.inventory.InventoryReserved";
    let v1_id = registry.register(&subject(topic, name), &v1).await?;
    let encoder = Encoder::<InventoryEvent>::register(&registry, topic).await?;
    let payloads = vec![
        frame(v1_id, &v1, reserved_v1("a"))?,
        encoder.encode(&reserved_v2("b"))?,
        frame(v1_id, &v1, reserved_v1("c"))?,
        encoder.encode(&reserved_v2("d"))?,
    ];
    let mut decoder = Decoder::<InventoryEvent>::new(registry.clone());
    let mut expiries = Vec::new();
    for p in &payloads {
        match decoder.decode_learning(p).await? {
            InventoryEvent::InventoryReserved(r) => expiries.push((r.reservation_id, r.expires_at)),
            other => anyhow::bail!("decoded {other:?}"),
        }
    }
    let expected = [
        ("R-a".to_owned(), None),
        ("R-b".to_owned(), Some(1_700_000_900_000)),
        ("R-c".to_owned(), None),
        ("R-d".to_owned(), Some(1_700_000_900_000)),
    ];
    anyhow::ensure!(expiries == expected, "v1/v2 decoded as {expiries:?}");

    // OrderPlaced: v1's free-text ship_to is upcast into country and postcode.
    let placed_v1 = parse_avsc(PLACED_V1);
    let topic = &format!("{prefix}orders.events");
    let placed_id = registry
        .register(
            &subject(topic, "supplychain.orders.OrderPlaced"),
            &placed_v1,
        )
        .await?;
    let order_encoder = Encoder::<OrderEvent>::register(&registry, topic).await?;
    let line = Value::Record(vec![
        ("sku".into(), Value::String("SKU-1".into())),
        ("warehouse".into(), Value::String("AMS".into())),
        ("quantity".into(), Value::Long(1)),
        ("unit_price_cents".into(), Value::Long(250)),
    ]);
    let v1_order = Value::Record(vec![
        ("metadata".into(), metadata_value("p1")),
        (
            "order".into(),
            Value::Record(vec![
                ("order_id".into(), Value::String("O-1".into())),
                ("customer_id".into(), Value::String("C-1".into())),
                ("lines".into(), Value::Array(vec![line])),
                ("total_cents".into(), Value::Long(250)),
                ("payment_method".into(), Value::String("card-1".into())),
                ("ship_to".into(), Value::String("NL 1011AB".into())),
            ]),
        ),
        ("deadline_at".into(), Value::Long(5)),
    ]);
    let v2_order = OrderEvent::from(OrderPlaced {
        metadata: Metadata::command("p2", "O-2", 0),
        order: schemas::orders::OrderContext {
            order_id: "O-2".into(),
            customer_id: "C-2".into(),
            lines: vec![OrderLine {
                sku: "SKU-1".into(),
                warehouse: "AMS".into(),
                quantity: 1,
                unit_price_cents: 250,
            }],
            total_cents: 250,
            payment_method: "card-2".into(),
            ship_to_country: "DE".into(),
            ship_to_postcode: "10115".into(),
        },
        deadline_at: 6,
    });
    let mut decoder = Decoder::<OrderEvent>::new(registry.clone());
    let mut addresses = Vec::new();
    for p in [
        frame(placed_id, &placed_v1, v1_order)?,
        order_encoder.encode(&v2_order)?,
    ] {
        let OrderEvent::OrderPlaced(o) = decoder.decode_learning(&p).await? else {
            anyhow::bail!("not an OrderPlaced");
        };
        addresses.push((o.order.ship_to_country, o.order.ship_to_postcode));
    }
    let expected = [
        ("NL".to_owned(), "1011AB".to_owned()),
        ("DE".to_owned(), "10115".to_owned()),
    ];
    anyhow::ensure!(addresses == expected, "upcast addresses {addresses:?}");
    Ok(())
}

async fn an_incompatible_change_is_refused_with_the_reason(
    url: &str,
    prefix: &str,
) -> anyhow::Result<()> {
    let registry = Registry::new(url);
    let subject = subject(
        &format!("{prefix}inventory.events"),
        "supplychain.inventory.InventoryReserved",
    );
    registry
        .register(&subject, &parse_avsc(RESERVED_V1))
        .await?;
    // v2 (a field with a default) is fine.
    let current = &<InventoryEvent as schemas::record::RecordUnion>::schemas()[1];
    let verdict = registry.check(&subject, current).await?;
    anyhow::ensure!(verdict.refusal.is_none(), "v2 refused: {verdict:?}");
    // A new field without a default cannot read v1 data.
    let broken = parse_avsc(&RESERVED_V1.replace(
        r#"{"name": "quantity", "type": "long"}"#,
        r#"{"name": "quantity", "type": "long"}, {"name": "priority", "type": "int"}"#,
    ));
    let verdict = registry.check(&subject, &broken).await?;
    let reason = verdict
        .refusal
        .ok_or_else(|| anyhow::anyhow!("a required new field was not refused"))?;
    anyhow::ensure!(
        reason.contains("version 1") && reason.contains("priority"),
        "the reason does not name the version and field: {reason}"
    );
    anyhow::ensure!(
        verdict.level.name() == "BACKWARD_TRANSITIVE",
        "level {}",
        verdict.level.name()
    );
    match registry.register(&subject, &broken).await {
        Err(schemas::RegistryError::Rejected { .. }) => Ok(()),
        other => anyhow::bail!("the registry did not refuse the broken schema: {other:?}"),
    }
}
