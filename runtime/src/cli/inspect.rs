//! Read-only verbs: `list`, `ps`, `features`.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use super::{Cli, Format};
use crate::state::{StateDir, Status};
use crate::supervisor::control::{request_reply, ControlRequest};
use crate::supervisor;

pub fn list(cli: &Cli, format: Format, quiet: bool) -> Result<i32> {
    let mut states = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&cli.root) {
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let Ok(dir) = StateDir::new(&cli.root, &id) else { continue };
            let Ok(mut state) = dir.read() else { continue };
            state.status = supervisor::effective_status(&state);
            if state.status == Status::Stopped {
                state.pid = None;
            }
            states.push(state);
        }
    }
    states.sort_by(|a, b| a.id.cmp(&b.id));
    match (format, quiet) {
        (_, true) => states.iter().for_each(|s| super::emit(&s.id)),
        (Format::Json, false) => super::emit(&serde_json::to_string(&states)?),
        (Format::Table, false) => {
            super::emit(&format!("{:<20} {:<8} {:<10} {:<40} CREATED", "ID", "PID", "STATUS", "BUNDLE"));
            for s in &states {
                let pid = s.pid.map(|p| p.to_string()).unwrap_or_else(|| "0".into());
                super::emit(&format!("{:<20} {:<8} {:<10} {:<40} {}", s.id, pid, s.status.as_str(), s.bundle.display(), s.created));
            }
        }
    }
    Ok(0)
}

/// Processes of a container, as guest pids (the only pids that mean anything for a VM).
pub fn ps(cli: &Cli, id: &str, format: Format) -> Result<i32> {
    let dir = StateDir::new(&cli.root, id)?;
    let state = dir.read()?;
    let status = supervisor::effective_status(&state);
    if !matches!(status, Status::Created | Status::Running | Status::Paused) {
        anyhow::bail!("container {id} is {}", status.as_str());
    }
    let reply = request_reply(&dir.control_socket(), &ControlRequest::Ps, Some(Duration::from_secs(90)))?;
    let processes = reply.processes.unwrap_or_default();
    match format {
        Format::Json => super::emit(&serde_json::to_string(&processes.iter().map(|p| p.pid).collect::<Vec<_>>())?),
        Format::Table => {
            super::emit(&format!("{:<8} CMD", "PID"));
            for p in &processes {
                super::emit(&format!("{:<8} {}", p.pid, p.cmdline));
            }
        }
    }
    Ok(0)
}

/// runtime-spec "features" document.
pub fn features() -> Result<i32> {
    let features = json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": [],
        "mountOptions": ["ro", "rw", "nosuid", "nodev", "noexec", "bind", "rbind", "relatime", "strictatime"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts", "user"],
            "capabilities": ALL_CAPABILITIES,
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {
            "io.github.hull.vm": "every container runs in its own microVM",
            "io.github.hull.hypervisor": if crate::hypervisor::hardware_kvm() { "qemu (kvm)" } else { "qemu (tcg)" }
        }
    });
    super::emit(&serde_json::to_string_pretty(&features)?);
    Ok(0)
}

const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN",
    "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
];
