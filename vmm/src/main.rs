//! `hull-vmm`: run one microVM. Configure by flags or by `--config <file.json>`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hull_vmm::builder;
use hull_vmm::config::{FsConfig, JailConfig, NetConfig, VmmConfig, VsockConfig};
use hull_vmm::vcpu::ExitReason;

#[derive(Parser, Debug)]
#[command(name = "hull-vmm", version, about = "hull's KVM microVM monitor")]
struct Args {
    /// JSON configuration (the flags below are ignored when given).
    #[arg(long)]
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
    #[arg(long, requires = "jail")]
    uid: Option<u32>,
    #[arg(long, requires = "jail")]
    gid: Option<u32>,
    /// Log filter for hull-vmm's own diagnostics (stderr), e.g. `info`, `debug`.
    #[arg(long, default_value = "warn", env = "HULL_VMM_LOG")]
    log_level: String,
}

impl Args {
    fn into_config(self) -> anyhow::Result<VmmConfig> {
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))?;
            return serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()));
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
        })
    }
}

fn run(args: Args) -> anyhow::Result<ExitReason> {
    let config = args.into_config()?;
    let result = run_vm(&config);
    // The vsock socket is ours: remove it whether the VM ran or failed to start, so nothing is
    // left for the caller to clean up.
    if let Some(v) = &config.vsock {
        let _ = std::fs::remove_file(&v.uds);
    }
    result
}

fn run_vm(config: &VmmConfig) -> anyhow::Result<ExitReason> {
    let signals = hull_vmm::run::take_signals()?;
    let mut vmm = builder::create(config)?;
    builder::attach_devices(&mut vmm, config)?;
    builder::load(&mut vmm, config)?;
    Ok(vmm.run(signals, None, None)?)
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log_level))
        .init();
    match run(args) {
        Ok(ExitReason::Reset) | Ok(ExitReason::Signal) => ExitCode::SUCCESS,
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
