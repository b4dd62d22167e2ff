//! Schema registry access over the Confluent REST API.
//!
//! [`Registry`] is the client (schema_registry_converter underneath) used against Confluent,
//! Apicurio (`/apis/ccompat/v7`), Karapace or Redpanda, and against [`embedded`], the
//! in-process registry of the zero-install mode. Both modes therefore share one code path.

pub mod embedded;

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_all_versions, get_schema_by_id, get_schema_by_subject_and_version,
    is_compatible_schema, post_schema,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

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
    /// Parses a Confluent level name (`BACKWARD_TRANSITIVE`, …).
    pub fn parse(s: &str) -> Option<Self> {
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

    /// The Confluent level name.
    pub fn name(self) -> &'static str {
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
    http: reqwest::Client,
}

/// What the registry says of a schema for a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The subject's compatibility level.
    pub level: Compatibility,
    /// Versions registered so far.
    pub versions: usize,
    /// `None` if the schema may be registered; else why not.
    pub refusal: Option<String>,
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
            // A request that never ends would hold a processing loop (and its transaction)
            // for good: bounded, it fails as `Unavailable` and is retried with backoff.
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(5))
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .expect("a TLS-less HTTP client builds"),
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

    /// Every registered version of `subject`, oldest first (none if it does not exist).
    pub async fn versions(&self, subject: &str) -> Result<Vec<Schema>, RegistryError> {
        let numbers = match get_all_versions(&self.settings, subject.to_owned()).await {
            Ok(v) => v,
            Err(e) => match self.classify(subject.to_owned(), e) {
                RegistryError::NotFound { .. } => return Ok(Vec::new()),
                other => return Err(other),
            },
        };
        let mut schemas = Vec::new();
        for n in numbers {
            let registered = get_schema_by_subject_and_version(&self.settings, subject, Some(n))
                .await
                .map_err(|e| self.classify(format!("{subject} version {n}"), e))?;
            schemas.push(Schema::parse_str(&registered.schema).map_err(|e| {
                RegistryError::InvalidSchema {
                    id: registered.id,
                    reason: e.to_string(),
                }
            })?);
        }
        Ok(schemas)
    }

    async fn get_json(&self, path: &str) -> Result<Option<serde_json::Value>, RegistryError> {
        let unavailable = |reason: String| RegistryError::Unavailable {
            url: self.url.clone(),
            reason,
        };
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(unavailable(format!(
                "GET {path}: status {}",
                response.status()
            )));
        }
        response
            .json()
            .await
            .map(Some)
            .map_err(|e| unavailable(e.to_string()))
    }

    /// The compatibility level that applies to `subject` (its own, else the global one).
    pub async fn level(&self, subject: &str) -> Result<Compatibility, RegistryError> {
        let level_of = |v: Option<serde_json::Value>| {
            v.and_then(|v| {
                v.get("compatibilityLevel")
                    .or_else(|| v.get("compatibility"))
                    .and_then(|l| l.as_str())
                    .and_then(Compatibility::parse)
            })
        };
        // Without defaultToGlobal, Apicurio answers NONE for a subject with no rule of its own.
        let path = format!("/config/{subject}?defaultToGlobal=true");
        if let Some(level) = level_of(self.get_json(&path).await?) {
            return Ok(level);
        }
        // Confluent's default when nothing is configured is BACKWARD.
        Ok(level_of(self.get_json("/config").await?).unwrap_or(Compatibility::Backward))
    }

    /// Sets the compatibility level of `subject` (or the global one with `None`).
    pub async fn set_level(
        &self,
        subject: Option<&str>,
        level: Compatibility,
    ) -> Result<(), RegistryError> {
        let path = subject.map_or("/config".to_owned(), |s| format!("/config/{s}"));
        let response = self
            .http
            .put(format!("{}{path}", self.url))
            .json(&serde_json::json!({ "compatibility": level.name() }))
            .send()
            .await
            .map_err(|e| RegistryError::Unavailable {
                url: self.url.clone(),
                reason: e.to_string(),
            })?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(RegistryError::Rejected {
                subject: path,
                reason: format!("status {}", response.status()),
            })
        }
    }

    /// Whether `schema` may be registered under `subject`: the registry decides (it knows the
    /// subject's level); the reason for a refusal is worked out here with the same rules, so
    /// it names the version that breaks and the field.
    pub async fn check(&self, subject: &str, schema: &Schema) -> Result<Verdict, RegistryError> {
        let level = self.level(subject).await?;
        let versions = self.versions(subject).await?;
        let compatible = self.is_compatible(subject, schema).await?;
        let local = level.check(&versions.iter().collect::<Vec<_>>(), schema);
        let refusal = match (compatible, local) {
            (true, _) => None,
            (false, Err(reason)) => Some(reason),
            (false, Ok(())) => Some(format!(
                "the registry refuses it under {} (no field-level reason available)",
                level.name()
            )),
        };
        Ok(Verdict {
            level,
            versions: versions.len(),
            refusal,
        })
    }
}
