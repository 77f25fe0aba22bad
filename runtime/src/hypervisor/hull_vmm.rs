//! hull's own VMM: the same devices as the QEMU backend (serial console, vsock, virtio-fs from
//! virtiofsd, virtio-net taps), with vsock served in-process and the VMM jailed in the
//! sandbox's `vmm/` directory.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use anyhow::Result;

use super::{Hypervisor, VmConfig};
use crate::process::ChildProc;

/// First fd number taps are placed at in the hull-vmm process.
const FIRST_TAP_FD: i32 = 100;

pub struct HullVmm {
    pub binary: std::path::PathBuf,
}

impl HullVmm {
    pub fn command(&self, vm: &VmConfig) -> Result<Command> {
        std::fs::create_dir_all(&vm.jail_dir)?;
        let log = std::fs::File::create(&vm.vmm_log)?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--kernel")
            .arg(&vm.kernel)
            .arg("--initrd")
            .arg(&vm.initramfs)
            .args(["--cmdline", &vm.cmdline])
            .args(["--vcpus", &vm.vcpus.to_string(), "--memory-mib", &vm.memory_mib.to_string()])
            .arg("--console-log")
            .arg(&vm.console_log)
            .args(["--vsock-cid", &vm.guest_cid.to_string()])
            .arg("--vsock-uds")
            .arg(&vm.vsock_socket)
            .arg("--fs-socket")
            .arg(&vm.virtiofs_socket)
            .args(["--fs-tag", &vm.virtiofs_tag])
            .arg("--jail")
            .arg(&vm.jail_dir)
            .env("HULL_VMM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // hull-vmm takes one NIC; more would need a JSON config, which the sandbox never asks for.
        if let Some(nic) = vm.nics.first() {
            anyhow::ensure!(vm.nics.len() == 1, "the hull-vmm backend attaches one NIC; this sandbox has {}", vm.nics.len());
            cmd.args(["--tap-fd", &FIRST_TAP_FD.to_string(), "--mac", &nic.mac]);
            let fd = nic.tap_fd;
            // SAFETY: dup2 and fcntl are async-signal-safe; the tap fd stays open in the parent
            // (owned by the network attachment) until spawn returns.
            unsafe {
                cmd.pre_exec(move || {
                    // dup2 onto itself keeps close-on-exec; clear it explicitly then.
                    let rc = if fd == FIRST_TAP_FD {
                        libc::fcntl(fd, libc::F_SETFD, 0)
                    } else {
                        libc::dup2(fd, FIRST_TAP_FD)
                    };
                    if rc < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
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

    fn launch(&self, vm: &VmConfig) -> Result<ChildProc> {
        ChildProc::spawn("hull-vmm", &mut self.command(vm)?)
    }
}
