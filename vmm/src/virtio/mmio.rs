//! The virtio-mmio transport (version 2, "modern"): the register file a driver programs.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::bus::BusDevice;
use hull_protocol::LogBudget;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4c4c_5548; // "HULL"

const STATUS_DRIVER_OK: u32 = 0x04;
const STATUS_FEATURES_OK: u32 = 0x08;
const STATUS_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;

pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

pub struct MmioTransport<D: VirtioDevice> {
    device: Arc<Mutex<D>>,
    interrupt: Arc<Interrupt>,
    /// Driver mistakes are the guest's to repeat at will: log a few, count the rest.
    complaints: LogBudget,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    activated: bool,
    config_generation: u32,
}

impl<D: VirtioDevice> MmioTransport<D> {
    pub fn new(mem: GuestMemoryMmap, device: Arc<Mutex<D>>) -> Self {
        let queues = Self::fresh_queues(&device);
        let interrupt = device.lock().unwrap_or_else(|p| p.into_inner()).interrupt().clone();
        MmioTransport {
            device,
            interrupt,
            complaints: LogBudget::new(8),
            mem,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            activated: false,
            config_generation: 0,
        }
    }

    fn fresh_queues(device: &Arc<Mutex<D>>) -> Vec<Queue> {
        let dev = device.lock().unwrap_or_else(|p| p.into_inner());
        dev.queue_max_sizes().iter().map(|max| Queue::new(*max).expect("queue sizes are powers of two")).collect()
    }

    fn dev(&self) -> std::sync::MutexGuard<'_, D> {
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        // Queues may only be programmed before the device runs.
        if self.activated {
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    fn reset(&mut self) {
        if self.activated && !self.dev().reset() {
            self.status |= STATUS_NEEDS_RESET;
            return;
        }
        self.activated = false;
        self.queues = Self::fresh_queues(&self.device);
        self.queue_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt.ack(u32::MAX);
    }

    fn complain(&mut self, what: std::fmt::Arguments) {
        if self.complaints.allow() {
            tracing::warn!("virtio-mmio: {what} ({} driver errors so far)", self.complaints.seen());
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits, in the order the spec gives.
        let added = value & !self.status;
        if value & self.status != self.status {
            self.status |= STATUS_FAILED;
            return;
        }
        if added & STATUS_FEATURES_OK != 0 {
            if self.driver_features & VIRTIO_F_VERSION_1 == 0 {
                self.complain(format_args!("driver did not accept VIRTIO_F_VERSION_1; refusing FEATURES_OK"));
                return;
            }
            let features = self.driver_features;
            self.dev().set_acked_features(features);
        }
        if added & STATUS_DRIVER_OK != 0 && value & STATUS_FEATURES_OK == 0 {
            self.complain(format_args!("DRIVER_OK without FEATURES_OK"));
            self.status |= STATUS_FAILED;
            return;
        }
        self.status = value;
        if added & STATUS_DRIVER_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let ready: Vec<bool> = self.queues.iter().map(|q| q.ready() && q.is_valid(&self.mem)).collect();
        if ready.iter().any(|r| !r) {
            self.complain(format_args!("DRIVER_OK with queues not ready or invalid: {ready:?}"));
            self.status |= STATUS_NEEDS_RESET;
            return;
        }
        let queues = std::mem::take(&mut self.queues);
        let mem = self.mem.clone();
        let result = self.dev().activate(mem, queues);
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                self.complain(format_args!("activating the device failed: {e}"));
                self.status |= STATUS_NEEDS_RESET;
            }
        }
    }

    fn read_u32(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_select as usize);
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.dev().device_type(),
            0x0c => VENDOR_ID,
            0x10 => {
                let f = self.dev().avail_features() | VIRTIO_F_VERSION_1;
                match self.device_features_select {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => q.map_or(0, |q| u32::from(q.max_size())),
            0x44 => q.map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status(),
            // No shared memory regions: a missing region reads as all ones (virtio 1.2 4.2.2).
            0xb0..=0xbc => u32::MAX,
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => 0,
        }
    }

    fn write_u32(&mut self, offset: u64, v: u32) {
        match offset {
            0x14 => self.device_features_select = v,
            0x20 => {
                // Only features the device offers can be acked.
                let offered = self.dev().avail_features() | VIRTIO_F_VERSION_1;
                let shift = match self.driver_features_select {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let mask = 0xffff_ffffu64 << shift;
                let wanted = (u64::from(v) << shift) & offered;
                self.driver_features = (self.driver_features & !mask) | wanted;
            }
            0x24 => self.driver_features_select = v,
            0x30 => self.queue_select = v,
            0x38 => {
                if let Some(q) = self.queue() {
                    q.set_size(v as u16);
                }
            }
            0x44 => {
                if let Some(q) = self.queue() {
                    q.set_ready(v == 1);
                }
            }
            0x50 => {
                // Without an ioeventfd (or if KVM passed the write on), wake the queue ourselves.
                let dev = self.dev();
                if let Some(evt) = dev.queue_events().get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            0x64 => self.interrupt.ack(v),
            0x70 => self.set_status(v),
            0x80 => self.queue().map_or((), |q| q.set_desc_table_address(Some(v), None)),
            0x84 => self.queue().map_or((), |q| q.set_desc_table_address(None, Some(v))),
            0x90 => self.queue().map_or((), |q| q.set_avail_ring_address(Some(v), None)),
            0x94 => self.queue().map_or((), |q| q.set_avail_ring_address(None, Some(v))),
            0xa0 => self.queue().map_or((), |q| q.set_used_ring_address(Some(v), None)),
            0xa4 => self.queue().map_or((), |q| q.set_used_ring_address(None, Some(v))),
            _ => tracing::debug!("virtio-mmio: write of {v:#x} to unknown register {offset:#x}"),
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.dev().read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_u32(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.dev().write_config(offset - CONFIG_SPACE_OFFSET, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else { return };
        if offset.is_multiple_of(4) {
            self.write_u32(offset, u32::from_le_bytes(bytes));
        }
    }
}
