//! The jailer: how every host process that maps guest memory or reads what the guest writes
//! is started (QEMU, the vsock backend; virtiofsd as far as it can be; hull-vmm jails itself
//! the same way from inside and gets only the uid and cgroup from here).
//!
//! Between fork and exec the child, still root:
//! 1. joins the sandbox's host cgroups and marks every inherited fd close-on-exec (the fds it
//!    is meant to have are placed afterwards, see [`crate::process::inherit_fds`]);
//! 2. enters new mount, IPC and UTS (and, for processes that need no network, network)
//!    namespaces, and mounts a small tmpfs on the jail dir holding only what it needs, each
//!    bound at its own host path (so no path on its command line changes): `/usr` and the
//!    dynamic loader's cache read-only, the assets it loads read-only, its sockets directory,
//!    the devices it opens; then `pivot_root`s into it, detaches the old root and makes the
//!    new one read-only;
//! 3. sets RLIMIT_NOFILE and RLIMIT_FSIZE, drops the whole capability bounding set, switches
//!    to the sandbox's unprivileged uid and gid (all capabilities go with root), sets
//!    `no_new_privs`, and installs a seccomp filter that refuses what no VMM or device backend
//!    needs (mounts, namespaces, ptrace, module and kexec loading, bpf, perf, keyrings,
//!    io_uring, user namespaces through clone).
//!
//! The uid comes from a range ([`UidRange`]), one per sandbox, held by a lock file for the
//! sandbox's life.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the uid locks live while their sandboxes run.
const UID_LOCKS: &str = "/run/lock/hull-jail-uids";
/// First uid and count of the default range: far above any distribution's users and podman's
/// subordinate ranges (`HULL_JAIL_UIDS=FIRST:COUNT` to change it).
const DEFAULT_UIDS: (u32, u32) = (0x6c00_0000, 65_536);
/// The jail root's tmpfs: directories and mountpoints only.
const ROOT_TMPFS: &CStr = c"size=64k,nr_inodes=1024,mode=0755";

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("HULL_JAIL_UIDS={0:?}: expected FIRST:COUNT")]
    BadRange(String),
    #[error("no free jail uid in {first}..{}: every one is held by a running sandbox", first + count)]
    NoFreeUid { first: u32, count: u32 },
    #[error("path {0:?} contains a NUL byte")]
    Nul(PathBuf),
    #[error("{0}")]
    Cgroup(String),
}

type Result<T> = std::result::Result<T, JailError>;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> JailError {
    let path = path.to_path_buf();
    move |source| JailError::Io { what, path, source }
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| JailError::Nul(p.to_path_buf()))
}

/// An unprivileged uid (and the gid of the same number) held for one sandbox: an `flock` on
/// a lock file named for it, which goes when the sandbox does, or when its holder dies.
#[derive(Debug)]
pub struct JailId {
    pub uid: u32,
    pub gid: u32,
    lock: File,
    path: PathBuf,
}

impl Drop for JailId {
    fn drop(&mut self) {
        // Unlinked while still held: whoever opened it meanwhile sees, once it has the lock,
        // that the file is no longer the one at the path, and tries again.
        let _ = std::fs::remove_file(&self.path);
        let _ = &self.lock;
    }
}

pub struct UidRange {
    first: u32,
    count: u32,
}

impl UidRange {
    /// `HULL_JAIL_UIDS`, or the default range.
    pub fn configured() -> Result<UidRange> {
        match std::env::var("HULL_JAIL_UIDS") {
            Ok(v) if !v.is_empty() => {
                let (first, count) = v.split_once(':').ok_or_else(|| JailError::BadRange(v.clone()))?;
                let first: u32 = first.parse().map_err(|_| JailError::BadRange(v.clone()))?;
                let count: u32 = count.parse().map_err(|_| JailError::BadRange(v.clone()))?;
                if first == 0 || count == 0 || first.checked_add(count).is_none() {
                    return Err(JailError::BadRange(v));
                }
                Ok(UidRange { first, count })
            }
            _ => Ok(UidRange { first: DEFAULT_UIDS.0, count: DEFAULT_UIDS.1 }),
        }
    }

    /// Take a uid no running sandbox holds, starting from one derived from `hint` (the
    /// sandbox's name) so concurrent sandboxes rarely contend for the same lock.
    pub fn allocate(&self, hint: &str) -> Result<JailId> {
        let dir = Path::new(UID_LOCKS);
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let start = hint.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32)) % self.count;
        for i in 0..self.count {
            let uid = self.first + (start + i) % self.count;
            let path = dir.join(uid.to_string());
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io("opening", &path))?;
            // SAFETY: flock on an fd we own; LOCK_NB returns at once.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                continue;
            }
            // The lock is ours only if the file is still the one at the path (its last holder
            // unlinks it on release).
            use std::os::unix::fs::MetadataExt;
            let held = file.metadata().map_err(io("checking", &path))?;
            match std::fs::metadata(&path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(JailId { uid, gid: uid, lock: file, path });
                }
                _ => continue,
            }
        }
        Err(JailError::NoFreeUid { first: self.first, count: self.count })
    }
}

/// What one jailed process may see and be.
#[derive(Debug, Clone)]
pub struct JailSpec {
    /// An empty directory to build the root in (a tmpfs is mounted over it in the child).
    pub root: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (e.g. the group of /dev/kvm).
    pub groups: Vec<u32>,
    /// Host paths bound at the same path in the jail, read-only.
    pub read_only: Vec<PathBuf>,
    /// Host directories bound at the same path, writable (its sockets).
    pub writable: Vec<PathBuf>,
    /// Device nodes bound at the same path.
    pub devices: Vec<PathBuf>,
    /// Whether the process keeps the host's network namespace (nothing jailed here needs it:
    /// taps arrive as fds and sockets are unix ones).
    pub new_network: bool,
    pub nofile: u64,
    /// Largest file it may write (its logs); past it the write fails with EFBIG.
    pub fsize: u64,
    /// `cgroup.procs` files to join first.
    pub cgroups: Vec<PathBuf>,
    /// False only where `HULL_JAIL=off` asked for the jail's cost to be measured (`make bench`):
    /// the process then only joins its cgroups.
    pub enabled: bool,
}

/// Whether sandbox processes are jailed: always, unless `HULL_JAIL=off` (benchmarks), which
/// is said on stderr every time.
pub fn enabled() -> bool {
    if std::env::var("HULL_JAIL").as_deref() == Ok("off") {
        eprintln!("hull: WARNING: HULL_JAIL=off: this sandbox's VMM and vsock backend run as root, unjailed (for measuring the jail's cost only)");
        return false;
    }
    true
}

/// Everything the child needs, made before the fork (the child may not allocate).
struct Prepared {
    root: CString,
    cgroups: Vec<CString>,
    /// (source, target in the jail root, kind).
    binds: Vec<(CString, CString, BindKind)>,
    /// Directories to create in the jail root, parents first.
    dirs: Vec<CString>,
    /// (link target, link path) for merged-/usr symlinks.
    links: Vec<(CString, CString)>,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    new_network: bool,
    nofile: u64,
    fsize: u64,
    filters: Vec<Vec<libc::sock_filter>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BindKind {
    ReadOnlyDir,
    ReadOnlyFile,
    WritableDir,
    Device,
}

impl JailSpec {
    fn prepare(&self) -> Result<Prepared> {
        let in_root = |p: &Path| cstring(&self.root.join(p.strip_prefix("/").unwrap_or(p)));
        let mut dirs: Vec<PathBuf> = Vec::new();
        let want_dir = |p: &Path, dirs: &mut Vec<PathBuf>| {
            for a in p.ancestors().collect::<Vec<_>>().into_iter().rev() {
                if a != Path::new("/") && !dirs.iter().any(|d| d == a) {
                    dirs.push(a.to_path_buf());
                }
            }
        };
        let mut binds = Vec::new();
        let mut links = Vec::new();
        // /usr, and the merged-/usr links Debian has at /lib, /lib64, /bin, /sbin.
        let mut read_only = vec![PathBuf::from("/usr"), PathBuf::from("/etc/ld.so.cache")];
        for link in ["/lib", "/lib64", "/bin", "/sbin"] {
            match std::fs::read_link(link) {
                Ok(target) => links.push((cstring(&target)?, in_root(Path::new(link))?)),
                Err(_) if Path::new(link).is_dir() => read_only.push(PathBuf::from(link)),
                Err(_) => {}
            }
        }
        read_only.extend(self.read_only.iter().cloned());
        // What lies under a directory that is bound anyway needs no bind of its own (and could
        // not get one: the directory is read-only by then).
        let dirs_bound: Vec<PathBuf> = read_only.iter().chain(&self.writable).filter(|p| p.is_dir()).cloned().collect();
        let covered = |p: &Path| dirs_bound.iter().any(|d| d != p && p.starts_with(d));
        let mut seen = Vec::new();
        for path in &read_only {
            if !path.exists() || covered(path) || seen.contains(path) {
                continue;
            }
            seen.push(path.clone());
            let kind = if path.is_dir() { BindKind::ReadOnlyDir } else { BindKind::ReadOnlyFile };
            match kind {
                BindKind::ReadOnlyDir => want_dir(path, &mut dirs),
                _ => want_dir(path.parent().unwrap_or(Path::new("/")), &mut dirs),
            }
            binds.push((cstring(path)?, in_root(path)?, kind));
        }
        for path in &self.writable {
            want_dir(path, &mut dirs);
            binds.push((cstring(path)?, in_root(path)?, BindKind::WritableDir));
        }
        let devices: Vec<PathBuf> = [Path::new("/dev/null"), Path::new("/dev/zero"), Path::new("/dev/urandom")]
            .into_iter()
            .map(Path::to_path_buf)
            .chain(self.devices.iter().cloned())
            .collect();
        for dev in &devices {
            want_dir(dev.parent().unwrap_or(Path::new("/")), &mut dirs);
            binds.push((cstring(dev)?, in_root(dev)?, BindKind::Device));
        }
        let dirs = dirs.iter().map(|d| in_root(d)).collect::<Result<Vec<_>>>()?;
        Ok(Prepared {
            root: cstring(&self.root)?,
            cgroups: self.cgroups.iter().map(|p| cstring(p)).collect::<Result<_>>()?,
            binds,
            dirs,
            links,
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
            new_network: self.new_network,
            nofile: self.nofile,
            fsize: self.fsize,
            filters: deny_filters()?,
        })
    }

    /// Make `cmd` start jailed. Register this before [`crate::process::inherit_fds`]: it marks
    /// every inherited fd close-on-exec, and the fds placed afterwards are the ones kept.
    pub fn apply(&self, cmd: &mut Command) -> Result<()> {
        if !self.enabled {
            return crate::cgroup::join_on_exec(cmd, &self.cgroups).map_err(|e| JailError::Cgroup(e.to_string()));
        }
        std::fs::create_dir_all(&self.root).map_err(io("creating", &self.root))?;
        let p = self.prepare()?;
        // SAFETY: between fork and exec the closure makes only raw system calls (no
        // allocation, no locks) on data prepared above and moved into it.
        unsafe {
            cmd.pre_exec(move || enter(&p));
        }
        Ok(())
    }
}

fn os_check(rc: libc::c_long) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Between fork and exec: the steps of the module comment, in order.
///
/// # Safety
/// Call only in the child of a fork, before exec.
unsafe fn enter(p: &Prepared) -> std::io::Result<()> {
    use libc::*;
    // SAFETY: every call below is an async-signal-safe system call whose pointer arguments
    // are NUL-terminated strings or structs owned by `p`, which outlives it.
    unsafe {
        for procs in &p.cgroups {
            let fd = open(procs.as_ptr(), O_WRONLY | O_CLOEXEC);
            os_check(fd as c_long)?;
            let written = write(fd, c"0".as_ptr().cast(), 1);
            close(fd);
            os_check(written as c_long)?;
        }
        os_check(syscall(SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC))?;
        let mut flags = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS;
        if p.new_network {
            flags |= CLONE_NEWNET;
        }
        os_check(unshare(flags) as c_long)?;
        let null = std::ptr::null();
        os_check(mount(null, c"/".as_ptr(), null, MS_REC | MS_PRIVATE, null.cast()) as c_long)?;
        // The skeleton is made for the jail's uid to walk; what it creates later is its own.
        umask(0o022);
        let tmpfs = c"tmpfs".as_ptr();
        os_check(mount(tmpfs, p.root.as_ptr(), tmpfs, MS_NOSUID | MS_NODEV, ROOT_TMPFS.as_ptr().cast()) as c_long)?;
        for dir in &p.dirs {
            if mkdir(dir.as_ptr(), 0o755) < 0 && *__errno_location() != EEXIST {
                return Err(std::io::Error::last_os_error());
            }
        }
        for (target, link) in &p.links {
            os_check(symlink(target.as_ptr(), link.as_ptr()) as c_long)?;
        }
        for (source, target, kind) in &p.binds {
            if *kind != BindKind::ReadOnlyDir && *kind != BindKind::WritableDir {
                let fd = open(target.as_ptr(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600);
                os_check(fd as c_long)?;
                close(fd);
            }
            os_check(mount(source.as_ptr(), target.as_ptr(), null, MS_BIND | MS_REC, null.cast()) as c_long)?;
            let mut remount = MS_BIND | MS_REMOUNT | MS_NOSUID;
            match kind {
                BindKind::ReadOnlyDir | BindKind::ReadOnlyFile => remount |= MS_RDONLY | MS_NODEV,
                BindKind::WritableDir => remount |= MS_NODEV | MS_NOEXEC,
                BindKind::Device => remount |= MS_NOEXEC,
            }
            os_check(mount(null, target.as_ptr(), null, remount, null.cast()) as c_long)?;
        }
        // pivot_root(".", "."): the old root ends up stacked on the new one and is detached.
        os_check(chdir(p.root.as_ptr()) as c_long)?;
        os_check(syscall(SYS_pivot_root, c".".as_ptr(), c".".as_ptr()))?;
        os_check(umount2(c".".as_ptr(), MNT_DETACH) as c_long)?;
        os_check(chdir(c"/".as_ptr()) as c_long)?;
        let ro = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV;
        os_check(mount(null, c"/".as_ptr(), null, ro, null.cast()) as c_long)?;

        umask(0o077);
        let nofile = rlimit { rlim_cur: p.nofile, rlim_max: p.nofile };
        os_check(setrlimit(RLIMIT_NOFILE, &nofile) as c_long)?;
        let fsize = rlimit { rlim_cur: p.fsize, rlim_max: p.fsize };
        os_check(setrlimit(RLIMIT_FSIZE, &fsize) as c_long)?;
        // Past the file size limit a write fails with EFBIG instead of killing the process.
        signal(SIGXFSZ, SIG_IGN);
        for cap in 0..64 {
            if prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && *__errno_location() != EINVAL {
                return Err(std::io::Error::last_os_error());
            }
        }
        os_check(setgroups(p.groups.len(), p.groups.as_ptr()) as c_long)?;
        os_check(setresgid(p.gid, p.gid, p.gid) as c_long)?;
        os_check(setresuid(p.uid, p.uid, p.uid) as c_long)?;
        os_check(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as c_long)?;
        for filter in &p.filters {
            let prog = sock_fprog { len: filter.len() as c_ushort, filter: filter.as_ptr() as *mut sock_filter };
            os_check(syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog))?;
        }
    }
    Ok(())
}

/// What the filter does with one system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Fail with this errno.
    Errno(u32),
    /// `clone` with CLONE_NEWUSER in its flags fails with EPERM; other clones pass.
    CloneWithoutNewUser,
}

/// The system calls no VMM or device backend needs, and what happens to them: EPERM, or ENOSYS
/// for clone3 (so that libc falls back to clone, whose flags the filter can read).
fn denied() -> Vec<(u32, Verdict)> {
    let eperm = Verdict::Errno(libc::EPERM as u32);
    let mut list: Vec<(u32, Verdict)> = [
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_userfaultfd,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_syslog,
        libc::SYS_quotactl,
        libc::SYS_fanotify_init,
        libc::SYS_vhangup,
        libc::SYS_pidfd_getfd,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_mknod,
        libc::SYS_mknodat,
    ]
    .iter()
    .map(|n| (*n as u32, eperm))
    .collect();
    list.push((libc::SYS_clone3 as u32, Verdict::Errno(libc::ENOSYS as u32)));
    list.push((libc::SYS_clone as u32, Verdict::CloneWithoutNewUser));
    list.sort_by_key(|(n, _)| *n);
    list
}

/// The one seccomp filter every jailed process gets: the [`denied`] calls refused, everything
/// else left to the process's own filter, if it has one (QEMU's `-sandbox`, virtiofsd's). The
/// call number is found by binary search, so an allowed call costs about seven comparisons.
/// Other architectures' calls (x32, i386 through int 0x80) are refused outright.
fn deny_filters() -> Result<Vec<Vec<libc::sock_filter>>> {
    Ok(vec![compile(&denied())])
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0_LOW: u32 = 16;
const X32_BIT: u32 = 0x4000_0000;
/// EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

fn compile(denied: &[(u32, Verdict)]) -> Vec<libc::sock_filter> {
    let allow = stmt(RET_K, libc::SECCOMP_RET_ALLOW);
    let errno = |e: u32| stmt(RET_K, libc::SECCOMP_RET_ERRNO | (e & libc::SECCOMP_RET_DATA));
    let mut prog = vec![
        stmt(LD_W_ABS, ARCH),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        errno(libc::EPERM as u32),
        stmt(LD_W_ABS, NR),
        jump(JGE_K, X32_BIT, 0, 1),
        errno(libc::EPERM as u32),
    ];
    prog.extend(search(denied, allow, &errno));
    prog
}

/// A binary search over `denied` (sorted), the call number in the accumulator; every path ends
/// in a return. Jumps are forward and short: each subtree is small.
fn search(
    denied: &[(u32, Verdict)],
    allow: libc::sock_filter,
    errno: &dyn Fn(u32) -> libc::sock_filter,
) -> Vec<libc::sock_filter> {
    match denied {
        [] => vec![allow],
        [(nr, verdict)] => {
            let mut leaf = vec![jump(JEQ_K, *nr, 0, 0)];
            let hit = match verdict {
                Verdict::Errno(e) => vec![errno(*e)],
                Verdict::CloneWithoutNewUser => vec![
                    stmt(LD_W_ABS, ARG0_LOW),
                    jump(JSET_K, libc::CLONE_NEWUSER as u32, 0, 1),
                    errno(libc::EPERM as u32),
                    allow,
                ],
            };
            // Not this one: jump over the hit to the allow at the end.
            leaf[0].jf = hit.len() as u8;
            leaf.extend(hit);
            leaf.push(allow);
            leaf
        }
        _ => {
            let mid = denied.len() / 2;
            let low = search(&denied[..mid], allow, errno);
            let high = search(&denied[mid..], allow, errno);
            // nr >= denied[mid]: the high half, after the low one.
            let mut node = vec![jump(JGE_K, denied[mid].0, low.len() as u8, 0)];
            assert!(low.len() < 256, "subtree too long for a BPF jump");
            node.extend(low);
            node.extend(high);
            node
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_is_short_and_branches_stay_in_range() {
        let prog = compile(&denied());
        assert!(prog.len() < 200, "{} instructions", prog.len());
    }

    /// The filter, installed in a child for real: refused calls fail with their errno, clone
    /// with CLONE_NEWUSER fails and a plain fork works, and everything else goes on.
    #[test]
    fn the_filter_refuses_what_it_lists_and_nothing_else() {
        let filter = compile(&denied());
        // SAFETY: fork in a test; the child only makes raw system calls and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: the child installs the filter and probes system calls, then _exits.
            unsafe {
                let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut _ };
                let ok = libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
                    && libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog) == 0;
                let errno = || *libc::__errno_location();
                let refused = |r: libc::c_long, e: i32| r < 0 && errno() == e;
                let checks = [
                    ok,
                    refused(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWNS), libc::EPERM),
                    refused(libc::syscall(libc::SYS_mount, 0, 0, 0, 0, 0), libc::EPERM),
                    refused(libc::syscall(libc::SYS_bpf, 0, 0, 0), libc::EPERM),
                    refused(libc::syscall(libc::SYS_ptrace, 0, 0, 0, 0), libc::EPERM),
                    refused(libc::syscall(libc::SYS_clone3, 0, 0), libc::ENOSYS),
                    refused(
                        libc::syscall(libc::SYS_clone, libc::CLONE_NEWUSER | libc::SIGCHLD, 0, 0, 0, 0),
                        libc::EPERM,
                    ),
                    libc::getpid() > 0,
                    libc::syscall(libc::SYS_getppid) > 0,
                ];
                let fork = libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0);
                if fork == 0 {
                    libc::_exit(0);
                }
                let mut status = 0;
                let forked = fork > 0 && libc::waitpid(fork as i32, &mut status, 0) == fork as i32 && status == 0;
                let failed = checks.iter().chain([&forked]).position(|c| !c).map(|i| i + 1).unwrap_or(0);
                libc::_exit(failed as i32);
            }
        }
        let mut status = 0;
        // SAFETY: waitpid on the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "the child died: status {status}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "check #{} failed (1-based)", libc::WEXITSTATUS(status));
    }

    #[test]
    fn a_uid_is_held_once_and_released_without_a_trace() {
        let range = UidRange { first: 0x6bff_0000, count: 2 };
        let a = range.allocate("x").unwrap();
        let b = range.allocate("x").unwrap();
        assert_ne!(a.uid, b.uid);
        assert!(matches!(range.allocate("x"), Err(JailError::NoFreeUid { .. })));
        let (uid, path) = (a.uid, a.path.clone());
        drop(a);
        assert!(!path.exists(), "the lock file outlived its sandbox");
        assert_eq!(range.allocate("x").unwrap().uid, uid);
    }

    #[test]
    fn uid_ranges_are_checked() {
        for bad in ["", "x", "0:10", "5", "4294967295:2", "10:0"] {
            std::env::set_var("HULL_JAIL_UIDS", bad);
            assert!(bad.is_empty() || UidRange::configured().is_err(), "{bad:?} accepted");
        }
        std::env::remove_var("HULL_JAIL_UIDS");
    }
}
