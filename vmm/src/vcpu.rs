//! One thread per vCPU: KVM_RUN, dispatch the exit to the port-I/O or MMIO bus, repeat. A vCPU
//! stops the VM by reporting an [`ExitReason`] on the shared exit event.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::Bus;
use crate::snapshot::cpu::{self, VcpuState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitReason {
    /// The guest asked for a reset (i8042 pulse or triple fault): the VM ends cleanly.
    Reset = 1,
    /// A vCPU hit something it cannot continue from.
    VcpuError = 2,
    /// SIGTERM or SIGINT: orderly shutdown.
    Signal = 3,
    /// SIGUSR1 with a snapshot file configured: the vCPUs park, the VM is saved, and it ends.
    Snapshot = 4,
}

/// The first reason to stop wins; the event wakes the main loop.
pub struct ExitEvent {
    reason: AtomicU8,
    event: EventFd,
}

impl ExitEvent {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitEvent { reason: AtomicU8::new(0), event: EventFd::new(libc::EFD_NONBLOCK)? })
    }

    pub fn event(&self) -> &EventFd {
        &self.event
    }

    pub fn request(&self, reason: ExitReason) {
        let _ = self.reason.compare_exchange(0, reason as u8, Ordering::SeqCst, Ordering::SeqCst);
        let _ = self.event.write(1);
    }

    pub fn reason(&self) -> Option<ExitReason> {
        match self.reason.load(Ordering::SeqCst) {
            1 => Some(ExitReason::Reset),
            2 => Some(ExitReason::VcpuError),
            3 => Some(ExitReason::Signal),
            4 => Some(ExitReason::Snapshot),
            _ => None,
        }
    }
}

/// Stops the vCPUs for a snapshot. The event loop asks ([`Pause::request`]) and kicks every
/// vCPU out of KVM_RUN until all have parked; only then does each save its own state, so no
/// vCPU still running can change another's (an IPI into a local APIC already read).
pub struct Pause {
    inner: Mutex<PauseInner>,
    cond: Condvar,
    /// What the save reads, found before the seccomp filters go on (they allow only the
    /// vCPU getters, not /dev/kvm's).
    msrs: Vec<u32>,
    xsave_size: usize,
}

#[derive(Default)]
struct PauseInner {
    requested: bool,
    parked: usize,
    saving: bool,
    saved: BTreeMap<u8, Result<VcpuState, String>>,
}

impl Pause {
    pub fn new(msrs: Vec<u32>, xsave_size: usize) -> Self {
        Pause { inner: Mutex::default(), cond: Condvar::new(), msrs, xsave_size }
    }

    pub fn request(&self) {
        self.inner.lock().unwrap().requested = true;
    }

    fn requested(&self) -> bool {
        self.inner.lock().unwrap().requested
    }

    /// On a vCPU thread: park, save this vCPU's state when told to, then return (the VM ends
    /// after a snapshot).
    fn park_and_save(&self, index: u8, fd: &VcpuFd) {
        let mut inner = self.inner.lock().unwrap();
        inner.parked += 1;
        self.cond.notify_all();
        while !inner.saving {
            inner = self.cond.wait(inner).unwrap();
        }
        drop(inner);
        let state = cpu::save(fd, &self.msrs, self.xsave_size).map_err(|e| e.to_string());
        self.inner.lock().unwrap().saved.insert(index, state);
        self.cond.notify_all();
    }

    /// On the event loop: wait until `count` vCPUs have parked, calling `kick` (which knocks
    /// them out of KVM_RUN) every millisecond meanwhile, since a kick that lands just before a
    /// vCPU enters KVM_RUN again is lost. Then have them save, and return their states.
    pub fn collect(&self, count: usize, kick: impl Fn(), within: Duration) -> Result<Vec<VcpuState>, String> {
        let deadline = Instant::now() + within;
        let mut inner = self.inner.lock().unwrap();
        while inner.parked < count {
            if Instant::now() >= deadline {
                return Err(format!("{} of {count} vCPUs stopped within {within:?}", inner.parked));
            }
            drop(inner);
            kick();
            inner = self.inner.lock().unwrap();
            inner = self.cond.wait_timeout(inner, Duration::from_millis(1)).unwrap().0;
        }
        inner.saving = true;
        self.cond.notify_all();
        while inner.saved.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("{} of {count} vCPUs saved their state within {within:?}", inner.saved.len()));
            }
            inner = self.cond.wait_timeout(inner, left).unwrap().0;
        }
        std::mem::take(&mut inner.saved).into_iter().map(|(i, r)| r.map_err(|e| format!("vcpu{i}: {e}"))).collect()
    }
}

pub struct Vcpu {
    pub index: u8,
    pub fd: VcpuFd,
    pub pio: Bus,
    pub mmio: Bus,
    pub exit: Arc<ExitEvent>,
    /// Called once, on the vCPU thread, before the first KVM_RUN (installs its seccomp filter).
    pub on_start: Option<Box<dyn FnOnce() + Send>>,
    /// Called right before the first KVM_RUN of vCPU 0 (benchmarks read this moment).
    pub first_run_marker: bool,
    pub pause: Arc<Pause>,
}

impl Vcpu {
    pub fn run(mut self) {
        if self.first_run_marker {
            // Read before the seccomp filter goes on (it does not allow getrusage).
            let (epoch_us, cpu_us) = timing_now();
            tracing::info!(target: "hull_vmm::timing", epoch_us, cpu_us, "first KVM_RUN");
        }
        if let Some(f) = self.on_start.take() {
            f();
        }
        loop {
            match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    self.pio.read(u64::from(port), data);
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    self.pio.write(u64::from(port), data);
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !self.mmio.read(addr, data) {
                        tracing::debug!("vcpu{}: MMIO read of unmapped {addr:#x}", self.index);
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if !self.mmio.write(addr, data) {
                        tracing::debug!("vcpu{}: MMIO write to unmapped {addr:#x}", self.index);
                    }
                }
                Ok(VcpuExit::Shutdown) => {
                    tracing::info!("vcpu{}: guest shut down (triple fault or reset)", self.index);
                    self.exit.request(ExitReason::Reset);
                    return;
                }
                Ok(VcpuExit::Hlt) => {
                    // With the in-kernel irqchip HLT never reaches us; if it does, the guest
                    // halted with interrupts off for good.
                    tracing::info!("vcpu{}: halted", self.index);
                    self.exit.request(ExitReason::Reset);
                    return;
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    tracing::error!("vcpu{}: KVM entry failed (reason {reason:#x}, cpu {cpu})", self.index);
                    self.exit.request(ExitReason::VcpuError);
                    return;
                }
                Ok(VcpuExit::InternalError) => {
                    tracing::error!("vcpu{}: KVM internal error (emulation failure)", self.index);
                    self.exit.request(ExitReason::VcpuError);
                    return;
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    tracing::info!("vcpu{}: system event {kind}", self.index);
                    self.exit.request(ExitReason::Reset);
                    return;
                }
                Ok(other) => {
                    tracing::error!("vcpu{}: unexpected exit {other:?}", self.index);
                    self.exit.request(ExitReason::VcpuError);
                    return;
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // A pause comes before the exit that wakes the event loop for it.
                    if self.pause.requested() {
                        self.pause.park_and_save(self.index, &self.fd);
                        return;
                    }
                    if self.exit.reason().is_some() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!("vcpu{}: KVM_RUN failed: {e}", self.index);
                    self.exit.request(ExitReason::VcpuError);
                    return;
                }
            }
        }
    }
}

/// Wall-clock microseconds since the epoch and this process's CPU time so far, for benchmarks
/// that measure process start to first KVM_RUN from outside.
fn timing_now() -> (u64, u64) {
    let epoch_us =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    // SAFETY: getrusage fills the zeroed struct we own.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (epoch_us, tv(usage.ru_utime) + tv(usage.ru_stime))
}
