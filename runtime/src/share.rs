//! The share: the directory of a sandbox that virtiofsd exports to the guest.
//!
//! Each container appears under `containers/<id>/`: its root filesystem at `rootfs`, and each
//! bind mount source of its config at `mounts/<n>`. The guest may write inside those mounts;
//! the skeleton around them (the share's top level, `containers/`, `containers/<id>/`, the
//! mountpoints) is a small tmpfs the guest sees **read-only**, so it can neither fill the host's
//! `/run` through the share nor plant a symlink where the host later creates, mounts or
//! removes something. Two ways to build it:
//! - **private** (the CLI's one container): virtiofsd's own mount namespace gets the tmpfs, the
//!   skeleton and the binds as it starts (see `sandbox::virtiofsd`, from [`layout`]); they
//!   exist only while virtiofsd does.
//! - **propagating** (a shim's pod, which gains containers after boot): the shim's namespace
//!   holds the tmpfs writable at `share-rw/` and a read-only bind of it at `share/`, which
//!   virtiofsd exports ([`make_propagating`]); each container is bound into `share-rw/` when it
//!   is created ([`expose`]) and reaches virtiofsd by propagation. The host only ever works in
//!   `share-rw/`, through [`Beneath`], so even a change of design that let the guest write there
//!   would not make the host follow its symlinks.
//!
//! Binds are `nodev` on the host side, and an `ro` bind is read-only on the host side too, so
//! a guest kernel that ignores its own mount flags still cannot write through virtio-fs.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use crate::beneath::{fd_path, Beneath};
use crate::bundle::Bundle;

/// Size and inode caps of the skeleton's tmpfs: it holds directories and empty files only.
pub const SKELETON_TMPFS: &str = "size=256k,nr_inodes=4096,mode=0711";

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {}: {source}", path.display())]
    Mount { what: &'static str, path: PathBuf, source: nix::Error },
}

type Result<T> = std::result::Result<T, ShareError>;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ShareError {
    let path = path.to_path_buf();
    move |source| ShareError::Io { what, path, source }
}

fn mnt(what: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> ShareError {
    let path = path.to_path_buf();
    move |source| ShareError::Mount { what, path, source }
}

/// Share-relative directory of a container's files.
pub fn container_dir(container_id: &str) -> String {
    format!("containers/{container_id}")
}

/// One bind into the share: host source, share-relative mountpoint, and whether it is
/// read-only on the host side.
#[derive(Debug, Clone)]
pub struct ShareMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// What one container needs in the share, all share-relative: directories (parents first),
/// empty files (mountpoints of file binds), then the binds.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub dirs: Vec<PathBuf>,
    pub files: Vec<PathBuf>,
    pub binds: Vec<ShareMount>,
}

pub fn layout(id: &str, bundle: &Bundle) -> Layout {
    let base = PathBuf::from(container_dir(id));
    let mut l = Layout::default();
    l.dirs.extend([PathBuf::from("containers"), base.clone(), base.join("rootfs")]);
    l.binds.push(ShareMount { source: bundle.rootfs.clone(), target: base.join("rootfs"), read_only: false });
    if !bundle.binds.is_empty() {
        l.dirs.push(base.join("mounts"));
    }
    for bind in &bundle.binds {
        let target = base.join("mounts").join(bind.index.to_string());
        if bind.is_dir {
            l.dirs.push(target.clone());
        } else {
            l.files.push(target.clone());
        }
        l.binds.push(ShareMount { source: bind.source.clone(), target, read_only: bind.read_only });
    }
    l
}

/// In the caller's (the shim's own) mount namespace: a skeleton tmpfs at `rw`, shared, and a
/// read-only bind of it at `share` for virtiofsd to export. Mounts made below `rw` later
/// appear below `share` and in virtiofsd's slave copy.
pub fn make_propagating(rw: &Path, share: &Path) -> Result<()> {
    for dir in [rw, share] {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    mount(Some("tmpfs"), rw, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(SKELETON_TMPFS))
        .map_err(mnt("mounting the share's tmpfs on", rw))?;
    mount(None::<&str>, rw, None::<&str>, MsFlags::MS_SHARED, None::<&str>).map_err(mnt("making shared", rw))?;
    mount(Some(rw), share, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(mnt("bind-mounting onto", share))?;
    let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(None::<&str>, share, None::<&str>, ro, None::<&str>).map_err(mnt("making read-only", share))
}

/// A container bound into a propagating share; [`Exposed::remove`] undoes it.
#[derive(Debug)]
pub struct Exposed {
    rw: PathBuf,
    layout: Layout,
    /// How many of `layout`'s dirs, files and binds were made.
    made: (usize, usize, usize),
}

/// Bind container `id` of `bundle` into the propagating share whose writable side is `rw`.
/// `staging` is an empty path outside the share for the read-only waypoint. On error nothing
/// it made is left.
pub fn expose(rw: &Path, id: &str, bundle: &Bundle, staging: &Path) -> Result<Exposed> {
    let mut exposed = Exposed { rw: rw.to_path_buf(), layout: layout(id, bundle), made: (0, 0, 0) };
    match exposed.build(staging) {
        Ok(()) => Ok(exposed),
        Err(e) => {
            exposed.remove();
            Err(e)
        }
    }
}

impl Exposed {
    fn build(&mut self, staging: &Path) -> Result<()> {
        let share = Beneath::open(&self.rw).map_err(io("opening", &self.rw))?;
        let at = |rel: &Path| self.rw.join(rel);
        for dir in &self.layout.dirs {
            share.mkdir_all(dir, 0o711).map_err(io("creating", &at(dir)))?;
            self.made.0 += 1;
        }
        for file in &self.layout.files {
            share.create_file(file, 0o600).map_err(io("creating", &at(file)))?;
            self.made.1 += 1;
        }
        for m in &self.layout.binds {
            let target = share.open_path(&m.target).map_err(io("opening", &at(&m.target)))?;
            let is_dir = !self.layout.files.contains(&m.target);
            bind_via(staging, &m.source, &fd_path(&target), is_dir, m.read_only)?;
            self.made.2 += 1;
        }
        Ok(())
    }

    /// Unbind everything and remove what was made for the container, innermost first; never
    /// anything below a mountpoint.
    pub fn remove(&mut self) {
        let Ok(share) = Beneath::open(&self.rw) else { return };
        let (dirs, files, binds) = std::mem::take(&mut self.made);
        for m in self.layout.binds[..binds].iter().rev() {
            if let Err(e) = share.unmount(&m.target) {
                tracing::warn!("unmounting {}: {e}", self.rw.join(&m.target).display());
            }
        }
        for file in self.layout.files[..files].iter().rev() {
            let _ = share.remove(file, false);
        }
        // `containers` itself stays for the pod's other containers.
        for dir in self.layout.dirs[..dirs].iter().rev().filter(|d| d.as_os_str() != "containers") {
            let _ = share.remove(dir, true);
        }
    }
}

impl Drop for Exposed {
    fn drop(&mut self) {
        self.remove();
    }
}

fn bind(source: &Path, target: &Path) -> Result<()> {
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(mnt("bind-mounting onto", target))
}

/// Bind `source` on `target` (`/proc/self/fd/N` of the checked mountpoint) `nodev`,`nosuid`
/// and, with `read_only`, read-only, by way of `staging` (created here as an empty directory,
/// or file for a file source, outside the share). A bind copies the flags of the mount it
/// binds, so the copy that propagates into virtiofsd's namespace has its flags from the moment
/// it exists, rather than depending on how a later remount of the share's copy propagates
/// (mount(2) describes remount flags as per mount).
fn bind_via(staging: &Path, source: &Path, target: &Path, is_dir: bool, read_only: bool) -> Result<()> {
    if is_dir {
        std::fs::create_dir(staging).map_err(io("creating", staging))?;
    } else {
        std::fs::File::create(staging).map_err(io("creating", staging))?;
    }
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let result = bind(source, staging)
        .and_then(|()| {
            mount(None::<&str>, staging, None::<&str>, flags, None::<&str>)
                .map_err(mnt("setting the flags of", staging))
        })
        .and_then(|()| bind(staging, target));
    unmount(staging);
    let _ = if is_dir { std::fs::remove_dir(staging) } else { std::fs::remove_file(staging) };
    result
}

/// Detach whatever is mounted on `target` (all of it, recursively); absent is fine. For paths
/// only the host can change.
pub fn unmount(target: &Path) {
    loop {
        match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => return,
            Err(e) => {
                tracing::warn!("unmounting {}: {e}", target.display());
                return;
            }
        }
    }
}
