//! virtio-net over a tap device: queue 0 carries frames to the guest, queue 1 frames from it.
//! No offloads are offered, so every frame is a plain Ethernet frame behind a zeroed
//! `virtio_net_hdr_v1` (12 bytes), and the tap is opened without IFF_VNET_HDR.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::chain::Chain;
use super::{ActivateError, Interrupt, VirtioDevice, INT_VRING, TYPE_NET};
use hull_protocol::LogBudget;

const QUEUE_SIZES: [u16; 2] = [256, 256];
const RX: usize = 0;
const TX: usize = 1;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const NET_HDR_SIZE: usize = 12;
/// Largest frame without offloads: 64 KiB covers any MTU a tap may be given.
const MAX_FRAME: usize = 65535 + 14;
/// Chains handled per wakeup and queue, so one busy guest queue cannot hold the event loop.
const BUDGET: usize = 512;

/// An open tap device.
pub struct Tap(File);

impl Tap {
    /// Open the existing tap `name` (needs CAP_NET_ADMIN or ownership of the tap).
    pub fn open(name: &str) -> std::io::Result<Tap> {
        const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                format!("tap name {name:?} is empty or too long"),
            ));
        }
        let file = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
        // SAFETY: ifreq is plain old data; zeroed is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads the ifreq and writes the final name back into it; it is ours
        // and outlives the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut ifr) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Tap::nonblocking(file)
    }

    /// Adopt a tap file descriptor the caller opened and passed down. Call before this
    /// process opens anything else, so the number cannot belong to one of our own files.
    pub fn from_fd(fd: RawFd) -> std::io::Result<Tap> {
        const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
        // SAFETY: ifreq is plain old data; zeroed is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes into the ifreq we own; on a descriptor that is not a tap it
        // fails without side effects.
        if unsafe { libc::ioctl(fd, TUNGETIFF, &mut ifr) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::new(e.kind(), format!("not an open tap device: {e}")));
        }
        // SAFETY: the descriptor is open and a tap (checked above), and the caller handed it to
        // us to own; nothing else in this process uses it.
        Tap::nonblocking(unsafe { File::from_raw_fd(fd) })
    }

    fn nonblocking(file: File) -> std::io::Result<Tap> {
        let fd = file.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own, with integer arguments.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Tap(file))
    }
}

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
}

pub struct NetDevice {
    mac: [u8; 6],
    tap: Tap,
    queue_events: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    active: Option<Active>,
    /// Whether the loop watches the tap for frames (off while the guest has no rx buffers).
    tap_watched: bool,
    /// A frame read from the tap that found no rx buffer yet.
    pending: Option<Vec<u8>>,
    malformed: LogBudget,
    dropped: LogBudget,
}

impl NetDevice {
    pub fn new(tap: Tap, mac: [u8; 6], interrupt: Arc<Interrupt>) -> std::io::Result<Self> {
        let queue_events =
            (0..QUEUE_SIZES.len()).map(|_| EventFd::new(libc::EFD_NONBLOCK)).collect::<std::io::Result<Vec<_>>>()?;
        Ok(NetDevice {
            mac,
            tap,
            queue_events,
            interrupt,
            active: None,
            tap_watched: true,
            pending: None,
            malformed: LogBudget::new(16),
            dropped: LogBudget::new(4),
        })
    }

    fn process_tx(&mut self) {
        let Self { active: Some(active), tap, malformed, dropped, queue_events, interrupt, .. } = self else { return };
        let mut frame = Vec::new();
        super::drain_tx_queue(&mut active.queues[TX], &active.mem, BUDGET, &queue_events[TX], interrupt, |chain| {
            let problem = match Chain::parse(&active.mem, chain, (NET_HDR_SIZE + MAX_FRAME) as u64) {
                Ok(c) if c.readable_len >= NET_HDR_SIZE as u64 => {
                    frame.resize(c.readable_len as usize - NET_HDR_SIZE, 0);
                    let n = c.read_at(&active.mem, NET_HDR_SIZE as u64, &mut frame);
                    match tap.0.write(&frame[..n]) {
                        Ok(_) => None,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            if dropped.allow() {
                                tracing::warn!("net: the tap is full; dropped a frame ({} so far)", dropped.seen());
                            }
                            None
                        }
                        Err(e) => Some(format!("tap write: {e}")),
                    }
                }
                Ok(_) => Some("tx chain shorter than the virtio-net header".to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(p) = problem {
                if malformed.allow() {
                    tracing::warn!("net: dropped a request: {p} ({} so far)", malformed.seen());
                }
            }
        });
    }

    /// Move frames from the tap into guest rx buffers until one side runs dry (or the budget
    /// does: the tap stays readable, so the loop comes back).
    fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else { return };
        let mut used = false;
        for _ in 0..BUDGET {
            let frame = match self.pending.take() {
                Some(f) => f,
                None => {
                    let mut buf = vec![0u8; MAX_FRAME];
                    match self.tap.0.read(&mut buf) {
                        Ok(n) => {
                            buf.truncate(n);
                            buf
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::error!("net: reading the tap: {e}");
                            break;
                        }
                    }
                }
            };
            let Some(chain) = active.queues[RX].pop_descriptor_chain(&active.mem) else {
                self.pending = Some(frame);
                break;
            };
            let head = chain.head_index();
            let mut written = 0;
            match Chain::parse(&active.mem, chain, (NET_HDR_SIZE + MAX_FRAME) as u64) {
                Ok(c) if c.writable_len >= (NET_HDR_SIZE + frame.len()) as u64 => {
                    let mut hdr = [0u8; NET_HDR_SIZE];
                    hdr[10] = 1; // num_buffers
                    written = c.write_at(&active.mem, 0, &hdr);
                    written += c.write_at(&active.mem, NET_HDR_SIZE as u64, &frame);
                }
                Ok(_) => {
                    if self.dropped.allow() {
                        tracing::warn!(
                            "net: a frame did not fit the guest's buffer; dropped ({} so far)",
                            self.dropped.seen()
                        );
                    }
                }
                Err(e) => {
                    if self.malformed.allow() {
                        tracing::warn!("net: dropped a request: {e} ({} so far)", self.malformed.seen());
                    }
                }
            }
            if active.queues[RX].add_used(&active.mem, head, written as u32).is_err() {
                break;
            }
            used = true;
        }
        if used && active.queues[RX].needs_notification(&active.mem).unwrap_or(true) {
            self.interrupt.signal(INT_VRING);
        }
    }

    /// Watch the tap only while a frame could be placed: otherwise level-triggered readiness
    /// would spin the loop.
    fn update_tap_interest(&mut self, ops: &mut EventOps) {
        let want = self.active.is_some() && self.pending.is_none();
        if want != self.tap_watched {
            let set = if want { EventSet::IN } else { EventSet::empty() };
            if let Err(e) = ops.modify(Events::new_raw(self.tap.0.as_raw_fd(), set)) {
                tracing::error!("net: cannot change the tap's interest: {e:?}");
            }
            self.tap_watched = want;
        }
    }
}

impl VirtioDevice for NetDevice {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_NET_F_MAC
    }
    fn set_acked_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.mac, offset, data);
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }
    fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }
    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        super::expect_queues(&queues, QUEUE_SIZES.len())?;
        self.active = Some(Active { mem, queues });
        Ok(())
    }
    fn reset(&mut self) -> bool {
        self.active = None;
        self.pending = None;
        true
    }
}

impl MutEventSubscriber for NetDevice {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.queue_events[TX].as_raw_fd() {
            let _ = self.queue_events[TX].read();
            self.process_tx();
        } else if fd == self.queue_events[RX].as_raw_fd() {
            let _ = self.queue_events[RX].read();
            self.process_rx();
        } else if fd == self.tap.0.as_raw_fd() {
            if self.active.is_some() {
                self.process_rx();
            } else {
                // No driver yet: frames have nowhere to go.
                let mut buf = vec![0u8; MAX_FRAME];
                for _ in 0..BUDGET {
                    if self.tap.0.read(&mut buf).is_err() {
                        break;
                    }
                }
            }
        }
        self.update_tap_interest(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for e in &self.queue_events {
            if let Err(err) = ops.add(Events::new(e, EventSet::IN)) {
                tracing::error!("net: cannot watch a queue: {err:?}");
            }
        }
        if let Err(err) = ops.add(Events::new_raw(self.tap.0.as_raw_fd(), EventSet::IN)) {
            tracing::error!("net: cannot watch the tap: {err:?}");
        }
    }
}
