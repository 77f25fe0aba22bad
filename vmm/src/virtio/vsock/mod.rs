//! virtio-vsock, served in-process: queue 0 carries packets to the guest (rx), queue 1 packets
//! from it (tx), queue 2 is the event queue (never used: no live migration). The host side is
//! the hybrid unix-socket protocol in [`muxer`].

pub mod muxer;
pub mod packet;

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use self::muxer::{FdOp, Muxer};
use self::packet::{Header, HEADER_SIZE, MAX_PAYLOAD};
use super::chain::Chain;
use super::{ActivateError, Interrupt, VirtioDevice, INT_VRING, TYPE_VSOCK};
use hull_protocol::LogBudget;

const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];
const RX: usize = 0;
const TX: usize = 1;
const EVT: usize = 2;
/// Chains handled per wakeup and queue: a guest that keeps refilling a queue must not keep the
/// shared event loop to itself. When the budget runs out the queue's eventfd is re-armed, so
/// the rest is served after other devices had their turn.
const BUDGET: usize = 2 * QUEUE_SIZE as usize;

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
}

pub struct VsockDevice {
    guest_cid: u64,
    queue_events: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    active: Option<Active>,
    muxer: Muxer,
    malformed: LogBudget,
}

impl VsockDevice {
    /// `listener` is bound at `uds` already (before any jail is entered).
    pub fn new(
        guest_cid: u64,
        uds: PathBuf,
        listener: UnixListener,
        interrupt: Arc<Interrupt>,
    ) -> std::io::Result<Self> {
        let queue_events =
            (0..QUEUE_SIZES.len()).map(|_| EventFd::new(libc::EFD_NONBLOCK)).collect::<std::io::Result<Vec<_>>>()?;
        Ok(VsockDevice {
            guest_cid,
            queue_events,
            interrupt,
            active: None,
            muxer: Muxer::new(guest_cid, uds, listener)?,
            malformed: LogBudget::new(16),
        })
    }

    /// Take the packets the guest queued for the host.
    fn process_tx(&mut self) {
        let Self { active: Some(active), muxer, malformed, queue_events, interrupt, .. } = self else { return };
        super::drain_tx_queue(&mut active.queues[TX], &active.mem, BUDGET, &queue_events[TX], interrupt, |chain| {
            match read_tx_packet(&active.mem, chain) {
                Ok((hdr, payload)) => muxer.on_guest_packet(&hdr, &payload),
                Err(e) => {
                    if malformed.allow() {
                        tracing::warn!("vsock: dropped a malformed request: tx: {e} ({} so far)", malformed.seen());
                    }
                }
            }
        });
    }

    /// Fill guest rx buffers with whatever the muxer has for the guest.
    fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else { return };
        let mut used = false;
        let mut budget = BUDGET;
        while self.muxer.has_rx() {
            if budget == 0 {
                let _ = self.queue_events[RX].write(1);
                break;
            }
            budget -= 1;
            let Some(chain) = active.queues[RX].pop_descriptor_chain(&active.mem) else { break };
            let head = chain.head_index();
            let chain = match Chain::parse(&active.mem, chain, (HEADER_SIZE + MAX_PAYLOAD) as u64 * 4) {
                Ok(c) if c.writable_len >= HEADER_SIZE as u64 => Ok(c),
                Ok(_) => Err("rx buffer smaller than a packet header".to_string()),
                Err(e) => Err(e.to_string()),
            };
            let chain = match chain {
                Ok(c) => c,
                Err(e) => {
                    if self.malformed.allow() {
                        tracing::warn!(
                            "vsock: dropped a malformed request: rx: {e} ({} so far)",
                            self.malformed.seen()
                        );
                    }
                    if active.queues[RX].add_used(&active.mem, head, 0).is_err() {
                        break;
                    }
                    used = true;
                    continue;
                }
            };
            let room = (chain.writable_len as usize - HEADER_SIZE).min(MAX_PAYLOAD);
            let Some((hdr, payload)) = self.muxer.next_rx(room) else {
                active.queues[RX].go_to_previous_position();
                break;
            };
            let mut written = chain.write_at(&active.mem, 0, &hdr.encode());
            written += chain.write_at(&active.mem, HEADER_SIZE as u64, &payload);
            if active.queues[RX].add_used(&active.mem, head, written as u32).is_err() {
                break;
            }
            used = true;
        }
        if used && active.queues[RX].needs_notification(&active.mem).unwrap_or(true) {
            self.interrupt.signal(INT_VRING);
        }
    }

    fn apply_fd_ops(&mut self, ops: &mut EventOps) {
        for op in self.muxer.take_fd_ops() {
            let result = match op {
                FdOp::Add(fd, set) => ops.add(Events::new_raw(fd, set)),
                FdOp::Modify(fd, set) => ops.modify(Events::new_raw(fd, set)),
                FdOp::Remove(fd) => ops.remove(Events::empty_raw(fd)),
            };
            if let Err(e) = result {
                tracing::error!("vsock: event loop update {op:?} failed: {e:?}");
            }
        }
        self.muxer.release_closed();
    }
}

/// Decode one guest packet from a tx chain: header, then exactly `len` payload bytes.
pub fn read_tx_packet<M>(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<M>,
) -> Result<(Header, Vec<u8>), String>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let chain = Chain::parse(mem, chain, (HEADER_SIZE + MAX_PAYLOAD) as u64).map_err(|e| e.to_string())?;
    let mut raw = [0u8; HEADER_SIZE];
    if chain.read_at(mem, 0, &mut raw) != HEADER_SIZE {
        return Err("chain shorter than a packet header".into());
    }
    let hdr = Header::decode(&raw);
    let len = hdr.len as usize;
    if len > MAX_PAYLOAD || (HEADER_SIZE + len) as u64 > chain.readable_len {
        return Err(format!("header claims {len} payload bytes; the chain holds {}", chain.readable_len));
    }
    let mut payload = vec![0u8; len];
    if chain.read_at(mem, HEADER_SIZE as u64, &mut payload) != len {
        return Err("payload not readable".into());
    }
    Ok((hdr, payload))
}

impl VirtioDevice for VsockDevice {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn avail_features(&self) -> u64 {
        0
    }
    fn set_acked_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
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
        // Anything the host queued before the driver was ready goes out now, from the event
        // loop (which can apply the interest changes that sending causes).
        let _ = self.queue_events[RX].write(1);
        Ok(())
    }
    fn reset(&mut self) -> bool {
        self.active = None;
        self.muxer.reset_all();
        // The hosts' sockets close on the next loop turn, when the loop has let go of them.
        let _ = self.queue_events[EVT].write(1);
        true
    }
}

impl MutEventSubscriber for VsockDevice {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let queue = self.queue_events.iter().position(|e| std::os::fd::AsRawFd::as_raw_fd(e) == fd);
        match queue {
            Some(q) => {
                let _ = self.queue_events[q].read();
                match q {
                    TX => {
                        self.process_tx();
                        self.process_rx();
                    }
                    RX => self.process_rx(),
                    EVT => {}
                    _ => unreachable!(),
                }
            }
            None => {
                self.muxer.on_host_event(fd, events.event_set());
                self.process_rx();
            }
        }
        self.apply_fd_ops(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for e in &self.queue_events {
            if let Err(err) = ops.add(Events::new(e, EventSet::IN)) {
                tracing::error!("vsock: cannot watch a queue: {err:?}");
            }
        }
        if let Err(err) = ops.add(Events::new_raw(self.muxer.listener_fd(), EventSet::IN)) {
            tracing::error!("vsock: cannot watch the listener: {err:?}");
        }
    }
}
