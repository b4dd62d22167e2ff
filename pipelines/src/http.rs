//! The HTTP API: commands in, queries out (CQRS over HTTP).
//!
//! - `POST /commands/<service>/<Command>`: the JSON fields of the command record (its Avro
//!   schema under `schemas/avro/<service>/`), `metadata` optional (filled in: a new command
//!   id, now, no expected version) and `expected_version` optional (optimistic concurrency).
//!   A field of the wrong type or missing is a 400 naming the field. The command is encoded
//!   with its registered schema and written to `<service>.commands`, keyed by aggregate id;
//!   the answer carries the command id and the offset token of the write. A request may
//!   carry `Idempotency-Key: <key>` (1 to 256 bytes, no control characters): the key is the
//!   command's id and goes with it (Kafka header `idempotency-key`), so a client that
//!   retries after a timeout or a 503 whose write had landed does not apply it twice
//!   (inventory remembers each sku's last 64 keys; orders and catalog commands are
//!   idempotent by their own ids).
//! - `POST /events/<topic>`: for producers outside the system publishing their own events
//!   (a carrier's scans) on a topic its owner declares `external_events` (no pipeline writes
//!   it). The body is `{"record": "<Name>", …fields}`, validated against the topic's records
//!   like a command; `metadata` optional, or just `event_id` (the producer's own id: the
//!   same id twice is one event to the views) and `occurred_at` (epoch ms; default now).
//!   Answered with the event id and the offset token of the write. Any other topic is a 403
//!   naming its owner.
//! - `GET /query?sql=…` or `POST /query {"sql": …}`, with `format` json (default) | csv |
//!   arrow (an Arrow IPC stream), and optionally `token` (from a command) and `timeout_ms`:
//!   the query waits until every view it reads reflects the command (read-your-writes).
//!   The `views` table tells each view's freshness (position, end and lag per partition).
//! - `GET /views`: the same freshness as JSON.
//!
//! Every error is JSON, `{"error": …}` (plus `field` for a bad field); nothing is written
//! unless the whole command was valid.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::collections::BTreeMap;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::Registry;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Cluster;
use crate::freshness::{self, Token};
use crate::ingress::{FieldError, JsonTopic};
use crate::kafka;
use crate::ownership::OwnershipMap;
use crate::registry::{self, Ingress, Kind};

/// A topic open for records over HTTP.
struct Open {
    ingress: Ingress,
    json: Box<dyn JsonTopic>,
}

/// What the API needs.
pub struct Api {
    cluster: Cluster,
    views_dir: PathBuf,
    ownership: OwnershipMap,
    producer: FutureProducer,
    /// Every topic that takes records over HTTP (from the service registry), by name.
    topics: BTreeMap<&'static str, Open>,
    /// The commands topic of each service that takes commands over HTTP.
    commands: BTreeMap<&'static str, &'static str>,
    /// Longest a query waits for its token (unless it asks for less).
    pub max_wait: Duration,
}

impl Api {
    /// Registers the command schemas and connects the producer.
    pub async fn new(
        cluster: Cluster,
        views_dir: PathBuf,
        ownership: OwnershipMap,
    ) -> anyhow::Result<Self> {
        // Every topic declared external must be one the API can encode, and the other way
        // round: the definitions and the code agree, as for the pipelines.
        let event_topics: Vec<&str> = registry::ingresses()
            .filter(|(_, t, _)| t.kind == Kind::External)
            .map(|(_, t, _)| t.name)
            .collect();
        for (topic, service) in ownership.external_events() {
            anyhow::ensure!(
                event_topics.contains(&topic),
                "{service} declares external events on {topic}, which the HTTP API has no records for (it takes events on {})",
                event_topics.join(", ")
            );
        }
        for topic in &event_topics {
            anyhow::ensure!(
                ownership.external_events().any(|(t, _)| t == *topic),
                "the HTTP API takes events on {topic}, which no pipeline definition declares external_events"
            );
        }
        let registry = Registry::new(&cluster.registry);
        let producer: FutureProducer = kafka::producer_config(&cluster)
            .set("linger.ms", "0")
            .create()?;
        let mut topics = BTreeMap::new();
        let mut commands = BTreeMap::new();
        for (service, topic, ingress) in registry::ingresses() {
            let json = (ingress.open)(&registry, topic.name).await?;
            topics.insert(topic.name, Open { ingress, json });
            if topic.kind == Kind::Commands {
                commands.insert(service, topic.name);
            }
        }
        Ok(Api {
            topics,
            commands,
            cluster,
            views_dir,
            ownership,
            producer,
            max_wait: Duration::from_secs(30),
        })
    }

    /// The routes, within [`Limits::default`].
    pub fn router(self) -> Router {
        self.router_within(Limits::default())
    }

    /// The routes, within `limits`.
    pub fn router_within(self, limits: Limits) -> Router {
        limits.apply(
            Router::new()
                .route("/commands/{service}/{command}", post(command))
                .route("/events/{topic}", post(event))
                .route("/query", get(query_get).post(query_post))
                .route("/views", get(views))
                .with_state(Arc::new(self)),
        )
    }
}

/// What one server takes at once: a request past `timeout` is answered 503 (and its work
/// dropped), one past `in_flight` requests at once is refused 503 at once rather than queued
/// without bound. Bodies are limited to axum's 2 MB by the JSON extractor, and must come
/// uncompressed: a `Content-Encoding` other than `identity` is refused 415 with its name
/// (nothing here inflates a body, so a gzip bomb is only its own bytes, but the JSON error it
/// got before did not say why).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub in_flight: usize,
}

impl Default for Limits {
    /// 60 s: a query with a token waits up to 30 s for its write, then runs.
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(60),
            in_flight: 256,
        }
    }
}

impl Limits {
    /// `router` within these limits.
    pub fn apply(self, router: Router) -> Router {
        let permits = Arc::new(tokio::sync::Semaphore::new(self.in_flight));
        let limit = self.in_flight;
        router
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::SERVICE_UNAVAILABLE,
                self.timeout,
            ))
            .layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    let permits = permits.clone();
                    async move {
                        if let Some(encoding) = request
                            .headers()
                            .get(header::CONTENT_ENCODING)
                            .filter(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"))
                        {
                            return ApiError::new(
                                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                                format!(
                                    "Content-Encoding {:?} is not accepted: send the body uncompressed (at most 2 MB)",
                                    String::from_utf8_lossy(encoding.as_bytes())
                                ),
                            )
                            .into_response();
                        }
                        let Ok(_permit) = permits.try_acquire_owned() else {
                            return ApiError::new(
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!("{limit} requests in flight, the server's limit; retry"),
                            )
                            .into_response();
                        };
                        next.run(request).await
                    }
                },
            ))
    }
}

/// An error answered as JSON.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn new(status: StatusCode, error: impl std::fmt::Display) -> Self {
        ApiError {
            status,
            body: json!({ "error": error.to_string() }),
        }
    }
    fn bad_field(field: String, error: impl std::fmt::Display) -> Self {
        let field = if field == "." { String::new() } else { field };
        ApiError {
            status: StatusCode::BAD_REQUEST,
            body: json!({
                "error": if field.is_empty() { error.to_string() } else { format!("field {field}: {error}") },
                "field": field,
            }),
        }
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e)
    }
}

impl From<formats::request::Refused> for ApiError {
    fn from(r: formats::request::Refused) -> Self {
        match r.field {
            Some(field) => ApiError::bad_field(field, r.reason),
            None => ApiError::new(StatusCode::BAD_REQUEST, r.reason),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// The topic, key and encoded bytes of one command.
struct Encoded {
    topic: &'static str,
    key: String,
    payload: Vec<u8>,
    /// The request's idempotency key, sent as a header.
    idempotency_key: Option<String>,
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        match e.field {
            Some(field) => ApiError::bad_field(field, e.message),
            None => ApiError::new(StatusCode::BAD_REQUEST, e.message),
        }
    }
}

/// Encodes `body` as record `record` of `topic`, keyed by the field its ingress names; a
/// record the topic does not carry is `unknown(names)`.
fn encode_record(
    open: &Open,
    topic: &'static str,
    record: &str,
    body: Value,
    unknown: impl FnOnce(String) -> ApiError,
) -> Result<Encoded, ApiError> {
    let key_field = open.ingress.key;
    let key = body
        .get(key_field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let allowed = open.ingress.records.unwrap_or(open.json.records());
    if !allowed.contains(&record) {
        return Err(unknown(allowed.join(", ")));
    }
    if key.is_empty() {
        return Err(ApiError::bad_field(key_field.into(), "must not be empty"));
    }
    let Some(payload) = open.json.encode(record, body)? else {
        return Err(unknown(allowed.join(", ")));
    };
    Ok(Encoded {
        topic,
        key,
        payload,
        idempotency_key: None,
    })
}

/// The request's `Idempotency-Key`, checked.
fn idempotency_key(headers: &header::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = |why: String| {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, why);
        e.body["header"] = json!("Idempotency-Key");
        e
    };
    let key = v
        .to_str()
        .map_err(|_| bad("header Idempotency-Key is not visible ASCII".into()))?;
    crate::topics::check_idempotency_key(key).map_err(bad)?;
    Ok(Some(key.to_owned()))
}

/// Fills in `metadata` when the caller did not send it; the command id is `key` when the
/// request has one (`formats::request::command_metadata`, with the clock and a new UUID).
fn with_metadata(
    body: Value,
    key_field: &str,
    key: Option<&str>,
) -> Result<(Value, String), ApiError> {
    formats::request::command_metadata(body, key_field, key, crate::wire::now_ms(), || {
        uuid::Uuid::new_v4().to_string()
    })
    .map_err(ApiError::from)
}

async fn command(
    State(api): State<Arc<Api>>,
    Path((service, command)): Path<(String, String)>,
    headers: header::HeaderMap,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    let Some(Json(body)) = body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body must be JSON (Content-Type: application/json)",
        ));
    };
    let Some((topic, open)) = api
        .commands
        .get(service.as_str())
        .map(|topic| (*topic, &api.topics[topic]))
    else {
        let services: Vec<&str> = api.commands.keys().copied().collect();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no service {service:?} takes commands over HTTP ({})",
                services.join(", ")
            ),
        ));
    };
    let key = idempotency_key(&headers)?;
    let (body, command_id) = with_metadata(body, open.ingress.key, key.as_deref())?;
    let mut encoded = encode_record(open, topic, &command, body, |names| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{service} has no command {command:?} (commands: {names})"),
        )
    })?;
    encoded.idempotency_key = key;
    let mut answer = write(&api, &encoded).await?;
    answer["command_id"] = json!(command_id);
    Ok(Json(answer))
}

/// Writes one encoded record; the answer names where it landed, with its offset token.
async fn write(api: &Api, encoded: &Encoded) -> Result<Value, ApiError> {
    let mut record = FutureRecord::to(encoded.topic)
        .key(&encoded.key)
        .payload(&encoded.payload);
    if let Some(key) = &encoded.idempotency_key {
        record = record.headers(OwnedHeaders::new().insert(Header {
            key: crate::topics::IDEMPOTENCY_KEY,
            value: Some(key.as_str()),
        }));
    }
    let delivery = api
        .producer
        .send(record, kafka::TX_TIMEOUT)
        .await
        .map_err(|(e, _)| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{} not written: {e}", encoded.topic),
            )
        })?;
    let (partition, offset) = (delivery.partition, delivery.offset);
    let token = Token {
        topic: encoded.topic.to_owned(),
        partition,
        offset,
    };
    Ok(json!({
        "topic": encoded.topic,
        "partition": partition,
        "offset": offset,
        "token": token.to_string(),
    }))
}

/// Takes `record` out of an event's body and fills in its metadata when the caller did not
/// send it: `event_id` (default a new id) and `occurred_at` (default now) may be given alone.
fn event_metadata(mut body: Value, key_field: &str) -> Result<(Value, String, String), ApiError> {
    let Some(object) = body.as_object_mut() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object: {\"record\": \"<Name>\", …the record's fields}",
        ));
    };
    let record = match object.remove("record") {
        Some(Value::String(r)) => r,
        None => {
            return Err(ApiError::bad_field(
                "record".into(),
                "missing (the record's name)",
            ));
        }
        Some(_) => return Err(ApiError::bad_field("record".into(), "must be a string")),
    };
    let event_id = match object.remove("event_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if !id.is_empty() => Some(id),
        Some(_) => {
            return Err(ApiError::bad_field(
                "event_id".into(),
                "must be a non-empty string",
            ));
        }
    };
    let occurred_at = match object.remove("occurred_at") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| {
            ApiError::bad_field("occurred_at".into(), "must be an integer (epoch ms)")
        })?),
    };
    if let Some(m) = object.get("metadata") {
        if event_id.is_some() || occurred_at.is_some() {
            return Err(ApiError::bad_field(
                "metadata".into(),
                "give either metadata or event_id / occurred_at, not both",
            ));
        }
        let id = m
            .get("event_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        return Ok((body, record, id));
    }
    let id = event_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let at = occurred_at.unwrap_or_else(crate::wire::now_ms);
    // Events of the world outside carry no version of ours.
    formats::request::insert_metadata(object, key_field, &id, at, -1);
    Ok((body, record, id))
}

async fn event(
    State(api): State<Arc<Api>>,
    Path(topic): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    if !api.ownership.external_events().any(|(t, _)| t == topic) {
        let external: Vec<&str> = api.ownership.external_events().map(|(t, _)| t).collect();
        return Err(match api.ownership.owner_of(&topic) {
            Some(owner) => ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{topic} belongs to {owner} and only its pipelines write it; events from outside go to {}",
                    external.join(", ")
                ),
            ),
            None => ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no topic {topic:?} (events from outside go to {})",
                    external.join(", ")
                ),
            ),
        });
    }
    let Some(Json(body)) = body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body must be JSON (Content-Type: application/json)",
        ));
    };
    let Some((&name, open)) = api.topics.get_key_value(topic.as_str()) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("the API has no records for {topic}"),
        ));
    };
    let (body, record, event_id) = event_metadata(body, open.ingress.key)?;
    let encoded = encode_record(open, name, &record, body, |names| {
        ApiError::bad_field(
            "record".into(),
            format!("{topic} carries no record {record:?} (records: {names})"),
        )
    })?;
    let mut answer = write(&api, &encoded).await?;
    answer["event_id"] = json!(event_id);
    Ok(Json(answer))
}

/// A query's parameters (query string or JSON body).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParams {
    sql: String,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

async fn query_get(
    State(api): State<Arc<Api>>,
    params: Result<Query<QueryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    query(api, params).await
}

async fn query_post(
    State(api): State<Arc<Api>>,
    body: Result<Json<QueryParams>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(params) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    query(api, params).await
}

/// The materialized views a SQL text reads: those it names, and the base tables of the
/// derived views it names (a derived view is as fresh as they are).
fn views_named(sql: &str) -> Vec<&'static str> {
    let derived = sinks::derived::named_in(sql).flat_map(|d| d.from.iter().copied());
    let mut views: Vec<&'static str> = freshness::views()
        .into_iter()
        .filter(|v| sinks::derived::mentions(sql, v))
        .chain(derived)
        .collect();
    views.sort_unstable();
    views.dedup();
    views
}

async fn query(api: Arc<Api>, params: QueryParams) -> Result<Response, ApiError> {
    let format = params.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "csv" | "arrow") {
        return Err(ApiError::bad_field(
            "format".into(),
            format!("{format:?} is not json, csv or arrow"),
        ));
    }
    if let Some(token) = &params.token {
        let token: Token = token
            .parse()
            .map_err(|e: String| ApiError::bad_field("token".into(), e))?;
        // A command's token waits for the pipeline that processes it; an external event's,
        // only for the views that fold its topic directly.
        let group = match api.ownership.consumer_of(&token.topic) {
            Some(g) => Some(g.to_owned()),
            None if api.ownership.viewed_directly(&token.topic) => None,
            None => {
                return Err(ApiError::bad_field(
                    "token".into(),
                    format!("no pipeline consumes {}", token.topic),
                ));
            }
        };
        let wait = params
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(api.max_wait)
            .min(api.max_wait);
        let views = views_named(&params.sql);
        let a = api.clone();
        tokio::task::spawn_blocking(move || {
            freshness::wait_for(
                &a.cluster,
                &a.views_dir,
                &token,
                group.as_deref(),
                &views,
                wait,
            )
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::new(StatusCode::GATEWAY_TIMEOUT, format!("{e:#}")))?;
    }
    let mut engine = sinks::QueryEngine::open(&api.views_dir)
        .await
        .map_err(ApiError::internal)?;
    if sinks::derived::mentions(&params.sql, "views") {
        let a = api.clone();
        let rows =
            tokio::task::spawn_blocking(move || freshness::freshness(&a.cluster, &a.views_dir))
                .await
                .map_err(ApiError::internal)?
                .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?;
        engine
            .register_batch("views", views_batch(&rows).map_err(ApiError::internal)?)
            .map_err(ApiError::internal)?;
    }
    let batches = engine.sql(&params.sql).await.map_err(|e| {
        let status = if e.is_internal() {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, e)
    })?;
    let (content_type, body) = match format {
        "csv" => (
            "text/csv",
            sinks::OutputFormat::Csv
                .render(&batches)
                .map_err(ApiError::internal)?
                .into_bytes(),
        ),
        "arrow" => (
            "application/vnd.apache.arrow.stream",
            arrow_stream(&batches)?,
        ),
        _ => ("application/json", json_array(&batches)?),
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

fn json_array(batches: &[RecordBatch]) -> Result<Vec<u8>, ApiError> {
    let mut w = arrow::json::ArrayWriter::new(Vec::new());
    for b in batches {
        w.write(b).map_err(ApiError::internal)?;
    }
    w.finish().map_err(ApiError::internal)?;
    let out = w.into_inner();
    Ok(if out.is_empty() { b"[]".to_vec() } else { out })
}

fn arrow_stream(batches: &[RecordBatch]) -> Result<Vec<u8>, ApiError> {
    let schema = batches
        .first()
        .map(|b| b.schema())
        .unwrap_or_else(|| Arc::new(Schema::empty()));
    let mut w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &schema)
        .map_err(ApiError::internal)?;
    for b in batches {
        w.write(b).map_err(ApiError::internal)?;
    }
    w.finish().map_err(ApiError::internal)?;
    w.into_inner().map_err(ApiError::internal)
}

/// The `views` system table.
pub fn views_batch(rows: &[freshness::Freshness]) -> anyhow::Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("view", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("position", DataType::Int64, true),
        Field::new("end_offset", DataType::Int64, false),
        Field::new("lag", DataType::Int64, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.view.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.topic.as_str()),
        )),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| r.partition),
        )),
        Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.position))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.end))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.lag()))),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

async fn views(State(api): State<Arc<Api>>) -> Result<Json<Value>, ApiError> {
    let a = api.clone();
    let rows = tokio::task::spawn_blocking(move || freshness::freshness(&a.cluster, &a.views_dir))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?;
    Ok(Json(Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "view": r.view, "topic": r.topic, "partition": r.partition,
                    "position": r.position, "end_offset": r.end, "lag": r.lag(),
                })
            })
            .collect(),
    )))
}

/// Serves the API on `listener` until the future is dropped.
pub async fn serve(api: Api, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    serve_within(api, listener, Limits::default()).await
}

/// [`serve`] within `limits`.
pub async fn serve_within(
    api: Api,
    listener: tokio::net::TcpListener,
    limits: Limits,
) -> anyhow::Result<()> {
    axum::serve(listener, api.router_within(limits)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::Metadata;
    use schemas::inventory::InventoryCommand;
    use schemas::orders::OrderCommand;
    use schemas::shipping::TrackingEvent;

    fn parse<U: schemas::record::RecordUnion>(
        record: &str,
        body: Value,
    ) -> Result<Option<U>, ApiError> {
        Ok(crate::ingress::parse::<U>(record, body)?)
    }

    #[test]
    fn the_views_a_query_reads_are_found_by_name() {
        assert_eq!(
            views_named("SELECT * FROM stock_levels s JOIN sagas ON s.sku = sagas.x"),
            vec!["sagas", "stock_levels"]
        );
        assert!(views_named("SELECT * FROM stock_levels_old").is_empty());
        // A derived view is read through its base tables.
        assert_eq!(
            views_named("SELECT * FROM revenue JOIN sales_by_day ON true"),
            vec!["ledger"]
        );
    }

    #[test]
    fn an_events_metadata_is_the_producers_or_filled_in() {
        let (body, record, id) = event_metadata(
            json!({"record": "ParcelPickedUp", "shipment_id": "SHP-1", "carrier": "UPS",
                   "location": "Lyon", "event_id": "scan-9", "occurred_at": 1234}),
            "shipment_id",
        )
        .unwrap();
        assert_eq!((record.as_str(), id.as_str()), ("ParcelPickedUp", "scan-9"));
        let Some(TrackingEvent::ParcelPickedUp(e)) =
            parse::<TrackingEvent>("ParcelPickedUp", body).unwrap()
        else {
            panic!("a pick-up")
        };
        assert_eq!(e.metadata.event_id, "scan-9");
        assert_eq!(e.metadata.aggregate_id, "SHP-1");
        assert_eq!(e.metadata.occurred_at, 1234);
        // A new id and now when not given.
        let (body, _, id) = event_metadata(
            json!({"record": "ParcelPickedUp", "shipment_id": "S"}),
            "shipment_id",
        )
        .unwrap();
        assert!(!id.is_empty());
        assert_eq!(body["metadata"]["event_id"], id.as_str());
        // Bad input is named.
        for (bad, field) in [
            (json!({"shipment_id": "S"}), "record"),
            (json!({"record": 7}), "record"),
            (
                json!({"record": "ParcelPickedUp", "event_id": 7}),
                "event_id",
            ),
            (
                json!({"record": "ParcelPickedUp", "occurred_at": "noon"}),
                "occurred_at",
            ),
            (
                json!({"record": "ParcelPickedUp", "event_id": "x", "metadata": {}}),
                "metadata",
            ),
        ] {
            let e = event_metadata(bad.clone(), "shipment_id").unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(e.body["field"], field, "{bad}: {:?}", e.body);
        }
    }

    /// A slow request ends at the timeout; one past the in-flight limit is refused at once.
    #[tokio::test]
    async fn requests_past_the_limits_are_answered_503() {
        use tower::ServiceExt;
        let gate = Arc::new(tokio::sync::Notify::new());
        let waiting = gate.clone();
        let router = Limits {
            timeout: Duration::from_millis(300),
            in_flight: 1,
        }
        .apply(
            Router::new()
                .route(
                    "/slow",
                    get(move || {
                        let gate = waiting.clone();
                        async move { gate.notified().await }
                    }),
                )
                .route("/fast", get(|| async { "ok" })),
        );
        let get = |uri: &str| {
            axum::extract::Request::builder()
                .uri(uri)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let slow = tokio::spawn(router.clone().oneshot(get("/slow")));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = router.clone().oneshot(get("/fast")).await.unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        let timed_out = slow.await.unwrap().unwrap();
        assert_eq!(timed_out.status(), StatusCode::SERVICE_UNAVAILABLE);
        let after = router.clone().oneshot(get("/fast")).await.unwrap();
        assert_eq!(after.status(), StatusCode::OK, "the permit came back");
        // A compressed body is refused, naming its encoding, before anything reads it.
        let gzipped = axum::extract::Request::builder()
            .uri("/fast")
            .header("content-encoding", "gzip")
            .body(axum::body::Body::from(vec![0x1f, 0x8b, 8, 0]))
            .unwrap();
        let refused = router.clone().oneshot(gzipped).await.unwrap();
        assert_eq!(refused.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let body = axum::body::to_bytes(refused.into_body(), 4096)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("\"gzip\" is not accepted")),
            "{body}"
        );
        let identity = axum::extract::Request::builder()
            .uri("/fast")
            .header("content-encoding", "identity")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(
            router.oneshot(identity).await.unwrap().status(),
            StatusCode::OK
        );
    }

    #[test]
    fn an_expected_version_applies_to_the_callers_own_metadata() {
        let meta = serde_json::to_value(Metadata::command("c", "S", 0)).unwrap();
        let (body, id) = with_metadata(
            json!({"sku": "S", "metadata": meta.clone(), "expected_version": 4}),
            "sku",
            None,
        )
        .unwrap();
        assert_eq!(id, "c");
        assert_eq!(body["metadata"]["aggregate_version"], 4);
        assert!(body.get("expected_version").is_none());
        let mut pinned = meta;
        pinned["aggregate_version"] = json!(2);
        let e = with_metadata(
            json!({"sku": "S", "metadata": pinned, "expected_version": 4}),
            "sku",
            None,
        )
        .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.body["field"], "expected_version");
        let (body, _) =
            with_metadata(json!({"sku": "S", "expected_version": 7}), "sku", None).unwrap();
        assert_eq!(body["metadata"]["aggregate_version"], 7);
    }

    #[test]
    fn an_idempotency_key_is_the_commands_id() {
        let (body, id) = with_metadata(json!({"sku": "S"}), "sku", Some("retry-1")).unwrap();
        assert_eq!(id, "retry-1");
        assert_eq!(body["metadata"]["event_id"], "retry-1");
        let meta = serde_json::to_value(Metadata::command("other", "S", 0)).unwrap();
        let e = with_metadata(
            json!({"sku": "S", "metadata": meta}),
            "sku",
            Some("retry-1"),
        )
        .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.body["field"], "metadata.event_id");
        let mut headers = header::HeaderMap::new();
        assert_eq!(idempotency_key(&headers).unwrap(), None);
        headers.insert("idempotency-key", "k-1".parse().unwrap());
        assert_eq!(idempotency_key(&headers).unwrap().as_deref(), Some("k-1"));
        headers.insert("idempotency-key", "x".repeat(257).parse().unwrap());
        let e = idempotency_key(&headers).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.body["header"], "Idempotency-Key");
        assert!(
            e.body["error"].as_str().unwrap().contains("257 bytes"),
            "{:?}",
            e.body
        );
    }

    #[test]
    fn a_bad_field_is_named() {
        let e = parse::<InventoryCommand>(
            "ReceiveStock",
            json!({
                "metadata": serde_json::to_value(Metadata::command("c", "S", 0)).unwrap(),
                "sku": "S", "warehouse": "AMS", "quantity": "many"
            }),
        )
        .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.body["field"], "quantity");
        let e = parse::<OrderCommand>(
            "PlaceOrder",
            json!({
                "metadata": serde_json::to_value(Metadata::command("c", "O", 0)).unwrap(),
                "order_id": "O", "customer_id": "C", "payment_method": "visa",
                "ship_to_country": "NL", "ship_to_postcode": "1",
                "lines": [{"sku": "S", "warehouse": "AMS", "quantity": 1}]
            }),
        )
        .unwrap_err();
        assert_eq!(e.body["field"], "lines[0]", "{:?}", e.body);
        assert!(
            e.body["error"]
                .as_str()
                .unwrap()
                .contains("missing field `unit_price_cents`"),
            "{:?}",
            e.body
        );
    }
}
