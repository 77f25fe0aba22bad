//! The share: the directory of a sandbox that virtiofsd exports to the guest.
//!
//! Each container appears under `share/containers/<id>/`: its root filesystem at `rootfs`, and
//! each bind mount source of its config at `mounts/<n>`. Two ways to put them there:
//! - **private** (the CLI's one container): the binds are made in virtiofsd's own mount
//!   namespace as it starts (see `sandbox::virtiofsd`), so they exist only while it does;
//! - **propagating** (a shim's pod): the share is a shared mount in the shim's own namespace
//!   and each container is bound into it when it is created ([`expose`]), reaching virtiofsd's
//!   slave copy by propagation; [`Exposed::remove`] takes it out again.
//!
//! An `ro` bind is read-only on the host side too, so a guest kernel that ignores its own
//! mount flags still cannot write through virtio-fs.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::bundle::Bundle;

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

/// Share-relative directory of a container's files.
pub fn container_dir(container_id: &str) -> String {
    format!("containers/{container_id}")
}

/// One bind into the share: host source, mountpoint in the share, and whether it is read-only
/// on the host side.
#[derive(Debug, Clone)]
pub struct ShareMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// The binds container `id` of `bundle` needs in `share`, creating each mountpoint (a
/// directory, or an empty file for a file source).
pub fn mounts(share: &Path, id: &str, bundle: &Bundle) -> Result<Vec<ShareMount>> {
    let base = share.join(container_dir(id));
    let rootfs = base.join("rootfs");
    fs::create_dir_all(&rootfs).map_err(io("creating", &rootfs))?;
    let mut pairs = vec![ShareMount { source: bundle.rootfs.clone(), target: rootfs, read_only: false }];
    for bind in &bundle.binds {
        let target = base.join("mounts").join(bind.index.to_string());
        if bind.is_dir {
            fs::create_dir_all(&target).map_err(io("creating", &target))?;
        } else {
            let dir = base.join("mounts");
            fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
            fs::File::create(&target).map_err(io("creating", &target))?;
        }
        pairs.push(ShareMount { source: bind.source.clone(), target, read_only: bind.read_only });
    }
    Ok(pairs)
}

/// A container bound into a propagating share; [`Exposed::remove`] undoes it.
#[derive(Debug)]
pub struct Exposed {
    dir: PathBuf,
    /// Mountpoints, innermost first.
    targets: Vec<PathBuf>,
}

/// Bind container `id` of `bundle` into `share`. `staging` is a path outside the share for the
/// read-only waypoint. On error nothing it bound is left.
pub fn expose(share: &Path, id: &str, bundle: &Bundle, staging: &Path) -> Result<Exposed> {
    let mut exposed = Exposed { dir: share.join(container_dir(id)), targets: Vec::new() };
    let result = (|| {
        for m in mounts(share, id, bundle)? {
            if m.read_only {
                let is_dir = m.target.is_dir();
                if is_dir {
                    fs::create_dir_all(staging).map_err(io("creating", staging))?;
                } else {
                    fs::File::create(staging).map_err(io("creating", staging))?;
                }
                let bound = bind_read_only(&m.source, &m.target, staging);
                let _ = if is_dir { fs::remove_dir(staging) } else { fs::remove_file(staging) };
                bound?;
            } else {
                bind(&m.source, &m.target)?;
            }
            exposed.targets.insert(0, m.target);
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(exposed),
        Err(e) => {
            exposed.remove();
            Err(e)
        }
    }
}

impl Exposed {
    /// Unbind everything and remove the container's directory in the share.
    pub fn remove(&mut self) {
        for target in self.targets.drain(..) {
            unmount(&target);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub fn bind(source: &Path, target: &Path) -> Result<()> {
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|source| ShareError::Mount { what: "bind-mounting onto", path: target.to_path_buf(), source })
}

/// Bind `source` on `target` read-only, with `staging` (an empty directory, or file for a file
/// source, outside the share) as a waypoint. A bind copies the flags of the mount it binds, so
/// the copy that propagates into virtiofsd's namespace is read-only from the moment it exists,
/// rather than depending on how a later remount of the share's copy propagates (mount(2)
/// describes remount flags as per mount).
pub fn bind_read_only(source: &Path, target: &Path, staging: &Path) -> Result<()> {
    bind(source, staging)?;
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    let result = mount(None::<&str>, staging, None::<&str>, flags, None::<&str>)
        .map_err(|source| ShareError::Mount { what: "making read-only", path: staging.to_path_buf(), source })
        .and_then(|()| bind(staging, target));
    unmount(staging);
    result
}

/// Detach whatever is mounted on `target` (all of it, recursively); absent is fine.
pub fn unmount(target: &Path) {
    loop {
        match umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => return,
            Err(e) => {
                tracing::warn!("unmounting {}: {e}", target.display());
                return;
            }
        }
    }
}
