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

/// Learns every schema id of `payloads` the decoder does not know yet, waiting out a
/// registry outage for `patience` at most (each request bounded by what is left of it: the
/// registry client has no timeout of its own, and a registry that accepts connections but
/// never answers would hold it for good). A processor calls it before it begins a
/// transaction, so an outage never holds one open past `transaction.timeout.ms`; `Err` is
/// the transient error, and the caller gives the batch up untouched.
pub fn learn_all<'p, T: RecordUnion>(
    rt: &Handle,
    decoder: &mut Decoder<T>,
    payloads: impl IntoIterator<Item = &'p [u8]>,
    stop: &Stop,
    patience: Duration,
) -> Result<(), DecodeError> {
    let until = std::time::Instant::now() + patience;
    let mut backoff = Duration::from_millis(100);
    let mut refused = std::collections::HashSet::new();
    for payload in payloads {
        // Bad framing is the record's own fault: decoding dead-letters it later.
        let Ok((id, _)) = schemas::codec::split_frame(payload) else {
            continue;
        };
        while !decoder.is_learned(id) && !refused.contains(&id) {
            let left = until.saturating_duration_since(std::time::Instant::now());
            // Inside the runtime: a timer needs its reactor.
            let learned =
                rt.block_on(async { tokio::time::timeout(left, decoder.learn(id)).await });
            match learned {
                Ok(Ok(())) => {}
                Ok(Err(e)) if !e.is_transient() => {
                    // Decoding reports it record by record.
                    refused.insert(id);
                }
                Ok(Err(e)) if stop.is_stopped() || left.is_zero() => return Err(e),
                Err(_) => return Err(DecodeError::NotCached(id)),
                Ok(Err(e)) => {
                    warn!(error = %e, schema_id = id, "Registry unavailable; retrying.");
                    std::thread::sleep(backoff.min(left));
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
    Ok(())
}

/// Milliseconds since the Unix epoch (the runtime's clock; processors never read clocks).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::inventory::InventoryCommand;

    /// A registry that accepts connections and never answers (a frozen process) is given up
    /// on within the patience, before any transaction would begin; before the bound, the
    /// request waited for good.
    #[test]
    fn a_registry_that_never_answers_is_given_up_within_the_patience() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let mut decoder = Decoder::<InventoryCommand>::new(schemas::Registry::new(&url));
        let payload = [0u8, 0, 0, 0, 42, 1, 2, 3];
        let started = std::time::Instant::now();
        let learned = learn_all(
            rt.handle(),
            &mut decoder,
            [&payload[..]],
            &Stop::default(),
            Duration::from_millis(300),
        );
        assert!(learned.is_err_and(|e| e.is_transient()));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(!decoder.is_learned(42));
        drop(listener);
    }

    /// Framing errors are left to decoding (it dead-letters them): nothing to learn.
    #[test]
    fn payloads_without_a_schema_id_need_no_registry() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let mut decoder =
            Decoder::<InventoryCommand>::new(schemas::Registry::new("http://127.0.0.1:9"));
        let learned = learn_all(
            rt.handle(),
            &mut decoder,
            [&b"{}"[..], &[][..]],
            &Stop::default(),
            Duration::from_millis(300),
        );
        assert!(learned.is_ok());
    }
}
