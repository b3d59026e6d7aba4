//! What the ui tests share: an in-memory transport with a bus whose handler fails while it is
//! broken (so the error queue is filled by real failures), and the ui served on 127.0.0.1:0.

#![allow(dead_code)] // each test file uses its own part of it

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_cli::ui::{self, Access};
use bus_cli::Operations;
use bus_core::{Bus, Command, HandlerError, SendOptions, Transport};
use bus_transport_memory::MemoryTransport;
use serde::{Deserialize, Serialize};

pub const ENDPOINT: &str = "ui-sales";

#[derive(Command, Serialize, Deserialize, Clone, Debug)]
#[command(name = "ui.PlaceOrder", endpoint = "ui-sales")]
pub struct PlaceOrder {
    pub order: u32,
    pub note: String,
}

/// The handler's own view: whether it is broken, and how often it handled each message id.
#[derive(Clone, Default)]
pub struct Shop {
    pub broken: Arc<AtomicBool>,
    handled: Arc<Mutex<HashMap<String, u32>>>,
}

impl Shop {
    pub fn times(&self, id: &str) -> u32 {
        self.handled.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    pub fn fix(&self) {
        self.broken.store(false, Ordering::SeqCst);
    }
}

/// A shop on the in-memory transport: the bus hosting the endpoint and the operations over
/// the same transport.
pub struct Setup {
    pub bus: Bus,
    pub shop: Shop,
    pub ops: Operations,
}

impl Setup {
    pub async fn start() -> Self {
        let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::new().serialize(true));
        let shop = Shop::default();
        let handler_shop = shop.clone();
        let bus = Bus::builder()
            .transport_arc(transport.clone())
            .without_discovery()
            .handler(
                ENDPOINT,
                move |cmd: PlaceOrder, ctx: bus_core::MessageContext| {
                    let shop = handler_shop.clone();
                    async move {
                        if shop.broken.load(Ordering::SeqCst) {
                            return Err(HandlerError::new(format!(
                                "stock service down for {} ({})",
                                cmd.order, cmd.note
                            )));
                        }
                        *shop
                            .handled
                            .lock()
                            .unwrap()
                            .entry(ctx.message_id().to_string())
                            .or_default() += 1;
                        Ok(())
                    }
                },
            )
            .route::<PlaceOrder>(ENDPOINT)
            .endpoint(ENDPOINT, |e| {
                e.immediate_retries(0).delayed_retries(0, Duration::ZERO)
            })
            .start()
            .await
            .expect("the sales bus starts");
        Setup {
            bus,
            shop,
            ops: Operations::new(transport),
        }
    }

    /// `n` orders put in the error queue by the broken handler, oldest first; `note` is part
    /// of each one's error text.
    pub async fn poison(&self, n: u32, note: &str) -> Vec<String> {
        self.shop.broken.store(true, Ordering::SeqCst);
        let before = self.bus.stats().dead_lettered;
        let mut ids = Vec::new();
        for order in 0..n {
            let id = format!("m-{order}-{}", uuid::Uuid::now_v7().simple());
            self.bus
                .send_with(
                    PlaceOrder {
                        order,
                        note: note.into(),
                    },
                    SendOptions::new().message_id(id.clone()),
                )
                .await
                .unwrap();
            ids.push(id);
        }
        self.dead_lettered(before + u64::from(n)).await;
        ids
    }

    /// Waits until the bus has put `n` messages in the error queue in all.
    pub async fn dead_lettered(&self, n: u64) {
        until(
            Duration::from_secs(30),
            "messages in the error queue",
            || self.bus.stats().dead_lettered >= n,
        )
        .await;
    }

    /// How many messages the error queue holds now.
    pub async fn failed(&self) -> usize {
        self.ops.list(ENDPOINT, None, 1_000).await.unwrap().len()
    }

    /// The ui over this shop's transport, served on 127.0.0.1 at a free port; its base URL
    /// (`http://127.0.0.1:PORT`). It stops with the test's runtime.
    pub async fn serve(&self, access: Access) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = ui::router(self.ops.clone(), access);
        tokio::spawn(ui::serve(listener, router, std::future::pending()));
        url
    }
}

pub async fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
