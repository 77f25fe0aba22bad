//! A sandbox is one VM with its helper daemons, booted until the agent answers.
//!
//! Boot order: the vsock backend and virtiofsd create their vhost-user sockets, the VMM
//! connects to both, the guest kernel starts `hull-agent`, and the host connects to it over
//! hybrid vsock. Every step watches the processes already started, so a daemon that dies
//! fails the boot at once with its name; a failed boot stops whatever was started.

mod sizing;
mod virtiofsd;
mod vsock_backend;

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::agent_client::{AgentClient, AgentNotice};
use crate::assets::Assets;
use crate::hypervisor::{self, BackendKind, Nic, VmConfig};
use crate::process::ChildProc;
use crate::state::StateDir;

/// The virtio-fs tag the agent mounts.
pub const SHARE_TAG: &str = "hull";
/// Guest context id (any value ≥ 3 works: each VM has its own backend).
const GUEST_CID: u32 = 3;
/// How long the guest may take from VMM start to an answering agent (TCG is slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub backend: BackendKind,
    pub vcpus: u32,
    pub memory_mib: u32,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig { backend: BackendKind::Auto, vcpus: 1, memory_mib: 512 }
    }
}

/// What one container exposes in the share, under `share/<subdir>/`: its root filesystem at
/// `rootfs`, and each bind mount source at `mounts/<n>`.
pub struct SharedRootfs {
    pub host_path: PathBuf,
    pub subdir: String,
    pub binds: Vec<crate::bundle::BindMount>,
}

/// One bind into the share: host source, mountpoint in the share, and whether it is read-only
/// on the host side.
#[derive(Debug, Clone)]
pub struct ShareMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

impl SharedRootfs {
    /// The binds this container needs in the share, creating each mountpoint (a directory, or
    /// an empty file for a file source).
    pub fn mounts(&self, share: &Path) -> Result<Vec<ShareMount>> {
        let base = share.join(&self.subdir);
        let rootfs = base.join("rootfs");
        fs::create_dir_all(&rootfs).with_context(|| format!("creating {}", rootfs.display()))?;
        let mut pairs = vec![ShareMount { source: self.host_path.clone(), target: rootfs, read_only: false }];
        for bind in &self.binds {
            let target = base.join("mounts").join(bind.index.to_string());
            if bind.is_dir {
                fs::create_dir_all(&target)?;
            } else {
                fs::create_dir_all(base.join("mounts"))?;
                fs::File::create(&target)?;
            }
            pairs.push(ShareMount { source: bind.source.clone(), target, read_only: bind.read_only });
        }
        Ok(pairs)
    }
}

pub struct Sandbox {
    pub agent: Arc<AgentClient>,
    pub notices: Receiver<AgentNotice>,
    /// The VMM first: stopping it first lets the daemons see their frontend go.
    procs: Vec<ChildProc>,
    vsock_socket: PathBuf,
}

impl Sandbox {
    /// Boot with `rootfs` bound into the share privately for virtiofsd; with `None`, the
    /// caller has made the share a propagating mount and binds containers into it itself.
    pub fn boot(
        dir: &StateDir,
        assets: &Assets,
        config: &SandboxConfig,
        rootfs: Option<&SharedRootfs>,
        nics: Vec<Nic>,
    ) -> Result<Sandbox> {
        let hypervisor = hypervisor::select(config.backend, assets)?;
        let binds = rootfs.map(|r| r.mounts(&dir.share_dir())).transpose()?;

        let mut procs = Vec::new();
        std::fs::create_dir_all(dir.vmm_jail())?;
        if !hypervisor.serves_vsock() {
            let mut vsock = vsock_backend::spawn(&assets.vsock_backend, dir, GUEST_CID)?;
            crate::process::wait_for_path(&dir.vhost_vsock_socket(), &mut vsock, Duration::from_secs(10))?;
            procs.push(vsock);
        }
        let mut fs_daemon = virtiofsd::spawn(&assets.virtiofsd, dir, binds.as_deref())?;
        crate::process::wait_for_path(&dir.virtiofsd_socket(), &mut fs_daemon, Duration::from_secs(10))?;
        procs.push(fs_daemon);

        // no_timer_check: under TCG on a loaded host the kernel's early check that the timer
        // reaches the IO-APIC can miss its ticks and panic ("IO-APIC + timer doesn't work").
        let vm = VmConfig {
            kernel: hypervisor.kernel(assets),
            initramfs: assets.initramfs.clone(),
            cmdline: "console=ttyS0 quiet panic=-1 reboot=t nomodule no_timer_check".into(),
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
            console_log: dir.console_log(),
            vmm_log: dir.dir.join("vmm.log"),
            vsock_vhost_socket: dir.vhost_vsock_socket(),
            vsock_socket: dir.vsock_socket(),
            guest_cid: GUEST_CID,
            jail_dir: dir.vmm_jail(),
            virtiofs_socket: dir.virtiofsd_socket(),
            virtiofs_tag: SHARE_TAG.into(),
            nics,
        };
        let started = Instant::now();
        procs.insert(0, hypervisor.launch(&vm)?);
        tracing::info!(backend = hypervisor.name(), "VM started; waiting for the agent");

        let vsock_socket = dir.vsock_socket();
        let deadline = started + BOOT_TIMEOUT;
        let booted = wait_for_agent_banner(&dir.console_log(), deadline, &mut procs).and_then(|()| {
            AgentClient::connect(&vsock_socket, deadline, || procs.iter_mut().try_for_each(|p| p.check_alive()))
        });
        let (agent, notices) = booted.with_context(|| {
            let vmm_log = dir.dir.join("vmm.log");
            format!(
                "booting the sandbox (guest console {}: {}; {} log {}: {})",
                dir.console_log().display(),
                console_tail(&dir.console_log()),
                hypervisor.name(),
                vmm_log.display(),
                console_tail(&vmm_log),
            )
        })?;
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "agent ready");
        Ok(Sandbox { agent: Arc::new(agent), notices, procs, vsock_socket })
    }

    /// Pidfds of the VMM and daemons, each tagged with its name, for exit watching.
    pub fn pidfds(&self) -> Result<Vec<(&'static str, OwnedFd)>> {
        self.procs.iter().map(|p| Ok((p.name, p.pidfd()?))).collect()
    }

    /// Describe how any sandbox process ended, if one has.
    pub fn check_alive(&mut self) -> Result<()> {
        self.procs.iter_mut().try_for_each(|p| p.check_alive())
    }

    pub fn vsock_socket(&self) -> &Path {
        &self.vsock_socket
    }

    /// Stop the VM and its daemons, all at once. Nothing persists in the guest (virtio-fs
    /// writes are synchronous), so the VMM is killed outright; the daemons get a moment to
    /// exit on their own.
    pub fn shutdown(&mut self) {
        for (i, proc) in self.procs.iter_mut().enumerate() {
            proc.signal(if i == 0 { libc::SIGKILL } else { libc::SIGTERM });
        }
        let deadline = Instant::now() + Duration::from_millis(200);
        for proc in &mut self.procs {
            proc.reap_by(deadline);
        }
    }
}

/// What the agent prints on the console once its control port listens.
const AGENT_BANNER: &[u8] = b"hull-agent: ready";

/// Wait until the agent says on the console that it listens. Dialing vsock before the guest's
/// driver is up leaves requests stranded in the backend; the console is only a hint (the
/// handshake that follows is what is trusted).
fn wait_for_agent_banner(console: &Path, deadline: Instant, procs: &mut [ChildProc]) -> Result<()> {
    loop {
        procs.iter_mut().try_for_each(|p| p.check_alive())?;
        if let Ok(text) = fs::read(console) {
            if text.windows(AGENT_BANNER.len()).any(|w| w == AGENT_BANNER) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("the guest agent did not start within {BOOT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The last lines of the guest console, for error messages.
fn console_tail(console: &Path) -> String {
    let text = fs::read(console).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[text.len().saturating_sub(600)..]).into_owned();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(4)..].join(" | ");
    if tail.is_empty() { "empty".into() } else { format!("last lines: {tail}") }
}
