//! What the HTTP API adds to a caller's JSON before it is a record: the command's or event's
//! `metadata`, its id and version, from the request (`expected_version`, `Idempotency-Key`)
//! or made up. Pure, so the fuzz target `command_json` runs bodies through it as the API does.

use schemas::Metadata;
use serde_json::{Map, Value, json};

/// Why a request's body was refused: a 400 naming `field` (none: the body as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub field: Option<String>,
    pub reason: String,
}

impl Refused {
    fn field(field: &str, reason: impl Into<String>) -> Self {
        Refused {
            field: Some(field.into()),
            reason: reason.into(),
        }
    }
}

/// A command's body with its `metadata`: the caller's own (with `expected_version` as its
/// `aggregate_version`, unless that says otherwise), or new, stamped `now_ms`, its id `key`
/// when the request has one, else `fresh()`. Returns the body and the command's id.
pub fn command_metadata(
    mut body: Value,
    key_field: &str,
    key: Option<&str>,
    now_ms: i64,
    fresh: impl FnOnce() -> String,
) -> Result<(Value, String), Refused> {
    let Some(object) = body.as_object_mut() else {
        return Err(Refused {
            field: None,
            reason: "the body must be a JSON object of the command's fields".into(),
        });
    };
    let expected = match object.remove("expected_version") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| Refused::field("expected_version", "must be an integer"))?,
        ),
    };
    if let Some(m) = object.get_mut("metadata") {
        // `expected_version` beside the caller's own metadata used to be dropped silently:
        // it is the metadata's `aggregate_version`, unless that says otherwise.
        if let (Some(expected), Some(m)) = (expected, m.as_object_mut()) {
            match m.get("aggregate_version").and_then(Value::as_i64) {
                Some(v) if v >= 0 && v != expected => {
                    return Err(Refused::field(
                        "expected_version",
                        format!("is {expected} but metadata.aggregate_version is {v}"),
                    ));
                }
                _ => {
                    m.insert("aggregate_version".into(), json!(expected));
                }
            }
        }
        let id = m
            .get("event_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(key) = key
            && id != key
        {
            return Err(Refused::field(
                "metadata.event_id",
                format!(
                    "is {id:?} but the request's Idempotency-Key is {key:?}: the key is the command's id"
                ),
            ));
        }
        return Ok((body, id));
    }
    let id = key.map_or_else(fresh, str::to_owned);
    insert_metadata(object, key_field, &id, now_ms, expected.unwrap_or(-1));
    Ok((body, id))
}

/// Inserts the metadata of a new message `id` about the aggregate named by `key_field`.
pub fn insert_metadata(
    object: &mut Map<String, Value>,
    key_field: &str,
    id: &str,
    occurred_at: i64,
    aggregate_version: i64,
) {
    let aggregate = object
        .get(key_field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let metadata = Metadata {
        aggregate_version,
        ..Metadata::command(id, &aggregate, occurred_at)
    };
    // `Metadata` is strings and integers: it always has a JSON form.
    let value = serde_json::to_value(metadata).unwrap_or(Value::Null);
    object.insert("metadata".into(), value);
}
