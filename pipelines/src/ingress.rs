//! Topics that take records from outside over HTTP (`POST /commands/<service>/<Command>`,
//! `POST /events/<topic>`): how a JSON body becomes the topic's record, whatever the topic's
//! record union. The service registry says which topics take records this way and which field
//! names the aggregate ([`crate::registry::Ingress`]); the HTTP API opens one [`JsonTopic`]
//! per such topic and names no service itself.

use futures::future::BoxFuture;
use processors::Validate;
use schemas::codec::Encoder;
use schemas::record::RecordUnion;
use schemas::{Registry, RegistryError};
use serde_json::Value;

/// A body that does not make the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The path of the field that does not fit (`lines[0].quantity`; empty for the body as
    /// a whole); `None`: the record was made but cannot be encoded.
    pub field: Option<String>,
    pub message: String,
}

/// How one topic turns a JSON body into its record, encoded with the registered schema.
pub trait JsonTopic: Send + Sync {
    /// The records it takes, by short name (`ReceiveStock`).
    fn records(&self) -> &'static [&'static str];
    /// Record `record` from `body`, encoded; `Ok(None)`: the topic carries no such record.
    fn encode(&self, record: &str, body: Value) -> Result<Option<Vec<u8>>, FieldError>;
}

struct Typed<U: RecordUnion>(Encoder<U>);

impl<U: RecordUnion + Validate> JsonTopic for Typed<U> {
    fn records(&self) -> &'static [&'static str] {
        U::short_names()
    }

    fn encode(&self, record: &str, body: Value) -> Result<Option<Vec<u8>>, FieldError> {
        let Some(value) = parse::<U>(record, body)? else {
            return Ok(None);
        };
        // The rules' own first checks: an impossible quantity is refused here, with the
        // field, instead of being written and dead-lettered by the service.
        value.validate().map_err(|e| FieldError {
            field: None,
            message: e.to_string(),
        })?;
        self.0.encode(&value).map(Some).map_err(|e| FieldError {
            field: None,
            message: e.to_string(),
        })
    }
}

/// Record `record` of union `U` from `body`, naming the field that does not fit; `None`: the
/// union has no such record.
pub fn parse<U: RecordUnion>(record: &str, body: Value) -> Result<Option<U>, FieldError> {
    let mut track = serde_path_to_error::Track::new();
    let parsed = U::deserialize_named(
        record,
        serde_path_to_error::Deserializer::new(body, &mut track),
    );
    match parsed {
        None => Ok(None),
        Some(Ok(value)) => Ok(Some(value)),
        Some(Err(e)) => Err(FieldError {
            field: Some(track.path().to_string()),
            message: e.to_string(),
        }),
    }
}

/// How a topic's [`JsonTopic`] is opened (see [`open`]).
pub type Open = for<'a> fn(
    &'a Registry,
    &'static str,
) -> BoxFuture<'a, Result<Box<dyn JsonTopic>, RegistryError>>;

/// Opens topic `topic` for records of union `U`: registers its schemas.
pub fn open<'a, U: RecordUnion + Validate>(
    registry: &'a Registry,
    topic: &'static str,
) -> BoxFuture<'a, Result<Box<dyn JsonTopic>, RegistryError>> {
    Box::pin(async move {
        let encoder = Encoder::<U>::register(registry, topic).await?;
        Ok(Box::new(Typed(encoder)) as Box<dyn JsonTopic>)
    })
}
