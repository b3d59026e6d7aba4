//! The bus fits its body limit to the broker's: a transport that reports a message size limit
//! lowers the default body limit (less room for headers), so a large message fails with a
//! typed error at send, and a limit set above the broker's fails the build instead of the
//! first large message. On the in-memory transport behind a wrapper that reports a limit.

use std::sync::Arc;

use bus_core::{
    async_trait, Bus, BusBuilder, BusError, CodecError, Command, Outgoing, SubscribeOptions,
    Subscription, Topology, Transport, TransportError, TransportLimits,
};
use bus_transport_memory::MemoryTransport;
use serde::{Deserialize, Serialize};

/// The in-memory transport, reporting a broker message limit as NATS's `max_payload` would.
struct Limited {
    inner: MemoryTransport,
    max: usize,
}

#[async_trait]
impl Transport for Limited {
    fn name(&self) -> &str {
        "limited"
    }

    fn limits(&self) -> TransportLimits {
        TransportLimits::with_max_message_size(self.max)
    }

    async fn declare(&self, topology: &Topology) -> Result<(), TransportError> {
        self.inner.declare(topology).await
    }

    async fn send(&self, message: Outgoing) -> Result<(), TransportError> {
        self.inner.send(message).await
    }

    async fn subscribe(
        &self,
        endpoint: &str,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        self.inner.subscribe(endpoint, options).await
    }
}

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "t.limits.Upload", endpoint = "t-limits")]
struct Upload {
    data: String,
}

fn limited(max: usize) -> Arc<dyn Transport> {
    Arc::new(Limited {
        inner: MemoryTransport::new().serialize(true),
        max,
    })
}

fn sender(transport: Arc<dyn Transport>) -> BusBuilder {
    Bus::builder()
        .transport_arc(transport)
        .without_discovery()
        .route::<Upload>("t-limits")
}

#[tokio::test]
async fn a_broker_limit_lowers_the_default_body_limit_and_a_larger_send_fails_typed() {
    let transport = limited(1024 * 1024);
    transport
        .declare(&Topology {
            endpoints: vec![bus_core::EndpointTopology {
                name: "t-limits".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    let bus = sender(transport).build().await.unwrap();
    let fits = 1024 * 1024 - BusBuilder::HEADER_ROOM - 64;
    bus.send(Upload {
        data: "x".repeat(fits),
    })
    .await
    .expect("a body within the lowered limit is sent");
    let err = bus
        .send(Upload {
            data: "x".repeat(1024 * 1024),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BusError::Codec(CodecError::TooLarge { limit, .. })
                if limit == 1024 * 1024 - BusBuilder::HEADER_ROOM
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_body_limit_set_above_the_broker_limit_fails_the_build() {
    let err = sender(limited(1024 * 1024))
        .max_body_size(4 * 1024 * 1024)
        .build()
        .await
        .expect_err("a limit above the broker's must not build");
    assert!(
        matches!(err, BusError::BodyLimitAboveBroker { limit, .. } if limit == 4 * 1024 * 1024),
        "{err}"
    );
    assert!(err.to_string().contains("max_payload"), "{err}");
}

#[tokio::test]
async fn a_body_limit_within_the_broker_limit_is_kept() {
    let bus = sender(limited(1024 * 1024))
        .max_body_size(1000)
        .build()
        .await
        .unwrap();
    let err = bus
        .send(Upload {
            data: "x".repeat(2000),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BusError::Codec(CodecError::TooLarge { limit: 1000, .. })
        ),
        "{err}"
    );
}
