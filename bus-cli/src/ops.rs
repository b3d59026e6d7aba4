//! [`Operations`]: endpoints and failed messages through any [`Transport`], the same way on
//! every one. The `bus` command is a thin layer over it; tests and tools call it directly.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use bus_core::{
    Destination, EndpointInfo, Envelope, FailedMessage, Headers, MessageId, Outgoing, QueueKind,
    Transport,
};

use crate::error::CliError;
use crate::records::{for_retry, MessageRecord};

/// The most messages of one error queue an operation reads. Paging (`after`) happens within
/// them.
pub const MAX_SCAN: usize = 100_000;

/// Which failed messages an operation is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// These message ids.
    Ids(Vec<MessageId>),
    /// Every message in the error queue.
    All,
    /// The messages that failed for this reason (`bus-failure-reason`, e.g. `timeout`).
    Reason(String),
}

/// What a retry or a delete did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// The ids it did it to.
    pub done: Vec<String>,
    /// The ids asked for that were not in the error queue.
    pub not_found: Vec<String>,
}

/// Operations on one transport.
#[derive(Clone)]
pub struct Operations {
    transport: Arc<dyn Transport>,
}

impl Operations {
    /// Operations through `transport`.
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        Operations { transport }
    }

    /// The transport.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    /// The endpoints the broker knows, with what it can tell of their queues.
    pub async fn endpoints(&self) -> Result<Vec<EndpointInfo>, CliError> {
        Ok(self.transport.endpoints().await?)
    }

    /// Up to `limit` failed messages of `endpoint`, oldest first, starting after the message
    /// `after` (paging: pass the last id of the previous page).
    pub async fn list(
        &self,
        endpoint: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FailedMessage>, CliError> {
        let all = self.failed(endpoint).await?;
        let start = match after {
            Some(id) => {
                all.iter()
                    .position(|f| f.message_id() == id)
                    .ok_or_else(|| CliError::NotFound {
                        endpoint: endpoint.to_string(),
                        id: id.into(),
                    })?
                    + 1
            }
            None => 0,
        };
        Ok(all.into_iter().skip(start).take(limit).collect())
    }

    /// The failed message `id` of `endpoint`.
    pub async fn get(&self, endpoint: &str, id: &str) -> Result<FailedMessage, CliError> {
        self.failed(endpoint)
            .await?
            .into_iter()
            .find(|f| f.message_id() == id)
            .ok_or_else(|| CliError::NotFound {
                endpoint: endpoint.to_string(),
                id: id.into(),
            })
    }

    /// Send the selected failed messages back to `endpoint`'s input queue, each with its own
    /// message id and its failure headers kept as history, and take them out of the error
    /// queue only once the transport accepted their resends: a crash in between sends them
    /// twice, never loses one. They are taken out in one call at the end (on AMQP each removal
    /// reads the queue up to the message), also when a resend fails part way: then those
    /// already resent are taken out and the error is returned.
    pub async fn retry(&self, endpoint: &str, selection: &Selection) -> Result<Outcome, CliError> {
        let (chosen, not_found) = self.select(endpoint, selection).await?;
        let destination = Destination::Endpoint(Arc::from(endpoint));
        let mut resent: Vec<MessageId> = Vec::with_capacity(chosen.len());
        let mut failed_send = None;
        for failed in &chosen {
            let sent = self
                .transport
                .send(Outgoing {
                    destination: destination.clone(),
                    envelope: for_retry(failed.envelope()),
                    delay: None,
                    deliver_at: None,
                })
                .await;
            match sent {
                Ok(()) => resent.push(failed.envelope().headers.message_id.clone()),
                Err(error) => {
                    failed_send = Some(error);
                    break;
                }
            }
        }
        if !resent.is_empty() {
            self.transport
                .remove(endpoint, QueueKind::Errors, &resent)
                .await?;
        }
        if let Some(error) = failed_send {
            return Err(error.into());
        }
        Ok(Outcome {
            done: resent.iter().map(ToString::to_string).collect(),
            not_found,
        })
    }

    /// Delete the selected failed messages.
    pub async fn delete(&self, endpoint: &str, selection: &Selection) -> Result<Outcome, CliError> {
        let (chosen, not_found) = self.select(endpoint, selection).await?;
        let ids: Vec<MessageId> = chosen
            .iter()
            .map(|f| f.envelope().headers.message_id.clone())
            .collect();
        let removed = if ids.is_empty() {
            Vec::new()
        } else {
            self.transport
                .remove(endpoint, QueueKind::Errors, &ids)
                .await?
        };
        Ok(Outcome {
            done: removed.iter().map(ToString::to_string).collect(),
            not_found,
        })
    }

    /// Every failed message of `endpoint` as a record (headers and byte-exact body), oldest
    /// first, for an export file; the error queue is left as it is.
    pub async fn export(&self, endpoint: &str) -> Result<Vec<MessageRecord>, CliError> {
        Ok(self
            .failed(endpoint)
            .await?
            .iter()
            .map(|f| MessageRecord::of(endpoint, f.envelope()))
            .collect())
    }

    /// Put exported records into the error queues they came from (each record names its
    /// endpoint), as they are: to move failed messages to another environment, or to edit
    /// them and then retry them there.
    pub async fn import(&self, records: &[MessageRecord]) -> Result<usize, CliError> {
        for record in records {
            self.transport
                .send(Outgoing {
                    destination: Destination::ErrorQueue(Arc::from(record.endpoint.as_str())),
                    envelope: record.to_envelope()?,
                    delay: None,
                    deliver_at: None,
                })
                .await?;
        }
        Ok(records.len())
    }

    /// Send a command, given as JSON, to `endpoint`; its new message id.
    pub async fn send(
        &self,
        endpoint: &str,
        message_type: &str,
        json: &str,
    ) -> Result<MessageId, CliError> {
        self.send_new(
            Destination::Endpoint(Arc::from(endpoint)),
            message_type,
            json,
        )
        .await
    }

    /// Publish an event, given as JSON, to every endpoint subscribed to `message_type`; its
    /// new message id.
    pub async fn publish(&self, message_type: &str, json: &str) -> Result<MessageId, CliError> {
        self.send_new(
            Destination::Event(Arc::from(message_type)),
            message_type,
            json,
        )
        .await
    }

    /// A new message of `message_type` with `json` as its body, to `destination`; its id.
    async fn send_new(
        &self,
        destination: Destination,
        message_type: &str,
        json: &str,
    ) -> Result<MessageId, CliError> {
        let envelope = new_envelope(message_type, json)?;
        let id = envelope.headers.message_id.clone();
        self.transport
            .send(Outgoing {
                destination,
                envelope,
                delay: None,
                deliver_at: None,
            })
            .await?;
        Ok(id)
    }

    async fn failed(&self, endpoint: &str) -> Result<Vec<FailedMessage>, CliError> {
        Ok(self
            .transport
            .browse(endpoint, QueueKind::Errors, MAX_SCAN)
            .await?
            .into_iter()
            .map(FailedMessage::new)
            .collect())
    }

    /// The messages `selection` names, oldest first, and the asked-for ids not there.
    async fn select(
        &self,
        endpoint: &str,
        selection: &Selection,
    ) -> Result<(Vec<FailedMessage>, Vec<String>), CliError> {
        let all = self.failed(endpoint).await?;
        Ok(match selection {
            Selection::All => (all, Vec::new()),
            Selection::Reason(reason) => (
                all.into_iter()
                    .filter(|f| f.reason() == Some(reason.as_str()))
                    .collect(),
                Vec::new(),
            ),
            Selection::Ids(ids) => {
                let not_found = ids
                    .iter()
                    .filter(|id| !all.iter().any(|f| f.message_id() == id.as_str()))
                    .map(ToString::to_string)
                    .collect();
                let chosen = all
                    .into_iter()
                    .filter(|f| ids.iter().any(|id| f.message_id() == id.as_str()))
                    .collect();
                (chosen, not_found)
            }
        })
    }
}

/// A new message of `message_type` with `json` as its body, checked to be JSON.
fn new_envelope(message_type: &str, json: &str) -> Result<Envelope, CliError> {
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| CliError::Invalid(format!("the message body is not JSON: {e}")))?;
    let body = serde_json::to_vec(&value)
        .map_err(|e| CliError::Invalid(format!("the message body: {e}")))?;
    let headers = Headers {
        message_id: uuid::Uuid::now_v7().to_string().into(),
        message_type: Cow::Owned(message_type.to_string()),
        content_type: Cow::Borrowed("application/json"),
        sent_at: Some(SystemTime::now()),
        ..Headers::default()
    };
    Ok(Envelope::from_bytes(headers, body))
}
