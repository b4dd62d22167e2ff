//! Decoding records off Kafka, the same way in every processor.

use std::time::Duration;

use schemas::codec::{DecodeError, Decoder};
use schemas::record::RecordUnion;
use tokio::runtime::Handle;
use tracing::warn;

use crate::Stop;

/// Decodes a payload, waiting out registry outages (an external error, retried with backoff)
/// rather than dead-lettering records that are fine. Gives up with the transient error only
/// when asked to stop; every other error is the record's fault (dead-letter it).
pub fn decode<T: RecordUnion>(
    rt: &Handle,
    decoder: &mut Decoder<T>,
    payload: &[u8],
    stop: &Stop,
) -> Result<T, DecodeError> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match decoder.decode(payload) {
            Err(DecodeError::NotCached(id)) => match rt.block_on(decoder.learn(id)) {
                Ok(()) => continue,
                Err(e) if e.is_transient() && stop.is_stopped() => return Err(e),
                Err(e) if e.is_transient() => {
                    warn!(error = %e, schema_id = id, "Registry unavailable; retrying.");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e),
            },
            other => return other,
        }
    }
}

/// Milliseconds since the Unix epoch (the runtime's clock; processors never read clocks).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
