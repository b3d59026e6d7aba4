//! The reply address of a bus instance: a queue of its own, exclusive to the connection.

use bus_core::{ReplyChannel, TransportError};

use crate::subscription::AmqpSubscription;
use crate::transport::AmqpTransport;

impl AmqpTransport {
    /// Declare and consume this instance's reply queue; its name is the reply address, which
    /// a reply reaches through the default exchange.
    pub(crate) async fn open_reply_queue(
        &self,
        instance: &str,
    ) -> Result<ReplyChannel, TransportError> {
        let queue = self.inner.config.naming.reply_queue(instance);
        let replies = AmqpSubscription::start_replies(self.clone(), queue.clone()).await?;
        Ok(ReplyChannel {
            address: queue,
            replies: Box::new(replies),
        })
    }
}
