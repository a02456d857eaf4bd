//! A durable reader of the whole log, for forwarders (SIEM streaming): a
//! named JetStream pull consumer that remembers, on the server, the last
//! event its reader acknowledged. A reader that stops (crashes, restarts,
//! moves host) resumes after the last acknowledged event; events delivered
//! but not acknowledged are delivered again (at least once, in order).
//!
//! Acknowledgement is cumulative ("all up to this one"), so a reader
//! acknowledges a batch once, after its sink took the whole of it.

use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;

use crate::{Error, EventLog, StoredEvent};

/// How long an unacknowledged batch stays with its reader before the server
/// delivers it again (a reader still working on it says so in time).
pub const ACK_WAIT: Duration = Duration::from_secs(60);

/// One delivered event, or a stored message that is not an event (reported,
/// and acknowledged with the rest so the reader goes on).
#[derive(Debug)]
pub struct Delivered {
    pub sequence: u64,
    pub event: Result<StoredEvent, Error>,
    message: Message,
}

/// A named, durable position in the log.
#[derive(Debug)]
pub struct Durable {
    consumer: consumer::Consumer<pull::Config>,
    name: String,
}

impl EventLog {
    /// The durable reader `name`, created to start at `from` (1: the
    /// beginning) if it does not exist yet; an existing one resumes where
    /// it was, whatever `from` says.
    pub async fn durable(&self, name: &str, from: u64) -> Result<Durable, Error> {
        let stream = self.stream().await?;
        let deliver_policy = if from <= 1 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence { start_sequence: from }
        };
        let config = pull::Config {
            durable_name: Some(name.to_owned()),
            description: Some("airlock-control forward: a SIEM forwarder's position".into()),
            deliver_policy,
            ack_policy: AckPolicy::All,
            ack_wait: ACK_WAIT,
            // Redelivered until taken: a record is never dropped here.
            max_deliver: -1,
            max_ack_pending: 20_000,
            ..Default::default()
        };
        let consumer = stream
            .get_or_create_consumer(name, config)
            .await
            .map_err(|e| Error::Read(format!("the durable reader {name:?}: {e}")))?;
        Ok(Durable {
            consumer,
            name: name.to_owned(),
        })
    }
}

impl Durable {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stream sequence up to which every event is acknowledged (0:
    /// none yet). A reader resumes after it; what it is given below it
    /// again is a redelivery.
    pub async fn ack_floor(&mut self) -> Result<u64, Error> {
        let info = self
            .consumer
            .info()
            .await
            .map_err(|e| Error::Read(format!("the durable reader {:?}: {e}", self.name)))?;
        Ok(info.ack_floor.stream_sequence)
    }

    /// Up to `max` events, waiting at most `wait` for the first; fewer (or
    /// none) when the log has no more now. A fetch that breaks off returns
    /// what it had received (the reader fills gaps by sequence).
    pub async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivered>, Error> {
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(max)
            .expires(wait)
            .messages()
            .await
            .map_err(|e| Error::Read(format!("fetching from {:?}: {e}", self.name)))?;
        let mut out = Vec::new();
        while let Some(m) = batch.next().await {
            let m = match m {
                Ok(m) => m,
                Err(e) if !out.is_empty() => {
                    tracing::warn!(reader = %self.name, error = %e, "a fetch broke off; keeping what came");
                    break;
                }
                Err(e) => return Err(Error::Read(format!("fetching from {:?}: {e}", self.name))),
            };
            let info = m
                .info()
                .map_err(|e| Error::Read(format!("message metadata: {e}")))?;
            let (sequence, published) = (info.stream_sequence, info.published);
            let event = StoredEvent::decode(sequence, m.subject.as_str(), published, m.payload.clone());
            out.push(Delivered {
                sequence,
                event,
                message: m,
            });
        }
        Ok(out)
    }
}

impl Delivered {
    /// Acknowledges this event and every one delivered before it.
    pub async fn ack(&self) -> Result<(), Error> {
        self.message
            .double_ack()
            .await
            .map_err(|e| Error::Read(format!("acknowledging #{}: {e}", self.sequence)))
    }

    /// Tells the server the reader is still working on it (the ack wait
    /// starts again), while a sink is retried.
    pub async fn working(&self) -> Result<(), Error> {
        self.message
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| Error::Read(format!("extending #{}: {e}", self.sequence)))
    }
}
