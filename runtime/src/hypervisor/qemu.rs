//! QEMU's `microvm` machine: no PCI, no ACPI, virtio-mmio devices announced on the kernel
//! command line, guest RAM in a shared memfd so vhost-user daemons can map it.

use std::process::{Command, Stdio};

use super::{Hypervisor, HypervisorError, Result, VmConfig};
use crate::process::{inherit_fds, ChildProc};

/// First fd number taps are placed at in the QEMU process (above anything std opens).
const FIRST_TAP_FD: i32 = 100;
/// Where the console pipe is placed in the QEMU process.
const CONSOLE_FD: i32 = 99;
/// TCG's translation cache, MiB. QEMU's default (1 GiB on 64-bit hosts) is only reserved, but a
/// busy guest fills it and QEMU never gives it back: a boot alone touches about 46 MiB of it.
/// At 16 MiB a boot flushes it, yet start to agent ready measured about the same and `hull run
/// true` about 10% slower; it bounds what a long-running sandbox can grow to. A guest that runs
/// much code at once (a console flood) slows more. `HULL_TCG_TB_MIB` changes it.
const TCG_TB_MIB: u32 = 16;

/// The translation cache size: [`TCG_TB_MIB`] or `HULL_TCG_TB_MIB`.
fn tcg_tb_mib() -> Result<u32> {
    match std::env::var("HULL_TCG_TB_MIB") {
        Err(_) => Ok(TCG_TB_MIB),
        Ok(v) => v.parse().ok().filter(|&m| (1..=4096).contains(&m)).ok_or(HypervisorError::BadSetting {
            name: "HULL_TCG_TB_MIB",
            value: v,
            expected: "a size in MiB from 1 to 4096",
        }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

pub struct Qemu {
    pub accel: Accel,
    pub binary: std::path::PathBuf,
}

impl Qemu {
    pub fn command(&self, vm: &VmConfig) -> Result<Command> {
        let mut cmd = Command::new(&self.binary);
        // QEMU's stderr takes what a guest can make it say: through a capped sink too.
        let log = std::fs::File::from(
            crate::log_sink::sink(&vm.vmm_log, crate::log_sink::VMM_LOG_CAP)
                .map_err(|source| HypervisorError::Io { path: vm.vmm_log.clone(), source })?,
        );
        let mem = format!("{}M", vm.memory_mib);
        // The console through the runtime's capped sink (an inherited pipe, as QEMU's fd set 1),
        // else straight into the log.
        let mut fds = Vec::new();
        let console = match vm.console_fd {
            Some(fd) => {
                fds.push((fd, CONSOLE_FD));
                cmd.args(["-add-fd", &format!("fd={CONSOLE_FD},set=1")]);
                // append: O_TRUNC would truncate, which a pipe refuses.
                "file,id=console,path=/dev/fdset/1,append=on".to_string()
            }
            None => format!("file,id=console,path={}", vm.console_log.display()),
        };
        cmd.args(["-M", "microvm,acpi=off,x-option-roms=off,memory-backend=mem"])
            .args([
                "-accel",
                &match self.accel {
                    Accel::Kvm => "kvm".to_string(),
                    Accel::Tcg => format!("tcg,tb-size={}", tcg_tb_mib()?),
                },
            ])
            .args([
                "-cpu",
                match self.accel {
                    Accel::Kvm => "host",
                    Accel::Tcg => "max",
                },
            ])
            .args(["-smp", &vm.vcpus.to_string(), "-m", &mem])
            .args(["-object", &format!("memory-backend-memfd,id=mem,size={mem},share=on")])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-display", "none"])
            .args(["-chardev", &console])
            .args(["-serial", "chardev:console"])
            .arg("-kernel")
            .arg(&vm.kernel)
            .arg("-initrd")
            .arg(&vm.initramfs)
            .args(["-append", &vm.cmdline])
            .args(["-chardev", &format!("socket,id=vsock,path={}", vm.vsock_vhost_socket.display())])
            .args(["-device", "vhost-user-vsock-device,chardev=vsock"])
            .args(["-chardev", &format!("socket,id=fs,path={}", vm.virtiofs_socket.display())])
            .args(["-device", &format!("vhost-user-fs-device,chardev=fs,tag={}", vm.virtiofs_tag)])
            // Free page reporting only: the guest hands back the 4 MiB blocks it has left free
            // and QEMU punches them out of the memfd. The balloon is never inflated.
            .args(["-device", "virtio-balloon-device,free-page-reporting=on"])
            // QEMU's own filter on top of the jail's: no obsolete system calls, no privilege
            // changes, no new processes, no resource control.
            .args(["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut jail = vm.jail.clone();
        // The guest's RAM is a memfd, which the file size limit applies to.
        jail.fsize = jail.fsize.max((u64::from(vm.memory_mib) + 1) << 20);
        jail.read_only.extend([vm.kernel.clone(), vm.initramfs.clone(), self.binary.clone()]);
        if self.accel == Accel::Kvm {
            let kvm = std::path::PathBuf::from("/dev/kvm");
            if let Ok(meta) = std::fs::metadata(&kvm) {
                jail.groups.push(std::os::unix::fs::MetadataExt::gid(&meta));
            }
            jail.devices.push(kvm);
        }
        // Before the fds are placed: the jail marks every inherited one close-on-exec.
        jail.apply(&mut cmd)?;
        // Taps are handed over as inherited fds at fixed numbers (one call places them all).
        for (i, nic) in vm.nics.iter().enumerate() {
            let target = FIRST_TAP_FD + i as i32;
            cmd.args(["-netdev", &format!("tap,id=net{i},fd={target}")])
                .args(["-device", &format!("virtio-net-device,netdev=net{i},mac={}", nic.mac)]);
            fds.push((nic.tap_fd, target));
        }
        inherit_fds(&mut cmd, fds);
        Ok(cmd)
    }
}

impl Hypervisor for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn launch(&self, vm: &VmConfig) -> Result<ChildProc> {
        Ok(ChildProc::spawn("qemu", &mut self.command(vm)?)?)
    }
}
