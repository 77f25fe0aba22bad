//! virtiofsd exports the sandbox's share directory to the guest.
//!
//! The container rootfs and its bind mounts are bind-mounted into the share inside a mount
//! namespace private to virtiofsd: the mounts exist only while virtiofsd does, so no crash of
//! ours can leak them on the host.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{Result, SandboxError};
use crate::process::ChildProc;
use crate::share::ShareMount;
use crate::state::StateDir;

/// Start virtiofsd with each bind mounted first in a namespace of its own (read-only ones
/// remounted read-only); the mountpoints must exist. With `None`, virtiofsd stays in the
/// caller's namespace and sees what the caller mounts into the share later.
pub fn spawn(binary: &Path, dir: &StateDir, binds: Option<&[ShareMount]>) -> Result<ChildProc> {
    let log_path = dir.dir.join("virtiofsd.log");
    let log = std::fs::File::create(&log_path).map_err(|source| SandboxError::Io { path: log_path, source })?;
    let private = binds.is_some();
    let binds: Vec<(CString, CString, bool)> = binds
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let c = |p: &Path| {
                CString::new(p.as_os_str().as_bytes())
                    .map_err(|e| SandboxError::Io { path: p.to_path_buf(), source: e.into() })
            };
            Ok((c(&m.source)?, c(&m.target)?, m.read_only))
        })
        .collect::<Result<_>>()?;
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
            if !private {
                return Ok(());
            }
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Keep our mounts out of the host's namespace and the host's out of ours.
            let root = c"/";
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            for (source, target, read_only) in &binds {
                let flags = libc::MS_BIND | libc::MS_REC;
                if libc::mount(source.as_ptr(), target.as_ptr(), std::ptr::null(), flags, std::ptr::null()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // A bind ignores MS_RDONLY; it takes a remount of the new mount.
                let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
                if *read_only
                    && libc::mount(std::ptr::null(), target.as_ptr(), std::ptr::null(), ro, std::ptr::null()) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(ChildProc::spawn("virtiofsd", &mut cmd)?)
}
