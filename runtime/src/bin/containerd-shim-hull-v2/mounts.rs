//! Host-side mounts of a shim: its private mount namespace and the root filesystems containerd
//! hands over as mount lists (the share is `hull::share`'s).
//!
//! Everything is mounted inside the shim's own mount namespace, so the host never sees these
//! mounts and nothing can leak when the shim dies: the namespace goes with its last process.

use std::path::Path;

use anyhow::{bail, Context, Result};
use containerd_shim_protos::api::Mount;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Move the calling (single-threaded) process into a mount namespace of its own. Host mounts
/// still propagate in (a CNI netns created later must be visible); ours never propagate out.
pub fn enter_private_namespace() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNS).context("unsharing the mount namespace")?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .context("making / a slave mount")
}

/// Mount containerd's rootfs mount list (an overlay snapshot, a bind, …) on `target`.
pub fn mount_rootfs(mounts: &[Mount], target: &Path) -> Result<()> {
    for (i, m) in mounts.iter().enumerate() {
        if m.source.is_empty() {
            bail!("rootfs[{i}]: mount of type {:?} has no source", m.type_);
        }
        let (mut flags, data) = parse_options(&m.options);
        let is_bind = matches!(m.type_.as_str(), "bind" | "rbind" | "") || flags.contains(MsFlags::MS_BIND);
        let fstype = (!is_bind).then_some(m.type_.as_str());
        let data = (!data.is_empty()).then_some(data.as_str());
        // A bind ignores MS_RDONLY; it takes a remount.
        let read_only = is_bind && flags.contains(MsFlags::MS_RDONLY);
        if is_bind {
            flags = (flags | MsFlags::MS_BIND) & !MsFlags::MS_RDONLY;
        }
        mount(Some(m.source.as_str()), target, fstype, flags, data)
            .with_context(|| format!("rootfs[{i}]: mounting {} ({}) on {}", m.source, m.type_, target.display()))?;
        if read_only {
            mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .with_context(|| format!("rootfs[{i}]: remounting {} read-only", target.display()))?;
        }
    }
    Ok(())
}

/// Split mount(8)-style options into flags and the filesystem's data string.
fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        flags = (flags | set) & !clear;
    }
    (flags, data.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> =
            ["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2", "ro", "nosuid"].map(String::from).into();
        let (flags, data) = parse_options(&opts);
        assert_eq!(flags, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert_eq!(data, "index=off,workdir=/w,upperdir=/u,lowerdir=/l1:/l2");
        let (flags, data) = parse_options(&["rbind".into(), "rw".into()]);
        assert_eq!(flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert!(data.is_empty());
    }
}
