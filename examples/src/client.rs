//! The `place-orders` client: sends `PlaceOrder` commands to whichever order-service instances
//! listen on the configured broker, then exits.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bus_core::{Bus, BusError, SendOptions, TransportError};
use bus_transport_config::ConfiguredTransport;

use crate::messages::PlaceOrder;
use crate::service::{
    broker_settings, error_queue_location, open_transport, start_telemetry, stop_telemetry,
};

/// What `place-orders` was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Orders to send.
    pub count: u32,
    /// Every Nth order is poison (quantity 0): sales rejects it, retries, then moves it to the
    /// error queue.
    pub fail_every: Option<u32>,
    /// Pause between two orders.
    pub interval: Duration,
    /// Number of the first order; by default derived from the clock, so runs do not overlap.
    pub first_id: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            count: 10,
            fail_every: None,
            interval: Duration::from_millis(100),
            first_id: None,
        }
    }
}

/// The usage text.
pub const USAGE: &str = "\
usage: place-orders [--count N] [--fail-every N] [--interval-ms MS] [--first-id N]

  --count N         orders to send (default 10)
  --fail-every N    make every Nth order poison (quantity 0): it ends in the error queue of `sales`
  --interval-ms MS  pause between orders (default 100)
  --first-id N      number of the first order (default: taken from the clock)

The transport comes from BUS_TRANSPORT or bus.toml, e.g.
  BUS_TRANSPORT=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p bus-examples --bin place-orders -- --count 20
  BUS_TRANSPORT=nats://127.0.0.1:4222 cargo run -p bus-examples --bin place-orders -- --count 20
  BUS_TRANSPORT=redis://127.0.0.1:6379 cargo run -p bus-examples --bin place-orders -- --count 20";

/// Parse the arguments (without the program name). `Ok(None)` means help was asked for.
///
/// ```
/// use bus_examples::client::{parse_args, Options};
///
/// let options = parse_args(["--count", "3", "--fail-every=2"].map(String::from))?.unwrap();
/// assert_eq!(options.count, 3);
/// assert_eq!(options.fail_every, Some(2));
/// # Ok::<(), String>(())
/// ```
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Options>, String> {
    let mut options = Options::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
            None => (arg, None),
        };
        if matches!(flag.as_str(), "-h" | "--help") {
            return Ok(None);
        }
        let mut value = |name: &str| -> Result<u32, String> {
            let text = inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))?;
            text.parse::<u32>()
                .map_err(|_| format!("{name} takes a whole number, not `{text}`"))
        };
        match flag.as_str() {
            "--count" | "-n" => options.count = value("--count")?,
            "--fail-every" => {
                let n = value("--fail-every")?;
                if n == 0 {
                    return Err("--fail-every takes a number of at least 1".into());
                }
                options.fail_every = Some(n);
            }
            "--interval-ms" => {
                options.interval = Duration::from_millis(u64::from(value("--interval-ms")?))
            }
            "--first-id" => options.first_id = Some(value("--first-id")?),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Some(options))
}

const CUSTOMERS: &[&str] = &[
    "ada", "grace", "linus", "barbara", "ken", "margaret", "dennis", "frances",
];
const PRODUCTS: &[(&str, u64)] = &[
    ("keyboard", 4_900),
    ("monitor", 18_900),
    ("desk", 29_900),
    ("chair", 12_000),
    ("lamp", 3_500),
    ("headset", 7_900),
];

/// Order number `n` (0-based) of a run: customers and products rotate; every `fail_every`th
/// order has quantity 0.
///
/// ```
/// use bus_examples::client::order;
///
/// assert_eq!(order(0, 1001, Some(2)).quantity, 1);
/// assert_eq!(order(1, 1002, Some(2)).quantity, 0); // the second one is poison
/// ```
pub fn order(n: u32, order_id: u32, fail_every: Option<u32>) -> PlaceOrder {
    let i = n as usize;
    let (sku, unit_price_cents) = PRODUCTS[i % PRODUCTS.len()];
    let poison = fail_every.is_some_and(|every| (n + 1) % every == 0);
    PlaceOrder {
        order_id,
        customer: CUSTOMERS[i % CUSTOMERS.len()].to_string(),
        sku: sku.to_string(),
        quantity: if poison { 0 } else { 1 + n % 3 },
        unit_price_cents,
    }
}

/// A first order number from the clock: runs a few seconds apart do not share numbers.
fn clock_first_id() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    u32::try_from(secs % 100_000).unwrap_or_default() * 1_000 + 1
}

/// Run the client: connect, send the orders, close.
pub async fn run(program: &str, args: impl IntoIterator<Item = String>) -> ExitCode {
    let options = match parse_args(args) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{program}: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Traced too, so that a trace begins where an order is placed.
    let telemetry = match start_telemetry(program) {
        Ok(telemetry) => telemetry,
        Err(code) => return code,
    };
    let code = connect_and_send(program, &options).await;
    // A short-lived client: flush its spans before the process ends.
    stop_telemetry(telemetry).await;
    code
}

async fn connect_and_send(program: &str, options: &Options) -> ExitCode {
    let settings = match broker_settings(program) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let transport = match open_transport(program, &settings).await {
        Ok(transport) => transport,
        Err(code) => return code,
    };
    let code = send_orders(program, options, &transport).await;
    if let Err(e) = transport.close().await {
        eprintln!("{program}: closing the connection: {e}");
    }
    code
}

async fn send_orders(
    program: &str,
    options: &Options,
    transport: &ConfiguredTransport,
) -> ExitCode {
    // A bus that hosts no endpoint: it only sends.
    let bus = match Bus::builder()
        .transport_arc(transport.shared())
        .host(Vec::<String>::new())
        .start()
        .await
    {
        Ok(bus) => bus,
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let first = options.first_id.unwrap_or_else(clock_first_id);
    let mut poison = 0;
    for n in 0..options.count {
        if n > 0 && !options.interval.is_zero() {
            tokio::time::sleep(options.interval).await;
        }
        let order_id = first.wrapping_add(n);
        let cmd = order(n, order_id, options.fail_every);
        let note = if cmd.quantity == 0 {
            poison += 1;
            " (poison: quantity 0)"
        } else {
            ""
        };
        println!(
            "{program}: PlaceOrder #{order_id} ({}, {} x {}){note}",
            cmd.customer, cmd.quantity, cmd.sku
        );
        let sent = bus
            .send_with(
                cmd,
                SendOptions::new().correlation_id(format!("order-{order_id}")),
            )
            .await;
        if let Err(e) = sent {
            if matches!(e, BusError::Transport(TransportError::Unroutable(_))) {
                eprintln!(
                    "{program}: the `sales` endpoint is not declared on this broker yet; start order-service once (it declares it), then place orders again"
                );
            } else {
                eprintln!("{program}: sending order #{order_id} failed: {e}");
            }
            bus.shutdown().await;
            return ExitCode::FAILURE;
        }
    }
    bus.shutdown().await;
    let last = first.wrapping_add(options.count.saturating_sub(1));
    let poison = match poison {
        0 => String::new(),
        n => format!(
            "; {n} poison (they end in the {})",
            error_queue_location(transport, "sales")
        ),
    };
    println!(
        "{program}: sent {} order(s), #{first}..#{last}{poison}",
        options.count
    );
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Options>, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults() {
        assert_eq!(parse(&[]).unwrap(), Some(Options::default()));
        assert_eq!(Options::default().count, 10);
    }

    #[test]
    fn flags() {
        let o = parse(&[
            "--count",
            "25",
            "--fail-every",
            "5",
            "--interval-ms=0",
            "--first-id",
            "7",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(o.count, 25);
        assert_eq!(o.fail_every, Some(5));
        assert_eq!(o.interval, Duration::ZERO);
        assert_eq!(o.first_id, Some(7));
        assert_eq!(parse(&["--help"]).unwrap(), None);
    }

    #[test]
    fn bad_arguments() {
        assert!(parse(&["--count"]).unwrap_err().contains("needs a value"));
        assert!(parse(&["--count", "x"]).unwrap_err().contains("`x`"));
        assert!(parse(&["--fail-every", "0"]).is_err());
        assert!(parse(&["--colour"]).unwrap_err().contains("--colour"));
    }

    #[test]
    fn poison_orders() {
        let quantities: Vec<u32> = (0..6).map(|n| order(n, n, Some(3)).quantity).collect();
        assert_eq!(quantities.iter().filter(|q| **q == 0).count(), 2);
        assert_eq!(quantities[2], 0);
        assert_eq!(quantities[5], 0);
        assert!((0..10).all(|n| order(n, n, None).quantity > 0));
    }
}
