//! An in-process schema registry speaking the Confluent REST subset supplystream uses:
//! register, get by id, subject versions, compatibility check and config.
//!
//! It exists so the zero-install mode uses the same wire format and the same client code as a
//! real deployment. Compatibility is decided with apache-avro's schema resolution rules;
//! the default level is BACKWARD_TRANSITIVE, as in DESIGN.md.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let registry = schemas::registry::embedded::EmbeddedRegistry::start().await?;
//! let client = schemas::Registry::new(registry.url());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub use crate::registry::Compatibility;
use apache_avro::Schema;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Default)]
struct Store {
    /// By global id - 1: canonical form (identity), the text as registered (served back: the
    /// canonical form drops defaults and logical types), the parsed schema.
    schemas: Vec<(String, String, Schema)>,
    /// Global ids by subject, in version order.
    subjects: BTreeMap<String, Vec<u32>>,
    subject_levels: BTreeMap<String, Compatibility>,
    level: Option<Compatibility>,
}

impl Store {
    fn level_of(&self, subject: &str) -> Compatibility {
        self.subject_levels
            .get(subject)
            .copied()
            .or(self.level)
            .unwrap_or(Compatibility::BackwardTransitive)
    }

    fn versions(&self, subject: &str) -> Vec<&Schema> {
        self.subjects
            .get(subject)
            .map(|ids| {
                ids.iter()
                    .map(|id| &self.schemas[*id as usize - 1].2)
                    .collect()
            })
            .unwrap_or_default()
    }
}

type Shared = Arc<Mutex<Store>>;

/// A running in-process registry; stops when dropped.
pub struct EmbeddedRegistry {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl EmbeddedRegistry {
    /// Starts serving on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = router(Arc::new(Mutex::new(Store::default())));
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "Embedded schema registry stopped.");
            }
        });
        Ok(EmbeddedRegistry { url, task })
    }

    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for EmbeddedRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn router(store: Shared) -> Router {
    Router::new()
        .route("/subjects", get(list_subjects))
        .route(
            "/subjects/{subject}/versions",
            post(register).get(list_versions),
        )
        .route("/subjects/{subject}/versions/{version}", get(get_version))
        .route("/schemas/ids/{id}", get(get_by_id))
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_compatibility),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(check_compatibility_all),
        )
        .route("/config", get(get_config).put(put_config))
        .route(
            "/config/{subject}",
            get(get_subject_config).put(put_subject_config),
        )
        .with_state(store)
}

struct ApiError(StatusCode, u32, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(json!({"error_code": self.1, "message": self.2})),
        )
            .into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

fn lock(store: &Shared) -> std::sync::MutexGuard<'_, Store> {
    store
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

fn parse_body(body: &SchemaBody) -> Result<Schema, ApiError> {
    if let Some(t) = body.schema_type.as_deref().filter(|t| *t != "AVRO") {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("schema type {t} is not supported; only AVRO"),
        ));
    }
    Schema::parse_str(&body.schema).map_err(|e| {
        ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("invalid Avro schema: {e}"),
        )
    })
}

async fn list_subjects(State(store): State<Shared>) -> ApiResult {
    Ok(Json(json!(
        lock(&store).subjects.keys().collect::<Vec<_>>()
    )))
}

async fn register(
    State(store): State<Shared>,
    Path(subject): Path<String>,
    Json(body): Json<SchemaBody>,
) -> ApiResult {
    let schema = parse_body(&body)?;
    let canonical = schema.canonical_form();
    let mut store = lock(&store);
    let existing = store.versions(&subject);
    if let Some(pos) = existing
        .iter()
        .position(|s| s.canonical_form() == canonical)
    {
        return Ok(Json(json!({"id": store.subjects[&subject][pos]})));
    }
    store
        .level_of(&subject)
        .check(&existing, &schema)
        .map_err(|reason| {
            ApiError(
                StatusCode::CONFLICT,
                409,
                format!("incompatible schema: {reason}"),
            )
        })?;
    let id = match store.schemas.iter().position(|(c, _, _)| *c == canonical) {
        Some(i) => i as u32 + 1,
        None => {
            store.schemas.push((canonical, body.schema, schema));
            store.schemas.len() as u32
        }
    };
    store.subjects.entry(subject).or_default().push(id);
    Ok(Json(json!({"id": id})))
}

async fn list_versions(State(store): State<Shared>, Path(subject): Path<String>) -> ApiResult {
    let store = lock(&store);
    let ids = store
        .subjects
        .get(&subject)
        .ok_or_else(|| subject_not_found(&subject))?;
    Ok(Json(json!((1..=ids.len()).collect::<Vec<_>>())))
}

fn subject_not_found(subject: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        40401,
        format!("subject {subject} not found"),
    )
}

fn version_index(ids: &[u32], version: &str) -> Option<usize> {
    match version {
        "latest" | "-1" => ids.len().checked_sub(1),
        v => v
            .parse::<usize>()
            .ok()
            .filter(|v| (1..=ids.len()).contains(v))
            .map(|v| v - 1),
    }
}

async fn get_version(
    State(store): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
) -> ApiResult {
    let store = lock(&store);
    let ids = store
        .subjects
        .get(&subject)
        .ok_or_else(|| subject_not_found(&subject))?;
    let i = version_index(ids, &version).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            40402,
            format!("version {version} of {subject} not found"),
        )
    })?;
    let id = ids[i];
    Ok(Json(json!({
        "subject": subject, "version": i + 1, "id": id,
        "schema": store.schemas[id as usize - 1].1,
    })))
}

async fn get_by_id(State(store): State<Shared>, Path(id): Path<u32>) -> ApiResult {
    let store = lock(&store);
    let (_, text, _) = id
        .checked_sub(1)
        .and_then(|i| store.schemas.get(i as usize))
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                40403,
                format!("schema {id} not found"),
            )
        })?;
    Ok(Json(json!({"schema": text})))
}

async fn check_compatibility(
    State(store): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
    Json(body): Json<SchemaBody>,
) -> ApiResult {
    let schema = parse_body(&body)?;
    let store = lock(&store);
    let ids = store
        .subjects
        .get(&subject)
        .ok_or_else(|| subject_not_found(&subject))?;
    let existing = store.versions(&subject);
    // "latest" checks against what the level says; a numbered version checks just that one.
    let result = match version_index(ids, &version) {
        Some(i) if version != "latest" => Compatibility::Backward.check(&existing[i..=i], &schema),
        Some(_) => store.level_of(&subject).check(&existing, &schema),
        None => return Err(subject_not_found(&subject)),
    };
    Ok(Json(match result {
        Ok(()) => json!({"is_compatible": true}),
        Err(reason) => json!({"is_compatible": false, "messages": [reason]}),
    }))
}

/// Checks against the versions the subject's level names (Confluent 7+ form, no version).
async fn check_compatibility_all(
    store: State<Shared>,
    Path(subject): Path<String>,
    body: Json<SchemaBody>,
) -> ApiResult {
    check_compatibility(store, Path((subject, "latest".to_owned())), body).await
}

#[derive(Deserialize)]
struct ConfigBody {
    compatibility: String,
}

fn parse_level(body: &ConfigBody) -> Result<Compatibility, ApiError> {
    Compatibility::parse(&body.compatibility).ok_or_else(|| {
        ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            format!("invalid compatibility level {}", body.compatibility),
        )
    })
}

async fn get_config(State(store): State<Shared>) -> ApiResult {
    let level = lock(&store)
        .level
        .unwrap_or(Compatibility::BackwardTransitive);
    Ok(Json(json!({"compatibilityLevel": level.name()})))
}

async fn put_config(State(store): State<Shared>, Json(body): Json<ConfigBody>) -> ApiResult {
    let level = parse_level(&body)?;
    lock(&store).level = Some(level);
    Ok(Json(json!({"compatibility": level.name()})))
}

async fn get_subject_config(State(store): State<Shared>, Path(subject): Path<String>) -> ApiResult {
    let level = lock(&store).level_of(&subject);
    Ok(Json(json!({"compatibilityLevel": level.name()})))
}

async fn put_subject_config(
    State(store): State<Shared>,
    Path(subject): Path<String>,
    Json(body): Json<ConfigBody>,
) -> ApiResult {
    let level = parse_level(&body)?;
    lock(&store).subject_levels.insert(subject, level);
    Ok(Json(json!({"compatibility": level.name()})))
}

#[cfg(test)]
mod tests {
    use apache_avro::Schema;

    use super::*;
    use crate::codec::{DecodeError, Decoder, Encoder};
    use crate::inventory::{InventoryCommand, Metadata, ReceiveStock};
    use crate::record::RecordUnion;
    use crate::registry::{Registry, RegistryError};

    const V1: &str = r#"{"type":"record","name":"ReceiveStock","namespace":"supplychain.inventory","fields":[
        {"name":"metadata","type":"supplychain.common.Metadata"},
        {"name":"sku","type":"string"},{"name":"warehouse","type":"string"},{"name":"quantity","type":"long"},
        {"name":"note","type":"string","default":""}]}"#;

    #[tokio::test]
    async fn registers_fetches_and_refuses_incompatible_changes() {
        let server = EmbeddedRegistry::start().await.unwrap();
        let registry = Registry::new(server.url());
        let schema = &InventoryCommand::schemas()[0];
        let id = registry
            .register("t-supplychain.inventory.ReceiveStock", schema)
            .await
            .unwrap();
        assert_eq!(
            registry
                .register("t-supplychain.inventory.ReceiveStock", schema)
                .await
                .unwrap(),
            id,
            "idempotent"
        );
        assert_eq!(
            registry.schema(id).await.unwrap().canonical_form(),
            schema.canonical_form()
        );
        assert!(matches!(
            registry.schema(999).await,
            Err(RegistryError::NotFound { .. })
        ));

        // A new required field without default cannot read old data: BACKWARD_TRANSITIVE refuses.
        let breaking = Schema::parse_str(&schema_with_extra_field(
            schema,
            r#"{"name":"lot","type":"string"}"#,
        ))
        .unwrap();
        assert!(
            !registry
                .is_compatible("t-supplychain.inventory.ReceiveStock", &breaking)
                .await
                .unwrap()
        );
        match registry
            .register("t-supplychain.inventory.ReceiveStock", &breaking)
            .await
        {
            Err(RegistryError::Rejected { reason, .. }) => {
                assert!(reason.contains("version 1"), "{reason}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // The same field with a default is a compatible evolution.
        let compatible = Schema::parse_str(&schema_with_extra_field(
            schema,
            r#"{"name":"lot","type":"string","default":"-"}"#,
        ))
        .unwrap();
        assert!(
            registry
                .is_compatible("t-supplychain.inventory.ReceiveStock", &compatible)
                .await
                .unwrap()
        );
        assert_ne!(
            registry
                .register("t-supplychain.inventory.ReceiveStock", &compatible)
                .await
                .unwrap(),
            id
        );
    }

    fn schema_with_extra_field(schema: &Schema, field: &str) -> String {
        let text = serde_json::to_string(schema).unwrap();
        let at = text.rfind(']').unwrap();
        format!("{},{field}{}", &text[..at], &text[at..])
    }

    #[tokio::test]
    async fn decodes_other_writer_versions_and_names_bad_input() {
        let server = EmbeddedRegistry::start().await.unwrap();
        let registry = Registry::new(server.url());
        // A producer still on a version with an extra field writes with that schema.
        let v1 = crate::record::parse_avsc(V1);
        let old_id = registry
            .register("x-supplychain.inventory.ReceiveStock", &v1)
            .await
            .unwrap();
        let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&v1)
            .build()
            .unwrap();
        let mut record = apache_avro::types::Record::new(&v1).unwrap();
        let meta = apache_avro::to_value(Metadata::command("c1", "S", 5)).unwrap();
        record.put("metadata", meta.resolve(&v1_metadata(&v1)).unwrap());
        record.put("sku", "S");
        record.put("warehouse", "AMS");
        record.put("quantity", 4i64);
        record.put("note", "old producer");
        let mut payload = vec![0];
        payload.extend(old_id.to_be_bytes());
        writer.write_value(&mut payload, record).unwrap();

        let current = Encoder::<InventoryCommand>::register(&registry, "x")
            .await
            .unwrap();
        let mut decoder = Decoder::<InventoryCommand>::new(registry.clone());
        let decoded = decoder.decode_learning(&payload).await.unwrap();
        let InventoryCommand::ReceiveStock(r) = &decoded else {
            panic!("{decoded:?}")
        };
        assert_eq!((r.sku.as_str(), r.quantity), ("S", 4));
        // Current-version records take the serde path and round-trip.
        let now: InventoryCommand = ReceiveStock {
            metadata: Metadata::command("c2", "S", 6),
            sku: "S".into(),
            warehouse: "AMS".into(),
            quantity: 2,
        }
        .into();
        let bytes = current.encode(&now).unwrap();
        assert_eq!(decoder.decode_learning(&bytes).await.unwrap(), now);
        // Bad input is named, not panicked on.
        assert!(matches!(
            decoder.decode_learning(&[0, 0, 0, 0, 77, 1]).await,
            Err(DecodeError::UnknownSchema(77))
        ));
        let mut trailing = bytes.clone();
        trailing.push(9);
        assert!(
            matches!(decoder.decode(&trailing), Err(DecodeError::InvalidDatum { reason, .. }) if reason.contains("trailing"))
        );
    }

    /// Records naming random schema ids the registry does not have: each is refused as
    /// unknown, and the decoder remembers at most `MAX_UNKNOWN` of them.
    #[tokio::test]
    async fn unknown_schema_ids_are_remembered_within_a_bound() {
        use crate::codec::MAX_UNKNOWN;
        let server = EmbeddedRegistry::start().await.unwrap();
        let registry = Registry::new(server.url());
        let mut decoder = Decoder::<InventoryCommand>::new(registry);
        for id in 1_000..(1_000 + 3 * MAX_UNKNOWN as u32) {
            let [a, b, c, d] = id.to_be_bytes();
            assert!(matches!(
                decoder.decode_learning(&[0, a, b, c, d, 1]).await,
                Err(DecodeError::UnknownSchema(i)) if i == id
            ));
            assert!(
                decoder.remembered() <= MAX_UNKNOWN,
                "{}",
                decoder.remembered()
            );
        }
    }

    fn v1_metadata(v1: &Schema) -> Schema {
        let Schema::Record(r) = v1 else {
            unreachable!()
        };
        r.fields[0].schema.clone()
    }
}
