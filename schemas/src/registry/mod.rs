//! Schema registry access over the Confluent REST API.
//!
//! [`Registry`] is the client (schema_registry_converter underneath) used against Confluent,
//! Apicurio (`/apis/ccompat/v7`), Karapace or Redpanda, and against [`embedded`], the
//! in-process registry of the zero-install mode. Both modes therefore share one code path.

pub mod embedded;

use apache_avro::Schema;
use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_schema_by_id, is_compatible_schema, post_schema,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

/// What went wrong talking to the registry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered that the schema or subject does not exist.
    #[error("{what} not found in the schema registry")]
    NotFound { what: String },
    /// The registry refused a schema (incompatible or invalid); not retryable.
    #[error("the schema registry refused {subject}: {reason}")]
    Rejected { subject: String, reason: String },
    /// A schema from the registry could not be parsed.
    #[error("schema id {id} from the registry is not valid Avro: {reason}")]
    InvalidSchema { id: u32, reason: String },
    /// The registry could not be reached or failed; retry with backoff.
    #[error("schema registry at {url} unavailable: {reason}")]
    Unavailable { url: String, reason: String },
}

/// A Confluent-compatible schema registry client.
#[derive(Clone)]
pub struct Registry {
    settings: SrSettings,
    url: String,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("url", &self.url).finish()
    }
}

impl Registry {
    /// A client for the registry at `url` (e.g. `http://127.0.0.1:8081` or
    /// `http://127.0.0.1:8080/apis/ccompat/v7`).
    pub fn new(url: &str) -> Self {
        let url = url.trim_end_matches('/').to_owned();
        Registry {
            settings: SrSettings::new(url.clone()),
            url,
        }
    }

    /// Base URL of the registry.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn classify(&self, what: String, e: SRCError) -> RegistryError {
        let text = format!("{} {}", e.error, e.cause.clone().unwrap_or_default());
        if text.contains("status 404") {
            RegistryError::NotFound { what }
        } else if text.contains("status 409") || text.contains("status 422") {
            RegistryError::Rejected {
                subject: what,
                reason: text,
            }
        } else {
            RegistryError::Unavailable {
                url: self.url.clone(),
                reason: text,
            }
        }
    }

    /// Registers `schema` under `subject` (idempotent) and returns its global id.
    pub async fn register(&self, subject: &str, schema: &Schema) -> Result<u32, RegistryError> {
        let text = serde_json::to_string(schema).expect("a parsed schema serializes");
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, text);
        post_schema(&self.settings, subject.to_owned(), supplied)
            .await
            .map(|r| r.id)
            .map_err(|e| self.classify(subject.to_owned(), e))
    }

    /// The writer schema with global id `id`.
    pub async fn schema(&self, id: u32) -> Result<Schema, RegistryError> {
        let registered = get_schema_by_id(id, &self.settings)
            .await
            .map_err(|e| self.classify(format!("schema id {id}"), e))?;
        Schema::parse_str(&registered.schema).map_err(|e| RegistryError::InvalidSchema {
            id,
            reason: e.to_string(),
        })
    }

    /// Whether `schema` may be registered under `subject` under the subject's compatibility
    /// level. A subject that does not exist yet accepts anything.
    pub async fn is_compatible(
        &self,
        subject: &str,
        schema: &Schema,
    ) -> Result<bool, RegistryError> {
        let text = serde_json::to_string(schema).expect("a parsed schema serializes");
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, text);
        match is_compatible_schema(&self.settings, subject.to_owned(), supplied).await {
            Ok(ok) => Ok(ok),
            Err(e) => match self.classify(subject.to_owned(), e) {
                RegistryError::NotFound { .. } => Ok(true),
                other => Err(other),
            },
        }
    }
}
