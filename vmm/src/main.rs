//! `hull-vmm`: run one microVM. Configure by flags or by `--config <file.json>`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use hull_vmm::builder;
use hull_vmm::config::{FsConfig, JailConfig, NetConfig, VmmConfig, VsockConfig};
use hull_vmm::vcpu::ExitReason;

#[derive(Parser, Debug)]
#[command(name = "hull-vmm", version, about = "hull's KVM microVM monitor")]
struct Args {
    /// JSON configuration (hull_vmm::config::VmmConfig); only --console-log may be added to it.
    #[arg(long, conflicts_with_all = [
        "kernel", "initrd", "cmdline", "vcpus", "memory_mib", "vsock_cid", "vsock_uds",
        "fs_socket", "fs_tag", "tap", "tap_fd", "mac", "jail", "uid", "gid", "free_page_reporting",
        "snapshot_to", "restore_from",
    ])]
    config: Option<PathBuf>,
    /// vmlinux (64-bit ELF) or bzImage.
    #[arg(long)]
    kernel: Option<PathBuf>,
    #[arg(long)]
    initrd: Option<PathBuf>,
    #[arg(long, default_value = "")]
    cmdline: String,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    #[arg(long, default_value_t = 128)]
    memory_mib: u64,
    /// Serial console output file (standard output when absent).
    #[arg(long)]
    console_log: Option<PathBuf>,
    /// Bytes of guest output the console log keeps [default: 64 MiB].
    #[arg(long)]
    console_cap: Option<u64>,
    /// vsock guest CID (with --vsock-uds).
    #[arg(long)]
    vsock_cid: Option<u64>,
    /// Hybrid vsock socket: the host connects here; guest connections to port P go to `<uds>_P`.
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// vhost-user socket of virtiofsd (with --fs-tag).
    #[arg(long)]
    fs_socket: Option<PathBuf>,
    #[arg(long, default_value = "hullfs")]
    fs_tag: String,
    /// Existing tap device to attach as virtio-net.
    #[arg(long)]
    tap: Option<String>,
    /// Already-open tap file descriptor to attach as virtio-net.
    #[arg(long)]
    tap_fd: Option<i32>,
    /// Guest MAC for the virtio-net device.
    #[arg(long)]
    mac: Option<String>,
    /// Confine the VMM to this directory (new mount namespace, pivot_root, no capabilities).
    #[arg(long)]
    jail: Option<PathBuf>,
    /// Run as this uid (and --gid) inside the jail.
    #[arg(long, requires_all = ["jail", "gid"])]
    uid: Option<u32>,
    #[arg(long, requires_all = ["jail", "uid"])]
    gid: Option<u32>,
    /// Attach a virtio-balloon for free page reporting: memory the guest frees goes back to
    /// the host.
    #[arg(long)]
    free_page_reporting: bool,
    /// On SIGUSR1, pause the VM, save it to this file (created mode 0600, or emptied, at
    /// start) and exit 0.
    #[arg(long)]
    snapshot_to: Option<PathBuf>,
    /// Start from a snapshot instead of booting; the other flags must be the ones it was made
    /// with.
    #[arg(long)]
    restore_from: Option<PathBuf>,
    /// Run without seccomp filters (debugging only).
    #[arg(long)]
    no_seccomp: bool,
    /// Log filter for hull-vmm's own diagnostics (stderr), e.g. `info`, `debug`.
    #[arg(long, default_value = "warn", env = "HULL_VMM_LOG")]
    log_level: String,
}

impl Args {
    fn into_config(self) -> anyhow::Result<VmmConfig> {
        if let Some(path) = &self.config {
            let text =
                std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))?;
            let mut config: VmmConfig =
                serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))?;
            // The console log is where the caller watches this run; it may override the file.
            if self.console_log.is_some() {
                config.console_log = self.console_log;
            }
            if let Some(cap) = self.console_cap {
                config.console_log_cap = cap;
            }
            return Ok(config);
        }
        let Some(kernel) = self.kernel else {
            anyhow::bail!("--kernel (or --config) is required");
        };
        Ok(VmmConfig {
            kernel,
            initrd: self.initrd,
            cmdline: self.cmdline,
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            console_log: self.console_log,
            console_log_cap: self.console_cap.unwrap_or_else(hull_vmm::config::default_console_log_cap),
            vsock: match (self.vsock_cid, self.vsock_uds) {
                (Some(guest_cid), Some(uds)) => Some(VsockConfig { guest_cid, uds }),
                (None, None) => None,
                _ => anyhow::bail!("--vsock-cid and --vsock-uds go together"),
            },
            fs: self.fs_socket.map(|socket| FsConfig { socket, tag: self.fs_tag, queue_size: 1024 }),
            net: if self.tap.is_some() || self.tap_fd.is_some() {
                vec![NetConfig { tap: self.tap, tap_fd: self.tap_fd, mac: self.mac }]
            } else {
                Vec::new()
            },
            jail: self.jail.map(|dir| JailConfig { dir, uid: self.uid, gid: self.gid, max_open_files: 2048 }),
            free_page_reporting: self.free_page_reporting,
            snapshot_to: self.snapshot_to,
            restore_from: self.restore_from,
        })
    }
}

fn run(args: Args) -> anyhow::Result<ExitReason> {
    let seccomp = !args.no_seccomp;
    let config = args.into_config()?;
    let keep: Vec<i32> = config.net.iter().filter_map(|n| n.tap_fd).collect();
    close_inherited_fds(&keep);
    let mut jailed = false;
    let result = run_vm(&config, seccomp, &mut jailed);
    // The vsock socket is ours: remove it whether the VM ran or failed to start, so nothing is
    // left for the caller to clean up. Inside the jail its directory is `/`.
    if let Some(v) = &config.vsock {
        let path = match (&config.jail, jailed) {
            (Some(j), true) => Path::new("/").join(v.uds.strip_prefix(&j.dir).unwrap_or(&v.uds)),
            _ => v.uds.clone(),
        };
        let _ = std::fs::remove_file(path);
    }
    result
}

fn run_vm(config: &VmmConfig, seccomp: bool, jailed: &mut bool) -> anyhow::Result<ExitReason> {
    let signals = hull_vmm::run::take_signals()?;
    // A snapshot is checked whole before anything is built from it: header, state, memory.
    let restore = match &config.restore_from {
        Some(path) => {
            let loaded = hull_vmm::snapshot::file::read(path)?;
            loaded.verify_memory(path)?;
            Some(loaded)
        }
        None => None,
    };
    let mut vmm = builder::create(config, restore.as_ref())?;
    builder::attach_devices(&mut vmm, config)?;
    match (&restore, &config.restore_from) {
        (Some(loaded), Some(path)) => builder::restore(&mut vmm, config, &loaded.snapshot, path)?,
        _ => builder::load(&mut vmm, config)?,
    }
    if let Some(jail) = &config.jail {
        hull_vmm::jail::enter(jail)?;
        *jailed = true;
    }
    if !seccomp {
        tracing::warn!("seccomp filters are off (--no-seccomp)");
        return Ok(vmm.run(signals, None, None)?);
    }
    hull_vmm::seccomp::install_sigsys_handler()?;
    let snapshots = config.snapshot_to.is_some();
    let vcpu = Arc::new(hull_vmm::seccomp::vcpu_filter(snapshots)?);
    let main = hull_vmm::seccomp::main_filter(snapshots)?;
    let on_vcpu: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        if let Err(e) = hull_vmm::seccomp::apply(&vcpu) {
            eprintln!("hull-vmm: {e}");
            std::process::exit(1);
        }
    });
    let on_main: Box<dyn FnOnce()> = Box::new(move || {
        if let Err(e) = hull_vmm::seccomp::apply(&main) {
            eprintln!("hull-vmm: {e}");
            std::process::exit(1);
        }
    });
    Ok(vmm.run(signals, Some(on_vcpu), Some(on_main))?)
}

/// Close every descriptor above stderr that the caller left open, except the taps it handed
/// us: a VMM must not hold on to (or be able to use) anything it was not given on purpose.
fn close_inherited_fds(keep: &[i32]) {
    let mut keep: Vec<u32> = keep.iter().filter(|fd| **fd > 2).map(|fd| *fd as u32).collect();
    keep.sort_unstable();
    let mut low = 3u32;
    for fd in keep.into_iter().chain(std::iter::once(u32::MAX)) {
        if fd > low {
            // SAFETY: close_range on descriptors nothing in this process uses yet (nothing has
            // been opened since exec, and the kept taps are skipped).
            unsafe { libc::syscall(libc::SYS_close_range, low, fd - 1, 0) };
        }
        low = fd.saturating_add(1);
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // virtio-queue reports driver mistakes through `log` at error level, once per mistake: a
    // guest could flood the log with them. hull-vmm logs those itself, within a budget.
    let filter = format!("{},virtio_queue=off", args.log_level);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(args) {
        Ok(ExitReason::Reset) | Ok(ExitReason::Signal) | Ok(ExitReason::Snapshot) => ExitCode::SUCCESS,
        Ok(ExitReason::VcpuError) => {
            eprintln!("hull-vmm: the VM stopped on a vCPU error (see the log above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("hull-vmm: {e:#}");
            ExitCode::FAILURE
        }
    }
}
