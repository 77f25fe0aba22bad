//! The runc-compatible command line. Thin: parse, set up logging, call the library.

mod commands;
mod exec;
mod inspect;
mod logging;
mod resources;
mod signal;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::hypervisor::BackendKind;
use crate::state::DEFAULT_ROOT;

#[derive(Parser, Debug)]
#[command(name = "hull", version, about = "Run OCI containers, each inside its own microVM")]
pub struct Cli {
    /// Directory for container state.
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Write logs (and errors) to this file instead of stderr.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log debug detail.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Hypervisor backend: auto (hull-vmm on hardware KVM, QEMU otherwise), qemu or hull-vmm.
    #[arg(long, global = true, default_value = "auto", value_parser = parse_backend)]
    pub backend: BackendKind,
    /// Accepted for runc compatibility: a container's cgroup lives in its VM, so the host's
    /// cgroup manager is not involved.
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// runc's rootless mode; hull needs root (KVM, taps, mounts), so only false/auto are accepted.
    #[arg(long, global = true, default_value = "auto")]
    pub rootless: String,
    /// Accepted for runc compatibility (checkpoints are not supported).
    #[arg(long, global = true, hide = true)]
    pub criu: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// runc's create-time flags that mean nothing or cannot work across a VM boundary.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CreateCompat {
    /// Accepted: the guest always uses pivot_root (its root is a tmpfs, where that works).
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted: the container's session keyring lives in the guest kernel either way.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Pass this many extra fds (from 3); only 0 is possible, as fds cannot enter a VM.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
}

impl CreateCompat {
    pub fn check(&self) -> anyhow::Result<()> {
        if self.preserve_fds > 0 {
            anyhow::bail!("--preserve-fds {}: open file descriptors cannot be passed into a VM", self.preserve_fds);
        }
        Ok(())
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_backend(s: &str) -> Result<BackendKind, String> {
    s.parse().map_err(|e: anyhow::Error| e.to_string())
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create and start a container, and wait for it unless detached.
    Run {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// Return once the container has started.
        #[arg(short, long)]
        detach: bool,
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Unix socket to send the terminal's master to (when process.terminal is true).
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// Keep the container's state after it exits (delete it with `hull delete`).
        #[arg(long)]
        keep: bool,
        /// Accepted for runc compatibility (the supervisor reaps only its own children).
        #[arg(long)]
        no_subreaper: bool,
        #[command(flatten)]
        compat: CreateCompat,
        id: String,
    },
    /// Create a container (its VM boots; the process waits for `start`).
    Create {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Unix socket to send the terminal's master to (when process.terminal is true).
        #[arg(long)]
        console_socket: Option<PathBuf>,
        #[command(flatten)]
        compat: CreateCompat,
        id: String,
    },
    /// Start a created container's process.
    Start { id: String },
    /// Print a container's state as runtime-spec JSON.
    State { id: String },
    /// Send a signal (name or number, default SIGTERM) to a container's init.
    Kill {
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container and everything it left on the host.
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Run another process in a running container.
    Exec(exec::ExecArgs),
    /// Freeze every process of a running container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// List the processes of a container (guest pids).
    Ps {
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
        id: String,
    },
    /// Print a container's resource usage as JSON: once with --stats, else every --interval.
    Events {
        #[arg(long)]
        stats: bool,
        /// Seconds between readings.
        #[arg(long, default_value_t = 5)]
        interval: u64,
        id: String,
    },
    /// Change a running container's resource limits.
    Update(resources::UpdateArgs),
    /// List containers.
    List {
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Print only the ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print the runtime-spec features this runtime supports, as JSON.
    Features,
    /// Write a default config.json into the bundle directory.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
    },
    /// Not supported: a container's memory lives in its VM.
    Checkpoint {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Not supported: a container's memory lives in its VM.
    Restore {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Internal: the detached supervisor `create` starts.
    #[command(hide = true)]
    Supervise {
        #[arg(long)]
        bundle: PathBuf,
        /// Inherited fd on which to report "ok" or the creation error.
        #[arg(long)]
        ready_fd: i32,
        #[arg(long)]
        console_socket: Option<PathBuf>,
        id: String,
    },
}

/// Print `text` and a newline on stdout. A reader that went away (`hull list | head`) is not
/// an error worth a panic.
pub(crate) fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.write_all(b"\n"));
}

/// Run the CLI; returns the process exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let log_to_file = logging::init(&cli);
    match commands::dispatch(&cli) {
        Ok(status) => status,
        Err(e) => {
            let msg = format!("{e:#}");
            // JSON logs on stderr carry the error themselves; otherwise say it plainly there.
            if log_to_file || cli.log_format == LogFormat::Json {
                tracing::error!("{msg}");
            }
            if log_to_file || cli.log_format == LogFormat::Text {
                eprintln!("hull: error: {msg}");
            }
            1
        }
    }
}
