//! The runtime's errors: what kind of fault an error is (its [`Domain`]) and what the loop
//! does about it ([`Retry`]), in the spirit of Arroyo's `arroyo-rpc` errors.
//!
//! | domain | examples | what the loop does |
//! |---|---|---|
//! | bad input | an undecodable record, a wrong key, an invalid command | dead-letters the record with the reason in its headers, goes on (record by record, inside the unit of work: a `BadInput` error that escapes it stops the loop, since a retry would meet it again) |
//! | external | the broker or the registry unavailable, a timeout, a transaction the coordinator aborted | aborts the unit of work, rewinds to the committed state, backs off, retries |
//! | broken client | librdkafka's fatal state (e.g. a consumer's `FencedInstanceId` after a broker pause), a transaction neither committed nor aborted | drops its clients and state, backs off, starts again with new ones (what a restart of the process would do); the third fence or breakage within five minutes stops it: another live process runs as this instance |
//! | fenced | the producer fenced (`ProducerFenced`): another incarnation initialized this transactional id, or the coordinator bumped its epoch after a timeout | the same (Kafka cannot tell the two apart) |
//! | internal | a bug or a wrong deployment (a processor publishing a topic its service does not own) | stops loudly |
//!
//! Lower layers return `anyhow::Error`s; [`domain`] classifies them, so a new fault is
//! external (retried) unless it is known to be something else.

use crate::kafka;

/// What kind of fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// The record is wrong, not the system.
    BadInput,
    /// Something outside the process failed; it may work again.
    External,
    /// The Kafka client cannot go on (librdkafka's fatal state, an abort refused): new
    /// clients can.
    Broken,
    /// Another instance owns this work now.
    Fenced,
    /// This process is wrong.
    Internal,
}

/// What the loop does about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Send the record to the dead-letter topic and go on.
    DeadLetter,
    /// Abort, rewind, wait and try the unit of work again.
    WithBackoff,
    /// Drop the clients and the in-memory state, wait, and start the loop again with new
    /// clients.
    Rebuild,
    /// End the loop with the error.
    Stop,
}

impl Domain {
    pub fn retry(self) -> Retry {
        match self {
            Domain::BadInput => Retry::DeadLetter,
            Domain::External => Retry::WithBackoff,
            Domain::Broken => Retry::Rebuild,
            Domain::Fenced | Domain::Internal => Retry::Stop,
        }
    }
}

/// A record the runtime cannot act on: it goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct BadInput {
    /// Its `dlq-error-kind` header (`wrong-key`, `unexpected-record`, `invalid-command`, …).
    pub kind: &'static str,
    /// Its `dlq-reason` header: what was wrong, naming the field or record.
    pub reason: String,
}

/// A fault of this process (a bug, a wrong deployment): retrying cannot fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Internal(pub String);

/// A Kafka client in a state it cannot leave: librdkafka's fatal error, or a transaction it
/// could neither commit nor abort.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Broken(pub String);

/// A unit of work given up before its transaction began (its schemas could not be learned):
/// nothing was applied or sent, so the state in memory is still that of the committed
/// offsets; only the consumer goes back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("batch given up before it began")]
pub struct NotBegun;

/// An input record whose outputs (an event, a reply, or the changelog record of the state it
/// leads to) would be larger than a record may be: the batch is given up and tried again
/// with the record dead-lettered instead of applied. Before, the producer refused the output
/// and the batch failed for every partition, again and again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{topic}/{partition}@{offset}: {reason}")]
pub struct Poison {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
}

/// A transactional call given up after it never returned (librdkafka #5456): the producer
/// is [`Broken`], but this is no sign of another process running as this instance, so the
/// supervisor does not count it as a fence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("transactional call given up")]
pub struct GaveUp;

/// An output over the record size limit, caught before it is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a record of {bytes} bytes for {topic} is over the limit of {limit} (librdkafka's message.max.bytes)"
)]
pub struct TooLarge {
    pub topic: String,
    pub bytes: usize,
    pub limit: usize,
}

/// Whether `e` carries a `T`, as its cause or as the context of any layer.
pub fn carries<T: std::fmt::Display + std::fmt::Debug + Send + Sync + 'static>(
    e: &anyhow::Error,
) -> bool {
    e.downcast_ref::<T>().is_some()
}

/// How long to wait before trying again after `failures` failures in a row: 0.5 s,
/// doubling, at most 30 s (the batch loop and the view supervisor share it).
pub fn backoff(failures: u32) -> std::time::Duration {
    (std::time::Duration::from_millis(500) * 2u32.pow(failures.min(6)))
        .min(std::time::Duration::from_secs(30))
}

/// The domain of an error a unit of work ended with.
pub fn domain(e: &anyhow::Error) -> Domain {
    if carries::<Broken>(e) {
        Domain::Broken
    } else if kafka::is_fenced(e) {
        Domain::Fenced
    } else if e.chain().any(|c| c.is::<Internal>()) {
        Domain::Internal
    } else if e.chain().any(|c| c.is::<BadInput>()) {
        Domain::BadInput
    } else {
        Domain::External
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn errors_are_classified_by_what_they_carry_and_unknown_ones_are_retried() {
        let internal = anyhow::Error::new(Internal("publishes a topic it does not own".into()))
            .context("handling a batch");
        assert_eq!(domain(&internal), Domain::Internal);
        assert_eq!(domain(&internal).retry(), Retry::Stop);
        let bad = anyhow::Error::new(BadInput {
            kind: "wrong-key",
            reason: "key differs".into(),
        });
        assert_eq!(domain(&bad).retry(), Retry::DeadLetter);
        let outage: anyhow::Result<()> = Err(std::io::Error::other("connection refused").into());
        let outage = outage.context("registry").unwrap_err();
        assert_eq!(domain(&outage), Domain::External);
        assert_eq!(domain(&outage).retry(), Retry::WithBackoff);
        let fenced = anyhow::Error::new(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::Fenced,
        ))
        .context("committing");
        assert_eq!(domain(&fenced), Domain::Fenced);
        let broken = anyhow::Error::new(Broken("FencedInstanceId".into())).context("polling");
        assert_eq!(domain(&broken).retry(), Retry::Rebuild);
        // As the context of a lower error, under more context (how `Output` reports it).
        let refused: anyhow::Result<()> = Err(std::io::Error::other("abort refused").into());
        let refused = refused
            .context(Broken("the transaction could not be aborted".into()))
            .context("aborting")
            .unwrap_err();
        assert_eq!(domain(&refused), Domain::Broken);
        // A transactional call given up: new clients, but not counted as a fence.
        let stuck = anyhow::Error::new(Broken("did not return".into())).context(GaveUp);
        assert_eq!(domain(&stuck), Domain::Broken);
        assert!(carries::<GaveUp>(&stuck) && !carries::<GaveUp>(&refused));
        let given_up = anyhow::Error::new(std::io::Error::other("registry")).context(NotBegun);
        assert!(carries::<NotBegun>(&given_up));
        assert_eq!(domain(&given_up), Domain::External);
    }
}
