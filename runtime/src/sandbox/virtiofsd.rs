//! virtiofsd exports the sandbox's share directory to the guest.
//!
//! The container rootfs is bind-mounted into the share inside a mount namespace private to
//! virtiofsd: the mount exists only while virtiofsd does, so no crash of ours can leak it on
//! the host.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::process::ChildProc;
use crate::state::StateDir;

pub fn spawn(binary: &Path, dir: &StateDir, rootfs: &Path, mountpoint: &Path) -> Result<ChildProc> {
    let log = std::fs::File::create(dir.dir.join("virtiofsd.log"))?;
    let source = CString::new(rootfs.as_os_str().as_bytes()).context("rootfs path")?;
    let target = CString::new(mountpoint.as_os_str().as_bytes()).context("share path")?;
    let mut cmd = Command::new(binary);
    cmd.arg(format!("--socket-path={}", dir.virtiofsd_socket().display()))
        .arg(format!("--shared-dir={}", dir.share_dir().display()))
        .args(["--sandbox=namespace", "--cache=never", "--log-level=error"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: only async-signal-safe syscalls (unshare, mount) on C strings allocated before
    // the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Keep our mounts out of the host's namespace and the host's out of ours.
            let root = c"/";
            if libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::mount(source.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    ChildProc::spawn("virtiofsd", &mut cmd)
}
