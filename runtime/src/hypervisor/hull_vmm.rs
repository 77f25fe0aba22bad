//! hull's own VMM: the same devices as the QEMU backend (serial console, vsock, virtio-fs from
//! virtiofsd, virtio-net taps), with vsock served in-process and the VMM jailed in the
//! sandbox's `vmm/` directory.

use std::process::{Command, Stdio};

use super::{create_log, Hypervisor, HypervisorError, Result, VmConfig};
use crate::process::{inherit_fds, ChildProc};

/// First fd number taps are placed at in the hull-vmm process.
const FIRST_TAP_FD: i32 = 100;

pub struct HullVmm {
    pub binary: std::path::PathBuf,
}

impl HullVmm {
    pub fn command(&self, vm: &VmConfig) -> Result<Command> {
        std::fs::create_dir_all(&vm.jail_dir)
            .map_err(|source| HypervisorError::Io { path: vm.jail_dir.clone(), source })?;
        let log = create_log(&vm.vmm_log)?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--kernel")
            .arg(&vm.kernel)
            .arg("--initrd")
            .arg(&vm.initramfs)
            .args(["--cmdline", &vm.cmdline])
            .args(["--vcpus", &vm.vcpus.to_string(), "--memory-mib", &vm.memory_mib.to_string()])
            .arg("--console-log")
            .arg(&vm.console_log)
            .args(["--console-cap", &crate::log_sink::console_cap().to_string()])
            .args(["--vsock-cid", &vm.guest_cid.to_string()])
            .arg("--vsock-uds")
            .arg(&vm.vsock_socket)
            .arg("--fs-socket")
            .arg(&vm.virtiofs_socket)
            .args(["--fs-tag", &vm.virtiofs_tag])
            .arg("--jail")
            .arg(&vm.jail_dir)
            // As QEMU's balloon: memory the guest frees goes back to the host.
            .arg("--free-page-reporting")
            // It jails itself (mount namespace, capabilities, seccomp); the uid is the sandbox's.
            .args(match vm.jail.enabled {
                true => vec!["--uid".to_string(), vm.jail.uid.to_string(), "--gid".into(), vm.jail.gid.to_string()],
                false => Vec::new(),
            })
            .env("HULL_VMM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        crate::cgroup::join_on_exec(&mut cmd, &vm.jail.cgroups)?;
        // hull-vmm takes one NIC; more would need a JSON config, which the sandbox never asks for.
        if let Some(nic) = vm.nics.first() {
            if vm.nics.len() > 1 {
                return Err(HypervisorError::TooManyNics(vm.nics.len()));
            }
            cmd.args(["--tap-fd", &FIRST_TAP_FD.to_string(), "--mac", &nic.mac]);
            inherit_fds(&mut cmd, vec![(nic.tap_fd, FIRST_TAP_FD)]);
        }
        Ok(cmd)
    }
}

impl Hypervisor for HullVmm {
    fn name(&self) -> &'static str {
        "hull-vmm"
    }

    fn kernel(&self, assets: &crate::assets::Assets) -> std::path::PathBuf {
        assets.vmlinux.clone()
    }

    fn serves_vsock(&self) -> bool {
        true
    }

    fn caps_console(&self) -> bool {
        true
    }

    fn launch(&self, vm: &VmConfig) -> Result<ChildProc> {
        Ok(ChildProc::spawn("hull-vmm", &mut self.command(vm)?)?)
    }
}
