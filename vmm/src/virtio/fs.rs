//! virtio-fs as a vhost-user frontend: the queues are served by virtiofsd, which maps guest RAM
//! through the memfd we pass it. The VMM keeps the register file and config space (tag), tells
//! the backend where the rings are, and relays the backend's "used buffers" signals (call
//! eventfds) into the device's interrupt status plus its irqfd, since virtio-mmio drivers read
//! the status register before looking at any ring.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, Interrupt, VirtioDevice, INT_VRING, TYPE_FS};

/// One high-priority queue and one request queue.
const NUM_QUEUES: usize = 2;
const TAG_LEN: usize = 36;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// Feature bits the guest may see: the device-specific range, indirect descriptors, event
/// index, VERSION_1 and in-order use. Transport features this frontend does not implement
/// (packed rings, platform IOMMU, notification data, queue reset, ...) are hidden even if the
/// backend offers them.
const OFFERABLE: u64 = 0x00ff_ffff | (1 << 28) | (1 << 29) | (1 << 32) | (1 << 35);

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs backend {path}: {source}")]
    Connect { path: String, source: vhost::Error },
    #[error("virtio-fs backend: {0}: {1}")]
    Setup(&'static str, vhost::Error),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

pub struct FsDevice {
    config: Vec<u8>,
    queue_sizes: Vec<u16>,
    frontend: Frontend,
    backend_features: u64,
    acked_features: u64,
    protocol: bool,
    /// Kick eventfds: KVM writes them (ioeventfd) and virtiofsd reads them; we never do.
    kicks: Vec<EventFd>,
    /// Call eventfds: virtiofsd writes them; the event loop turns them into interrupts.
    calls: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
}

impl FsDevice {
    pub fn connect(socket: &Path, tag: &str, queue_size: u16, interrupt: Arc<Interrupt>) -> Result<Self, FsError> {
        let frontend = Frontend::connect(socket, NUM_QUEUES as u64)
            .map_err(|source| FsError::Connect { path: socket.display().to_string(), source })?;
        frontend.set_owner().map_err(|e| FsError::Setup("SET_OWNER", e))?;
        let backend_features = frontend.get_features().map_err(|e| FsError::Setup("GET_FEATURES", e))?;
        let mut frontend = frontend;
        let protocol = backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0;
        if protocol {
            let offered = frontend.get_protocol_features().map_err(|e| FsError::Setup("GET_PROTOCOL_FEATURES", e))?;
            let wanted = offered & VhostUserProtocolFeatures::MQ;
            frontend.set_protocol_features(wanted).map_err(|e| FsError::Setup("SET_PROTOCOL_FEATURES", e))?;
        }
        let mut config = vec![0u8; TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes()); // num_request_queues
        let eventfds =
            || (0..NUM_QUEUES).map(|_| EventFd::new(libc::EFD_NONBLOCK)).collect::<std::io::Result<Vec<_>>>();
        Ok(FsDevice {
            config,
            queue_sizes: vec![queue_size; NUM_QUEUES],
            frontend,
            backend_features,
            acked_features: 0,
            protocol,
            kicks: eventfds().map_err(FsError::EventFd)?,
            calls: eventfds().map_err(FsError::EventFd)?,
            interrupt,
        })
    }

    fn start_backend(&mut self, mem: &GuestMemoryMmap, queues: &[Queue]) -> Result<(), String> {
        let step = |name: &'static str| move |e: vhost::Error| format!("{name}: {e}");
        let features = self.acked_features | (self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES);
        self.frontend.set_features(features).map_err(step("SET_FEATURES"))?;
        let mut regions = Vec::new();
        for region in mem.iter() {
            let file_offset = region.file_offset().ok_or("guest memory is not file-backed")?;
            regions.push(VhostUserMemoryRegionInfo {
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                mmap_offset: file_offset.start(),
                mmap_handle: file_offset.file().as_raw_fd(),
            });
        }
        self.frontend.set_mem_table(&regions).map_err(step("SET_MEM_TABLE"))?;
        // The driver's ring addresses were checked against guest memory (Queue::is_valid)
        // before activation; the backend gets them as our own virtual addresses.
        let host = |addr: u64| {
            mem.get_host_address(GuestAddress(addr))
                .map(|p| p as u64)
                .map_err(|e| format!("ring address {addr:#x}: {e}"))
        };
        for (i, q) in queues.iter().enumerate() {
            self.frontend.set_vring_num(i, q.size()).map_err(step("SET_VRING_NUM"))?;
            let cfg = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host(q.desc_table())?,
                used_ring_addr: host(q.used_ring())?,
                avail_ring_addr: host(q.avail_ring())?,
                log_addr: None,
            };
            self.frontend.set_vring_addr(i, &cfg).map_err(step("SET_VRING_ADDR"))?;
            self.frontend.set_vring_base(i, 0).map_err(step("SET_VRING_BASE"))?;
            self.frontend.set_vring_call(i, &self.calls[i]).map_err(step("SET_VRING_CALL"))?;
            self.frontend.set_vring_kick(i, &self.kicks[i]).map_err(step("SET_VRING_KICK"))?;
            if self.protocol {
                self.frontend.set_vring_enable(i, true).map_err(step("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }
}

impl VirtioDevice for FsDevice {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn avail_features(&self) -> u64 {
        self.backend_features & OFFERABLE
    }
    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.kicks
    }
    fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }
    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        super::expect_queues(&queues, NUM_QUEUES)?;
        self.start_backend(&mem, &queues).map_err(|e| ActivateError::Backend(format!("vhost-user {e}")))
    }
    fn reset(&mut self) -> bool {
        // The backend's rings cannot be rewound from here; the driver only resets on shutdown.
        false
    }
}

impl MutEventSubscriber for FsDevice {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.frontend.as_raw_fd() {
            tracing::error!(
                "virtio-fs: the vhost-user backend closed its socket; the guest's shared filesystem is gone"
            );
            let _ = ops.remove(Events::empty_raw(fd));
            return;
        }
        if let Some(call) = self.calls.iter().find(|c| c.as_raw_fd() == fd) {
            let _ = call.read();
            self.interrupt.signal(INT_VRING);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for c in &self.calls {
            if let Err(e) = ops.add(Events::new(c, EventSet::IN)) {
                tracing::error!("virtio-fs: cannot watch a call eventfd: {e:?}");
            }
        }
        // Readable only when the backend hangs up (it sends nothing unprompted without the
        // backend-request protocol feature, which we do not negotiate).
        if let Err(e) = ops.add(Events::new_raw(self.frontend.as_raw_fd(), EventSet::HANG_UP | EventSet::READ_HANG_UP))
        {
            tracing::error!("virtio-fs: cannot watch the backend socket: {e:?}");
        }
    }
}
