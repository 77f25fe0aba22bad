//! virtio devices over the MMIO transport. A device is a small struct behind [`VirtioDevice`];
//! the transport owns the register file and the queues until the driver says DRIVER_OK, then
//! hands the queues to the device. Each device is also an event-loop subscriber: it reacts to
//! its queue eventfds (ioeventfds written by KVM on QueueNotify) and to its host-side backend.

pub mod balloon;
pub mod chain;
pub mod fs;

pub mod mmio;
pub mod net;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub const TYPE_NET: u32 = 1;
pub const TYPE_BALLOON: u32 = 5;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Interrupt status bit: a queue has new used buffers.
pub const INT_VRING: u32 = 0x1;

/// A device's interrupt line: the status register the driver reads and acknowledges, and the
/// irqfd that raises the GSI.
pub struct Interrupt {
    status: AtomicU32,
    irq: EventFd,
}

impl Interrupt {
    pub fn new(irq: EventFd) -> Self {
        Interrupt { status: AtomicU32::new(0), irq }
    }

    pub fn irqfd(&self) -> &EventFd {
        &self.irq
    }

    pub fn signal(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            tracing::error!("virtio: raising the interrupt failed: {e}");
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("{0}")]
    Backend(String),
    #[error("the driver set up {got} queues; the device needs {want}")]
    QueueCount { got: usize, want: usize },
}

/// The queue count a device's `activate` checks first: the transport hands over one queue per
/// entry of `queue_max_sizes`, and a device must not index past what it got.
pub fn expect_queues(queues: &[Queue], want: usize) -> Result<(), ActivateError> {
    match queues.len() {
        got if got == want => Ok(()),
        got => Err(ActivateError::QueueCount { got, want }),
    }
}

pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    fn avail_features(&self) -> u64;
    fn set_acked_features(&mut self, features: u64);
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// One eventfd per queue: KVM writes it when the driver notifies that queue.
    fn queue_events(&self) -> &[EventFd];
    fn interrupt(&self) -> &std::sync::Arc<Interrupt>;
    /// The driver is ready: the device takes the queues and starts serving them.
    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError>;
    /// The driver reset the device. Returns false if the device cannot go back to its initial
    /// state (the transport then reports DEVICE_NEEDS_RESET until the VM ends).
    fn reset(&mut self) -> bool;
}

/// Serve a queue the guest fills with requests for the device (a transmit queue): each chain
/// goes to `consume` and is returned with nothing written. At most `budget` chains per call, so
/// one busy queue cannot keep the shared event loop to itself: when the budget runs out, `kick`
/// is re-armed and the rest is served on a later turn. The guest is interrupted if it asked.
pub fn drain_tx_queue<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    budget: usize,
    kick: &EventFd,
    interrupt: &Interrupt,
    mut consume: impl FnMut(virtio_queue::DescriptorChain<&'m GuestMemoryMmap>),
) {
    use virtio_queue::QueueT;
    let mut used = false;
    let mut handled = 0;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        handled += 1;
        let head = chain.head_index();
        consume(chain);
        if queue.add_used(mem, head, 0).is_err() {
            break;
        }
        used = true;
        if handled == budget {
            let _ = kick.write(1);
            break;
        }
    }
    if used && queue.needs_notification(mem).unwrap_or(true) {
        interrupt.signal(INT_VRING);
    }
}

/// Read `data.len()` bytes at `offset` of a device's config space given as bytes; reads past
/// the end see zeros, as a guest probing a shorter config would on real hardware.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else { return };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}
