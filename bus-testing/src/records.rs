//! What the harness records, untyped ([`Activity`]) and typed ([`Attempt`], [`Failed`]),
//! and the summary a timed-out wait reports ([`Seen`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bus_core::{header, Codecs, Envelope, Failure, FailureReason, Headers, Message};

/// One thing the harness saw its bus do, in the order it happened.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Activity {
    /// A message sent to an endpoint's queue (a command), once the transport accepted it.
    Sent {
        /// The endpoint it was sent to.
        endpoint: String,
        /// The message.
        envelope: Envelope,
    },
    /// An event published, once the transport accepted it.
    Published {
        /// The message.
        envelope: Envelope,
    },
    /// A failed message sent back to its endpoint's queue for a delayed retry.
    Retried {
        /// The endpoint that retries it.
        endpoint: String,
        /// After how long.
        delay: Option<Duration>,
        /// The message, with its retry headers.
        envelope: Envelope,
    },
    /// One handler attempt and how it ended.
    Attempted(AttemptRecord),
    /// An answer to a request, sent to its caller's reply address.
    Replied {
        /// The answer (or the failure it reports).
        envelope: Envelope,
    },
    /// A message moved to an endpoint's error queue, with the `bus-failure-*` headers.
    Failed {
        /// The endpoint whose error queue it went to.
        endpoint: String,
        /// The message as the error queue keeps it.
        envelope: Envelope,
    },
}

impl Activity {
    /// The message it is about.
    pub fn envelope(&self) -> &Envelope {
        match self {
            Activity::Sent { envelope, .. }
            | Activity::Published { envelope }
            | Activity::Retried { envelope, .. }
            | Activity::Replied { envelope }
            | Activity::Failed { envelope, .. } => envelope,
            Activity::Attempted(attempt) => &attempt.envelope,
        }
    }
}

impl fmt::Display for Activity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = &self.envelope().headers;
        let (kind, id) = (&h.message_type, &h.message_id);
        match self {
            Activity::Sent { endpoint, .. } => write!(f, "sent {kind} {id} to `{endpoint}`"),
            Activity::Published { .. } => write!(f, "published {kind} {id}"),
            Activity::Replied { .. } => write!(f, "answered with {kind} {id}"),
            Activity::Retried {
                endpoint, delay, ..
            } => match delay {
                Some(delay) => write!(f, "retry of {kind} {id} at `{endpoint}` in {delay:?}"),
                None => write!(f, "retry of {kind} {id} at `{endpoint}`"),
            },
            Activity::Attempted(a) => {
                write!(
                    f,
                    "attempt {} of {kind} {id} at `{}`: ",
                    a.attempt, a.endpoint
                )?;
                match &a.outcome {
                    Ok(()) => f.write_str("ok"),
                    Err(failure) => write!(f, "{failure}"),
                }
            }
            Activity::Failed { endpoint, .. } => {
                write!(f, "moved {kind} {id} to the error queue of `{endpoint}`")?;
                if let Some(details) = FailureDetails::from_headers(h) {
                    write!(f, ": {}: {}", details.reason, details.error)?;
                }
                Ok(())
            }
        }
    }
}

/// One handler attempt, untyped: see [`Attempt`] for the typed form.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AttemptRecord {
    /// The endpoint that made it.
    pub endpoint: String,
    /// Its number, from 1, counting immediate and delayed retries.
    pub attempt: u32,
    /// The message as it was delivered.
    pub envelope: Envelope,
    /// How it ended.
    pub outcome: Result<(), AttemptFailure>,
}

/// Why a handler attempt failed, as the pipeline reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AttemptFailure {
    /// Why it failed.
    pub reason: FailureReason,
    /// The Rust type of the error, or `panic` / `timeout`.
    pub error_type: String,
    /// The error's text.
    pub error: String,
    /// The handler or layer it came from, where known.
    pub handler: Option<String>,
    /// Whether retrying cannot help.
    pub unrecoverable: bool,
}

impl AttemptFailure {
    pub(crate) fn panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic with a non-string payload".to_string());
        AttemptFailure {
            reason: FailureReason::Panic,
            error_type: "panic".into(),
            error: text,
            handler: Some("a layer".into()),
            unrecoverable: false,
        }
    }
}

impl From<&Failure> for AttemptFailure {
    fn from(failure: &Failure) -> Self {
        AttemptFailure {
            reason: failure.reason(),
            error_type: failure.error_type().to_string(),
            error: failure.message().to_string(),
            handler: failure.handler().map(str::to_string),
            unrecoverable: failure.is_unrecoverable(),
        }
    }
}

impl fmt::Display for AttemptFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.error)
    }
}

/// One handler attempt at a message of type `M`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Attempt<M> {
    /// The message.
    pub message: M,
    /// The endpoint that made the attempt.
    pub endpoint: String,
    /// Its number, from 1.
    pub attempt: u32,
    /// How it ended.
    pub outcome: Result<(), AttemptFailure>,
    /// The message's headers as delivered.
    pub headers: Arc<Headers>,
}

/// What the `bus-failure-*` headers of a message in an error queue say.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailureDetails {
    /// The endpoint whose queue the message came from.
    pub endpoint: String,
    /// Why it failed, as the header says it (`handler-error`, `panic`, `delivery-limit`...);
    /// [`FailureDetails::failure_reason`] reads it as a [`FailureReason`].
    pub reason: String,
    /// The Rust type of the error, or the reason.
    pub error_type: String,
    /// The error's text.
    pub error: String,
    /// The handler or layer that failed, when one ran.
    pub handler: Option<String>,
    /// Handler attempts made (0 when the header is absent).
    pub attempts: u32,
    /// When it was moved (RFC 3339), when the header says.
    pub failed_at: Option<String>,
}

impl FailureDetails {
    /// The failure headers of `headers`; `None` when it has no `bus-failure-reason` (it is
    /// not from an error queue).
    ///
    /// ```
    /// use bus_core::{header, FailureReason, Headers};
    /// use bus_testing::FailureDetails;
    ///
    /// let mut headers = Headers::default();
    /// assert!(FailureDetails::from_headers(&headers).is_none());
    /// headers.custom.insert(header::FAILURE_REASON.into(), "timeout".into());
    /// headers.custom.insert(header::FAILURE_ATTEMPTS.into(), "3".into());
    /// let details = FailureDetails::from_headers(&headers).unwrap();
    /// assert_eq!(details.failure_reason(), Some(FailureReason::Timeout));
    /// assert_eq!(details.attempts, 3);
    /// ```
    pub fn from_headers(headers: &Headers) -> Option<Self> {
        let text = |name: &str| headers.get(name).map(str::to_string);
        Some(FailureDetails {
            reason: text(header::FAILURE_REASON)?,
            endpoint: text(header::FAILURE_ENDPOINT).unwrap_or_default(),
            error_type: text(header::FAILURE_ERROR_TYPE).unwrap_or_default(),
            error: text(header::FAILURE_ERROR).unwrap_or_default(),
            handler: text(header::FAILURE_HANDLER),
            attempts: headers
                .get(header::FAILURE_ATTEMPTS)
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            failed_at: text(header::FAILURE_TIME),
        })
    }

    /// The reason as a [`FailureReason`]; `None` for a reason this version does not know.
    pub fn failure_reason(&self) -> Option<FailureReason> {
        FailureReason::parse(&self.reason)
    }
}

/// A message of type `M` that was moved to an error queue.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Failed<M> {
    /// The message.
    pub message: M,
    /// Why, and where.
    pub failure: FailureDetails,
    /// All its headers, the original ones included.
    pub headers: Arc<Headers>,
}

impl<M: Message> Failed<M> {
    /// Read an error-queue envelope as an `M`; `None` when it is of another type, cannot be
    /// decoded, or carries no failure headers.
    pub fn from_envelope(codecs: &Codecs, envelope: &Envelope) -> Option<Self> {
        Some(Failed {
            message: decode_as::<M>(codecs, envelope)?,
            failure: FailureDetails::from_headers(&envelope.headers)?,
            headers: envelope.headers.clone(),
        })
    }
}

/// A message sent to a hosted endpoint and not yet handled or moved to its error queue.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingMessage {
    /// The endpoint that is to handle it.
    pub endpoint: String,
    /// Its wire name.
    pub message_type: String,
    /// Its id.
    pub message_id: String,
}

/// What the harness had seen when a wait gave up: the activity so far, the attempts still
/// running and the messages still to be handled. Its `Display` is the summary a timeout error
/// shows.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Seen {
    /// Everything, in order.
    pub activity: Vec<Activity>,
    /// Handler attempts running.
    pub in_flight: usize,
    /// Messages sent to hosted endpoints and not yet handled nor moved to an error queue.
    pub pending: Vec<PendingMessage>,
}

/// The most activity lines a summary shows; the oldest are left out.
const SHOWN: usize = 40;

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |pick: fn(&Activity) -> bool| self.activity.iter().filter(|a| pick(a)).count();
        let failed_attempts = self
            .activity
            .iter()
            .filter(|a| matches!(a, Activity::Attempted(r) if r.outcome.is_err()))
            .count();
        write!(
            f,
            "{} sent, {} published, {} attempts ({failed_attempts} failed), {} delayed retries, {} moved to an error queue; {} attempt(s) in flight, {} message(s) not handled yet",
            count(|a| matches!(a, Activity::Sent { .. })),
            count(|a| matches!(a, Activity::Published { .. })),
            count(|a| matches!(a, Activity::Attempted(_))),
            count(|a| matches!(a, Activity::Retried { .. })),
            count(|a| matches!(a, Activity::Failed { .. })),
            self.in_flight,
            self.pending.len(),
        )?;
        let skipped = self.activity.len().saturating_sub(SHOWN);
        if skipped > 0 {
            write!(f, "\n  ({skipped} earlier not shown)")?;
        }
        for activity in &self.activity[skipped..] {
            write!(f, "\n  {activity}")?;
        }
        for p in &self.pending {
            write!(
                f,
                "\n  not handled yet: {} {} at `{}`",
                p.message_type, p.message_id, p.endpoint
            )?;
        }
        Ok(())
    }
}

/// The message in `envelope` as an `M`: `None` when it is of another type or does not decode.
/// A typed in-process body is cloned; bytes are decoded with the codec of their content type.
pub(crate) fn decode_as<M: Message>(codecs: &Codecs, envelope: &Envelope) -> Option<M> {
    bus_core::decode_envelope_as(codecs, envelope).ok()
}
