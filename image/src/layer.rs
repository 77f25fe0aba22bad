//! Applying layer tars to a rootfs, in order, with OCI whiteouts.
//!
//! Every write is made by directory fd and final name. Parent directories are resolved with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` from the rootfs fd,
//! so a symlink an earlier layer made (`/lib -> usr/lib`, or a hostile `x -> ../../..`)
//! resolves inside the rootfs, never above it. The final component is never followed: an
//! existing entry is unlinked first and files are created `O_EXCL | O_NOFOLLOW`.
//!
//! On top of that, entries that mean to leave the rootfs are refused with the entry named:
//! absolute paths and `..` in entry names, symlink targets that climb above the root, hard
//! links to outside or to directories. Device nodes are skipped (the guest's `/dev` is its
//! own) and listed in the report. The whole unpack is capped in entries and bytes, so a
//! decompression bomb or an inode bomb stops with an error.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::ops::Bound;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::readlinkat;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, futimens, mkdirat, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, mkfifoat, symlinkat, Gid, Uid};
use tar::EntryType;

use crate::remove::{children, remove_all_at};
use crate::tar_stream::{Extended, Names};
use crate::ImageError;

/// Caps on what one unpack may write.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Uncompressed bytes over all layers (tar headers included).
    pub max_unpacked_bytes: u64,
    /// Tar entries over all layers.
    pub max_entries: u64,
}

/// 8 GiB and a million entries: far above a service's image, far below a full disk.
impl Default for Limits {
    fn default() -> Self {
        Limits { max_unpacked_bytes: 8 << 30, max_entries: 1_000_000 }
    }
}

/// Bytes of entry names kept in memory over an unpack (for whiteouts and directory times).
const MAX_NAME_BYTES: u64 = 128 << 20;

/// Device nodes named one by one in the report; the rest are counted.
pub const MAX_DEVICES_LISTED: usize = 100;

/// Symlinks followed while making one entry's parent directories (the kernel's limit).
const MAX_SYMLINKS: usize = 40;

/// Entry names deeper than this are refused (PATH_MAX allows about 2048 levels).
pub const MAX_COMPONENTS: usize = 256;

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Applies layers one after the other to one rootfs.
pub struct Applier {
    root: OwnedFd,
    limits: Limits,
    entries: u64,
    skipped_devices: Vec<String>,
    devices: u64,
    name_bytes: u64,
    /// Directories' mtimes, set once all layers are in (writing children changes them).
    dir_times: HashMap<PathBuf, i64>,
}

/// An entry name as a relative path of plain components; `None` for the root itself.
pub fn clean(raw: &[u8]) -> Result<Option<PathBuf>, String> {
    let path = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir => return Err("absolute path".into()),
            Component::ParentDir => return Err("'..' in the path".into()),
            Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => return Err("not a Unix path".into()),
        }
    }
    if out.components().count() > MAX_COMPONENTS {
        return Err(format!("more than {MAX_COMPONENTS} path components"));
    }
    Ok(if out.as_os_str().is_empty() { None } else { Some(out) })
}

/// Refuses a symlink at `at` whose target, read inside the rootfs, climbs above the root.
/// Absolute targets are rootfs paths (the container sees them so), and fine.
fn check_symlink_target(at: &Path, target: &[u8]) -> Result<(), String> {
    if target.is_empty() {
        return Err("symlink with an empty target".into());
    }
    let target_path = Path::new(OsStr::from_bytes(target));
    let mut depth: usize = if target_path.is_absolute() { 0 } else { at.components().count().saturating_sub(1) };
    for c in target_path.components() {
        match c {
            Component::ParentDir => {
                depth = depth.checked_sub(1).ok_or_else(|| {
                    format!("symlink target {:?} points outside the rootfs", target_path.display().to_string())
                })?;
            }
            Component::Normal(_) => depth += 1,
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(())
}

/// An entry's name as its own header has it, for messages before its extension headers
/// are applied.
fn entry_name<R: Read>(entry: &tar::Entry<'_, R>) -> Vec<u8> {
    entry.header().path_bytes().into_owned()
}

/// Whether this layer wrote `rel` or anything below it.
fn written(this_layer: &BTreeSet<PathBuf>, rel: &Path) -> bool {
    this_layer.range::<Path, _>((Bound::Included(rel), Bound::Unbounded)).next().is_some_and(|p| p.starts_with(rel))
}

/// An opaque directory: removes from the directory `fd` (at `dir_rel`) what this layer did
/// not write, and goes on into the directories it did write, which were merged with the
/// lower layers' directories of the same name.
fn prune(fd: &OwnedFd, dir_rel: &Path, this_layer: &BTreeSet<PathBuf>) -> Result<(), String> {
    let mut dir = Dir::from_fd(fd.try_clone().map_err(|e| e.to_string())?).map_err(|e| errno("opendir", e))?;
    for child in children(&mut dir).map_err(|e| e.to_string())? {
        let rel = dir_rel.join(&child);
        if !written(this_layer, &rel) {
            remove_all_at(fd.as_fd(), &child).map_err(|e| format!("opaque whiteout: {e}"))?;
        } else if mode_of(fd, &child)? == Some(SFlag::S_IFDIR) {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let sub = openat(fd, child.as_os_str(), flags, Mode::empty()).map_err(|e| errno("opaque whiteout", e))?;
            prune(&sub, &rel, this_layer)?;
        }
    }
    Ok(())
}

fn errno(context: &str, e: Errno) -> String {
    format!("{context}: {}", io::Error::from(e))
}

fn mode_of(parent: impl AsFd, name: &OsStr) -> Result<Option<SFlag>, String> {
    match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(errno("stat", e)),
    }
}

impl Applier {
    pub fn new(root: OwnedFd, limits: Limits) -> Self {
        Applier {
            root,
            limits,
            entries: 0,
            skipped_devices: Vec::new(),
            devices: 0,
            name_bytes: 0,
            dir_times: HashMap::new(),
        }
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// The directory at `rel` (resolved inside the rootfs), made with its parents if `create`.
    fn dir(&self, rel: &Path, create: bool) -> Result<OwnedFd, String> {
        if rel.as_os_str().is_empty() {
            return self.root.try_clone().map_err(|e| format!("rootfs: {e}"));
        }
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS | ResolveFlag::RESOLVE_NO_XDEV);
        match openat2(&self.root, rel, how) {
            Ok(fd) => Ok(fd),
            Err(Errno::ENOENT) if create => self.make_dirs(rel),
            Err(Errno::ENOTDIR) => Err(format!("{}: not a directory", rel.display())),
            Err(e) => Err(errno(&rel.display().to_string(), e)),
        }
    }

    /// `mkdir -p` inside the rootfs, following symlinks as the container will see them (an
    /// absolute target starts again at the rootfs, `..` stops there), one step at a time
    /// from the fd of the directory reached so far: nothing outside the rootfs is ever
    /// looked up. A symlink an earlier layer made to a directory that does not exist yet
    /// (`/lib -> usr/lib`) gets that directory, as under Docker or umoci.
    fn make_dirs(&self, rel: &Path) -> Result<OwnedFd, String> {
        let mut path: Vec<OwnedFd> = vec![self.root.try_clone().map_err(|e| format!("rootfs: {e}"))?];
        let mut todo: VecDeque<OsString> = rel.iter().map(OsStr::to_os_string).collect();
        let mut links = 0;
        while let Some(name) = todo.pop_front() {
            if name == ".." {
                if path.len() > 1 {
                    path.pop();
                }
                continue;
            }
            if name.is_empty() || name == "." || name == "/" {
                continue;
            }
            let here = path.last().expect("the rootfs is never popped");
            let mut made = false;
            match mode_of(here, &name)? {
                None => match mkdirat(here, name.as_os_str(), Mode::from_bits_truncate(0o755)) {
                    Ok(()) => made = true,
                    Err(Errno::EEXIST) => {}
                    Err(e) => return Err(errno(&format!("mkdir {}", rel.display()), e)),
                },
                Some(SFlag::S_IFLNK) => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(format!("{}: more than {MAX_SYMLINKS} symlinks to follow", rel.display()));
                    }
                    let target = readlinkat(here, name.as_os_str()).map_err(|e| errno("readlink", e))?;
                    let target = PathBuf::from(target);
                    if target.is_absolute() {
                        path.truncate(1);
                    }
                    for part in target.iter().rev() {
                        todo.push_front(part.to_os_string());
                    }
                    continue;
                }
                Some(SFlag::S_IFDIR) => {}
                Some(_) => return Err(format!("{}: {} is not a directory", rel.display(), name.to_string_lossy())),
            }
            let fd = openat(
                here,
                name.as_os_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| errno(&rel.display().to_string(), e))?;
            if made {
                // A parent no entry describes gets 0755 (as under Docker), whatever the umask.
                nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o755)).map_err(|e| errno("chmod", e))?;
            }
            path.push(fd);
        }
        Ok(path.pop().expect("the rootfs is never popped"))
    }

    /// Clears `name` in `parent` for a new entry; a directory stays when the new entry is one.
    /// Returns whether a directory was kept.
    fn make_room(parent: &OwnedFd, name: &OsStr, new_is_dir: bool) -> Result<bool, String> {
        match mode_of(parent, name)? {
            None => Ok(false),
            Some(SFlag::S_IFDIR) if new_is_dir => Ok(true),
            Some(_) => {
                remove_all_at(parent.as_fd(), name).map_err(|e| format!("removing what was there: {e}"))?;
                Ok(false)
            }
        }
    }

    /// Applies one layer's (uncompressed) tar stream; `layer` names it in errors.
    pub fn apply(&mut self, stream: impl Read, layer: &str) -> Result<(), ImageError> {
        let fail = |entry: &str, reason: String| ImageError::Entry {
            layer: layer.to_string(),
            entry: entry.to_string(),
            reason,
        };
        let mut archive = tar::Archive::new(stream);
        // Ordered, so that what this layer wrote below a directory is one range.
        let mut this_layer: BTreeSet<PathBuf> = BTreeSet::new();
        let mut extended = Extended::default();
        let entries = archive.entries().map_err(|e| fail("(archive)", e.to_string()))?.raw(true);
        for entry in entries {
            let mut entry = entry.map_err(|e| fail("(archive)", format!("not a valid tar: {e}")))?;
            let header_name = String::from_utf8_lossy(&entry_name(&entry)).into_owned();
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                let reason = format!("the image has more than {} entries (the cap)", self.limits.max_entries);
                return Err(fail(&header_name, reason));
            }
            if extended.absorb(&mut entry).map_err(|r| fail(&header_name, r))? {
                continue;
            }
            let names = extended.names(&entry).map_err(|r| fail(&header_name, r))?;
            let shown = String::from_utf8_lossy(&names.path).into_owned();
            let Some(rel) = clean(&names.path).map_err(|r| fail(&shown, r))? else {
                continue; // the root itself: its owner and mode are the bundle's business
            };
            self.name_bytes += rel.as_os_str().len() as u64;
            if self.name_bytes > MAX_NAME_BYTES {
                return Err(fail(
                    &shown,
                    format!("the image's entry names add up to more than {MAX_NAME_BYTES} bytes"),
                ));
            }
            let name = rel.file_name().map(OsStrExt::as_bytes).unwrap_or_default();
            if let Some(hidden) = name.strip_prefix(WHITEOUT.as_bytes()) {
                let hidden = OsStr::from_bytes(hidden).to_os_string();
                let opaque = name == OPAQUE.as_bytes();
                self.whiteout(&rel, &hidden, opaque, &this_layer).map_err(|r| fail(&shown, r))?;
                continue;
            }
            self.write(&mut entry, &rel, &names).map_err(|r| fail(&shown, r))?;
            this_layer.insert(rel);
        }
        Ok(())
    }

    fn whiteout(&self, rel: &Path, hidden: &OsStr, opaque: bool, this_layer: &BTreeSet<PathBuf>) -> Result<(), String> {
        let dir_rel = rel.parent().unwrap_or(Path::new(""));
        if opaque {
            // Everything the lower layers put in this directory goes; what this layer put
            // there already stays.
            let fd = self.dir(dir_rel, true)?;
            return prune(&fd, dir_rel, this_layer);
        }
        if hidden.as_bytes().starts_with(WHITEOUT.as_bytes()) {
            return Err("aufs metadata (.wh..wh.*) other than the opaque marker is not supported".into());
        }
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err("whiteout of no name".into());
        }
        if this_layer.contains(&dir_rel.join(hidden)) {
            return Ok(());
        }
        let parent = match self.dir(dir_rel, false) {
            Ok(fd) => fd,
            Err(_) => return Ok(()), // nothing below to hide
        };
        remove_all_at(parent.as_fd(), hidden).map_err(|e| format!("whiteout: {e}"))
    }

    fn write<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, rel: &Path, names: &Names) -> Result<(), String> {
        let header = entry.header();
        let kind = header.entry_type();
        let mode = Mode::from_bits_truncate(header.mode().map_err(|e| e.to_string())? & 0o7777);
        let uid = u32::try_from(names.uid).map_err(|_| "uid out of range")?;
        let gid = u32::try_from(names.gid).map_err(|_| "gid out of range")?;
        let mtime = i64::try_from(header.mtime().unwrap_or(0)).unwrap_or(0);
        let (owner, group) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
        let time = TimeSpec::new(mtime, 0);
        let name = rel.file_name().ok_or("no name")?;
        let parent = self.dir(rel.parent().unwrap_or(Path::new("")), true)?;
        match kind {
            EntryType::Directory => {
                if !Self::make_room(&parent, name, true)? {
                    mkdirat(&parent, name, Mode::from_bits_truncate(0o700)).map_err(|e| errno("mkdir", e))?;
                }
                let fd = openat(
                    &parent,
                    name,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| errno("open directory", e))?;
                fchown(&fd, owner, group).map_err(|e| errno("chown", e))?;
                nix::sys::stat::fchmod(&fd, mode).map_err(|e| errno("chmod", e))?;
                self.dir_times.insert(rel.to_path_buf(), mtime);
            }
            EntryType::Regular | EntryType::Continuous => {
                Self::make_room(&parent, name, false)?;
                let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let fd =
                    openat(&parent, name, flags, Mode::from_bits_truncate(0o600)).map_err(|e| errno("create", e))?;
                let mut file = File::from(fd);
                io::copy(entry, &mut file).map_err(|e| format!("writing: {e}"))?;
                // chown before chmod: chown clears set-id bits.
                fchown(&file, owner, group).map_err(|e| errno("chown", e))?;
                nix::sys::stat::fchmod(&file, mode).map_err(|e| errno("chmod", e))?;
                futimens(&file, &time, &time).map_err(|e| errno("utimes", e))?;
            }
            EntryType::Symlink => {
                let target = names.link.as_deref().ok_or("symlink without a target")?;
                check_symlink_target(rel, target)?;
                Self::make_room(&parent, name, false)?;
                symlinkat(OsStr::from_bytes(target), &parent, name).map_err(|e| errno("symlink", e))?;
                fchownat(&parent, name, owner, group, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| errno("chown", e))?;
                utimensat(&parent, name, &time, &time, UtimensatFlags::NoFollowSymlink)
                    .map_err(|e| errno("utimes", e))?;
            }
            EntryType::Link => {
                let raw = names.link.as_deref().ok_or("hard link without a target")?;
                let target =
                    clean(raw).map_err(|r| format!("hard link target: {r}"))?.ok_or("hard link to the root")?;
                if target == rel {
                    return Err("hard link to itself".into());
                }
                let tname = target.file_name().ok_or("no name")?;
                let tparent = self
                    .dir(target.parent().unwrap_or(Path::new("")), false)
                    .map_err(|r| format!("hard link target {}: {r}", target.display()))?;
                match mode_of(&tparent, tname)? {
                    None => return Err(format!("hard link target {} does not exist", target.display())),
                    Some(SFlag::S_IFDIR) => {
                        return Err(format!("hard link target {} is a directory", target.display()))
                    }
                    Some(_) => {}
                }
                Self::make_room(&parent, name, false)?;
                linkat(&tparent, tname, &parent, name, AtFlags::empty()).map_err(|e| errno("link", e))?;
            }
            EntryType::Fifo => {
                Self::make_room(&parent, name, false)?;
                mkfifoat(&parent, name, Mode::from_bits_truncate(0o600)).map_err(|e| errno("mkfifo", e))?;
                // Through an fd (opening a FIFO non-blocking for reading does not wait for a
                // writer): fchmodat cannot refuse to follow a symlink everywhere.
                let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let fd = openat(&parent, name, flags, Mode::empty()).map_err(|e| errno("open fifo", e))?;
                fchown(&fd, owner, group).map_err(|e| errno("chown", e))?;
                nix::sys::stat::fchmod(&fd, mode).map_err(|e| errno("chmod", e))?;
            }
            EntryType::Char | EntryType::Block => {
                if self.skipped_devices.len() < MAX_DEVICES_LISTED {
                    self.skipped_devices.push(rel.display().to_string());
                }
                self.devices += 1;
            }
            EntryType::GNUSparse => return Err("sparse files are not supported".into()),
            other => return Err(format!("tar entry type {other:?} is not supported")),
        }
        Ok(())
    }

    /// Sets the directories' mtimes, now that nothing more is written into them; returns
    /// the device nodes not created (the first [`MAX_DEVICES_LISTED`], then a count).
    pub fn finish(mut self) -> Result<Vec<String>, ImageError> {
        if self.devices > self.skipped_devices.len() as u64 {
            let more = self.devices - self.skipped_devices.len() as u64;
            self.skipped_devices.push(format!("(and {more} more)"));
        }
        for (rel, mtime) in &self.dir_times {
            if let Ok(fd) = self.dir(rel, false) {
                let t = TimeSpec::new(*mtime, 0);
                futimens(&fd, &t, &t).map_err(|e| ImageError::invalid(rel.display(), io::Error::from(e)))?;
            }
        }
        Ok(self.skipped_devices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_stay_relative() {
        assert_eq!(clean(b"./usr/bin/sh").unwrap(), Some(PathBuf::from("usr/bin/sh")));
        assert_eq!(clean(b"./").unwrap(), None);
        assert!(clean(b"/etc/passwd").unwrap_err().contains("absolute"));
        assert!(clean(b"a/../../etc").unwrap_err().contains(".."));
        assert!(clean("a/".repeat(MAX_COMPONENTS + 1).as_bytes()).is_err());
    }

    #[test]
    fn symlink_targets_must_stay_in_the_root() {
        assert!(check_symlink_target(Path::new("bin/sh"), b"busybox").is_ok());
        assert!(check_symlink_target(Path::new("bin/sh"), b"/bin/busybox").is_ok());
        assert!(check_symlink_target(Path::new("lib"), b"usr/lib").is_ok());
        assert!(check_symlink_target(Path::new("a/b/c"), b"../../x").is_ok());
        assert!(check_symlink_target(Path::new("a/b/c"), b"../../../x").is_err());
        assert!(check_symlink_target(Path::new("evil"), b"/../../etc").is_err());
        assert!(check_symlink_target(Path::new("evil"), b"").is_err());
    }
}
