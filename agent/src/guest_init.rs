//! Bringing the guest up as PID 1, and taking it down.

use std::ffi::CString;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use nix::mount::{mount, MsFlags};
use nix::unistd::{chdir, chroot};

/// Where the host's virtio-fs share (tag [`SHARE_TAG`]) is mounted.
pub const SHARE_DIR: &str = "/run/hull/share";
pub const SHARE_TAG: &str = "hull";
/// Set across the re-exec that moves us off the initramfs.
const SWITCHED_ENV: &str = "HULL_AGENT_SWITCHED";

pub fn prepare() -> Result<()> {
    if std::env::var_os(SWITCHED_ENV).is_none() {
        switch_root()?; // does not return on success
    }
    mount_fs("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755"))?;
    crate::log::boot_step("root switched, /dev mounted");
    mount_fs("proc", "/proc", "proc", MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, None)?;
    mount_fs("sysfs", "/sys", "sysfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, None)?;
    mount_fs(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    mount_fs("tmpfs", "/dev/shm", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"))?;
    mount_fs("tmpfs", "/run", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"))?;
    mount_fs(SHARE_TAG, SHARE_DIR, "virtiofs", MsFlags::empty(), None)
        .context("mounting the host share (virtio-fs)")?;
    crate::log::boot_step("share mounted");
    // Shared, as systemd leaves a host's mounts: a container's binds then start as slaves of
    // their sources (runc's default on such a host), and its `shared`/`slave` options have a
    // peer group to act on.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>)
        .context("making the guest's mounts shared")?;
    // Containers get their own network namespaces; this only serves agent-side tools.
    bring_up_loopback();
    Ok(())
}

/// The initramfs is the kernel's `rootfs`, which `pivot_root` can never leave. Copy ourselves
/// into a fresh tmpfs, make it `/` and re-execute, so containers can `pivot_root` normally.
fn switch_root() -> Result<()> {
    const NEW_ROOT: &str = "/newroot";
    fs::create_dir_all(NEW_ROOT)?;
    mount(Some("tmpfs"), NEW_ROOT, Some("tmpfs"), MsFlags::empty(), Some("mode=0755"))
        .context("mounting the new root tmpfs")?;
    for dir in ["dev", "proc", "sys", "run", "tmp", "etc"] {
        fs::create_dir_all(Path::new(NEW_ROOT).join(dir))?;
    }
    fs::copy("/init", Path::new(NEW_ROOT).join("init")).context("copying /init")?;
    // Free the initramfs copy; the running image stays mapped until exec.
    let _ = fs::remove_file("/init");
    chdir(NEW_ROOT)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).context("moving the new root")?;
    chroot(".").context("chroot into the new root")?;
    chdir("/")?;
    let init = CString::new("/init").unwrap();
    let env = [CString::new(format!("{SWITCHED_ENV}=1")).unwrap(), CString::new("PATH=/bin:/sbin").unwrap()];
    let err = nix::unistd::execve(&init, std::slice::from_ref(&init), &env).unwrap_err();
    Err(err).context("re-executing /init in the new root")
}

fn mount_fs(src: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) -> Result<()> {
    fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
    mount(Some(src), target, Some(fstype), flags, data).with_context(|| format!("mounting {fstype} on {target}"))
}

fn bring_up_loopback() {
    // SAFETY: plain socket + ioctl on a local ifreq; no memory is shared with the kernel beyond
    // the call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return;
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
        }
        libc::close(fd);
    }
}

/// End the VM. With QEMU's `-no-reboot` and hull-vmm's i8042 handling, a reboot request
/// makes the VMM exit.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::park();
    }
}
