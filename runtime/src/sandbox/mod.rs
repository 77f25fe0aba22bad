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
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::agent::{Agent, AgentError, AgentNotice};
use crate::assets::Assets;
use crate::cgroup::{CgroupError, HostCgroup};
use crate::hypervisor::{self, BackendKind, HypervisorError, Nic, VmConfig};
use crate::jail::{JailError, JailId, JailSpec, UidRange};
use crate::process::{ChildProc, ProcessError};
use crate::share::{Layout, ShareError};
use crate::state::StateDir;

/// The virtio-fs tag the agent mounts.
pub const SHARE_TAG: &str = "hull";
/// Guest context id (any value ≥ 3 works: each VM has its own backend).
const GUEST_CID: u32 = 3;
/// How long the guest may take from VMM start to an answering agent (TCG is slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// [`BOOT_TIMEOUT`], or `HULL_BOOT_TIMEOUT` (seconds) where boots are slower still: the
/// nested rig's L1, where KVM itself runs under TCG, boots 20 VMs at once past 90 s.
fn boot_timeout() -> Duration {
    std::env::var("HULL_BOOT_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&s: &u64| s > 0)
        .map(Duration::from_secs)
        .unwrap_or(BOOT_TIMEOUT)
}

/// The guest kernel's command line. `HULL_KERNEL_APPEND` adds to it (a debugging aid, e.g.
/// `loglevel=7 printk.time=1` to see where a boot spends its time); it comes from the host's
/// user, never from a bundle or the guest.
const KERNEL_CMDLINE: &str = "console=ttyS0 quiet panic=-1 reboot=t nomodule no_timer_check";
/// x86's kernel command line limit (COMMAND_LINE_SIZE), with its NUL.
const KERNEL_CMDLINE_MAX: usize = 2047;
/// What either VMM appends after ours: a `virtio_mmio.device=SIZE@ADDR:IRQ` (about 36 bytes)
/// per device. A longer line would be cut by the kernel, devices first.
const VMM_CMDLINE_RESERVE: usize = 256;

fn kernel_cmdline() -> Result<String> {
    kernel_cmdline_with(&std::env::var("HULL_KERNEL_APPEND").unwrap_or_default())
}

fn kernel_cmdline_with(extra: &str) -> Result<String> {
    let cmdline = match extra.trim() {
        "" => KERNEL_CMDLINE.to_string(),
        extra => format!("{KERNEL_CMDLINE} {extra}"),
    };
    if let Some(at) = extra.bytes().position(|b| b.is_ascii_control()) {
        return Err(SandboxError::KernelAppend(format!(
            "byte {at} is a control character (0x{:02x})",
            extra.as_bytes()[at]
        )));
    }
    let room = KERNEL_CMDLINE_MAX - VMM_CMDLINE_RESERVE;
    if cmdline.len() > room {
        return Err(SandboxError::KernelAppend(format!(
            "the command line would be {} bytes, more than the {room} that the kernel's {KERNEL_CMDLINE_MAX} leave \
             after the VMM's device parameters",
            cmdline.len()
        )));
    }
    Ok(cmdline)
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("HULL_KERNEL_APPEND: {0}")]
    KernelAppend(String),
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Share(#[from] ShareError),
    #[error(transparent)]
    Jail(#[from] JailError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The VM started but the agent never answered.
    #[error(transparent)]
    Boot(Box<BootError>),
}

/// A boot that did not reach the agent, naming the logs to read.
#[derive(Debug, thiserror::Error)]
#[error("booting the sandbox (guest console {}: {console_tail}; {vmm} log {}: {vmm_tail}): {failure}", console.display(), vmm_log.display())]
pub struct BootError {
    pub failure: BootFailure,
    pub console: PathBuf,
    pub console_tail: String,
    pub vmm: &'static str,
    pub vmm_log: PathBuf,
    pub vmm_tail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BootFailure {
    #[error("the guest agent did not start within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

type Result<T> = std::result::Result<T, SandboxError>;

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

/// The processes of a VM: its VMM and the daemons serving its devices.
pub struct Sandbox {
    /// The VMM first: stopping it first lets the daemons see their frontend go.
    procs: Vec<ChildProc>,
    vsock_socket: PathBuf,
    /// The unprivileged uid its jailed processes run as, held for the sandbox's life.
    _jail: JailId,
    /// The host cgroup all of them run in; removed once they are gone.
    cgroup: HostCgroup,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // The processes first (their own drops stop them), then their cgroup.
        self.procs.clear();
        self.cgroup.remove();
    }
}

/// Open files a jailed VMM or backend may hold.
const JAIL_NOFILE: u64 = 4096;
/// Largest file a jailed process may write on its own account: its log.
const JAIL_FSIZE: u64 = 16 << 20;

/// A booted sandbox and its agent's connection.
pub struct Booted {
    pub sandbox: Sandbox,
    pub agent: Agent,
    pub notices: Receiver<AgentNotice>,
}

impl Sandbox {
    /// Boot with the container of `layout` built into the share privately for virtiofsd; with
    /// `None`, the caller has made the share a propagating mount and binds containers into it
    /// itself.
    pub fn boot(
        dir: &StateDir,
        assets: &Assets,
        config: &SandboxConfig,
        layout: Option<&Layout>,
        nics: Vec<Nic>,
        cgroup: HostCgroup,
    ) -> Result<Booted> {
        let hypervisor = hypervisor::select(config.backend, assets)?;
        let cmdline = kernel_cmdline()?;

        let mut procs = Vec::new();
        // The sandbox's own unprivileged uid, and the directory of sockets its jailed
        // processes share with the host.
        let id = UidRange::configured()?.allocate(&dir.dir.display().to_string())?;
        let sockets = dir.vmm_jail();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SandboxError::Io { path, source }
        };
        fs::create_dir_all(&sockets).map_err(io(&sockets))?;
        std::os::unix::fs::chown(&sockets, Some(id.uid), Some(id.gid)).map_err(io(&sockets))?;
        let jail = JailSpec {
            root: PathBuf::new(),
            uid: id.uid,
            gid: id.gid,
            groups: Vec::new(),
            read_only: Vec::new(),
            writable: vec![sockets.clone()],
            devices: Vec::new(),
            new_network: true,
            nofile: JAIL_NOFILE,
            fsize: JAIL_FSIZE,
            cgroups: cgroup.procs_files(),
            enabled: crate::jail::enabled(),
        };
        if !hypervisor.serves_vsock() {
            let mut vsock = vsock_backend::spawn(&assets.vsock_backend, dir, GUEST_CID, &jail)?;
            crate::process::wait_for_path(&dir.vhost_vsock_socket(), &mut vsock, Duration::from_secs(10))?;
            procs.push(vsock);
        }
        let mut fs_daemon = virtiofsd::spawn(&assets.virtiofsd, dir, layout, &cgroup.procs_files())?;
        let fs_socket = dir.virtiofsd_socket();
        crate::process::wait_for_path(&fs_socket, &mut fs_daemon, Duration::from_secs(10))?;
        procs.push(fs_daemon);
        // virtiofsd runs as root; the jailed VMM connects to its socket.
        std::os::unix::fs::chown(&fs_socket, Some(id.uid), Some(id.gid)).map_err(io(&fs_socket))?;

        // no_timer_check: under TCG on a loaded host the kernel's early check that the timer
        // reaches the IO-APIC can miss its ticks and panic ("IO-APIC + timer doesn't work").
        let vm = VmConfig {
            kernel: hypervisor.kernel(assets),
            initramfs: assets.initramfs.clone(),
            cmdline,
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
            console_fd: None,
            jail: JailSpec { root: dir.jail_root(hypervisor.name()), ..jail },
        };
        // A VMM that does not cap its console itself writes it through a capped sink.
        let console = match hypervisor.caps_console() {
            true => None,
            false => Some(
                crate::log_sink::sink(&vm.console_log, crate::log_sink::console_cap())
                    .map_err(|source| SandboxError::Io { path: vm.console_log.clone(), source })?,
            ),
        };
        let vm = VmConfig { console_fd: console.as_ref().map(|fd| fd.as_raw_fd()), ..vm };
        let started = Instant::now();
        procs.insert(0, hypervisor.launch(&vm)?);
        // The VMM holds its copy; ours goes, so the sink sees the end when the VMM does.
        drop(console);
        tracing::info!(backend = hypervisor.name(), "VM started; waiting for the agent");

        let vsock_socket = dir.vsock_socket();
        let timeout = boot_timeout();
        let deadline = started + timeout;
        let booted = wait_for_agent_banner(&dir.console_log(), deadline, timeout, &mut procs).and_then(|()| {
            tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "the agent's banner is on the console");
            let died = || procs.iter_mut().find_map(|p| p.check_alive().err()).map(|e| e.to_string());
            Ok(Agent::connect(&vsock_socket, deadline, died)?)
        });
        let (agent, notices) = booted.map_err(|failure| {
            let vmm_log = dir.dir.join("vmm.log");
            SandboxError::Boot(Box::new(BootError {
                failure,
                console: dir.console_log(),
                console_tail: console_tail(&dir.console_log()),
                vmm: hypervisor.name(),
                vmm_tail: console_tail(&vmm_log),
                vmm_log,
            }))
        })?;
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "agent ready");
        Ok(Booted { sandbox: Sandbox { procs, vsock_socket, _jail: id, cgroup }, agent, notices })
    }
}

impl crate::pod::Vm for Sandbox {
    fn vsock_socket(&self) -> &Path {
        &self.vsock_socket
    }

    fn pidfds(&self) -> std::result::Result<Vec<(&'static str, OwnedFd)>, ProcessError> {
        self.procs.iter().map(|p| Ok((p.name, p.pidfd()?))).collect()
    }

    fn how_it_ended(&mut self) -> Option<crate::pod::VmEnd> {
        cause(self.procs.iter_mut().filter_map(|p| p.check_alive().err()).collect())
    }

    fn oom_killed(&self) -> bool {
        self.cgroup.oom_kills() > 0
    }

    /// Stop the VM and its daemons, all at once. Nothing persists in the guest (virtio-fs
    /// writes are synchronous), so the VMM is killed outright; the daemons get a moment to
    /// exit on their own.
    fn shutdown(&mut self) {
        for (i, proc) in self.procs.iter_mut().enumerate() {
            proc.signal(if i == 0 { libc::SIGKILL } else { libc::SIGTERM });
        }
        let deadline = Instant::now() + Duration::from_millis(200);
        for proc in &mut self.procs {
            proc.reap_by(deadline);
        }
    }
}

/// Of the sandbox's processes that ended (in start order, the VMM first), the one to blame: the
/// first killed or failed, else the first that exited cleanly.
fn cause(ended: Vec<ProcessError>) -> Option<crate::pod::VmEnd> {
    let clean = |e: &ProcessError| matches!(e, ProcessError::Exited { how, .. } if how == "status 0");
    let cause = ended.iter().find(|e| !clean(e)).or(ended.first())?;
    Some(crate::pod::VmEnd { what: cause.to_string(), clean: clean(cause) })
}

/// What the agent prints on the console once its control port listens.
const AGENT_BANNER: &[u8] = b"hull-agent: ready";

/// Wait until the agent says on the console that it listens. Dialing vsock before the guest's
/// driver is up leaves requests stranded in the backend; the console is only a hint (the
/// handshake that follows is what is trusted).
fn wait_for_agent_banner(
    console: &Path,
    deadline: Instant,
    timeout: Duration,
    procs: &mut [ChildProc],
) -> std::result::Result<(), BootFailure> {
    loop {
        procs.iter_mut().try_for_each(|p| p.check_alive())?;
        if let Ok(text) = fs::read(console) {
            if text.windows(AGENT_BANNER.len()).any(|w| w == AGENT_BANNER) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(BootFailure::Timeout(timeout));
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
    if tail.is_empty() {
        "empty".into()
    } else {
        format!("last lines: {tail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_append_is_added_and_bounded() {
        assert_eq!(kernel_cmdline_with("").unwrap(), KERNEL_CMDLINE);
        let line = kernel_cmdline_with(" loglevel=7 ").unwrap();
        assert!(line.ends_with(" loglevel=7"), "{line}");
        let err = kernel_cmdline_with("a\tb").unwrap_err().to_string();
        assert_eq!(err, "HULL_KERNEL_APPEND: byte 1 is a control character (0x09)");
        let room = KERNEL_CMDLINE_MAX - VMM_CMDLINE_RESERVE;
        let fits = "x".repeat(room - KERNEL_CMDLINE.len() - 1);
        assert_eq!(kernel_cmdline_with(&fits).unwrap().len(), room);
        let err = kernel_cmdline_with(&format!("{fits}x")).unwrap_err().to_string();
        assert!(
            err.starts_with("HULL_KERNEL_APPEND: the command line would be 1792 bytes, more than the 1791"),
            "{err}"
        );
    }

    fn exited(name: &'static str, how: &str) -> ProcessError {
        ProcessError::Exited { name, how: how.to_string() }
    }

    #[test]
    fn the_process_that_was_killed_is_blamed_before_one_that_exited_cleanly() {
        // virtiofsd (later in start order) exited 0 when the VMM it served was killed.
        let end = cause(vec![exited("virtiofsd", "status 0"), exited("hull-vmm", "signal 9")]).unwrap();
        assert_eq!((end.what.contains("hull-vmm"), end.clean), (true, false), "{end:?}");
        let end = cause(vec![exited("hull-vmm", "status 1"), exited("virtiofsd", "signal 9")]).unwrap();
        assert!(end.what.contains("hull-vmm"), "the first unclean one, in start order: {end:?}");
        let end = cause(vec![exited("virtiofsd", "status 0")]).unwrap();
        assert!(end.clean && end.what.contains("virtiofsd"), "{end:?}");
        assert_eq!(cause(Vec::new()), None);
    }
}
