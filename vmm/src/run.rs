//! Running a built VM: vCPU threads plus the event loop on the calling thread, until the guest
//! resets, a vCPU fails, or SIGTERM/SIGINT asks for an orderly shutdown.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber, SubscriberOps};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use vmm_sys_util::epoll::EventSet;

use crate::builder::{BuildError, Vmm};
use crate::vcpu::{ExitEvent, ExitReason};

/// Wakes the loop when something asked the VM to stop.
struct ExitWatcher(Arc<ExitEvent>);

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.event().read();
    }
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.event(), EventSet::IN)) {
            tracing::error!("event loop: cannot watch the exit event: {e:?}");
        }
    }
}

/// SIGTERM and SIGINT arrive here (they are blocked in every thread), so shutdown is orderly.
struct SignalWatcher {
    fd: SignalFd,
    exit: Arc<ExitEvent>,
}

impl MutEventSubscriber for SignalWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        if let Ok(Some(info)) = self.fd.read_signal() {
            tracing::info!("signal {}: shutting down", info.ssi_signo);
            self.exit.request(ExitReason::Signal);
        }
    }
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.fd.as_raw_fd(), EventSet::IN)) {
            tracing::error!("event loop: cannot watch signals: {e:?}");
        }
    }
}

/// Block the shutdown signals in this thread (and every thread it spawns later) and return a
/// signalfd that reads them. Call before any thread exists. SIGPIPE is ignored: a peer closing
/// its socket is an error on that socket, not the end of the VMM.
pub fn take_signals() -> Result<SignalFd, BuildError> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().map_err(|e| BuildError::EventLoop(format!("blocking signals: {e}")))?;
    // SAFETY: setting SIGPIPE's disposition to SIG_IGN installs no handler code.
    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigIgn) }
        .map_err(|e| BuildError::EventLoop(format!("ignoring SIGPIPE: {e}")))?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| BuildError::EventLoop(format!("signalfd: {e}")))
}

impl Vmm {
    /// Start the vCPUs and serve devices until the VM ends. `vcpu_filter` runs on each vCPU
    /// thread before its first KVM_RUN; `main_filter` runs on this thread once the vCPU threads
    /// exist (both install seccomp filters in production).
    pub fn run(
        mut self,
        signals: SignalFd,
        vcpu_filter: Option<Arc<dyn Fn() + Send + Sync>>,
        main_filter: Option<Box<dyn FnOnce()>>,
    ) -> Result<ExitReason, BuildError> {
        let exit = self.exit.clone();
        self.events.add_subscriber(Arc::new(Mutex::new(ExitWatcher(exit.clone()))));
        self.events.add_subscriber(Arc::new(Mutex::new(SignalWatcher { fd: signals, exit: exit.clone() })));

        let mut threads = Vec::new();
        for mut vcpu in std::mem::take(&mut self.vcpus) {
            if let Some(f) = &vcpu_filter {
                let f = f.clone();
                vcpu.on_start = Some(Box::new(move || f()));
            }
            let t = std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.index))
                .spawn(move || vcpu.run())
                .map_err(|e| BuildError::EventLoop(format!("spawning a vCPU thread: {e}")))?;
            threads.push(t);
        }
        if let Some(f) = main_filter {
            f();
        }
        while exit.reason().is_none() {
            if let Err(e) = self.events.run() {
                tracing::error!("event loop: {e:?}");
                exit.request(ExitReason::VcpuError);
            }
        }
        // vCPU threads are not joined: they may sit in KVM_RUN, and the process ends next.
        drop(threads);
        Ok(exit.reason().unwrap_or(ExitReason::VcpuError))
    }
}
