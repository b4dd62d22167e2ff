//! JSON lines → Avro commands, for people and scripts.
//!
//! One JSON object per line with a `"type"` naming the record (`"ReserveStock"` or its full
//! name) and the record's fields. `metadata` may be omitted: a fresh command id, the current
//! time and the sku as aggregate id are filled in. Errors name the line and the field.
//!
//! ```text
//! {"type":"ReceiveStock","sku":"SKU-1","warehouse":"AMS","quantity":10}
//! {"type":"ReserveStock","reservation_id":"R-1","sku":"SKU-1","warehouse":"AMS","quantity":3}
//! ```

use anyhow::{Context, anyhow, bail};
use schemas::inventory::*;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Parses one JSON line into a command; `now_ms` stamps generated metadata.
pub fn parse_command(line: &str, now_ms: i64) -> anyhow::Result<InventoryCommand> {
    let mut value: Value = serde_json::from_str(line).context("not a JSON object")?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| anyhow!("not a JSON object"))?;
    let kind = object
        .remove("type")
        .and_then(|t| t.as_str().map(str::to_owned))
        .ok_or_else(|| anyhow!("field \"type\" (the record name) is missing"))?;
    let kind = kind
        .strip_prefix("supplychain.inventory.")
        .unwrap_or(&kind)
        .to_owned();
    if !object.contains_key("metadata") {
        let sku = object
            .get("sku")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let id = uuid::Uuid::new_v4().to_string();
        object.insert(
            "metadata".into(),
            serde_json::to_value(Metadata::command(&id, &sku, now_ms))?,
        );
    }
    fn build<T: DeserializeOwned + Into<InventoryCommand>>(
        v: Value,
    ) -> anyhow::Result<InventoryCommand> {
        Ok(serde_json::from_value::<T>(v)?.into())
    }
    match kind.as_str() {
        "ReceiveStock" => build::<ReceiveStock>(value),
        "ReserveStock" => build::<ReserveStock>(value),
        "ReleaseReservation" => build::<ReleaseReservation>(value),
        "AdjustStock" => build::<AdjustStock>(value),
        "TransferStock" => build::<TransferStock>(value),
        "AuditStock" => build::<AuditStock>(value),
        other => bail!(
            "unknown command type {other:?}; inventory.commands takes ReceiveStock, ReserveStock, \
             ReleaseReservation, AdjustStock, TransferStock, AuditStock"
        ),
    }
}

/// Parses all lines (blank lines skipped); the error names the first bad line.
pub fn parse_lines(text: &str, now_ms: i64) -> anyhow::Result<Vec<InventoryCommand>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_command(l, now_ms).with_context(|| format!("line {}", i + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_filled_in_when_absent() {
        let c = parse_command(
            r#"{"type":"ReceiveStock","sku":"S","warehouse":"AMS","quantity":2}"#,
            5,
        )
        .unwrap();
        let InventoryCommand::ReceiveStock(r) = c else {
            panic!()
        };
        assert_eq!(
            (
                r.quantity,
                r.metadata.aggregate_id.as_str(),
                r.metadata.occurred_at
            ),
            (2, "S", 5)
        );
        assert_eq!(r.metadata.aggregate_version, -1);
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let text = "{\"type\":\"ReceiveStock\",\"sku\":\"S\",\"warehouse\":\"A\",\"quantity\":1}\n\n{\"type\":\"ReserveStock\",\"sku\":\"S\"}";
        let e = format!("{:#}", parse_lines(text, 0).unwrap_err());
        assert!(e.starts_with("line 3"), "{e}");
        assert!(e.contains("missing field `reservation_id`"), "{e}");
        let e = format!(
            "{:#}",
            parse_command(r#"{"type":"Teleport"}"#, 0).unwrap_err()
        );
        assert!(e.contains("unknown command type \"Teleport\""), "{e}");
        let e = format!("{:#}", parse_command(r#"{"sku":"S"}"#, 0).unwrap_err());
        assert!(e.contains("\"type\""), "{e}");
    }
}
