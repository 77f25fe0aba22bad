//! Confinement in the spirit of Firecracker's jailer, applied by the VMM to itself once every
//! host resource (KVM, guest RAM, taps, sockets, the console log) is open: a private mount
//! namespace whose root is the jail directory alone, resource limits, an optional unprivileged
//! uid/gid, no capabilities, and no_new_privs. Seccomp filters follow, per thread ([`crate::seccomp`]).

use std::ffi::CString;
use std::path::Path;

use crate::config::JailConfig;

#[derive(Debug, thiserror::Error)]
#[error("jail: {step}: {source}")]
pub struct JailError {
    step: String,
    source: std::io::Error,
}

fn check(rc: libc::c_int, step: impl Into<String>) -> Result<(), JailError> {
    if rc < 0 {
        return Err(JailError { step: step.into(), source: std::io::Error::last_os_error() });
    }
    Ok(())
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).expect("paths have no NUL bytes")
}

/// Highest capability number to try dropping from the bounding set (CAP_LAST_CAP on current
/// kernels is 40; the first unknown one fails with EINVAL, which ends the loop).
const CAP_MAX: libc::c_ulong = 63;

/// Enter the jail. Must run while the process has a single thread (unsharing the mount
/// namespace needs an unshared fs struct).
pub fn enter(jail: &JailConfig) -> Result<(), JailError> {
    // A new network namespace too: taps are already open (they keep working), and abstract
    // unix sockets of the host's namespace, which no path-based jail can hide, become
    // unreachable. Path-based sockets (the vsock ones in the jail dir) are unaffected.
    // SAFETY: unshare with flag constants only affects this process.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWNET) }, "unshare(CLONE_NEWNS | CLONE_NEWNET)")?;
    let root = c"/";
    // SAFETY: mount with valid NUL-terminated strings and null data; makes our copy of the
    // mount tree private so nothing we do propagates back to the host.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    check(rc, "making / private")?;
    let dir = cstr(&jail.dir);
    // SAFETY: as above; a bind mount of the jail onto itself makes it a mount point, which
    // pivot_root requires.
    let rc = unsafe {
        libc::mount(dir.as_ptr(), dir.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null())
    };
    check(rc, format!("bind-mounting {}", jail.dir.display()))?;
    // SAFETY: chdir with a valid path.
    check(unsafe { libc::chdir(dir.as_ptr()) }, format!("chdir {}", jail.dir.display()))?;
    let dot = c".";
    // SAFETY: pivot_root(".", ".") stacks the old root on top of the new one; it is detached
    // right after, leaving only the jail visible.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } as libc::c_int, "pivot_root")?;
    // SAFETY: umount2 of the stacked old root.
    check(unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) }, "detaching the old root")?;
    // SAFETY: chdir with a valid path.
    check(unsafe { libc::chdir(root.as_ptr()) }, "chdir /")?;

    let nofile = libc::rlimit { rlim_cur: jail.max_open_files, rlim_max: jail.max_open_files };
    // SAFETY: setrlimit reads the struct we pass.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &nofile) }, "RLIMIT_NOFILE")?;
    // No RLIMIT_NPROC: vCPU threads are created after this, and the seccomp filters already
    // refuse clone/fork once they are.

    for cap in 0..=CAP_MAX {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = std::io::Error::last_os_error();
            // EINVAL: past the kernel's last capability; anything else is a real failure.
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(JailError { step: format!("dropping capability {cap} from the bounding set"), source: e });
        }
    }
    if let (Some(uid), Some(gid)) = (jail.uid, jail.gid) {
        // A change of credentials clears the parent-death signal the runtime asked for (it
        // is how the VMM dies with a supervisor that is killed): read it first, set it again
        // after, and if the parent died in between, leave now as the signal would have made us.
        let mut pdeath: libc::c_int = 0;
        // SAFETY: PR_GET_PDEATHSIG writes one int through the pointer we pass.
        check(unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut pdeath as *mut libc::c_int) }, "PR_GET_PDEATHSIG")?;
        // SAFETY: getppid has no arguments.
        let parent = unsafe { libc::getppid() };
        // SAFETY: setgroups with an empty list.
        check(unsafe { libc::setgroups(0, std::ptr::null()) }, "setgroups")?;
        // SAFETY: setgid with an integer.
        check(unsafe { libc::setgid(gid) }, format!("setgid {gid}"))?;
        // SAFETY: setuid with an integer.
        check(unsafe { libc::setuid(uid) }, format!("setuid {uid}"))?;
        if pdeath != 0 {
            // SAFETY: prctl with integer arguments.
            check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, pdeath as libc::c_ulong) }, "PR_SET_PDEATHSIG")?;
            // SAFETY: getppid has no arguments.
            if unsafe { libc::getppid() } != parent {
                // SAFETY: raise with the signal the parent's death was to send.
                unsafe { libc::raise(pdeath) };
            }
        }
    }
    drop_all_capabilities()?;
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }, "no_new_privs")?;
    Ok(())
}

fn drop_all_capabilities() -> Result<(), JailError> {
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    // SAFETY: prctl with integer arguments.
    let _ = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    let header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a v3 header and two data words, which we provide.
    check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } as libc::c_int, "capset")
}
