//! Confluent wire format: `0x00`, the writer schema id (4 bytes, big-endian), the Avro datum.
//!
//! [`Encoder`] registers every record of a [`RecordUnion`] under its TopicRecordNameStrategy
//! subject (`<topic>-<record full name>`) once, then encodes with apache-avro's serde path.
//! [`Decoder`] learns each writer schema id once (from the registry) and keeps a ready reader
//! per id: when the writer schema is the current one it deserializes straight into the Rust
//! type; when it is an older or newer version it resolves to the current schema first.
//! Nothing is parsed or resolved per record.

use std::collections::HashMap;
use std::marker::PhantomData;

use apache_avro::{Schema, reader::datum::GenericDatumReader, writer::datum::GenericDatumWriter};

use crate::record::{RecordUnion, full_name};
use crate::registry::{Registry, RegistryError};

/// Magic byte of the Confluent wire format.
pub const MAGIC: u8 = 0;

/// TopicRecordNameStrategy subject of `record` on `topic`.
pub fn subject(topic: &str, record: &str) -> String {
    format!("{topic}-{record}")
}

/// Splits a Confluent-framed payload into schema id and datum.
pub fn split_frame(payload: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    match payload {
        [MAGIC, a, b, c, d, datum @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        [] => Err(DecodeError::Malformed("empty payload".into())),
        [m, ..] if *m != MAGIC => Err(DecodeError::Malformed(format!(
            "magic byte is 0x{m:02x}, expected 0x00 (not Confluent wire format)"
        ))),
        _ => Err(DecodeError::Malformed(format!(
            "{} bytes is shorter than the 5-byte header",
            payload.len()
        ))),
    }
}

/// Why a payload could not be turned into a record.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DecodeError {
    /// Not Confluent-framed. Poison: dead-letter it.
    #[error("malformed record: {0}")]
    Malformed(String),
    /// The registry does not know the schema id. Poison: dead-letter it.
    #[error("unknown schema id {0}: the registry does not have it")]
    UnknownSchema(u32),
    /// The schema is known but is not one of the record types of this topic. Poison.
    #[error("schema id {id} is {name}, which does not belong on this topic")]
    UnexpectedRecord { id: u32, name: String },
    /// The datum does not match its writer schema. Poison.
    #[error("invalid Avro datum for {name} (schema id {id}): {reason}")]
    InvalidDatum {
        id: u32,
        name: String,
        reason: String,
    },
    /// The writer schema cannot be resolved to the current reader schema. Poison.
    #[error("{name} (schema id {id}) cannot be read with the current schema: {reason}")]
    Incompatible {
        id: u32,
        name: String,
        reason: String,
    },
    /// The id has not been learned yet; call [`Decoder::learn`]. Internal to the decoder.
    #[error("schema id {0} is not cached")]
    NotCached(u32),
    /// The registry could not be asked. Transient: retry with backoff, do not dead-letter.
    #[error(transparent)]
    Registry(RegistryError),
}

impl DecodeError {
    /// True when retrying later may succeed (the registry was unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(self, DecodeError::Registry(_) | DecodeError::NotCached(_))
    }

    /// Short machine-readable kind, used as the `dlq.error.kind` header.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Malformed(_) => "malformed",
            DecodeError::UnknownSchema(_) => "unknown-schema",
            DecodeError::UnexpectedRecord { .. } => "unexpected-record",
            DecodeError::InvalidDatum { .. } => "invalid-datum",
            DecodeError::Incompatible { .. } => "incompatible-schema",
            DecodeError::NotCached(_) | DecodeError::Registry(_) => "registry-unavailable",
        }
    }
}

/// Why a record could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("cannot encode {name}: {source}")]
    Avro {
        name: &'static str,
        #[source]
        source: apache_avro::Error,
    },
    /// A programming error: the record does not travel on the encoder's topic.
    #[error("{name} is not registered for this topic: it does not travel there")]
    NotRegistered { name: &'static str },
}

/// Encodes the records of `T` for one topic, with their registered schema ids.
pub struct Encoder<T> {
    /// Schema id per variant; `None` for variants not registered for this topic.
    ids: Vec<Option<u32>>,
    writers: Vec<GenericDatumWriter<'static>>,
    _records: PhantomData<fn(T)>,
}

impl<T: RecordUnion> Encoder<T> {
    /// Registers every record type of `T` under `<topic>-<full name>` and prepares writers.
    pub async fn register(registry: &Registry, topic: &str) -> Result<Self, RegistryError> {
        Self::register_where(registry, topic, |_| true).await
    }

    /// Registers the record types of `T` whose full name `keep` accepts (the ones that travel
    /// on `topic`); encoding any other is an error.
    pub async fn register_where(
        registry: &Registry,
        topic: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Self, RegistryError> {
        let mut ids = Vec::new();
        for (schema, name) in T::schemas().iter().zip(T::names()) {
            ids.push(if keep(name) {
                Some(registry.register(&subject(topic, name), schema).await?)
            } else {
                None
            });
        }
        Ok(Encoder {
            ids,
            writers: Self::writers().map_err(|e| RegistryError::InvalidSchema {
                id: 0,
                reason: e.to_string(),
            })?,
            _records: PhantomData,
        })
    }

    /// A writer per variant of `T`, in variant order.
    fn writers() -> Result<Vec<GenericDatumWriter<'static>>, apache_avro::Error> {
        T::schemas()
            .iter()
            .map(|schema| GenericDatumWriter::builder(schema).build())
            .collect()
    }

    /// An encoder that writes every record type of `T` with schema ids `first`, `first + 1`,
    /// … in variant order, without a registry (fuzzing, and tests of the wire format).
    pub fn with_ids_from(first: u32) -> Self {
        let ids = (0..T::schemas().len() as u32)
            .map(|i| Some(first + i))
            .collect();
        Encoder {
            ids,
            writers: Self::writers().expect("bundled schemas make writers"),
            _records: PhantomData,
        }
    }

    /// Writes `value` in Confluent wire format into `buf` (cleared first).
    pub fn encode_into(&self, value: &T, buf: &mut Vec<u8>) -> Result<(), EncodeError> {
        let i = value.variant();
        let Some(id) = self.ids[i] else {
            return Err(EncodeError::NotRegistered {
                name: value.record_name(),
            });
        };
        buf.clear();
        buf.push(MAGIC);
        buf.extend_from_slice(&id.to_be_bytes());
        value
            .write(&self.writers[i], buf)
            .map(|_| ())
            .map_err(|source| EncodeError::Avro {
                name: value.record_name(),
                source,
            })
    }

    /// Encodes `value` in Confluent wire format.
    pub fn encode(&self, value: &T) -> Result<Vec<u8>, EncodeError> {
        let mut buf = Vec::with_capacity(128);
        self.encode_into(value, &mut buf)?;
        Ok(buf)
    }

    /// Registered schema id of `value`'s record type.
    pub fn schema_id(&self, value: &T) -> Option<u32> {
        self.ids[value.variant()]
    }
}

enum Known {
    /// `resolve` is false when the writer schema equals ours: straight serde deserialization.
    Record {
        index: usize,
        name: String,
        reader: GenericDatumReader<'static>,
        resolve: bool,
        /// A known old version with a semantic change: read with the writer schema, upcast,
        /// then resolve to `current`.
        upcast: Option<(&'static crate::upcast::Upcaster, &'static Schema)>,
    },
    Unexpected(String),
    /// The registry answered 404, at this time.
    Unknown(std::time::Instant),
}

/// How long a schema id the registry did not have is taken as unknown before it is asked
/// again (it may be registered since: before, a 404 was remembered for the life of the
/// process).
pub const UNKNOWN_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// Unknown ids remembered at most: a producer writing random schema ids grew the cache
/// without bound; past this, the unknown ones are forgotten (and asked again if they come).
pub const MAX_UNKNOWN: usize = 1_024;

/// The most apache-avro may allocate for one string, bytes or collection it decodes (its
/// default is 512 MiB). A datum states its lengths before its contents, and apache-avro
/// allocates what a length says before it reads: fuzzing found a 20-byte record whose
/// first string claimed 128 MiB, and each such record cost that much memory and zeroing.
/// No field of a record we accept comes near this (`processors::limits`; the broker's
/// default record limit is 1 MB), so a length past it is refused as malformed.
pub const MAX_ALLOCATION_BYTES: usize = 8 << 20;

/// Sets [`MAX_ALLOCATION_BYTES`] for the process, before anything is decoded (apache-avro
/// keeps the first value it is given).
fn limit_allocations() {
    apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
}

/// Decodes Confluent-framed payloads of any registered version into `T`.
pub struct Decoder<T> {
    registry: Registry,
    known: HashMap<u32, Known>,
    _records: PhantomData<fn() -> T>,
}

impl<T: RecordUnion> Decoder<T> {
    /// A decoder that learns writer schemas from `registry`.
    pub fn new(registry: Registry) -> Self {
        limit_allocations();
        Decoder {
            registry,
            known: HashMap::new(),
            _records: PhantomData,
        }
    }

    /// Decodes with what is already learned; [`DecodeError::NotCached`] if the id is new.
    pub fn decode(&self, payload: &[u8]) -> Result<T, DecodeError> {
        let (id, mut datum) = split_frame(payload)?;
        match self.known.get(&id) {
            None => Err(DecodeError::NotCached(id)),
            Some(Known::Unknown(at)) if at.elapsed() >= UNKNOWN_TTL => {
                Err(DecodeError::NotCached(id))
            }
            Some(Known::Unknown(_)) => Err(DecodeError::UnknownSchema(id)),
            Some(Known::Unexpected(name)) => Err(DecodeError::UnexpectedRecord {
                id,
                name: name.clone(),
            }),
            Some(Known::Record {
                index,
                name,
                reader,
                resolve,
                upcast,
            }) => {
                let invalid = |e: apache_avro::Error| DecodeError::InvalidDatum {
                    id,
                    name: name.clone(),
                    reason: e.to_string(),
                };
                let value = if let Some((upcaster, current)) = upcast {
                    let old = reader.read_value(&mut datum).map_err(invalid)?;
                    let new =
                        (upcaster.upcast)(old).map_err(|reason| DecodeError::InvalidDatum {
                            id,
                            name: name.clone(),
                            reason: format!(
                                "upcasting from version {}: {reason}",
                                upcaster.from_version
                            ),
                        })?;
                    T::from_resolved(*index, new.resolve(current).map_err(invalid)?)
                        .map_err(invalid)?
                } else if *resolve {
                    let value = reader.read_value(&mut datum).map_err(invalid)?;
                    T::from_resolved(*index, value).map_err(invalid)?
                } else {
                    T::read(*index, reader, &mut datum).map_err(invalid)?
                };
                if !datum.is_empty() {
                    return Err(DecodeError::InvalidDatum {
                        id,
                        name: name.clone(),
                        reason: format!("{} trailing bytes after the datum", datum.len()),
                    });
                }
                Ok(value)
            }
        }
    }

    /// Whether schema `id` has been learned (as a record, an unexpected one or unknown, for
    /// less than [`UNKNOWN_TTL`]).
    pub fn is_learned(&self, id: u32) -> bool {
        match self.known.get(&id) {
            Some(Known::Unknown(at)) => at.elapsed() < UNKNOWN_TTL,
            other => other.is_some(),
        }
    }

    /// Schema ids remembered (learned or unknown).
    pub fn remembered(&self) -> usize {
        self.known.len()
    }

    /// Schema ids learned so far whose writer schema differs from ours (read by resolution,
    /// the slower path); for diagnostics.
    pub fn resolving_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .known
            .iter()
            .filter_map(|(id, k)| matches!(k, Known::Record { resolve: true, .. }).then_some(*id))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Decodes, first learning the schema id from the registry if it is new.
    pub async fn decode_learning(&mut self, payload: &[u8]) -> Result<T, DecodeError> {
        match self.decode(payload) {
            Err(DecodeError::NotCached(id)) => {
                self.learn(id).await?;
                self.decode(payload)
            }
            other => other,
        }
    }

    /// Fetches schema `id` and prepares its reader; unknown ids are remembered as unknown.
    pub async fn learn(&mut self, id: u32) -> Result<(), DecodeError> {
        let known = match self.registry.schema(id).await {
            Ok(writer) => self.prepare(id, writer)?,
            Err(RegistryError::NotFound { .. }) => {
                // Counted when one more comes (after a registry round trip anyway).
                let is_unknown = |k: &Known| matches!(k, Known::Unknown(_));
                if self.known.values().filter(|k| is_unknown(k)).count() >= MAX_UNKNOWN {
                    self.known.retain(|_, k| !is_unknown(k));
                }
                Known::Unknown(std::time::Instant::now())
            }
            Err(e) => return Err(DecodeError::Registry(e)),
        };
        self.known.insert(id, known);
        Ok(())
    }

    /// Learns writer schema `writer` as id `id` without asking the registry (fuzzing, and
    /// tests of old writer versions).
    pub fn learn_schema(&mut self, id: u32, writer: Schema) -> Result<(), DecodeError> {
        let known = self.prepare(id, writer)?;
        self.known.insert(id, known);
        Ok(())
    }

    fn prepare(&self, id: u32, writer: Schema) -> Result<Known, DecodeError> {
        let name = full_name(&writer).unwrap_or_else(|| "<unnamed>".into());
        let Some(index) = T::names().iter().position(|n| *n == name) else {
            return Ok(Known::Unexpected(name));
        };
        let ours = &T::schemas()[index];
        // Schema equality ignores docs and defaults, which do not change how a datum is read.
        let resolve = writer != *ours;
        // Writer schemas are few (one per registered version) and live as long as the process:
        // leaking them lets the cached reader borrow them without self-reference.
        let writer: &'static Schema = Box::leak(Box::new(writer));
        let incompatible = |e: apache_avro::Error| DecodeError::Incompatible {
            id,
            name: name.clone(),
            reason: e.to_string(),
        };
        if let Some(upcaster) = crate::upcast::find(&name, writer) {
            let reader = GenericDatumReader::builder(writer)
                .build()
                .map_err(incompatible)?;
            return Ok(Known::Record {
                index,
                name,
                reader,
                resolve: true,
                upcast: Some((upcaster, ours)),
            });
        }
        let reader = if resolve {
            apache_avro::schema_compatibility::SchemaCompatibility::can_read(writer, ours)
                .map_err(|e| DecodeError::Incompatible {
                    id,
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
            GenericDatumReader::builder(writer)
                .reader_schema(ours)
                .build()
                .map_err(incompatible)?
        } else {
            GenericDatumReader::builder(writer)
                .build()
                .map_err(incompatible)?
        };
        Ok(Known::Record {
            index,
            name,
            reader,
            resolve,
            upcast: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_registry_is_transient_not_poison() {
        // Bind and drop a listener: nothing answers on that port.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut decoder = Decoder::<crate::inventory::InventoryCommand>::new(Registry::new(
            &format!("http://127.0.0.1:{port}"),
        ));
        let e = decoder
            .decode_learning(&[0, 0, 0, 0, 1, 2])
            .await
            .unwrap_err();
        assert!(
            matches!(e, DecodeError::Registry(RegistryError::Unavailable { .. })),
            "{e:?}"
        );
        assert!(e.is_transient());
        assert_eq!(e.kind(), "registry-unavailable");
        // Nothing was remembered: once the registry is back, the id is looked up again.
        assert!(matches!(
            decoder.decode(&[0, 0, 0, 0, 1, 2]),
            Err(DecodeError::NotCached(1))
        ));
    }

    /// Found by `fuzz/` (decode_commands): a record whose first string claims 300 MiB was
    /// read by allocating (and zeroing) 300 MiB first.
    #[test]
    fn a_length_past_the_limit_is_malformed_not_allocated() {
        use crate::inventory::InventoryCommand;
        let mut decoder = Decoder::<InventoryCommand>::new(Registry::new("http://127.0.0.1:9"));
        decoder
            .learn_schema(1, InventoryCommand::schemas()[0].clone())
            .unwrap();
        // Zig-zag varint of 300 MiB: the length of metadata.event_id, and nothing after it.
        let mut payload = vec![0, 0, 0, 0, 1];
        let mut n = (300u64 << 20) << 1;
        while n >= 0x80 {
            payload.push((n as u8) | 0x80);
            n >>= 7;
        }
        payload.push(n as u8);
        let e = decoder.decode(&payload).unwrap_err();
        assert!(
            e.to_string().contains("Unable to allocate 314572800 bytes"),
            "{e}"
        );
        assert!(!e.is_transient());
    }

    #[test]
    fn frames_are_checked_before_any_lookup() {
        assert!(matches!(split_frame(&[]), Err(DecodeError::Malformed(_))));
        assert!(
            matches!(split_frame(b"{\"json\":1}"), Err(DecodeError::Malformed(m)) if m.contains("0x7b"))
        );
        assert!(
            matches!(split_frame(&[0, 0, 1]), Err(DecodeError::Malformed(m)) if m.contains("shorter"))
        );
        assert_eq!(
            split_frame(&[0, 0, 0, 1, 2, 42]).unwrap(),
            (258, &[42u8][..])
        );
    }
}
