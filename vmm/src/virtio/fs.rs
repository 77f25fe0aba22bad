//! virtio-fs, served by virtiofsd over vhost-user, without virtiofsd ever mapping guest RAM.
//! The guest's queues are ours: each request is copied into a bounce memfd, the only memory
//! virtiofsd is given, and posted on a shadow ring there ([`shadow`]); its reply is copied back
//! into the guest's buffers when virtiofsd marks it used. This costs a copy per request; in
//! return virtiofsd (which parses the guest's FUSE requests) can reach nothing of the guest but
//! the bytes of requests in flight, and guest RAM need not be a shared mapping at all, which
//! copy-on-write clones of one snapshot need.

pub mod bounce;
pub mod shadow;

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

use self::shadow::{ring_bytes, ShadowQueue};
use super::{ActivateError, Interrupt, VirtioDevice, INT_VRING, TYPE_FS};

/// One high-priority queue and one request queue.
const NUM_QUEUES: usize = 2;
const TAG_LEN: usize = 36;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// Feature bits the guest may see: the device-specific range, indirect descriptors (the guest's
/// queues are ours, and the chain walker follows indirect tables) and VERSION_1. Event index,
/// in-order use and the transport features this device does not implement are hidden.
const OFFERABLE: u64 = 0x00ff_ffff | (1 << 28) | (1 << 32);
/// The bounce memory: both shadow rings, then room for requests in flight. Linux sends at most
/// 1 MiB of data per FUSE request (256 pages), so the request queue's room holds over a dozen
/// of the largest at once; smaller ones wait their turn.
const BOUNCE_MIB: u64 = 16;
const SHADOW_SIZES: [u16; NUM_QUEUES] = [64, 256];
/// The high-priority queue carries FORGET and INTERRUPT: small requests only.
const HIPRIO_ROOM: u64 = 256 << 10;
/// Guest requests moved per wakeup, so one busy guest cannot hold the shared event loop.
const BUDGET: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs backend {path}: {source}")]
    Connect { path: String, source: vhost::Error },
    #[error("virtio-fs backend: {0}: {1}")]
    Setup(&'static str, vhost::Error),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("bounce memory: {0}")]
    Bounce(crate::memory::MemoryError),
}

pub struct FsDevice {
    config: Vec<u8>,
    queue_sizes: Vec<u16>,
    frontend: Frontend,
    backend_features: u64,
    acked_features: u64,
    protocol: bool,
    /// The guest's kicks: KVM writes them (ioeventfd) when the driver notifies a queue.
    kicks: Vec<EventFd>,
    /// Our kicks to virtiofsd, for its shadow rings.
    backend_kicks: Vec<EventFd>,
    /// Call eventfds: virtiofsd writes them when it has used shadow entries.
    calls: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    /// The only memory virtiofsd maps: shadow rings and request bytes.
    bounce: GuestMemoryMmap,
    active: Option<Active>,
}

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    shadows: Vec<ShadowQueue>,
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
            backend_kicks: eventfds().map_err(FsError::EventFd)?,
            calls: eventfds().map_err(FsError::EventFd)?,
            interrupt,
            bounce: crate::memory::create_named(BOUNCE_MIB, c"hull-fs-bounce").map_err(FsError::Bounce)?,
            active: None,
        })
    }

    /// The shadow rings laid out in the bounce memory: rings first, then each queue's room.
    fn shadows(&self) -> Vec<ShadowQueue> {
        let rings: u64 = SHADOW_SIZES.iter().map(|&n| ring_bytes(n)).sum();
        let room = (BOUNCE_MIB << 20) - rings - HIPRIO_ROOM;
        // A guest request has at most as many descriptors as its queue has entries.
        let most = |i: usize| usize::from(self.queue_sizes[i]);
        let hiprio = ShadowQueue::new(&self.bounce, 0, SHADOW_SIZES[0], (rings, HIPRIO_ROOM), most(0));
        let request = ShadowQueue::new(
            &self.bounce,
            ring_bytes(SHADOW_SIZES[0]),
            SHADOW_SIZES[1],
            (rings + HIPRIO_ROOM, room),
            most(1),
        );
        vec![hiprio, request]
    }

    /// Serve queue `i`: answers from virtiofsd back to the guest, then the guest's new
    /// requests to virtiofsd.
    fn pump(&mut self, i: usize) {
        let Some(active) = self.active.as_mut() else { return };
        let Active { mem, queues, shadows } = active;
        let completed = shadows[i].complete(mem, &mut queues[i], &self.bounce);
        let progress = shadows[i].submit(mem, &mut queues[i], &self.bounce, BUDGET);
        if progress.posted > 0 {
            let _ = self.backend_kicks[i].write(1);
        }
        if progress.budget_spent {
            // Requests may be left on the guest's ring: come back on a later turn. (Waiting for
            // bounce room needs no kick: the completion that frees it calls back here.)
            let _ = self.kicks[i].write(1);
        }
        if completed + progress.completed > 0 && queues[i].needs_notification(mem).unwrap_or(true) {
            self.interrupt.signal(INT_VRING);
        }
    }

    fn start_backend(&mut self, shadows: &[ShadowQueue]) -> Result<(), String> {
        let step = |name: &'static str| move |e: vhost::Error| format!("{name}: {e}");
        let features = self.acked_features | (self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES);
        self.frontend.set_features(features).map_err(step("SET_FEATURES"))?;
        let mut regions = Vec::new();
        for region in self.bounce.iter() {
            let file_offset = region.file_offset().ok_or("the bounce memory is not file-backed")?;
            regions.push(VhostUserMemoryRegionInfo {
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                mmap_offset: file_offset.start(),
                mmap_handle: file_offset.file().as_raw_fd(),
            });
        }
        self.frontend.set_mem_table(&regions).map_err(step("SET_MEM_TABLE"))?;
        // The backend gets ring addresses as our own virtual addresses of the bounce memory.
        let host = |addr: u64| {
            self.bounce
                .get_host_address(GuestAddress(addr))
                .map(|p| p as u64)
                .map_err(|e| format!("shadow ring address {addr:#x}: {e}"))
        };
        for (i, q) in shadows.iter().enumerate() {
            let (desc, avail, used) = q.rings();
            self.frontend.set_vring_num(i, q.size()).map_err(step("SET_VRING_NUM"))?;
            let cfg = VringConfigData {
                queue_max_size: q.size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host(desc)?,
                used_ring_addr: host(used)?,
                avail_ring_addr: host(avail)?,
                log_addr: None,
            };
            self.frontend.set_vring_addr(i, &cfg).map_err(step("SET_VRING_ADDR"))?;
            self.frontend.set_vring_base(i, 0).map_err(step("SET_VRING_BASE"))?;
            self.frontend.set_vring_call(i, &self.calls[i]).map_err(step("SET_VRING_CALL"))?;
            self.frontend.set_vring_kick(i, &self.backend_kicks[i]).map_err(step("SET_VRING_KICK"))?;
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
        let shadows = self.shadows();
        self.start_backend(&shadows).map_err(|e| ActivateError::Backend(format!("vhost-user {e}")))?;
        self.active = Some(Active { mem, queues, shadows });
        Ok(())
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
        // virtiofsd answered on queue i, or the guest notified it: either way, serve it.
        if let Some(i) = self.calls.iter().position(|e| e.as_raw_fd() == fd) {
            let _ = self.calls[i].read();
            self.pump(i);
        } else if let Some(i) = self.kicks.iter().position(|e| e.as_raw_fd() == fd) {
            let _ = self.kicks[i].read();
            self.pump(i);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for c in self.calls.iter().chain(&self.kicks) {
            if let Err(e) = ops.add(Events::new(c, EventSet::IN)) {
                tracing::error!("virtio-fs: cannot watch a queue's eventfd: {e:?}");
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
