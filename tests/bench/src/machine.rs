//! Facts about the machine and the build, printed with every table: figures mean little
//! without them.

use serde::Serialize;

/// What a run ran on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Logical cores available to this process.
    pub cores: usize,
    /// The CPU model, from `/proc/cpuinfo`.
    pub cpu: String,
    /// `rabbitmqctl version`, or why it is unknown.
    pub rabbitmq: String,
    /// The compiler that built this binary.
    pub rustc: String,
    /// `release` or `debug`.
    pub profile: &'static str,
    /// Load average when the run started (other work on the machine skews figures).
    pub load_at_start: String,
    /// `--quick` or full.
    pub mode: &'static str,
    /// The allocator both sides ran on: `mimalloc`, or `system` without the default features.
    pub allocator: &'static str,
}

impl Machine {
    /// Gather the facts.
    pub fn probe(quick: bool) -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let rabbitmq = std::process::Command::new("rabbitmqctl")
            .arg("version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "unknown (rabbitmqctl version failed)".into());
        let load_at_start = std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            rabbitmq,
            rustc: env!("BENCH_RUSTC_VERSION").to_string(),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            load_at_start,
            mode: if quick { "quick" } else { "full" },
            allocator: if cfg!(feature = "mimalloc") {
                "mimalloc"
            } else {
                "system"
            },
        }
    }

    /// The facts as a few lines of text.
    pub fn describe(&self) -> String {
        format!(
            "cores: {}  cpu: {}\nrabbitmq: {}  rustc: {}  profile: {}  allocator: {}  mode: {}  load at start: {}\n",
            self.cores,
            self.cpu,
            self.rabbitmq,
            self.rustc,
            self.profile,
            self.allocator,
            self.mode,
            self.load_at_start
        )
    }
}
