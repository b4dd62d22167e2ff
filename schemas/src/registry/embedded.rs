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

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

/// Compatibility levels of the Confluent API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compatibility {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Compatibility {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "NONE" => Self::None,
            "BACKWARD" => Self::Backward,
            "BACKWARD_TRANSITIVE" => Self::BackwardTransitive,
            "FORWARD" => Self::Forward,
            "FORWARD_TRANSITIVE" => Self::ForwardTransitive,
            "FULL" => Self::Full,
            "FULL_TRANSITIVE" => Self::FullTransitive,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Checks `new` against the `existing` versions of a subject (oldest first); the error
    /// names the version that breaks and why.
    pub fn check(self, existing: &[&Schema], new: &Schema) -> Result<(), String> {
        let (backward, forward, transitive) = match self {
            Self::None => return Ok(()),
            Self::Backward => (true, false, false),
            Self::BackwardTransitive => (true, false, true),
            Self::Forward => (false, true, false),
            Self::ForwardTransitive => (false, true, true),
            Self::Full => (true, true, false),
            Self::FullTransitive => (true, true, true),
        };
        let first = if transitive {
            0
        } else {
            existing.len().saturating_sub(1)
        };
        for (i, old) in existing.iter().enumerate().skip(first) {
            let version = i + 1;
            if backward {
                SchemaCompatibility::can_read(old, new).map_err(|e| {
                    format!("new schema cannot read data written with version {version}: {e}")
                })?;
            }
            if forward {
                SchemaCompatibility::can_read(new, old).map_err(|e| {
                    format!("version {version} cannot read data written with the new schema: {e}")
                })?;
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct Store {
    /// Schema text by global id - 1.
    schemas: Vec<(String, Schema)>,
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
                    .map(|id| &self.schemas[*id as usize - 1].1)
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
    let id = match store.schemas.iter().position(|(c, _)| *c == canonical) {
        Some(i) => i as u32 + 1,
        None => {
            store.schemas.push((canonical, schema));
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
        "schema": store.schemas[id as usize - 1].0,
    })))
}

async fn get_by_id(State(store): State<Shared>, Path(id): Path<u32>) -> ApiResult {
    let store = lock(&store);
    let (text, _) = id
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
