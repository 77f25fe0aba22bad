//! File operations confined beneath one directory.
//!
//! Every path is resolved by `openat2` from an `O_PATH` fd of the directory with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV`: a symlink, a `..` or a mount
//! that someone else placed on the way is refused, never followed. Creation is exclusive and
//! never follows the last component; removal is by parent fd and name. Mounting onto or off a
//! path goes through the magic link `/proc/self/fd/N` of an fd resolved this way, so it acts
//! on exactly the inode that was checked.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// `struct open_how` of openat2(2) (libc's is non-exhaustive, so it cannot be built here).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// A directory whose contents are only ever reached through [`Beneath`].
#[derive(Debug)]
pub struct Beneath {
    root: OwnedFd,
    path: PathBuf,
}

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `rel` split into its parent and final name; only plain components are accepted.
fn split(rel: &Path) -> io::Result<(&Path, &std::ffi::OsStr)> {
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a plain relative path", rel.display()),
        ));
    }
    let name = rel.file_name().ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok((rel.parent().unwrap_or(Path::new("")), name))
}

/// The path through which the kernel reaches exactly the file `fd` refers to.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

impl Beneath {
    /// Open `path` (itself not a symlink) as the root of confined operations.
    pub fn open(path: &Path) -> io::Result<Beneath> {
        let c = cstring(path)?;
        // SAFETY: open with a NUL-terminated path and flags; the fd returned is ours.
        let fd = check(unsafe {
            libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        })?;
        // SAFETY: the kernel just returned this fd to us.
        Ok(Beneath { root: unsafe { OwnedFd::from_raw_fd(fd) }, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resolve `rel` beneath the root with `flags` (an empty `rel` is the root itself).
    fn resolve(&self, rel: &Path, flags: libc::c_int, mode: u64) -> io::Result<OwnedFd> {
        let c = cstring(if rel.as_os_str().is_empty() { Path::new(".") } else { rel })?;
        let how = OpenHow {
            flags: (flags | libc::O_CLOEXEC) as u64,
            mode,
            resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_XDEV,
        };
        // SAFETY: openat2 reads the path and the open_how struct, which outlive the call, and
        // returns a new fd or -1.
        let fd = unsafe {
            libc::syscall(libc::SYS_openat2, self.root.as_raw_fd(), c.as_ptr(), &how, std::mem::size_of::<OpenHow>())
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd to us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
    }

    fn dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.resolve(rel, libc::O_PATH | libc::O_DIRECTORY, 0)
    }

    /// An `O_PATH` fd of `rel` itself. Without `O_NOFOLLOW`, RESOLVE_NO_SYMLINKS refuses a
    /// symlink in the last component too (with it, the kernel would hand out the link).
    pub fn open_path(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.resolve(rel, libc::O_PATH, 0)
    }

    /// Create directory `rel` and any missing parents, each with `mode`; existing directories
    /// are fine, anything else in the way is an error.
    pub fn mkdir_all(&self, rel: &Path, mode: libc::mode_t) -> io::Result<()> {
        split(rel)?;
        let mut done = PathBuf::new();
        for part in rel.components() {
            let parent = self.dir(&done)?;
            let name = cstring(Path::new(part.as_os_str()))?;
            // SAFETY: mkdirat with a dir fd we own and a NUL-terminated name.
            if unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), mode) } < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(e);
                }
            }
            done.push(part);
            // A directory of ours, not something planted there.
            self.dir(&done)?;
        }
        Ok(())
    }

    /// Create the empty file `rel`, which must not exist yet.
    pub fn create_file(&self, rel: &Path, mode: libc::mode_t) -> io::Result<()> {
        let (parent, name) = split(rel)?;
        let parent = self.dir(parent)?;
        let name = cstring(Path::new(name))?;
        let flags = libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_WRONLY | libc::O_CLOEXEC;
        // SAFETY: openat with a dir fd we own and a NUL-terminated name; the fd is closed at once.
        let fd = check(unsafe { libc::openat(parent.as_raw_fd(), name.as_ptr(), flags, mode as libc::c_uint) })?;
        // SAFETY: the kernel just returned this fd to us.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(())
    }

    /// Remove the file or empty directory `rel` (never what is below a directory).
    pub fn remove(&self, rel: &Path, is_dir: bool) -> io::Result<()> {
        let (parent, name) = split(rel)?;
        let parent = self.dir(parent)?;
        let name = cstring(Path::new(name))?;
        let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
        // SAFETY: unlinkat with a dir fd we own and a NUL-terminated name.
        check(unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), flags) }).map(|_| ())
    }

    /// Detach everything mounted on `rel` (an absent path or no mount is fine). The parent is
    /// resolved beneath the root and the last component is not followed.
    pub fn unmount(&self, rel: &Path) -> io::Result<()> {
        let (parent, name) = split(rel)?;
        let parent = match self.dir(parent) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        let target = cstring(&fd_path(&parent).join(name))?;
        loop {
            // SAFETY: umount2 with a NUL-terminated path and flags.
            if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) } < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EINVAL | libc::ENOENT) => Ok(()),
                    _ => Err(e),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hull-beneath-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn creates_and_removes_beneath_the_root() {
        let dir = scratch("basic");
        let b = Beneath::open(&dir).unwrap();
        b.mkdir_all(Path::new("a/b/c"), 0o700).unwrap();
        b.mkdir_all(Path::new("a/b/c"), 0o700).unwrap();
        b.create_file(Path::new("a/b/f"), 0o600).unwrap();
        assert_eq!(b.create_file(Path::new("a/b/f"), 0o600).unwrap_err().raw_os_error(), Some(libc::EEXIST));
        assert!(dir.join("a/b/c").is_dir() && dir.join("a/b/f").is_file());
        b.remove(Path::new("a/b/f"), false).unwrap();
        b.remove(Path::new("a/b/c"), true).unwrap();
        assert!(!dir.join("a/b/c").exists());
        assert!(b.remove(Path::new("../x"), false).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Symlinks planted anywhere on the way are refused, for every operation.
    #[test]
    fn planted_symlinks_are_never_followed() {
        let dir = scratch("symlinks");
        let outside = scratch("symlinks-outside");
        std::fs::write(outside.join("canary"), "intact").unwrap();
        symlink(&outside, dir.join("containers")).unwrap();
        std::fs::create_dir(dir.join("real")).unwrap();
        symlink(outside.join("canary"), dir.join("real/file")).unwrap();
        let b = Beneath::open(&dir).unwrap();
        let refused = |e: io::Error| assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        refused(b.mkdir_all(Path::new("containers/c1/rootfs"), 0o700).unwrap_err());
        refused(b.create_file(Path::new("containers/new"), 0o600).unwrap_err());
        refused(b.open_path(Path::new("real/file")).unwrap_err());
        refused(b.remove(Path::new("containers/canary"), false).unwrap_err());
        assert_eq!(b.create_file(Path::new("real/file"), 0o600).unwrap_err().raw_os_error(), Some(libc::EEXIST));
        assert_eq!(std::fs::read_to_string(outside.join("canary")).unwrap(), "intact");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1, "nothing was created outside");
        // The root itself must not be a symlink either.
        assert!(Beneath::open(&dir.join("containers")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }
}
