//! Removal of a tree by directory fd and name: nothing on the way is followed, so a symlink
//! planted in the tree is removed, never the thing it points at.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// Deeper trees than this are refused (a layer cannot make one: entries are capped shallower).
const MAX_DEPTH: usize = 4096;

/// Removes `name` in `parent`, recursively if it is a directory; a missing `name` is fine.
pub fn remove_all_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    remove_at_depth(parent, name, 0)
}

fn is_dir(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<bool>> {
    match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn remove_at_depth(parent: BorrowedFd<'_>, name: &OsStr, depth: usize) -> io::Result<()> {
    match is_dir(parent, name)? {
        None => Ok(()),
        Some(false) => match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        },
        Some(true) => {
            if depth >= MAX_DEPTH {
                return Err(io::Error::other("directory tree too deep to remove"));
            }
            clear_dir_at(parent, name, depth)?;
            match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
    }
}

fn clear_dir_at(parent: BorrowedFd<'_>, name: &OsStr, depth: usize) -> io::Result<()> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dir = Dir::openat(parent, name, flags, Mode::empty())?;
    let children = children(&mut dir)?;
    for child in children {
        remove_at_depth(dir.as_fd(), OsStr::new(&child), depth + 1)?;
    }
    Ok(())
}

/// The names in `dir` but `.` and `..`.
pub fn children(dir: &mut Dir) -> io::Result<Vec<std::ffi::OsString>> {
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

/// Empties the directory `dir` (an fd of it) without removing it.
pub fn clear_dir(dir: BorrowedFd<'_>) -> io::Result<()> {
    clear_dir_at(dir, OsStr::new("."), 0)
}
