//! virtiofsd exports the sandbox's share directory to the guest.
//!
//! For the CLI's one container, the share is built inside a mount namespace private to
//! virtiofsd as it starts: a small tmpfs over the share dir holding the container's skeleton
//! (see [`crate::share`]), its root filesystem and bind mounts bound onto it, then the tmpfs
//! made read-only. The mounts exist only while virtiofsd does, so no crash of ours can leak
//! them on the host, and the guest cannot write anywhere in the share but inside the binds.
//! A shim's pod instead hands virtiofsd a share it keeps building itself.
//!
//! virtiofsd runs as root (its namespace sandbox and serving every guest uid need it), with
//! its seccomp filter killing on a violation, a bounded RLIMIT_NOFILE and RLIMIT_FSIZE, and
//! without the capabilities to make device nodes or set file capabilities.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{Result, SandboxError};
use crate::process::ChildProc;
use crate::share::{Layout, SKELETON_TMPFS};
use crate::state::StateDir;

/// Open files virtiofsd may hold (it keeps an fd per inode the guest looks up, or a file
/// handle where the filesystem has them). virtiofsd's own default is a million.
const NOFILE: u64 = 16_384;
/// Largest file virtiofsd may write on its own account: its log.
const LOG_CAP: u64 = 16 << 20;

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|e| SandboxError::Io { path: p.to_path_buf(), source: e.into() })
}

/// What the child builds before exec, prepared before the fork (it may not allocate).
struct Skeleton {
    share: CString,
    options: CString,
    dirs: Vec<CString>,
    files: Vec<CString>,
    /// (source, target, read-only)
    binds: Vec<(CString, CString, bool)>,
}

impl Skeleton {
    fn new(share: &Path, layout: &Layout) -> Result<Skeleton> {
        let at = |rel: &Path| cstring(&share.join(rel));
        Ok(Skeleton {
            share: cstring(share)?,
            options: CString::new(SKELETON_TMPFS).expect("no NUL"),
            dirs: layout.dirs.iter().map(|d| at(d)).collect::<Result<_>>()?,
            files: layout.files.iter().map(|f| at(f)).collect::<Result<_>>()?,
            binds: layout
                .binds
                .iter()
                .map(|m| Ok((cstring(&m.source)?, at(&m.target)?, m.read_only)))
                .collect::<Result<_>>()?,
        })
    }

    /// In the child: a private mount namespace with the skeleton over the share.
    ///
    /// # Safety
    /// Call only between fork and exec.
    unsafe fn build(&self) -> std::io::Result<()> {
        use libc::*;
        let check = |rc: c_int| if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
        let null = std::ptr::null();
        // SAFETY: async-signal-safe system calls, all of them, on NUL-terminated strings owned
        // by `self`, which outlives them.
        unsafe {
            check(unshare(CLONE_NEWNS))?;
            // Keep our mounts out of the host's namespace and the host's out of ours.
            check(mount(null, c"/".as_ptr(), null, MS_REC | MS_PRIVATE, null.cast()))?;
            let tmpfs = c"tmpfs".as_ptr();
            check(mount(tmpfs, self.share.as_ptr(), tmpfs, MS_NOSUID | MS_NODEV, self.options.as_ptr().cast()))?;
            for dir in &self.dirs {
                check(mkdir(dir.as_ptr(), 0o711))?;
            }
            for file in &self.files {
                let fd = open(file.as_ptr(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600);
                check(fd)?;
                close(fd);
            }
            for (source, target, read_only) in &self.binds {
                check(mount(source.as_ptr(), target.as_ptr(), null, MS_BIND | MS_REC, null.cast()))?;
                // A bind takes its flags only from a remount of the new mount.
                let mut flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV;
                if *read_only {
                    flags |= MS_RDONLY;
                }
                check(mount(null, target.as_ptr(), null, flags, null.cast()))?;
            }
            let ro = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV;
            check(mount(null, self.share.as_ptr(), null, ro, null.cast()))?;
        }
        Ok(())
    }
}

/// Start virtiofsd on the sandbox's share: built from `layout` in a namespace of its own, or,
/// with `None`, the share the caller keeps in its own namespace.
pub fn spawn(
    binary: &Path,
    dir: &StateDir,
    layout: Option<&Layout>,
    cgroups: &[std::path::PathBuf],
) -> Result<ChildProc> {
    let share = dir.share_dir();
    std::fs::create_dir_all(&share).map_err(|source| SandboxError::Io { path: share.clone(), source })?;
    let log_path = dir.dir.join("virtiofsd.log");
    let log = std::fs::File::create(&log_path).map_err(|source| SandboxError::Io { path: log_path, source })?;
    let skeleton = layout.map(|l| Skeleton::new(&share, l)).transpose()?;
    let mut cmd = Command::new(binary);
    cmd.arg(format!("--socket-path={}", dir.virtiofsd_socket().display()))
        .arg(format!("--shared-dir={}", share.display()))
        .args(["--sandbox=namespace", "--seccomp=kill", "--cache=never", "--log-level=error"])
        .arg(format!("--rlimit-nofile={NOFILE}"))
        // Devices and file capabilities made through the share would be the host's.
        .arg("--modcaps=-mknod:-setfcap")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // Into the sandbox's host cgroup before anything else.
    crate::cgroup::join_on_exec(&mut cmd, cgroups)?;
    // SAFETY: between fork and exec the closure makes only async-signal-safe system calls on
    // data prepared before the fork and moved into it.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(skeleton) = &skeleton {
                skeleton.build()?;
            }
            // What the guest creates keeps the modes it asks for, as under the usual umask,
            // not the runtime's own 077.
            libc::umask(0o022);
            // Nothing of ours but its stdio, and no way to gain privileges by exec.
            if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) < 0
                || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let fsize = libc::rlimit { rlim_cur: LOG_CAP, rlim_max: LOG_CAP };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &fsize) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Past the cap a write fails instead of killing virtiofsd.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    Ok(ChildProc::spawn("virtiofsd", &mut cmd)?)
}
