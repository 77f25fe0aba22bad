//! Removal of a tree by directory fd and name: nothing on the way is followed, so a symlink
//! planted in the tree is removed, never the thing it points at.
//!
//! The walk holds one directory fd at a time and climbs back with `..`, so no depth (symlinks
//! let a layer build trees deeper than any one path) runs it out of fds. `..` is safe here:
//! the tree is the unpack's own and nothing else moves directories in it meanwhile.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

const DIR_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

fn is_dir(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<bool>> {
    match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn unlink(parent: BorrowedFd<'_>, name: &OsStr, dir: bool) -> io::Result<()> {
    let flag = if dir { UnlinkatFlags::RemoveDir } else { UnlinkatFlags::NoRemoveDir };
    match unlinkat(parent, name, flag) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Unlinks everything in `dir` but its subdirectories, which it returns.
fn clear_files(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    let mut listing = Dir::from_fd(dir.try_clone()?)?;
    let mut subdirs = Vec::new();
    for child in children(&mut listing)? {
        match is_dir(dir.as_fd(), &child)? {
            Some(true) => subdirs.push(child),
            Some(false) => unlink(dir.as_fd(), &child, false)?,
            None => {}
        }
    }
    Ok(subdirs)
}

/// Removes `name` in `parent`, recursively if it is a directory; a missing `name` is fine.
pub fn remove_all_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match is_dir(parent, name)? {
        None => return Ok(()),
        Some(false) => return unlink(parent, name, false),
        Some(true) => {}
    }
    let mut here = openat(parent, name, DIR_FLAGS, Mode::empty())?;
    // Each level: its name in the level above, and its subdirectories still to remove.
    let mut levels: Vec<(OsString, Vec<OsString>)> = vec![(name.to_owned(), clear_files(&here)?)];
    loop {
        let pending = &mut levels.last_mut().expect("the walk ends when the top level goes").1;
        if let Some(child) = pending.pop() {
            match openat(&here, child.as_os_str(), DIR_FLAGS, Mode::empty()) {
                Ok(down) => {
                    let subdirs = clear_files(&down)?;
                    levels.push((child, subdirs));
                    here = down;
                }
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(e.into()),
            }
            continue;
        }
        let (done, _) = levels.pop().expect("checked above");
        if levels.is_empty() {
            return unlink(parent, &done, true);
        }
        let up = openat(&here, "..", DIR_FLAGS, Mode::empty())?;
        unlink(up.as_fd(), &done, true)?;
        here = up;
    }
}

/// The names in `dir` but `.` and `..`.
pub fn children(dir: &mut Dir) -> io::Result<Vec<OsString>> {
    use std::os::unix::ffi::OsStrExt;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let bytes = entry.file_name().to_bytes();
        if bytes != b"." && bytes != b".." {
            names.push(OsStr::from_bytes(bytes).to_owned());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deep_tree_goes_with_few_fds_and_symlinks_are_not_followed() {
        let top = std::env::temp_dir().join(format!("hull-remove-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        let outside = top.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"keep").unwrap();
        // 3000 levels: deeper than the 1024 fds a process gets by default.
        let tree = top.join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        let mut fd: OwnedFd = std::fs::File::open(&tree).unwrap().into();
        for i in 0..3000 {
            nix::sys::stat::mkdirat(&fd, "d", Mode::from_bits_truncate(0o755)).unwrap();
            if i % 500 == 0 {
                nix::unistd::symlinkat(&outside, &fd, "link").unwrap();
                nix::sys::stat::mkdirat(&fd, "wide", Mode::from_bits_truncate(0o755)).unwrap();
            }
            fd = openat(&fd, "d", DIR_FLAGS, Mode::empty()).unwrap();
        }
        drop(fd);
        let top_fd: OwnedFd = std::fs::File::open(&top).unwrap().into();
        remove_all_at(top_fd.as_fd(), OsStr::new("tree")).unwrap();
        assert!(!tree.exists());
        assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"keep");
        std::fs::remove_dir_all(&top).unwrap();
    }
}
