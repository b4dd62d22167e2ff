//! Upcasters: semantic conversions of old record versions that schema resolution cannot do.
//!
//! Avro resolution handles added fields with defaults and removed fields. A change of meaning
//! (one free-text address split into country and postcode) needs code: an upcaster, registered
//! per (record, from-version) with the writer schema of that version. The decoder recognizes a
//! writer schema as a known old version (same canonical form), reads the datum with it,
//! upcasts the value to the current shape and then resolves it to the current schema.

use std::sync::OnceLock;

use apache_avro::Schema;
use apache_avro::types::Value;

use crate::record::parse_avsc;

/// Converts a value of one old version into the current version's shape.
pub struct Upcaster {
    /// Full name of the record.
    pub record: &'static str,
    /// The version it converts from (the bundled `<Record>.v<N>.avsc`).
    pub from_version: u32,
    /// That version's schema text.
    pub writer_avsc: &'static str,
    /// The conversion; errors name what is wrong with the value.
    pub upcast: fn(Value) -> Result<Value, String>,
}

impl Upcaster {
    /// The old version's schema, parsed once.
    pub fn writer(&self) -> &'static Schema {
        static PARSED: OnceLock<Vec<Schema>> = OnceLock::new();
        let parsed = PARSED.get_or_init(|| {
            UPCASTERS
                .iter()
                .map(|u| parse_avsc(u.writer_avsc))
                .collect()
        });
        let i = UPCASTERS
            .iter()
            .position(|u| std::ptr::eq(u, self))
            .expect("upcasters live in UPCASTERS");
        &parsed[i]
    }
}

/// Every upcaster.
pub static UPCASTERS: &[Upcaster] = &[Upcaster {
    record: "supplychain.orders.OrderPlaced",
    from_version: 1,
    writer_avsc: include_str!("../avro/orders/OrderPlaced.v1.avsc"),
    upcast: order_placed_v1,
}];

/// The upcaster for `writer`, if it is a known old version of `record`.
pub fn find(record: &str, writer: &Schema) -> Option<&'static Upcaster> {
    let form = writer.canonical_form();
    UPCASTERS
        .iter()
        .find(|u| u.record == record && u.writer().canonical_form() == form)
}

fn field<'v>(fields: &'v mut [(String, Value)], name: &str) -> Option<&'v mut Value> {
    fields.iter_mut().find(|(n, _)| n == name).map(|(_, v)| v)
}

/// OrderPlaced v1 → v2: `order.ship_to` ("NL 1011AB") becomes `ship_to_country` ("NL") and
/// `ship_to_postcode` ("1011AB"); a value without a space is all country.
fn order_placed_v1(value: Value) -> Result<Value, String> {
    let Value::Record(mut fields) = value else {
        return Err("OrderPlaced v1 is not a record".into());
    };
    let Some(Value::Record(order)) = field(&mut fields, "order") else {
        return Err("OrderPlaced v1 has no order record".into());
    };
    let at = order
        .iter()
        .position(|(n, _)| n == "ship_to")
        .ok_or("OrderPlaced v1 order has no ship_to")?;
    let (_, ship_to) = order.remove(at);
    let Value::String(ship_to) = ship_to else {
        return Err("OrderPlaced v1 ship_to is not a string".into());
    };
    let (country, postcode) = ship_to
        .trim()
        .split_once(' ')
        .unwrap_or((ship_to.trim(), ""));
    order.push(("ship_to_country".into(), Value::String(country.to_owned())));
    order.push((
        "ship_to_postcode".into(),
        Value::String(postcode.trim().to_owned()),
    ));
    Ok(Value::Record(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_versions_are_recognized_and_current_ones_are_not() {
        let u = &UPCASTERS[0];
        assert!(find("supplychain.orders.OrderPlaced", u.writer()).is_some());
        let current = &<crate::orders::OrderEvent as crate::record::RecordUnion>::schemas()[0];
        assert!(find("supplychain.orders.OrderPlaced", current).is_none());
    }

    #[test]
    fn a_v1_address_is_split() {
        let order = Value::Record(vec![
            ("order_id".into(), Value::String("O-1".into())),
            ("ship_to".into(), Value::String("NL 1011 AB".into())),
        ]);
        let v1 = Value::Record(vec![("order".into(), order)]);
        let Value::Record(v2) = order_placed_v1(v1).unwrap() else {
            panic!()
        };
        let Value::Record(order) = &v2[0].1 else {
            panic!()
        };
        assert_eq!(
            order[1],
            ("ship_to_country".into(), Value::String("NL".into()))
        );
        assert_eq!(
            order[2],
            ("ship_to_postcode".into(), Value::String("1011 AB".into()))
        );
    }
}
