//! Snapshots: a paused VM's whole state in one file, and a new VM started from it.
//!
//! What is saved: every vCPU's KVM state ([`cpu`]), the in-kernel PICs, IO-APIC, PIT and clock
//! ([`vm`]), the serial port, and guest memory. The file ([`file`]) is versioned and
//! checksummed, and carries an [`Identity`]: the hull-vmm binary, kernel, initrd, command line,
//! VM shape and CPUID it was made with. A restore that would run under anything else is
//! refused, naming what differs, and nothing in a refused file is used.
//!
//! Memory is saved sparsely (pages the guest never touched, or handed back through the
//! balloon, are holes in the file), and a restore maps the file `MAP_PRIVATE`: every VM
//! restored from one file shares its clean pages through the page cache, and a page the guest
//! writes becomes that VM's own.

pub mod cpu;
pub mod file;
pub mod vm;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    #[error("snapshot {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// The file is not a snapshot this hull-vmm can read: bad magic, version, checksum, size.
    #[error("snapshot {path}: {why}")]
    Corrupt { path: String, why: String },
    /// A good file made for another VMM, kernel, initrd or VM shape.
    #[error("snapshot {path} was made for another VM: {field} differs (snapshot: {saved}, now: {now})")]
    Mismatch { path: String, field: &'static str, saved: String, now: String },
    #[error("snapshot: {0}")]
    Unsupported(String),
    #[error("snapshot state: {0}")]
    Invalid(String),
}

/// A file the snapshot depends on, known by what changes when it is replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub path: String,
    pub size: u64,
    pub mtime_ns: i128,
    pub inode: u64,
}

impl FileId {
    pub fn of(path: &Path) -> Result<FileId, SnapshotError> {
        let m =
            std::fs::metadata(path).map_err(|source| SnapshotError::Io { path: path.display().to_string(), source })?;
        Ok(FileId {
            path: path.display().to_string(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            inode: m.ino(),
        })
    }
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} bytes, mtime {} ns, inode {})", self.path, self.size, self.mtime_ns, self.inode)
    }
}

/// What a snapshot was made with; a restore must match every field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// hull-vmm's version and its executable: a rebuilt VMM may lay devices out differently.
    pub vmm: String,
    pub kernel: FileId,
    pub initrd: Option<FileId>,
    pub cmdline: String,
    pub vcpus: u8,
    pub memory_mib: u64,
    /// The devices, in the order they were plugged in (their MMIO windows and lines follow).
    pub devices: Vec<String>,
    /// A checksum of the CPUID every vCPU was given: the saved FPU and MSR state is only
    /// meaningful under the same CPU features.
    pub cpuid: u32,
}

impl Identity {
    /// The first field of `self` (the file's) that differs from `now`, as an error.
    pub fn check(&self, now: &Identity, path: &Path) -> Result<(), SnapshotError> {
        let path = path.display().to_string();
        let mismatch =
            |field, saved: String, now: String| Err(SnapshotError::Mismatch { path: path.clone(), field, saved, now });
        if self.vmm != now.vmm {
            return mismatch("hull-vmm", self.vmm.clone(), now.vmm.clone());
        }
        if self.kernel != now.kernel {
            return mismatch("kernel", self.kernel.to_string(), now.kernel.to_string());
        }
        if self.initrd != now.initrd {
            let show = |f: &Option<FileId>| f.as_ref().map_or("none".to_string(), |f| f.to_string());
            return mismatch("initrd", show(&self.initrd), show(&now.initrd));
        }
        if self.cmdline != now.cmdline {
            return mismatch("cmdline", self.cmdline.clone(), now.cmdline.clone());
        }
        if self.vcpus != now.vcpus {
            return mismatch("vcpus", self.vcpus.to_string(), now.vcpus.to_string());
        }
        if self.memory_mib != now.memory_mib {
            return mismatch("memory_mib", self.memory_mib.to_string(), now.memory_mib.to_string());
        }
        if self.devices != now.devices {
            return mismatch("devices", self.devices.join(","), now.devices.join(","));
        }
        if self.cpuid != now.cpuid {
            return mismatch("cpuid", format!("{:#010x}", self.cpuid), format!("{:#010x}", now.cpuid));
        }
        Ok(())
    }
}

/// This hull-vmm, as [`Identity::vmm`] names it: its version and its executable's size and
/// modification time (read once, before the jail hides the file).
pub fn vmm_identity() -> String {
    let exe = std::fs::metadata("/proc/self/exe")
        .map(|m| format!("{} bytes, mtime {}.{:09}", m.size(), m.mtime(), m.mtime_nsec()))
        .unwrap_or_else(|e| format!("unreadable executable: {e}"));
    format!("hull-vmm {} ({exe})", env!("CARGO_PKG_VERSION"))
}

/// COM1's registers (vm-superio's `SerialState`, which has no serde of its own).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl From<vm_superio::serial::SerialState> for SerialState {
    fn from(s: vm_superio::serial::SerialState) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialState> for vm_superio::serial::SerialState {
    fn from(s: &SerialState) -> Self {
        vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// Everything but guest memory, as the file stores it.
#[derive(Serialize, Deserialize)]
pub struct VmSnapshot {
    pub identity: Identity,
    pub vcpus: Vec<cpu::VcpuState>,
    pub vm: vm::VmState,
    pub serial: SerialState,
}
