//! Hypervisor backends: the one thing that differs between running a sandbox on QEMU and on
//! hull-vmm is how the VM process is started. Devices and their semantics are the same.

mod hull_vmm;
mod qemu;

use std::path::PathBuf;

pub use hull_vmm::HullVmm;
pub use qemu::Qemu;

use crate::process::{ChildProc, ProcessError};

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("unknown hypervisor backend {0:?} (expected auto, qemu or hull-vmm)")]
    UnknownBackend(String),
    #[error("{} not found: the hull-vmm backend needs it (`make install`, or set HULL_VMM / HULL_ASSET_DIR)", .0.display())]
    Missing(PathBuf),
    #[error("{name}={value:?}: expected {expected}")]
    BadSetting { name: &'static str, value: String, expected: &'static str },
    #[error("the hull-vmm backend attaches one NIC; this sandbox has {0}")]
    TooManyNics(usize),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Launch(#[from] ProcessError),
    #[error(transparent)]
    Jail(#[from] crate::jail::JailError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
}

type Result<T> = std::result::Result<T, HypervisorError>;

/// A log file for the VMM's own diagnostics.
fn create_log(path: &std::path::Path) -> Result<std::fs::File> {
    std::fs::File::create(path).map_err(|source| HypervisorError::Io { path: path.to_path_buf(), source })
}

/// Everything a backend needs to start one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub cmdline: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub console_log: PathBuf,
    /// Where the VMM's own diagnostics go.
    pub vmm_log: PathBuf,
    /// vhost-user socket of the vsock backend (QEMU).
    pub vsock_vhost_socket: PathBuf,
    /// The hybrid vsock socket the runtime dials (hull-vmm serves it itself), and the guest CID.
    pub vsock_socket: PathBuf,
    pub guest_cid: u32,
    /// The directory hull-vmm confines itself to; it holds `vsock_socket`.
    pub jail_dir: PathBuf,
    /// vhost-user socket of virtiofsd, and the tag the guest mounts.
    pub virtiofs_socket: PathBuf,
    pub virtiofs_tag: String,
    /// virtio-net devices, each backed by an open tap.
    pub nics: Vec<Nic>,
    /// Where the serial console goes, for a VMM that does not cap `console_log` itself.
    pub console_fd: Option<std::os::fd::RawFd>,
    /// How the VMM is jailed: the sandbox's uid and gid, and what its root holds (the VMM adds
    /// its kernel, initramfs and devices).
    pub jail: crate::jail::JailSpec,
}

#[derive(Debug, Clone)]
pub struct Nic {
    pub tap_fd: std::os::fd::RawFd,
    pub mac: String,
}

pub trait Hypervisor {
    fn name(&self) -> &'static str;
    /// The kernel image this VMM boots.
    fn kernel(&self, assets: &crate::assets::Assets) -> PathBuf {
        assets.kernel.clone()
    }
    /// True when the VMM serves vsock in-process, so no vhost-user vsock daemon is started.
    fn serves_vsock(&self) -> bool {
        false
    }
    /// True when the VMM writes `console_log` itself, under a cap of its own.
    fn caps_console(&self) -> bool {
        false
    }
    /// Start the VM; it runs until the guest powers off or the process is killed.
    fn launch(&self, vm: &VmConfig) -> Result<ChildProc>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Auto,
    Qemu,
    HullVmm,
}

impl std::str::FromStr for BackendKind {
    type Err = HypervisorError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => BackendKind::Auto,
            "qemu" => BackendKind::Qemu,
            "hull-vmm" => BackendKind::HullVmm,
            other => return Err(HypervisorError::UnknownBackend(other.into())),
        })
    }
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Auto => "auto",
            BackendKind::Qemu => "qemu",
            BackendKind::HullVmm => "hull-vmm",
        }
    }

    /// This choice, or `HULL_BACKEND`, which overrides it: what [`select`] starts.
    pub fn overridden(self) -> Result<BackendKind> {
        match std::env::var("HULL_BACKEND") {
            Ok(v) if !v.is_empty() => v.parse(),
            _ => Ok(self),
        }
    }

    /// What `auto` (or this choice) runs on this host, for reports: `hull-vmm (kvm)`,
    /// `qemu (kvm)` or `qemu (tcg)`. `HULL_BACKEND` counts, as it does when a VM starts.
    pub fn resolved(self) -> Result<&'static str> {
        Ok(match (self.overridden()?, hardware_kvm()) {
            (BackendKind::HullVmm, _) | (BackendKind::Auto, true) => "hull-vmm (kvm)",
            (BackendKind::Qemu, true) => "qemu (kvm)",
            (BackendKind::Qemu | BackendKind::Auto, false) => "qemu (tcg)",
        })
    }
}

/// True where the CPU offers hardware virtualisation and /dev/kvm exists. A PVM host (KVM in
/// software) has /dev/kvm but no vmx/svm flag.
pub fn hardware_kvm() -> bool {
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_flag = flags
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    has_flag && std::path::Path::new("/dev/kvm").exists()
}

/// Pick the backend: `HULL_BACKEND` overrides the caller's choice.
pub fn select(kind: BackendKind, assets: &crate::assets::Assets) -> Result<Box<dyn Hypervisor>> {
    match kind.overridden()? {
        BackendKind::HullVmm => hull_vmm_backend(assets),
        BackendKind::Auto if hardware_kvm() => {
            tracing::info!("hypervisor: hull-vmm on hardware KVM");
            hull_vmm_backend(assets)
        }
        BackendKind::Qemu | BackendKind::Auto => {
            let accel = if hardware_kvm() { qemu::Accel::Kvm } else { qemu::Accel::Tcg };
            if accel == qemu::Accel::Tcg {
                warn_tcg_once();
            }
            Ok(Box::new(Qemu { accel, binary: assets.qemu.clone() }))
        }
    }
}

fn hull_vmm_backend(assets: &crate::assets::Assets) -> Result<Box<dyn Hypervisor>> {
    for path in [&assets.hull_vmm, &assets.vmlinux] {
        if !path.is_file() {
            return Err(HypervisorError::Missing(path.clone()));
        }
    }
    Ok(Box::new(HullVmm { binary: assets.hull_vmm.clone() }))
}

/// Say once per host boot (not on every container's stderr) that VMs run emulated.
fn warn_tcg_once() {
    let marker = std::path::Path::new("/run/hull-tcg-notice");
    if std::fs::OpenOptions::new().write(true).create_new(true).open(marker).is_ok() {
        eprintln!(
            "hull: no hardware virtualisation (vmx/svm) on this host: VMs run under QEMU's TCG emulation, \
             which is much slower than KVM (this notice is shown once per boot)"
        );
    }
    tracing::info!("hypervisor: QEMU with TCG (no hardware KVM)");
}
