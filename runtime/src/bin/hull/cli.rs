//! The runc-compatible command line: flags and verbs, as clap parses them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use hull::hypervisor::BackendKind;
use hull::state::DEFAULT_ROOT;

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
    s.parse().map_err(|e: hull::hypervisor::HypervisorError| e.to_string())
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
    Exec(ExecArgs),
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
    Update(UpdateArgs),
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
    /// Unpack an OCI image layout (a directory or a tar of one) into a new bundle.
    Unpack {
        /// The image layout, with `:REF` to choose its `org.opencontainers.image.ref.name`.
        #[arg(long, value_name = "DIR[:REF]")]
        image: String,
        /// The platform to choose from a multi-platform index.
        #[arg(long, default_value = "linux/amd64", value_name = "OS/ARCH[/VARIANT]")]
        platform: String,
        /// Refuse an image whose layers unpack to more than this many bytes (default 8 GiB).
        #[arg(long, value_name = "BYTES")]
        max_size: Option<u64>,
        /// The bundle to make: absent, or an empty directory.
        bundle: PathBuf,
        /// Replaces the image's Cmd (its Entrypoint stays).
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
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

#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    /// OCI `process` JSON to run instead of COMMAND.
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    /// Allocate a terminal (this process's own, or one sent to --console-socket).
    #[arg(short, long)]
    pub tty: bool,
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Return once the process has started.
    #[arg(short, long)]
    pub detach: bool,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Set an environment variable (NAME=VALUE); repeatable.
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    #[arg(long)]
    pub cwd: Option<String>,
    /// UID[:GID] to run as.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Add a capability (e.g. CAP_NET_ADMIN); repeatable.
    #[arg(long = "cap")]
    pub caps: Vec<String>,
    #[arg(long)]
    pub no_new_privs: bool,
    /// Additional group ids; repeatable.
    #[arg(short = 'g', long = "additional-gids")]
    pub additional_gids: Vec<u32>,
    /// Pass this many extra fds (from 3); only 0 is possible, as fds cannot enter a VM.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Accepted for runc compatibility: the guest has no SELinux or AppArmor.
    #[arg(long)]
    pub process_label: Option<String>,
    /// Accepted for runc compatibility: the guest has no SELinux or AppArmor.
    #[arg(long)]
    pub apparmor: Option<String>,
    /// Accepted for runc compatibility: the exec joins the container's cgroup in the guest.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Accepted for runc compatibility; a paused container still refuses exec (its VM's
    /// processes are frozen).
    #[arg(long)]
    pub ignore_paused: bool,
    /// Internal: report readiness on this fd (the detached copy `-d` starts).
    #[arg(long, hide = true)]
    pub ready_fd: Option<i32>,
    pub id: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct UpdateArgs {
    /// OCI `linux.resources` JSON file ("-" for stdin); the flags below override it.
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    /// Memory limit in bytes (suffixes k, m, g allowed; -1 for none).
    #[arg(long, allow_hyphen_values = true)]
    pub memory: Option<String>,
    #[arg(long)]
    pub cpu_shares: Option<u64>,
    #[arg(long, allow_hyphen_values = true)]
    pub cpu_quota: Option<i64>,
    #[arg(long)]
    pub cpu_period: Option<u64>,
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    pub id: String,
}
