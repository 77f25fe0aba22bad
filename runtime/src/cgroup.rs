//! Host cgroups: every process of a sandbox (the VMM, the vsock backend, virtiofsd) goes into
//! the cgroup the container's config names at `linux.cgroupsPath` — podman's, containerd's,
//! the kubelet's — so the VM is billed to the container and held to its limits (what Kata calls
//! `sandbox_cgroup_only`). Without a path, `/hull/<id>` is used.
//!
//! Both layouts are handled: the unified cgroup v2 hierarchy, and v1 with a hierarchy per
//! controller ("hybrid" hosts, like these, have v1 controllers and an empty v2 tree beside
//! them). The limits written are the container's plus what the VM itself needs:
//! - memory: the VM's RAM (the container's limit plus the guest's own overhead, see
//!   `sandbox::sizing`) plus [`HOST_OVERHEAD_MIB`] for the VMM and daemons;
//! - CPU: the quota and shares as given (the vCPUs are sized to the quota);
//! - pids: the limit plus [`PIDS_OVERHEAD`] for the sandbox's own threads (the container's
//!   processes live in the guest and are limited there).
//!
//! A sandbox process killed by the host's OOM killer shows in this cgroup's counters, which the
//! pod reads to report an OOM kill (137) instead of a failure.

use std::fs;
use std::path::{Component, Path, PathBuf};

/// Memory the VMM and the daemons need beyond the guest's RAM (QEMU ~35 MiB, virtiofsd and the
/// vsock backend a few each, measured idle; page tables and buffers on top).
pub const HOST_OVERHEAD_MIB: u64 = 96;
/// Tasks the sandbox itself runs on the host (QEMU's vCPU and I/O threads, virtiofsd's).
pub const PIDS_OVERHEAD: i64 = 128;
const ROOT: &str = "/sys/fs/cgroup";
/// The v1 controllers a sandbox is placed in.
const V1_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("linux.cgroupsPath {0:?}: {1}")]
    BadPath(String, &'static str),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no cgroup hierarchy at {ROOT} (neither cgroup2 nor v1 controllers)")]
    NoHierarchy,
}

type Result<T> = std::result::Result<T, CgroupError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io { path: path.to_path_buf(), source }
}

/// What the sandbox's cgroup is held to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// (quota µs, period µs)
    pub cpu_quota: Option<(i64, u64)>,
    pub cpu_shares: Option<u64>,
    pub pids: Option<i64>,
}

impl Limits {
    /// The limits for a sandbox of `vm_memory_mib` running a container with `resources`.
    pub fn for_sandbox(resources: Option<&oci_spec::runtime::LinuxResources>, vm_memory_mib: u32) -> Limits {
        let overhead =
            std::env::var("HULL_HOST_OVERHEAD_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(HOST_OVERHEAD_MIB);
        let Some(r) = resources else { return Limits::default() };
        let memory_bytes = r
            .memory()
            .as_ref()
            .and_then(|m| m.limit())
            .filter(|l| *l > 0)
            .map(|_| (u64::from(vm_memory_mib) + overhead) << 20);
        let cpu = r.cpu().as_ref();
        let cpu_quota = cpu.and_then(|c| match (c.quota(), c.period()) {
            (Some(q), Some(p)) if q > 0 && p > 0 => Some((q, p)),
            (Some(q), None) if q > 0 => Some((q, 100_000)),
            _ => None,
        });
        let cpu_shares = cpu.and_then(|c| c.shares()).filter(|s| *s > 0);
        let pids = r.pids().as_ref().map(|p| p.limit()).filter(|l| *l > 0).map(|l| l.saturating_add(PIDS_OVERHEAD));
        Limits { memory_bytes, cpu_quota, cpu_shares, pids }
    }
}

/// The parent of the cgroups hull names itself (`hull/<id>`). Sandboxes share it, so it is
/// made by whichever comes first and removed by whichever leaves it empty.
const DEFAULT_PARENT: &str = "hull";

/// `linux.cgroupsPath` as a path below each hierarchy's root. systemd's `slice:prefix:name`
/// becomes `slice-expanded/prefix-name.scope`, as runc's systemd driver names it.
pub fn relative_path(spec_path: Option<&str>, id: &str) -> Result<PathBuf> {
    let raw = match spec_path {
        None | Some("") => return Ok(PathBuf::from(DEFAULT_PARENT).join(id)),
        Some(p) => p,
    };
    let path = match raw.split(':').collect::<Vec<_>>()[..] {
        [slice, prefix, name] if !raw.starts_with('/') => {
            let mut p = PathBuf::new();
            if !slice.is_empty() && slice != "-.slice" {
                let stem =
                    slice.strip_suffix(".slice").ok_or(CgroupError::BadPath(raw.into(), "a slice ends in .slice"))?;
                let mut acc = String::new();
                for part in stem.split('-') {
                    if !acc.is_empty() {
                        acc.push('-');
                    }
                    acc.push_str(part);
                    p.push(format!("{acc}.slice"));
                }
            }
            p.push(if prefix.is_empty() { format!("{name}.scope") } else { format!("{prefix}-{name}.scope") });
            p
        }
        _ => PathBuf::from(raw.trim_start_matches('/')),
    };
    if path.as_os_str().is_empty() {
        return Err(CgroupError::BadPath(raw.into(), "names the root cgroup"));
    }
    if path.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(CgroupError::BadPath(raw.into(), "must not contain '..'"));
    }
    Ok(path)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    V2,
    V1,
}

fn layout(root: &Path) -> Result<Layout> {
    if root.join("cgroup.controllers").exists() {
        Ok(Layout::V2)
    } else if root.join("memory").is_dir() {
        Ok(Layout::V1)
    } else {
        Err(CgroupError::NoHierarchy)
    }
}

/// The sandbox's cgroup, created for it (or joined, when the caller made it already).
#[derive(Debug)]
pub struct HostCgroup {
    layout: Layout,
    /// One directory per hierarchy.
    dirs: Vec<PathBuf>,
    /// Directories created here, innermost first, to remove again.
    created: Vec<PathBuf>,
    /// In hull's own shared parent (`hull/<id>`), which the last sandbox to leave removes.
    in_default_parent: bool,
}

impl HostCgroup {
    /// Create (or take) the cgroup at `relative` below [`ROOT`] and write `limits` to it.
    pub fn create(relative: &Path, limits: &Limits) -> Result<HostCgroup> {
        Self::create_under(Path::new(ROOT), relative, limits)
    }

    fn create_under(root: &Path, relative: &Path, limits: &Limits) -> Result<HostCgroup> {
        let layout = layout(root)?;
        let bases: Vec<PathBuf> = match layout {
            Layout::V2 => vec![root.to_path_buf()],
            Layout::V1 => V1_CONTROLLERS.iter().map(|c| root.join(c)).filter(|d| d.is_dir()).collect(),
        };
        let in_default_parent = in_default_parent(relative);
        let mut cg = HostCgroup { layout, dirs: Vec::new(), created: Vec::new(), in_default_parent };
        let result = (|| {
            for base in &bases {
                let mut at = base.clone();
                for part in relative.components() {
                    if layout == Layout::V2 {
                        // Controllers must be enabled in every ancestor for the leaf to have them.
                        let _ = fs::write(at.join("cgroup.subtree_control"), "+memory +cpu +pids");
                    }
                    at.push(part);
                    // A sandbox leaving may remove the shared parent between our mkdirs.
                    let mut tries = 0;
                    loop {
                        match fs::create_dir(&at) {
                            Ok(()) => cg.created.insert(0, at.clone()),
                            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 5 => {
                                tries += 1;
                                if let Some(parent) = at.parent() {
                                    let _ = fs::create_dir(parent);
                                }
                                continue;
                            }
                            Err(e) => return Err(io(&at)(e)),
                        }
                        break;
                    }
                }
                cg.dirs.push(at);
            }
            cg.apply(limits)
        })();
        match result {
            Ok(()) => Ok(cg),
            Err(e) => {
                cg.remove();
                Err(e)
            }
        }
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        for dir in &self.dirs {
            let path = dir.join(file);
            if path.exists() {
                return fs::write(&path, value).map_err(io(&path));
            }
        }
        Ok(())
    }

    fn apply(&self, limits: &Limits) -> Result<()> {
        match self.layout {
            Layout::V2 => {
                if let Some(bytes) = limits.memory_bytes {
                    self.write("memory.max", &bytes.to_string())?;
                }
                if let Some((quota, period)) = limits.cpu_quota {
                    self.write("cpu.max", &format!("{quota} {period}"))?;
                }
                if let Some(shares) = limits.cpu_shares {
                    // The OCI's conversion of v1 shares to a v2 weight.
                    let weight = 1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142;
                    self.write("cpu.weight", &weight.to_string())?;
                }
                if let Some(pids) = limits.pids {
                    self.write("pids.max", &pids.to_string())?;
                }
            }
            Layout::V1 => {
                if let Some(bytes) = limits.memory_bytes {
                    self.write("memory.limit_in_bytes", &bytes.to_string())?;
                }
                if let Some((quota, period)) = limits.cpu_quota {
                    self.write("cpu.cfs_period_us", &period.to_string())?;
                    self.write("cpu.cfs_quota_us", &quota.to_string())?;
                }
                if let Some(shares) = limits.cpu_shares {
                    self.write("cpu.shares", &shares.to_string())?;
                }
                if let Some(pids) = limits.pids {
                    self.write("pids.max", &pids.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process joins by writing "0" to each (see
    /// [`crate::jail::JailSpec::cgroups`] and [`join_on_exec`]).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// How many processes the host's OOM killer killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.layout {
            Layout::V2 => "memory.events",
            Layout::V1 => "memory.oom_control",
        };
        self.dirs
            .iter()
            .filter_map(|d| fs::read_to_string(d.join(file)).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse::<u64>().ok()))
                    .collect::<Vec<_>>()
            })
            .max()
            .unwrap_or(0)
    }

    /// Remove the directories created here (they must be empty: call once the processes are
    /// gone). What the caller made stays.
    pub fn remove(&mut self) {
        for dir in std::mem::take(&mut self.created) {
            remove_dir(&dir);
        }
        if self.in_default_parent {
            self.dirs.iter().for_each(|dir| remove_default_parent(dir));
        }
    }
}

impl Drop for HostCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

/// rmdir, retrying briefly while the last processes are still leaving.
fn remove_dir(dir: &Path) {
    for _ in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => std::thread::sleep(std::time::Duration::from_millis(20)),
            Err(e) => {
                tracing::warn!("removing cgroup {}: {e}", dir.display());
                return;
            }
        }
    }
    tracing::warn!("cgroup {} still busy; left in place", dir.display());
}

fn in_default_parent(relative: &Path) -> bool {
    relative.strip_prefix("/").unwrap_or(relative).parent() == Some(Path::new(DEFAULT_PARENT))
}

/// The shared [`DEFAULT_PARENT`] of `leaf`, once no sandbox is left in it: whichever sandbox
/// created it, the last one to leave removes it (rmdir fails while another is inside).
fn remove_default_parent(leaf: &Path) {
    if let Some(parent) = leaf.parent() {
        let _ = fs::remove_dir(parent);
    }
}

/// Remove the cgroup at `relative` in every hierarchy, if it is empty (for `hull delete` after
/// a supervisor died). Its parents stay, but for hull's own shared parent once empty.
pub fn remove_path(relative: &Path) {
    let root = Path::new(ROOT);
    let dirs: Vec<PathBuf> = match layout(root) {
        Ok(Layout::V2) => vec![root.join(relative)],
        Ok(Layout::V1) => V1_CONTROLLERS.iter().map(|c| root.join(c).join(relative)).collect(),
        Err(_) => Vec::new(),
    };
    for dir in dirs {
        remove_dir(&dir);
        if in_default_parent(relative) {
            remove_default_parent(&dir);
        }
    }
}

/// Make the process `cmd` starts join the cgroups whose `cgroup.procs` files are `procs`
/// before it runs (so it is never outside them), for processes not started through the jail.
pub fn join_on_exec(cmd: &mut std::process::Command, procs: &[PathBuf]) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let files: Vec<std::ffi::CString> = procs
        .iter()
        .map(|p| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|e| io(p)(e.into())))
        .collect::<Result<_>>()?;
    // SAFETY: between fork and exec the closure makes only open/write/close system calls on
    // strings prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for file in &files {
                let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, c"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroups_paths_as_runc_reads_them() {
        let p = |s: &str| relative_path(Some(s), "c1").map(|p| p.display().to_string());
        assert_eq!(p("/libpod_parent/libpod-abc").unwrap(), "libpod_parent/libpod-abc");
        assert_eq!(p("default/c1").unwrap(), "default/c1");
        assert_eq!(p("machine.slice:libpod:abc").unwrap(), "machine.slice/libpod-abc.scope");
        assert_eq!(
            p("kubepods-besteffort-pod12.slice:cri-containerd:abc").unwrap(),
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-containerd-abc.scope"
        );
        assert_eq!(relative_path(None, "c1").unwrap(), PathBuf::from("hull/c1"));
        assert!(p("/a/../../etc").is_err());
        assert!(p("/").is_err());
        assert!(p("bad:prefix:x").is_err());
    }

    #[test]
    fn limits_hold_the_vm_and_its_overhead() {
        let r: oci_spec::runtime::LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 64 << 20}, "cpu": {"quota": 50000, "period": 100000, "shares": 512}, "pids": {"limit": 50}
        }))
        .unwrap();
        let l = Limits::for_sandbox(Some(&r), 192);
        assert_eq!(l.memory_bytes, Some((192 + HOST_OVERHEAD_MIB) << 20));
        assert_eq!(l.cpu_quota, Some((50000, 100000)));
        assert_eq!(l.cpu_shares, Some(512));
        assert_eq!(l.pids, Some(50 + PIDS_OVERHEAD));
        assert_eq!(Limits::for_sandbox(None, 512), Limits::default());
    }

    /// Against a fake v1 tree: directories made per controller, limits written, only what was
    /// made removed.
    #[test]
    fn a_v1_tree_gets_a_cgroup_per_controller() {
        let root = std::env::temp_dir().join(format!("hull-cgroup-test-{}", std::process::id()));
        for c in V1_CONTROLLERS {
            fs::create_dir_all(root.join(c).join("existing")).unwrap();
        }
        let limits = Limits { memory_bytes: Some(1 << 30), pids: Some(10), ..Default::default() };
        // A fake tree has no control files until written; the writes land where they exist.
        fs::create_dir_all(root.join("memory/existing/sb")).unwrap();
        fs::write(root.join("memory/existing/sb/memory.limit_in_bytes"), "").unwrap();
        let mut cg = HostCgroup::create_under(&root, Path::new("existing/sb"), &limits).unwrap();
        assert_eq!(fs::read_to_string(root.join("memory/existing/sb/memory.limit_in_bytes")).unwrap(), "1073741824");
        assert_eq!(cg.procs_files().len(), 3);
        assert!(root.join("pids/existing/sb").is_dir() && root.join("cpu/existing/sb").is_dir());
        fs::remove_file(root.join("memory/existing/sb/memory.limit_in_bytes")).unwrap();
        cg.remove();
        assert!(!root.join("pids/existing/sb").exists() && !root.join("cpu/existing/sb").exists());
        assert!(root.join("pids/existing").is_dir(), "a parent the caller made was removed");
        fs::remove_dir_all(&root).unwrap();
    }

    /// Two sandboxes in hull's own parent, the first to come leaving first: the parent goes
    /// with the last one, whichever made it.
    #[test]
    fn the_default_parent_goes_with_the_last_sandbox_in_it() {
        let root = std::env::temp_dir().join(format!("hull-cgroup-parent-{}", std::process::id()));
        for c in V1_CONTROLLERS {
            fs::create_dir_all(root.join(c)).unwrap();
        }
        let (a, b) = (relative_path(None, "a").unwrap(), relative_path(None, "b").unwrap());
        let mut first = HostCgroup::create_under(&root, &a, &Limits::default()).unwrap();
        let mut second = HostCgroup::create_under(&root, &b, &Limits::default()).unwrap();
        first.remove();
        assert!(root.join("memory/hull/b").is_dir());
        second.remove();
        for c in V1_CONTROLLERS {
            assert!(!root.join(c).join("hull").exists(), "{c}/hull is left");
        }
        fs::remove_dir_all(&root).unwrap();
    }
}
