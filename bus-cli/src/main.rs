//! `bus`: endpoints and failed messages, the same on every transport. See the crate docs.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bus_cli::ui::{self, Access};
use bus_cli::{render, CliError, EndpointRow, FailedRow, MessageRecord, Operations, Selection};
use bus_transport_config::TransportSettings;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

/// Operate a typed service bus: its endpoints and failed messages, on any transport.
#[derive(Parser, Debug)]
#[command(name = "bus", version)]
struct Cli {
    /// The transport URL (`amqp://...`, `nats://...`, `redis://...`); by default
    /// `BUS_TRANSPORT` or `bus.toml`, as the services read it.
    #[arg(long, global = true)]
    transport: Option<String>,
    /// The namespace the services run under (`BUS_PREFIX`, `prefix` in `bus.toml`).
    #[arg(long, global = true)]
    prefix: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The endpoints the broker knows, with their queue depths and consumers.
    Endpoints,
    /// Failed messages: list, show, retry, delete, export, import.
    #[command(subcommand)]
    Errors(Errors),
    /// Send a command, given as JSON, to an endpoint.
    Send {
        /// The endpoint.
        endpoint: String,
        /// The command's wire name, e.g. `shop.PlaceOrder`.
        message_type: String,
        /// The command as JSON.
        json: String,
    },
    /// Publish an event, given as JSON, to every endpoint subscribed to it.
    Publish {
        /// The event's wire name.
        message_type: String,
        /// The event as JSON.
        json: String,
    },
    /// Serve a web page for operators: endpoints, failed messages, retry and delete.
    ///
    /// The page shows the endpoints with their waiting, consumer and failed counts, each
    /// endpoint's failed messages (filtered by reason and message type, paged), and one
    /// message with every header and its body. Retry and delete ask for confirmation first.
    ///
    /// By default it listens on 127.0.0.1:8080, where only this machine reaches it, and then
    /// answers only to a loopback host name. Any other address requires `--token TOKEN`
    /// (or BUS_UI_TOKEN, which keeps the token out of the process list): every request must
    /// then carry it, as a `token` query parameter (open http://HOST:PORT/?token=TOKEN and
    /// the page's links and forms carry it on) or an `Authorization: Bearer TOKEN` header;
    /// a request without it gets 401 Unauthorized. Serve it over a TLS proxy on an
    /// untrusted network, since the token travels with every request.
    ///
    /// Ctrl-C (or SIGTERM) stops it.
    Ui {
        /// The address to listen on; port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// The token every request must carry, at least 16 characters; required on any
        /// address that is not loopback.
        #[arg(long, env = "BUS_UI_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// A service's metrics address (`http://host:9464/metrics`, what it serves on
        /// BUS_METRICS_ADDR), to show how many messages each endpoint handles per second;
        /// repeat it for each service, or list them in BUS_UI_METRICS, comma-separated.
        #[arg(long = "metrics", env = "BUS_UI_METRICS", value_delimiter = ',')]
        metrics: Vec<String>,
    },
    /// Forward chosen events and commands from one broker to another, at least once, with
    /// their ids and headers, until Ctrl-C or SIGTERM; then print the counts.
    Bridge(BridgeArgs),
}

/// `bus bridge`: what to forward, from where to where.
#[derive(Args, Debug)]
struct BridgeArgs {
    /// The source transport URL.
    #[arg(long)]
    from: String,
    /// The target transport URL.
    #[arg(long)]
    to: String,
    /// Event wire names to forward, comma-separated.
    #[arg(long, value_delimiter = ',')]
    events: Vec<String>,
    /// Endpoints whose commands to forward, comma-separated.
    #[arg(long, value_delimiter = ',')]
    commands: Vec<String>,
    /// The bridge's name: its endpoint on the source is `bridge.NAME`.
    #[arg(long, default_value = "default")]
    name: String,
}

#[derive(Subcommand, Debug)]
enum Errors {
    /// The failed messages of an endpoint, oldest first.
    List {
        /// The endpoint.
        endpoint: String,
        /// How many to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Start after this message id (the last of the previous page).
        #[arg(long)]
        after: Option<String>,
    },
    /// One failed message: every header and its body.
    Show {
        /// The endpoint.
        endpoint: String,
        /// The message id.
        id: String,
    },
    /// Send failed messages back to their endpoint.
    Retry {
        /// The endpoint.
        endpoint: String,
        #[command(flatten)]
        which: Which,
    },
    /// Delete failed messages.
    Delete {
        /// The endpoint.
        endpoint: String,
        #[command(flatten)]
        which: Which,
    },
    /// Write the failed messages of an endpoint to a file, one JSON object per line (bodies
    /// byte-exact); the error queue is left as it is.
    Export {
        /// The endpoint.
        endpoint: String,
        /// The file to write.
        file: std::path::PathBuf,
    },
    /// Put the messages of an export file into the error queues they came from.
    Import {
        /// The file to read.
        file: std::path::PathBuf,
    },
}

/// Which failed messages: ids, all, or those that failed for a reason.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct Which {
    /// Message ids.
    ids: Vec<String>,
    /// Every failed message of the endpoint.
    #[arg(long)]
    all: bool,
    /// The failed messages with this `bus-failure-reason` (e.g. `timeout`, `handler-error`).
    #[arg(long)]
    reason: Option<String>,
}

impl Which {
    fn selection(&self) -> Selection {
        if self.all {
            Selection::All
        } else if let Some(reason) = &self.reason {
            Selection::Reason(reason.clone())
        } else {
            Selection::Ids(self.ids.iter().map(|id| id.as_str().into()).collect())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            if cli.json {
                println!("{}", serde_json::json!({ "error": error.to_string() }));
            } else {
                eprintln!("bus: {error}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Run the command and return what to print.
async fn run(cli: &Cli) -> Result<String, CliError> {
    // Refuse an unguarded network address before connecting to anything.
    if let Command::Ui { listen, token, .. } = &cli.command {
        Access::for_listen(*listen, token.clone())?;
    }
    let mut settings = TransportSettings::load()?;
    if let Command::Bridge(args) = &cli.command {
        return bridge(args, settings, cli.prefix.as_deref()).await;
    }
    if let Some(url) = &cli.transport {
        settings.url = url.clone();
    }
    if let Some(prefix) = &cli.prefix {
        settings.prefix = Some(prefix.clone());
    }
    if settings.is_memory() {
        return Err(CliError::Invalid(
            "the in-memory transport lives inside one process: point `bus` at a broker with `--transport URL` or BUS_TRANSPORT".into(),
        ));
    }
    settings
        .connect_timeout
        .get_or_insert(Duration::from_secs(10));
    let transport = settings.open("bus-cli").await?;
    let ops = Operations::new(transport.shared());
    let out = command(cli, &ops).await;
    let _ = transport.close().await;
    out
}

/// `bus bridge`: forward until Ctrl-C or SIGTERM, then report the counts.
async fn bridge(
    args: &BridgeArgs,
    mut settings: TransportSettings,
    prefix: Option<&str>,
) -> Result<String, CliError> {
    if let Some(prefix) = prefix {
        settings.prefix = Some(prefix.to_string());
    }
    settings
        .connect_timeout
        .get_or_insert(Duration::from_secs(10));
    let open = |url: &str| {
        let mut settings = settings.clone();
        settings.url = url.to_string();
        async move {
            if settings.is_memory() {
                return Err(CliError::Invalid(
                    "the in-memory transport lives inside one process: bridge between brokers"
                        .into(),
                ));
            }
            Ok(settings.open(&format!("bus-bridge-{}", args.name)).await?)
        }
    };
    let from = open(&args.from).await?;
    let to = match open(&args.to).await {
        Ok(to) => to,
        Err(error) => {
            let _ = from.close().await;
            return Err(error);
        }
    };
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
    let stop = async move {
        let _ = stopped_tx.send(bus_core::stop_signal().await);
    };
    eprintln!("bus bridge `{}`: forwarding (Ctrl-C stops)", args.name);
    let done = bus_core::Bridge::new(from.shared(), to.shared())
        .name(args.name.clone())
        .events(args.events.iter().cloned())
        .commands(args.commands.iter().cloned())
        .run_until(stop)
        .await;
    let _ = from.close().await;
    let _ = to.close().await;
    let stats = done.map_err(|e| CliError::Invalid(e.to_string()))?;
    let why = stopped_rx
        .await
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    Ok(format!(
        "bus bridge `{}`: stopped{why}: {stats}\n",
        args.name
    ))
}

/// `bus ui`: serve the page until Ctrl-C or SIGTERM.
async fn serve_ui(
    listen: SocketAddr,
    ops: Operations,
    access: Access,
    rates: Option<bus_cli::rates::Rates>,
) -> Result<String, CliError> {
    let io = |context: String| move |source| CliError::Io { context, source };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(io(format!("listening on {listen}")))?;
    let addr = listener
        .local_addr()
        .map_err(io(format!("listening on {listen}")))?;
    let query = if access.needs_token() {
        "?token=TOKEN"
    } else {
        ""
    };
    eprintln!("bus ui: serving http://{addr}/{query} (Ctrl-C stops)");
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
    let shutdown = async move {
        let signal = bus_core::stop_signal().await;
        let _ = stopped_tx.send(signal);
    };
    ui::serve(
        listener,
        ui::router_with_rates(ops, access, rates),
        shutdown,
    )
    .await
    .map_err(io(format!("serving on {addr}")))?;
    Ok(match stopped_rx.await {
        Ok(signal) => format!("bus ui: stopped ({signal})\n"),
        Err(_) => String::new(),
    })
}

async fn command(cli: &Cli, ops: &Operations) -> Result<String, CliError> {
    let json = cli.json;
    Ok(match &cli.command {
        Command::Endpoints => {
            let rows: Vec<EndpointRow> =
                ops.endpoints().await?.into_iter().map(Into::into).collect();
            output(json, &rows, || render::endpoints(&rows))
        }
        Command::Errors(Errors::List {
            endpoint,
            limit,
            after,
        }) => {
            let failed = ops.list(endpoint, after.as_deref(), *limit).await?;
            let rows: Vec<FailedRow> = failed.iter().map(FailedRow::from).collect();
            output(json, &rows, || render::failed(endpoint, &rows))
        }
        Command::Errors(Errors::Show { endpoint, id }) => {
            let failed = ops.get(endpoint, id).await?;
            let record = MessageRecord::of(endpoint, failed.envelope());
            output(json, &record, || render::message(&record))
        }
        Command::Errors(Errors::Retry { endpoint, which }) => {
            let outcome = ops.retry(endpoint, &which.selection()).await?;
            output(json, &outcome, || {
                summary("sent back to", endpoint, &outcome.done, &outcome.not_found)
            })
        }
        Command::Errors(Errors::Delete { endpoint, which }) => {
            let outcome = ops.delete(endpoint, &which.selection()).await?;
            output(json, &outcome, || {
                summary("deleted from", endpoint, &outcome.done, &outcome.not_found)
            })
        }
        Command::Errors(Errors::Export { endpoint, file }) => {
            let records = ops.export(endpoint).await?;
            let mut text = String::new();
            for record in &records {
                text.push_str(&serde_json::to_string(record).map_err(|e| {
                    CliError::Invalid(format!("writing message `{}`: {e}", record.message_id))
                })?);
                text.push('\n');
            }
            tokio::fs::write(file, text)
                .await
                .map_err(|source| CliError::Io {
                    context: format!("writing {}", file.display()),
                    source,
                })?;
            let count = records.len();
            output(json, &serde_json::json!({ "exported": count }), || {
                format!(
                    "{count} failed messages of `{endpoint}` written to {}\n",
                    file.display()
                )
            })
        }
        Command::Errors(Errors::Import { file }) => {
            let text = tokio::fs::read_to_string(file)
                .await
                .map_err(|source| CliError::Io {
                    context: format!("reading {}", file.display()),
                    source,
                })?;
            let mut records = Vec::new();
            for (n, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                records.push(serde_json::from_str::<MessageRecord>(line).map_err(|e| {
                    CliError::Invalid(format!("{} line {}: {e}", file.display(), n + 1))
                })?);
            }
            let count = ops.import(&records).await?;
            output(json, &serde_json::json!({ "imported": count }), || {
                format!("{count} messages put back into their error queues\n")
            })
        }
        Command::Send {
            endpoint,
            message_type,
            json: body,
        } => {
            let id = ops.send(endpoint, message_type, body).await?;
            output(
                json,
                &serde_json::json!({ "message_id": id.as_str() }),
                || format!("sent {message_type} {id} to `{endpoint}`\n"),
            )
        }
        Command::Publish {
            message_type,
            json: body,
        } => {
            let id = ops.publish(message_type, body).await?;
            output(
                json,
                &serde_json::json!({ "message_id": id.as_str() }),
                || format!("published {message_type} {id}\n"),
            )
        }
        Command::Ui {
            listen,
            token,
            metrics,
        } => {
            let access = Access::for_listen(*listen, token.clone())?;
            let rates = (!metrics.is_empty())
                .then(|| bus_cli::rates::Rates::start(metrics.clone(), Duration::from_secs(5)));
            serve_ui(*listen, ops.clone(), access, rates).await?
        }
        Command::Bridge(_) => unreachable!("`bus bridge` opens its own transports"),
    })
}

/// `value` as one JSON document, or the human text.
fn output<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) -> String {
    if json {
        serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
    } else {
        text()
    }
}

fn summary(what: &str, endpoint: &str, done: &[String], not_found: &[String]) -> String {
    let mut out = format!("{} messages {what} `{endpoint}`\n", done.len());
    for id in done {
        out.push_str(&format!("  {id}\n"));
    }
    if !not_found.is_empty() {
        out.push_str(&format!(
            "not in the error queue: {}\n",
            not_found.join(", ")
        ));
    }
    out
}
