//! Seccomp allowlists, one per thread kind (the model is Firecracker's): a vCPU thread needs
//! KVM_RUN and what device emulation on an exit does; the event-loop thread needs epoll, unix
//! sockets and eventfds. Anything else traps, and the SIGSYS handler names the syscall before
//! the process exits, so a missing entry is a clear report rather than a mystery.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};

#[derive(Debug, thiserror::Error)]
#[error("seccomp: {0}")]
pub struct SeccompError(String);

/// KVM_RUN = _IO(KVMIO, 0x80).
const KVM_RUN: u64 = 0xae80;
const FIONBIO: u64 = 0x5421;

/// Syscalls every thread makes: memory, locks, signals, exiting, logging.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    // glibc's per-thread malloc arenas grow by mprotect.
    libc::SYS_mprotect,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Unix-socket work a vhost-user frontend does (on the vCPU thread at DRIVER_OK) and the
/// vsock muxer does (on the event loop).
const SOCKETS: &[i64] =
    &[libc::SYS_sendmsg, libc::SYS_recvmsg, libc::SYS_sendto, libc::SYS_recvfrom, libc::SYS_shutdown, libc::SYS_fcntl];

fn build(allow: &[i64], conditional: Vec<(i64, Vec<SeccompRule>)>) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = allow.iter().map(|s| (*s, Vec::new())).collect();
    for (nr, r) in conditional {
        rules.insert(nr, r);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        std::env::consts::ARCH.try_into().map_err(|e| SeccompError(format!("{e:?}")))?,
    )
    .map_err(|e| SeccompError(e.to_string()))?;
    filter.try_into().map_err(|e: seccompiler::BackendError| SeccompError(e.to_string()))
}

fn arg_eq(index: u8, value: u64) -> Result<SeccompRule, SeccompError> {
    let cond = SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .map_err(|e| SeccompError(e.to_string()))?;
    SeccompRule::new(vec![cond]).map_err(|e| SeccompError(e.to_string()))
}

/// _IOR/_IOWR(KVMIO, nr, size): the KVM state getters a snapshot calls.
const fn kvm_ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}
const fn kvm_iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}

/// What a vCPU thread reads of itself for a snapshot (snapshot::cpu::save).
fn vcpu_getters() -> Vec<u64> {
    use kvm_bindings::*;
    use std::mem::size_of;
    vec![
        kvm_ior(0x98, size_of::<kvm_mp_state>()),
        kvm_ior(0x81, size_of::<kvm_regs>()),
        kvm_ior(0x83, size_of::<kvm_sregs>()),
        kvm_ior(0xa4, size_of::<kvm_xsave>()),
        kvm_ior(0xa6, size_of::<kvm_xcrs>()),
        kvm_ior(0xa1, size_of::<kvm_debugregs>()),
        kvm_ior(0x8e, size_of::<kvm_lapic_state>()),
        kvm_iowr(0x88, size_of::<kvm_msrs>()),
        kvm_ior(0x9f, size_of::<kvm_vcpu_events>()),
        // KVM_GET_TSC_KHZ = _IO(KVMIO, 0xa3).
        (0xae << 8) | 0xa3,
    ]
}

/// What the event loop reads of the VM for a snapshot (snapshot::vm::save).
fn vm_getters() -> Vec<u64> {
    use kvm_bindings::*;
    use std::mem::size_of;
    vec![
        kvm_iowr(0x62, size_of::<kvm_irqchip>()),
        kvm_ior(0x9f, size_of::<kvm_pit_state2>()),
        kvm_ior(0x7c, size_of::<kvm_clock_data>()),
    ]
}

fn ioctls(cmds: impl IntoIterator<Item = u64>) -> Result<Vec<SeccompRule>, SeccompError> {
    cmds.into_iter().map(|c| arg_eq(1, c)).collect()
}

/// The vCPU threads' filter. With `snapshots` (a VM that may be saved) it also allows the
/// vCPU state getters; other VMs never need them.
pub fn vcpu_filter(snapshots: bool) -> Result<BpfProgram, SeccompError> {
    let mut allow = COMMON.to_vec();
    allow.extend_from_slice(SOCKETS);
    let mut cmds = vec![KVM_RUN];
    if snapshots {
        cmds.extend(vcpu_getters());
    }
    build(&allow, vec![(libc::SYS_ioctl, ioctls(cmds)?)])
}

/// The event loop's filter. With `snapshots` it also allows what saving the VM takes: kicking
/// the vCPU threads (tgkill), the VM getters, and writing the snapshot file opened at start.
pub fn main_filter(snapshots: bool) -> Result<BpfProgram, SeccompError> {
    let mut allow = COMMON.to_vec();
    allow.extend_from_slice(SOCKETS);
    allow.extend_from_slice(&[
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_ctl,
        libc::SYS_accept4,
        libc::SYS_connect,
        // The vsock socket is removed on exit.
        libc::SYS_unlink,
        libc::SYS_unlinkat,
    ]);
    // set_nonblocking on accepted and connected sockets.
    let mut cmds = vec![FIONBIO];
    if snapshots {
        allow.extend_from_slice(&[
            libc::SYS_tgkill,
            libc::SYS_pwrite64,
            libc::SYS_ftruncate,
            libc::SYS_fdatasync,
            // SEEK_DATA/SEEK_HOLE over guest memory's file.
            libc::SYS_lseek,
        ]);
        cmds.extend(vm_getters());
    }
    build(
        &allow,
        vec![
            // Only unix stream sockets, for guest-initiated vsock connections.
            (libc::SYS_socket, vec![arg_eq(0, libc::AF_UNIX as u64)?]),
            (libc::SYS_ioctl, ioctls(cmds)?),
        ],
    )
}

/// Install `filter` on the calling thread.
pub fn apply(filter: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(filter).map_err(|e| SeccompError(e.to_string()))
}

/// Report a trapped syscall by number, then exit: writing to stderr and `_exit` are both
/// async-signal-safe.
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: for SIGSYS the kernel fills siginfo's _sigsys member; si_syscall is the int at
    // byte offset 24 on x86-64 (after si_signo, si_errno, si_code, padding, si_call_addr).
    let nr = unsafe { *(info as *const u8).add(24).cast::<libc::c_int>() };
    let mut msg = *b"hull-vmm: seccomp: blocked syscall       \n";
    let mut n = nr.unsigned_abs();
    let mut i = msg.len() - 2;
    loop {
        msg[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 35 {
            break;
        }
        i -= 1;
    }
    // SAFETY: write and _exit are async-signal-safe; msg is a valid buffer.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(159);
    }
}

/// Install the SIGSYS reporter (before any filter).
pub fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: sigaction with a zeroed struct, our handler and SA_SIGINFO; the handler only uses
    // async-signal-safe calls.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigsys as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        if libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) != 0 {
            return Err(SeccompError(std::io::Error::last_os_error().to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn filters_compile() {
        for snapshots in [false, true] {
            super::vcpu_filter(snapshots).unwrap();
            super::main_filter(snapshots).unwrap();
        }
    }
}
