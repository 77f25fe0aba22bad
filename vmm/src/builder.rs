//! Assemble a VM from a [`VmmConfig`]: KVM VM with in-kernel irqchip and PIT, memfd RAM, the
//! kernel and boot data, legacy devices on port I/O, virtio-mmio devices announced on the
//! command line, and configured vCPUs. Nothing runs until [`Vmm::run`].

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use vm_memory::{GuestMemory, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::{boot, cpuid, layout, mptable, msr, regs};
use crate::bus::{Bus, BusDevice};
use crate::config::VmmConfig;
use crate::devices::i8042::{I8042, I8042_DATA_PORT, I8042_PORT_RANGE};
use crate::devices::serial::{ConsoleLog, SerialDevice, COM1_IRQ, COM1_PORT};
use crate::snapshot::file::Loaded;
use crate::snapshot::{self, Identity, SnapshotError, VmSnapshot};
use crate::vcpu::{ExitEvent, ExitReason, Pause, Vcpu};
use crate::virtio::mmio::MmioTransport;
use crate::virtio::{Interrupt, VirtioDevice};

pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("/dev/kvm: {0}")]
    Kvm(kvm_ioctls::Error),
    #[error("KVM lacks {0:?}, which hull-vmm needs")]
    MissingCap(Cap),
    #[error("{0}: {1}")]
    KvmCall(&'static str, kvm_ioctls::Error),
    #[error("{0}")]
    Memory(#[from] crate::memory::MemoryError),
    #[error("{0}")]
    Boot(#[from] boot::BootError),
    #[error("{0}")]
    MpTable(#[from] mptable::MpTableError),
    #[error("{0}")]
    Regs(#[from] regs::RegsError),
    #[error("{0}")]
    Msr(#[from] msr::MsrError),
    #[error("console log {path}: {source}")]
    ConsoleLog { path: String, source: std::io::Error },
    #[error("{0}")]
    Device(String),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("event loop: {0}")]
    EventLoop(String),
    #[error("{0}")]
    Snapshot(#[from] SnapshotError),
}

pub type Console = SerialDevice<Box<dyn Write + Send>>;

pub struct Vmm {
    pub(crate) vm: VmFd,
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) exit: Arc<ExitEvent>,
    pub(crate) events: EventManager<Subscriber>,
    pub(crate) vcpus: Vec<Vcpu>,
    pio: Bus,
    mmio: Bus,
    next_mmio: u64,
    next_irq: u32,
    cmdline_devices: Vec<String>,
    pub(crate) serial: Arc<Mutex<Console>>,
    pub(crate) pause: Arc<Pause>,
    /// What this VM is made of, as a snapshot records it (set by [`load`] or [`restore`]).
    pub(crate) identity: Option<Identity>,
    /// Where SIGUSR1 saves the VM: the file, opened before the jail, and its name for errors.
    pub(crate) snapshot_to: Option<(File, PathBuf)>,
}

impl Vmm {
    /// Plug a virtio device in: an MMIO window, an interrupt line (irqfd), one ioeventfd per
    /// queue, and an entry on the kernel command line. `subscriber` is the same device as the
    /// event loop sees it.
    pub fn add_virtio<D: VirtioDevice + 'static>(
        &mut self,
        device: Arc<Mutex<D>>,
        subscriber: Subscriber,
    ) -> Result<(), BuildError> {
        let base = self.next_mmio;
        let irq = self.next_irq;
        if irq > layout::IRQ_MAX {
            return Err(BuildError::Device("no interrupt line left for another virtio device".into()));
        }
        {
            let dev = device.lock().unwrap();
            self.vm.register_irqfd(dev.interrupt().irqfd(), irq).map_err(|e| BuildError::KvmCall("KVM_IRQFD", e))?;
            for (i, evt) in dev.queue_events().iter().enumerate() {
                self.vm
                    .register_ioevent(evt, &IoEventAddress::Mmio(base + 0x50), i as u32)
                    .map_err(|e| BuildError::KvmCall("KVM_IOEVENTFD", e))?;
            }
        }
        let transport: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(MmioTransport::new(self.mem.clone(), device)));
        self.mmio.insert(transport, base, layout::VIRTIO_MMIO_SIZE).map_err(|e| BuildError::Device(e.to_string()))?;
        self.events.add_subscriber(subscriber);
        self.cmdline_devices.push(format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
        self.next_mmio += layout::VIRTIO_MMIO_SIZE;
        self.next_irq += 1;
        Ok(())
    }
}

/// Open KVM and make the VM with its RAM and legacy devices. Virtio devices are added next
/// ([`Vmm::add_virtio`]), then [`load`] writes the kernel and boot data and makes the vCPUs
/// (or, with `restore`, a snapshot checked by [`snapshot::file::read`], [`restore`] puts its
/// state back; guest memory is then the snapshot's, mapped copy-on-write).
pub fn create(config: &VmmConfig, restore: Option<&Loaded>) -> Result<Vmm, BuildError> {
    config.validate()?;
    let kvm = Kvm::new().map_err(BuildError::Kvm)?;
    for cap in [Cap::Irqchip, Cap::Ioeventfd, Cap::Irqfd, Cap::UserMemory, Cap::Pit2, Cap::SetTssAddr] {
        if !kvm.check_extension(cap) {
            return Err(BuildError::MissingCap(cap));
        }
    }
    let vm = kvm.create_vm().map_err(|e| BuildError::KvmCall("KVM_CREATE_VM", e))?;
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize).map_err(|e| BuildError::KvmCall("KVM_SET_TSS_ADDR", e))?;
    vm.create_irq_chip().map_err(|e| BuildError::KvmCall("KVM_CREATE_IRQCHIP", e))?;
    let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
    vm.create_pit2(pit).map_err(|e| BuildError::KvmCall("KVM_CREATE_PIT2", e))?;

    let mem = match restore {
        Some(l) => {
            if l.memory_len != config.memory_mib << 20 {
                return Err(SnapshotError::Mismatch {
                    path: config.restore_from.as_deref().unwrap_or(Path::new("?")).display().to_string(),
                    field: "memory_mib",
                    saved: (l.memory_len >> 20).to_string(),
                    now: config.memory_mib.to_string(),
                }
                .into());
            }
            let file = l.file.try_clone().map_err(|e| BuildError::Device(format!("snapshot file: {e}")))?;
            crate::memory::from_snapshot(file, snapshot::file::MEMORY_OFFSET, config.memory_mib)?
        }
        None => crate::memory::create(config.memory_mib)?,
    };
    for (slot, region) in mem.iter().enumerate() {
        let host = mem.get_host_address(region.start_addr()).map_err(|e| BuildError::Device(e.to_string()))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping of `region.len()` bytes owned by `mem`, which the
        // Vmm keeps for as long as the VM exists.
        unsafe { vm.set_user_memory_region(r) }.map_err(|e| BuildError::KvmCall("KVM_SET_USER_MEMORY_REGION", e))?;
    }

    let out: Box<dyn Write + Send> = match &config.console_log {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| BuildError::ConsoleLog { path: path.display().to_string(), source })?;
            Box::new(ConsoleLog::new(file, config.console_log_cap))
        }
        None => Box::new(std::io::stdout()),
    };
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
    vm.register_irqfd(&serial_irq, COM1_IRQ).map_err(|e| BuildError::KvmCall("KVM_IRQFD", e))?;
    let serial = match restore {
        Some(l) => SerialDevice::from_state(&l.snapshot.serial, serial_irq, out).map_err(SnapshotError::Invalid)?,
        None => SerialDevice::new(serial_irq, out),
    };
    let serial = Arc::new(Mutex::new(serial));
    // What a snapshot's vCPUs will read, asked of /dev/kvm now: their seccomp filter allows
    // only the vCPU getters.
    let pause = if config.snapshot_to.is_some() {
        Pause::new(snapshot::cpu::msr_list(&kvm)?, snapshot::cpu::xsave_size(&vm))
    } else {
        Pause::new(Vec::new(), 0)
    };
    let snapshot_to = match &config.snapshot_to {
        Some(path) => {
            let file = OpenOptions::new()
                .write(true)
                .read(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| SnapshotError::Io { path: path.display().to_string(), source })?;
            Some((file, path.clone()))
        }
        None => None,
    };

    let exit = Arc::new(ExitEvent::new().map_err(BuildError::EventFd)?);
    let events = EventManager::new().map_err(|e| BuildError::EventLoop(format!("{e:?}")))?;
    let mut vmm = Vmm {
        vm,
        mem,
        exit,
        events,
        vcpus: Vec::new(),
        pio: Bus::default(),
        mmio: Bus::default(),
        next_mmio: layout::MMIO_GAP_START,
        next_irq: layout::FIRST_DEVICE_IRQ,
        cmdline_devices: Vec::new(),
        serial: serial.clone(),
        pause: Arc::new(pause),
        identity: None,
        snapshot_to,
    };
    vmm.pio.insert(serial, COM1_PORT, 8).map_err(|e| BuildError::Device(e.to_string()))?;
    let exit = vmm.exit.clone();
    let i8042 = Arc::new(Mutex::new(I8042::new(Box::new(move || exit.request(ExitReason::Reset)))));
    vmm.pio.insert(i8042, I8042_DATA_PORT, I8042_PORT_RANGE).map_err(|e| BuildError::Device(e.to_string()))?;
    Ok(vmm)
}

/// Load the kernel, initrd, command line (with the virtio devices appended), zero page and MP
/// table, and create the vCPUs in their 64-bit boot state.
pub fn load(vmm: &mut Vmm, config: &VmmConfig) -> Result<(), BuildError> {
    let kernel = boot::load_kernel(&vmm.mem, &config.kernel)?;
    let initrd = match &config.initrd {
        Some(path) => Some(boot::load_initrd(&vmm.mem, path, &kernel)?),
        None => None,
    };
    let mut cmdline = config.cmdline.trim().to_string();
    for d in &vmm.cmdline_devices {
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        cmdline.push_str(d);
    }
    boot::load_cmdline(&vmm.mem, &cmdline)?;
    boot::write_boot_params(&vmm.mem, &kernel, cmdline.len(), initrd, config.memory_mib << 20)?;
    mptable::setup(&vmm.mem, config.vcpus)?;

    let cpuids = cpuids(config)?;
    vmm.identity = Some(identity(vmm, config, &cpuids)?);
    for (index, cpuid) in (0..config.vcpus).zip(&cpuids) {
        let fd = vmm.vm.create_vcpu(u64::from(index)).map_err(|e| BuildError::KvmCall("KVM_CREATE_VCPU", e))?;
        fd.set_cpuid2(cpuid).map_err(|e| BuildError::KvmCall("KVM_SET_CPUID2", e))?;
        msr::setup(&fd)?;
        regs::setup_regs(&fd, kernel.entry.0)?;
        regs::setup_fpu(&fd)?;
        regs::setup_sregs(&vmm.mem, &fd)?;
        regs::setup_lint(&fd)?;
        vmm.vcpus.push(vmm.vcpu(index, fd));
    }
    tracing::debug!("cmdline: {cmdline}");
    Ok(())
}

/// The CPUID each vCPU gets, from what this host's KVM supports.
fn cpuids(config: &VmmConfig) -> Result<Vec<CpuId>, BuildError> {
    let kvm = Kvm::new().map_err(BuildError::Kvm)?;
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| BuildError::KvmCall("KVM_GET_SUPPORTED_CPUID", e))?;
    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
    Ok((0..config.vcpus).map(|index| cpuid::for_vcpu(&supported, index, config.vcpus, tsc_deadline)).collect())
}

/// This VM as a snapshot names it. Runs before the jail (it reads the kernel's, initrd's and
/// hull-vmm's file metadata).
fn identity(vmm: &Vmm, config: &VmmConfig, cpuids: &[CpuId]) -> Result<Identity, BuildError> {
    let mut crc = crc32fast::Hasher::new();
    for c in cpuids {
        crc.update(&serde_json::to_vec(c.as_slice()).map_err(|e| BuildError::Device(format!("CPUID: {e}")))?);
    }
    Ok(Identity {
        vmm: snapshot::vmm_identity(),
        kernel: snapshot::FileId::of(&config.kernel)?,
        initrd: config.initrd.as_deref().map(snapshot::FileId::of).transpose()?,
        cmdline: config.cmdline.clone(),
        vcpus: config.vcpus,
        memory_mib: config.memory_mib,
        devices: vmm.cmdline_devices.clone(),
        cpuid: crc.finalize(),
    })
}

impl Vmm {
    fn vcpu(&self, index: u8, fd: kvm_ioctls::VcpuFd) -> Vcpu {
        Vcpu {
            index,
            fd,
            pio: self.pio.clone(),
            mmio: self.mmio.clone(),
            exit: self.exit.clone(),
            on_start: None,
            first_run_marker: index == 0,
            pause: self.pause.clone(),
        }
    }
}

/// Instead of [`load`], for a VM made by [`create`] from a snapshot: check that this VM is
/// the one the snapshot was made of, then make the vCPUs with the saved state and put back the
/// in-kernel devices' state. Nothing of the kernel or initrd is read but their metadata.
pub fn restore(vmm: &mut Vmm, config: &VmmConfig, saved: &VmSnapshot, path: &Path) -> Result<(), BuildError> {
    let cpuids = cpuids(config)?;
    let now = identity(vmm, config, &cpuids)?;
    saved.identity.check(&now, path)?;
    if saved.vcpus.len() != usize::from(config.vcpus) {
        return Err(SnapshotError::Corrupt {
            path: path.display().to_string(),
            why: format!("{} vCPU states for {} vCPUs", saved.vcpus.len(), config.vcpus),
        }
        .into());
    }
    let xsave_size = snapshot::cpu::xsave_size(&vmm.vm);
    for ((index, cpuid), state) in (0..config.vcpus).zip(&cpuids).zip(&saved.vcpus) {
        let fd = vmm.vm.create_vcpu(u64::from(index)).map_err(|e| BuildError::KvmCall("KVM_CREATE_VCPU", e))?;
        fd.set_cpuid2(cpuid).map_err(|e| BuildError::KvmCall("KVM_SET_CPUID2", e))?;
        snapshot::cpu::restore(&fd, state, xsave_size)?;
        vmm.vcpus.push(vmm.vcpu(index, fd));
    }
    // After the vCPUs: the clock is set as close to their first KVM_RUN as this gets.
    snapshot::vm::restore(&vmm.vm, &saved.vm)?;
    vmm.identity = Some(now);
    Ok(())
}

/// Give each virtio device its interrupt: a fresh eventfd (later registered as an irqfd).
pub fn new_interrupt() -> Result<Arc<Interrupt>, BuildError> {
    Ok(Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?)))
}

/// Create the configured virtio devices (binding the vsock socket, connecting to the virtio-fs
/// backend, opening taps) and plug them in. Runs before the jail: everything here may touch
/// host paths.
pub fn attach_devices(vmm: &mut Vmm, config: &VmmConfig) -> Result<(), BuildError> {
    use crate::virtio::{balloon::BalloonDevice, fs::FsDevice, net::NetDevice, net::Tap, vsock::VsockDevice};

    if let Some(v) = &config.vsock {
        // A stale socket from a crashed run would make bind fail.
        if std::fs::symlink_metadata(&v.uds).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())) {
            let _ = std::fs::remove_file(&v.uds);
        }
        let listener = std::os::unix::net::UnixListener::bind(&v.uds)
            .map_err(|e| BuildError::Device(format!("vsock.uds {}: {e}", v.uds.display())))?;
        let uds = match &config.jail {
            // Inside the jail the socket's directory is `/`.
            Some(j) => std::path::Path::new("/").join(v.uds.strip_prefix(&j.dir).unwrap_or(&v.uds)),
            None => v.uds.clone(),
        };
        let dev = VsockDevice::new(v.guest_cid, uds, listener, new_interrupt()?)
            .map_err(|e| BuildError::Device(format!("vsock: {e}")))?;
        let dev = Arc::new(Mutex::new(dev));
        vmm.add_virtio(dev.clone(), dev)?;
    }
    if let Some(f) = &config.fs {
        let dev = FsDevice::connect(&f.socket, &f.tag, f.queue_size, new_interrupt()?)
            .map_err(|e| BuildError::Device(e.to_string()))?;
        let dev = Arc::new(Mutex::new(dev));
        vmm.add_virtio(dev.clone(), dev)?;
    }
    for (i, n) in config.net.iter().enumerate() {
        let tap = match (&n.tap, n.tap_fd) {
            (Some(name), _) => Tap::open(name).map_err(|e| BuildError::Device(format!("net.tap {name}: {e}")))?,
            (None, Some(fd)) => Tap::from_fd(fd).map_err(|e| BuildError::Device(format!("net.tap_fd {fd}: {e}")))?,
            (None, None) => unreachable!("validated"),
        };
        let mac =
            n.mac.as_deref().and_then(crate::config::parse_mac).unwrap_or([0x02, 0x68, 0x75, 0x6c, 0x6c, i as u8]);
        let dev = NetDevice::new(tap, mac, new_interrupt()?).map_err(|e| BuildError::Device(format!("net: {e}")))?;
        let dev = Arc::new(Mutex::new(dev));
        vmm.add_virtio(dev.clone(), dev)?;
    }
    // Last, so the other devices keep their windows and interrupt lines.
    if config.free_page_reporting {
        let dev = BalloonDevice::new(new_interrupt()?).map_err(|e| BuildError::Device(format!("balloon: {e}")))?;
        let dev = Arc::new(Mutex::new(dev));
        vmm.add_virtio(dev.clone(), dev)?;
    }
    Ok(())
}
