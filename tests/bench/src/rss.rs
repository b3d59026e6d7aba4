//! Memory held by queued messages: the memory transport against a tokio `mpsc` channel and a
//! `VecDeque` holding the same messages. Each measurement runs in a child process of its own,
//! so its peak resident size (`VmHWM`) is its own and not the largest of the whole run.

use std::collections::VecDeque;
use std::time::Duration;

use bus_core::Bus;
use bus_transport_memory::MemoryTransport;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::probe::{handle, progress, runtime, MemWork};
use crate::report::Row;

/// Messages held in the unbounded-by-setting case (capacity set to this many).
const HELD: u64 = 1_000_000;
/// The bound of the bounded case.
const BOUND: usize = 10_000;

/// What a child reports.
#[derive(Debug, Serialize, Deserialize)]
pub struct Footprint {
    /// Resident size before the messages were queued, KiB.
    pub base_kib: u64,
    /// Resident size with them queued, KiB.
    pub rss_kib: u64,
    /// Peak resident size of the child, KiB.
    pub hwm_kib: u64,
    /// Messages actually queued when measured.
    pub queued: u64,
}

impl Footprint {
    fn growth_per_message(&self) -> f64 {
        (self.rss_kib.saturating_sub(self.base_kib) * 1024) as f64 / self.queued.max(1) as f64
    }
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The child's side: run one measurement, print its [`Footprint`] as JSON on stdout.
pub fn child(which: &str) {
    let footprint = runtime().block_on(async {
        match which {
            "bus-held" => bus_held().await,
            "mpsc-held" => mpsc_held().await,
            "vecdeque-held" => vecdeque_held(),
            "bus-bounded" => bus_bounded().await,
            "mpsc-bounded" => mpsc_bounded().await,
            other => panic!("unknown footprint case `{other}`"),
        }
    });
    println!(
        "{}",
        serde_json::to_string(&footprint).expect("footprint serializes")
    );
}

fn work(seq: u64) -> MemWork {
    MemWork { seq, sent_ns: 0 }
}

/// A bus on the memory transport with a handler but no consumer running (built, not started).
async fn idle_bus(capacity: usize) -> (Bus, MemoryTransport) {
    let transport = MemoryTransport::new()
        .capacity(capacity)
        .send_timeout(Duration::from_secs(3_600));
    let sink = crate::probe::Sink::new();
    let bus = Bus::builder()
        .without_discovery()
        .transport(transport.clone())
        .handler("bench-mem", move |m: MemWork| {
            handle(sink.clone(), m.sent_ns)
        })
        .host(["bench-mem"])
        .build()
        .await
        .expect("bus builds");
    (bus, transport)
}

async fn bus_held() -> Footprint {
    let (bus, transport) = idle_bus(HELD as usize).await;
    let base_kib = status_kib("VmRSS:");
    for seq in 0..HELD {
        bus.send(work(seq)).await.expect("send");
    }
    let queued = transport.depth("bench-mem").unwrap_or(0) as u64;
    Footprint {
        base_kib,
        rss_kib: status_kib("VmRSS:"),
        hwm_kib: status_kib("VmHWM:"),
        queued,
    }
}

async fn mpsc_held() -> Footprint {
    let (tx, rx) = mpsc::channel::<MemWork>(HELD as usize);
    let base_kib = status_kib("VmRSS:");
    for seq in 0..HELD {
        tx.send(work(seq)).await.expect("send");
    }
    let f = Footprint {
        base_kib,
        rss_kib: status_kib("VmRSS:"),
        hwm_kib: status_kib("VmHWM:"),
        queued: rx.len() as u64,
    };
    drop(rx);
    f
}

fn vecdeque_held() -> Footprint {
    let base_kib = status_kib("VmRSS:");
    let mut q = VecDeque::new();
    for seq in 0..HELD {
        q.push_back(work(seq));
    }
    Footprint {
        base_kib,
        rss_kib: status_kib("VmRSS:"),
        hwm_kib: status_kib("VmHWM:"),
        queued: q.len() as u64,
    }
}

/// Wait until `depth` stops growing for half a second (the producer is blocked).
async fn settled(depth: impl Fn() -> u64) -> u64 {
    let mut last = depth();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = depth();
        if now == last {
            return now;
        }
        last = now;
    }
}

async fn bus_bounded() -> Footprint {
    let (bus, transport) = idle_bus(BOUND).await;
    let base_kib = status_kib("VmRSS:");
    let producer = tokio::spawn(async move {
        for seq in 0..HELD {
            if bus.send(work(seq)).await.is_err() {
                break;
            }
        }
    });
    let queued = settled(|| transport.depth("bench-mem").unwrap_or(0) as u64).await;
    let f = Footprint {
        base_kib,
        rss_kib: status_kib("VmRSS:"),
        hwm_kib: status_kib("VmHWM:"),
        queued,
    };
    producer.abort();
    f
}

async fn mpsc_bounded() -> Footprint {
    let (tx, rx) = mpsc::channel::<MemWork>(BOUND);
    let base_kib = status_kib("VmRSS:");
    let producer = tokio::spawn(async move {
        for seq in 0..HELD {
            if tx.send(work(seq)).await.is_err() {
                break;
            }
        }
    });
    let queued = settled(|| rx.len() as u64).await;
    let f = Footprint {
        base_kib,
        rss_kib: status_kib("VmRSS:"),
        hwm_kib: status_kib("VmHWM:"),
        queued,
    };
    producer.abort();
    f
}

fn run_child(which: &str) -> Footprint {
    let exe = std::env::current_exe().expect("own path");
    let out = std::process::Command::new(exe)
        .args(["--rss-child", which])
        .output()
        .expect("start the footprint child");
    assert!(
        out.status.success(),
        "footprint child `{which}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("child `{which}` printed {line:?}: {e}"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Case 5 (memory part).
pub fn footprint() -> Vec<Row> {
    progress("memory footprint: 1,000,000 queued, bus");
    let bus = run_child("bus-held");
    progress("memory footprint: 1,000,000 queued, raw mpsc and VecDeque");
    let raw = run_child("mpsc-held");
    let deque = run_child("vecdeque-held");
    progress("memory footprint: bound 10,000, 1,000,000 offered, bus and raw mpsc");
    let bus_b = run_child("bus-bounded");
    let raw_b = run_child("mpsc-bounded");
    let case = "memory, 1,000,000 queued";
    let bounded = "memory, bound 10,000, 1,000,000 offered";
    let blocked = format!(
        "tokio mpsc, producer blocked (queued: bus {}, raw {})",
        bus_b.queued, raw_b.queued
    );
    vec![
        Row::new(
            case,
            "peak RSS",
            "MiB",
            mib(bus.hwm_kib),
            mib(raw.hwm_kib),
            false,
        )
        .note("tokio mpsc of the same messages"),
        Row::new(
            case,
            "RSS growth per message",
            "B",
            bus.growth_per_message(),
            raw.growth_per_message(),
            false,
        )
        .note("tokio mpsc of the same messages"),
        Row::new(
            case,
            "peak RSS",
            "MiB",
            mib(bus.hwm_kib),
            mib(deque.hwm_kib),
            false,
        )
        .note("VecDeque of the same messages"),
        Row::new(
            bounded,
            "peak RSS",
            "MiB",
            mib(bus_b.hwm_kib),
            mib(raw_b.hwm_kib),
            false,
        )
        .note(blocked.clone()),
        Row::new(
            bounded,
            "RSS growth per queued message",
            "B",
            bus_b.growth_per_message(),
            raw_b.growth_per_message(),
            false,
        )
        .note(blocked),
    ]
}
