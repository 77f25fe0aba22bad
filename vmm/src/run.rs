//! Running a built VM: vCPU threads plus the event loop on the calling thread, until the guest
//! resets, a vCPU fails, or SIGTERM/SIGINT asks for an orderly shutdown.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber, SubscriberOps};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use vmm_sys_util::epoll::EventSet;

use crate::builder::{BuildError, Vmm};
use crate::snapshot::{SnapshotError, VmSnapshot};
use crate::vcpu::{ExitEvent, ExitReason, Pause};

/// How long the vCPUs get to stop and save their state for a snapshot.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The signal that knocks a vCPU thread out of KVM_RUN for a pause. Its handler does nothing:
/// the interrupted KVM_RUN returning EINTR is the point.
fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

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

/// SIGTERM and SIGINT arrive here (they are blocked in every thread), so shutdown is orderly;
/// so does SIGUSR1, the request for a snapshot.
struct SignalWatcher {
    fd: SignalFd,
    exit: Arc<ExitEvent>,
    pause: Option<Arc<Pause>>,
}

impl MutEventSubscriber for SignalWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let Ok(Some(info)) = self.fd.read_signal() else { return };
        if info.ssi_signo == libc::SIGUSR1 as u32 {
            match &self.pause {
                Some(pause) => {
                    tracing::info!("SIGUSR1: pausing the VM for a snapshot");
                    // The pause first: a vCPU that wakes for the exit must park, not return.
                    pause.request();
                    self.exit.request(ExitReason::Snapshot);
                }
                None => tracing::warn!("SIGUSR1 ignored: no snapshot file is configured (snapshot_to)"),
            }
            return;
        }
        tracing::info!("signal {}: shutting down", info.ssi_signo);
        self.exit.request(ExitReason::Signal);
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
    set.add(Signal::SIGUSR1);
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
        let pause = self.snapshot_to.is_some().then(|| self.pause.clone());
        self.events.add_subscriber(Arc::new(Mutex::new(SignalWatcher { fd: signals, exit: exit.clone(), pause })));
        vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| BuildError::EventLoop(format!("installing the vCPU kick handler: {e}")))?;

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
        let reason = exit.reason().unwrap_or(ExitReason::VcpuError);
        if reason == ExitReason::Snapshot {
            self.snapshot(&threads)?;
        }
        // vCPU threads are not joined: they may sit in KVM_RUN, and the process ends next.
        drop(threads);
        Ok(reason)
    }

    /// Stop the vCPUs, save the VM into the configured file, and leave it stopped.
    fn snapshot(&self, threads: &[JoinHandle<()>]) -> Result<(), SnapshotError> {
        use vmm_sys_util::signal::Killable;
        let Some((file, path)) = &self.snapshot_to else {
            return Err(SnapshotError::Unsupported("no snapshot file is configured".into()));
        };
        let started = std::time::Instant::now();
        let kick = || {
            for t in threads {
                let _ = t.kill(kick_signal());
            }
        };
        let vcpus = self.pause.collect(threads.len(), kick, PAUSE_TIMEOUT).map_err(SnapshotError::Unsupported)?;
        let vm = crate::snapshot::vm::save(&self.vm)?;
        let serial = self.serial.lock().unwrap().state();
        let identity =
            self.identity.clone().ok_or_else(|| SnapshotError::Unsupported("the VM has no identity".into()))?;
        let paused_ms = started.elapsed().as_millis();
        crate::snapshot::file::write(file, path, &VmSnapshot { identity, vcpus, vm, serial }, &self.mem)?;
        tracing::info!(paused_ms, total_ms = started.elapsed().as_millis(), "snapshot written to {}", path.display());
        Ok(())
    }
}
