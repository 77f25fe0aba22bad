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

/// The vCPU threads' filter.
pub fn vcpu_filter() -> Result<BpfProgram, SeccompError> {
    let mut allow = COMMON.to_vec();
    allow.extend_from_slice(SOCKETS);
    build(&allow, vec![(libc::SYS_ioctl, vec![arg_eq(1, KVM_RUN)?])])
}

/// The event loop's filter.
pub fn main_filter() -> Result<BpfProgram, SeccompError> {
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
    build(
        &allow,
        vec![
            // Only unix stream sockets, for guest-initiated vsock connections.
            (libc::SYS_socket, vec![arg_eq(0, libc::AF_UNIX as u64)?]),
            // set_nonblocking on accepted and connected sockets.
            (libc::SYS_ioctl, vec![arg_eq(1, FIONBIO)?]),
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
        super::vcpu_filter().unwrap();
        super::main_filter().unwrap();
    }
}
