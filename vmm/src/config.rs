//! What one VM is made of, from a JSON file or from flags. Every check names the field.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmmConfig {
    /// vmlinux (64-bit ELF) or bzImage.
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default)]
    pub cmdline: String,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// Serial console output; standard output when absent.
    #[serde(default)]
    pub console_log: Option<PathBuf>,
    /// Bytes of guest output the console log keeps (the guest can print without end).
    #[serde(default = "default_console_log_cap")]
    pub console_log_cap: u64,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub fs: Option<FsConfig>,
    #[serde(default)]
    pub net: Vec<NetConfig>,
    #[serde(default)]
    pub jail: Option<JailConfig>,
    /// Attach a virtio-balloon for free page reporting: memory the guest frees goes back to
    /// the host. The balloon is never inflated.
    #[serde(default)]
    pub free_page_reporting: bool,
    /// Where SIGUSR1 saves the VM (see `snapshot`); the file is created (mode 0600) or
    /// emptied at start, before the jail, and the VM ends once it is written.
    #[serde(default)]
    pub snapshot_to: Option<PathBuf>,
    /// Start from this snapshot instead of booting the kernel. The rest of the configuration
    /// must be what the snapshot was made with (checked, naming what differs); the devices'
    /// host ends (sockets, taps, log files) may be new.
    #[serde(default)]
    pub restore_from: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    pub guest_cid: u64,
    /// Host side of the hybrid vsock: the host connects here and writes `CONNECT <port>\n`;
    /// guest-initiated connections to port P go to `<uds>_P`.
    pub uds: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// vhost-user socket of the virtio-fs backend (virtiofsd).
    pub socket: PathBuf,
    pub tag: String,
    #[serde(default = "default_fs_queue_size")]
    pub queue_size: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Name of an existing tap device to open ...
    #[serde(default)]
    pub tap: Option<String>,
    /// ... or an already-open tap file descriptor inherited from the caller.
    #[serde(default)]
    pub tap_fd: Option<i32>,
    /// Guest MAC, `aa:bb:cc:dd:ee:ff`.
    #[serde(default)]
    pub mac: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// The directory that becomes `/` for the VMM. Sockets the VMM serves or connects to after
    /// jailing (the vsock socket and its `_<port>` peers) must live inside it.
    pub dir: PathBuf,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
    /// RLIMIT_NOFILE for the jailed VMM.
    #[serde(default = "default_nofile")]
    pub max_open_files: u64,
}

fn default_vcpus() -> u8 {
    1
}
fn default_memory() -> u64 {
    128
}
pub fn default_console_log_cap() -> u64 {
    64 << 20
}
fn default_fs_queue_size() -> u16 {
    1024
}
fn default_nofile() -> u64 {
    2048
}

/// The MP table, IO-APIC id and CPUID topology fields are sized for this many.
pub const MAX_VCPUS: u8 = 32;

#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { field: field.to_string(), message: message.into() }
}

fn bad_at(list: &str, index: usize, field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { field: format!("{list}[{index}].{field}"), message: message.into() }
}

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<_> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        mac[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

impl VmmConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.kernel.is_file() {
            return Err(bad("kernel", format!("{} is not a file", self.kernel.display())));
        }
        if let Some(initrd) = &self.initrd {
            if !initrd.is_file() {
                return Err(bad("initrd", format!("{} is not a file", initrd.display())));
            }
        }
        if self.snapshot_to.is_some() || self.restore_from.is_some() {
            let field = if self.snapshot_to.is_some() { "snapshot_to" } else { "restore_from" };
            let mut devices = Vec::new();
            if self.vsock.is_some() {
                devices.push("vsock");
            }
            if self.fs.is_some() {
                devices.push("fs");
            }
            if !self.net.is_empty() {
                devices.push("net");
            }
            if self.free_page_reporting {
                devices.push("free_page_reporting");
            }
            // The virtio devices' own state (transport, queues, backends) is not saved yet.
            if !devices.is_empty() {
                return Err(bad(
                    field,
                    format!("snapshots of VMs with virtio devices are not supported yet ({})", devices.join(", ")),
                ));
            }
        }
        if let Some(r) = &self.restore_from {
            if !r.is_file() {
                return Err(bad("restore_from", format!("{} is not a file", r.display())));
            }
            if self.snapshot_to.is_some() {
                return Err(bad("snapshot_to", "a restored VM cannot be snapshotted again (not supported yet)"));
            }
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(bad("vcpus", format!("{} is out of range (1 to {MAX_VCPUS})", self.vcpus)));
        }
        if !(16..=65536).contains(&self.memory_mib) {
            return Err(bad("memory_mib", format!("{} is out of range (16 to 65536)", self.memory_mib)));
        }
        if self.cmdline.len() >= crate::arch::layout::CMDLINE_MAX_SIZE - 512 {
            return Err(bad("cmdline", "longer than 3.5 KiB"));
        }
        if let Some(v) = &self.vsock {
            if v.guest_cid < 3 || v.guest_cid >= u64::from(u32::MAX) {
                return Err(bad(
                    "vsock.guest_cid",
                    format!("{} is reserved or out of range (3 to 2^32-2)", v.guest_cid),
                ));
            }
            if v.uds.as_os_str().len() > 100 {
                return Err(bad("vsock.uds", "path too long for a unix socket (with its _<port> peers)"));
            }
        }
        if let Some(fs) = &self.fs {
            if fs.tag.is_empty() || fs.tag.len() > 36 {
                return Err(bad("fs.tag", "must be 1 to 36 bytes"));
            }
            if !fs.queue_size.is_power_of_two() || fs.queue_size > 32768 {
                return Err(bad("fs.queue_size", "must be a power of two up to 32768"));
            }
        }
        for (i, n) in self.net.iter().enumerate() {
            if n.tap.is_some() == n.tap_fd.is_some() {
                return Err(bad_at("net", i, "tap", "give exactly one of tap (a name) or tap_fd"));
            }
            if let Some(mac) = &n.mac {
                if parse_mac(mac).is_none() {
                    return Err(bad_at("net", i, "mac", format!("{mac:?} is not aa:bb:cc:dd:ee:ff")));
                }
            }
        }
        if let Some(j) = &self.jail {
            if j.uid.is_some() != j.gid.is_some() {
                return Err(bad("jail.uid", "give uid and gid together (a uid alone would keep root's groups)"));
            }
            if !j.dir.is_absolute() || !j.dir.is_dir() {
                return Err(bad("jail.dir", format!("{} is not an existing absolute directory", j.dir.display())));
            }
            if let Some(v) = &self.vsock {
                if !v.uds.starts_with(&j.dir) {
                    return Err(bad("vsock.uds", "must be inside jail.dir, where the jailed VMM can reach it"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> VmmConfig {
        serde_json::from_str(r#"{"kernel": "/proc/self/exe"}"#).unwrap()
    }

    #[test]
    fn defaults_and_field_names_in_errors() {
        let c = base();
        assert_eq!((c.vcpus, c.memory_mib), (1, 128));
        c.validate().unwrap();
        let mut c = base();
        c.vcpus = 0;
        assert!(c.validate().unwrap_err().to_string().starts_with("vcpus:"));
        let mut c = base();
        c.vsock = Some(VsockConfig { guest_cid: 2, uds: "/tmp/x".into() });
        assert!(c.validate().unwrap_err().to_string().starts_with("vsock.guest_cid:"));
        let mut c = base();
        c.net = vec![NetConfig { tap: Some("t".into()), tap_fd: None, mac: Some("zz".into()) }];
        assert!(c.validate().unwrap_err().to_string().starts_with("net[0].mac:"));
        let err = serde_json::from_str::<VmmConfig>(r#"{"kernel": "/k", "vcpu": 2}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `vcpu`"), "{err}");
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:00:00:00:00:01"), Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(parse_mac("02:00:00:00:00"), None);
        assert_eq!(parse_mac("02:00:00:00:00:1"), None);
    }
}
