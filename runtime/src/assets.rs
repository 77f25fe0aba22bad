//! Where hull finds its guest kernel, initramfs and helper daemons.
//!
//! Everything lives under one prefix (`/usr/local/share/hull` by default, `HULL_ASSET_DIR` to
//! override): `vmlinuz` (bzImage) + `vmlinux`, `initramfs.cpio`, and `bin/` with `virtiofsd`
//! and `vhost-device-vsock`. QEMU is taken from `HULL_QEMU` or `PATH`, the initramfs from
//! `HULL_INITRAMFS` if set.

use std::path::{Path, PathBuf};

/// An installed file hull needs is missing.
#[derive(Debug, thiserror::Error)]
#[error("{} not found: install hull's assets (`make install`) or set HULL_ASSET_DIR", .0.display())]
pub struct MissingAsset(pub PathBuf);

pub const DEFAULT_ASSET_DIR: &str = "/usr/local/share/hull";

#[derive(Debug, Clone)]
pub struct Assets {
    /// bzImage, for QEMU.
    pub kernel: PathBuf,
    /// The same kernel as an ELF, for hull-vmm (checked only when that backend is chosen).
    pub vmlinux: PathBuf,
    /// The hull-vmm binary: `HULL_VMM`, else next to this executable, else on PATH (checked only
    /// when that backend is chosen).
    pub hull_vmm: PathBuf,
    pub initramfs: PathBuf,
    pub virtiofsd: PathBuf,
    pub vsock_backend: PathBuf,
    pub qemu: PathBuf,
}

impl Assets {
    /// Locate every asset, failing with the path that is missing.
    pub fn locate() -> Result<Self, MissingAsset> {
        let dir = std::env::var_os("HULL_ASSET_DIR").map(PathBuf::from).unwrap_or_else(|| DEFAULT_ASSET_DIR.into());
        let assets = Assets {
            kernel: dir.join("vmlinuz"),
            vmlinux: dir.join("vmlinux"),
            hull_vmm: std::env::var_os("HULL_VMM")
                .map(PathBuf::from)
                .or_else(|| std::env::current_exe().ok().map(|e| e.with_file_name("hull-vmm")).filter(|p| p.is_file()))
                .or_else(|| find_in_path("hull-vmm"))
                .unwrap_or_else(|| "hull-vmm".into()),
            // Tests boot a hostile guest through this (see agent/src/hostile.rs).
            initramfs: std::env::var_os("HULL_INITRAMFS")
                .map(PathBuf::from)
                .unwrap_or_else(|| dir.join("initramfs.cpio")),
            virtiofsd: dir.join("bin/virtiofsd"),
            vsock_backend: dir.join("bin/vhost-device-vsock"),
            qemu: std::env::var_os("HULL_QEMU")
                .map(PathBuf::from)
                .or_else(|| find_in_path("qemu-system-x86_64"))
                .unwrap_or_else(|| "qemu-system-x86_64".into()),
        };
        for path in [&assets.kernel, &assets.initramfs, &assets.virtiofsd, &assets.vsock_backend, &assets.qemu] {
            if !path.exists() {
                return Err(MissingAsset(path.clone()));
            }
        }
        Ok(assets)
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(name)).find(|p| p.is_file())
}
