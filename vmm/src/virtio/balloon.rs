//! virtio-balloon, for free page reporting only: the guest tells us which blocks of its memory
//! it has left free (pageblocks: 4 MiB in hull's guest kernel, which has no huge pages) and we
//! drop their pages from the memfd, so an
//! idle sandbox's host memory follows what its guest really uses. The balloon is never asked
//! to inflate (`num_pages` stays 0); what a guest puts on the inflate and deflate queues anyway
//! is handed back untouched.
//!
//! Everything on the reporting queue is guest-written: [`Chain::parse`] keeps each segment
//! inside guest memory, and [`free_pages`] shrinks it to the whole pages it covers, so the
//! worst a guest can do is zero its own memory.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::chain::{Chain, Segment};
use super::{ActivateError, Interrupt, VirtioDevice, TYPE_BALLOON};
use hull_protocol::LogBudget;

/// inflateq, deflateq, reporting_vq: without STATS_VQ and FREE_PAGE_HINT offered, Linux numbers
/// the reporting queue 2.
const QUEUE_SIZES: [u16; 3] = [64, 64, 32];
const REPORTING: usize = 2;
const VIRTIO_BALLOON_F_REPORTING: u64 = 1 << 5;
const PAGE: u64 = 4096;
/// Chains per wakeup and queue: one report is at most 32 blocks (Linux's capacity), each a
/// cheap madvise, and the event loop is shared with the other devices.
const BUDGET: usize = 64;

/// The whole 4 KiB pages inside `segments`, as (address, length) ranges. Partial pages at either
/// end are left alone: a guest's report is only trusted for pages it covers entirely.
pub fn free_pages(segments: &[Segment]) -> Vec<(GuestAddress, u64)> {
    segments
        .iter()
        .filter_map(|s| {
            let start = s.addr.0.checked_next_multiple_of(PAGE)?;
            let end = (s.addr.0.checked_add(u64::from(s.len))?) / PAGE * PAGE;
            (end > start).then(|| (GuestAddress(start), end - start))
        })
        .collect()
}

/// Drop the pages of `len` bytes at `addr` from guest memory: they no longer take host memory
/// (and read as zeros afterwards, or as the snapshot's pages in a restored VM). The range must lie in one region (a report segment does: the
/// regions are not adjacent).
pub fn discard(mem: &GuestMemoryMmap, addr: GuestAddress, len: u64) -> std::io::Result<()> {
    let len_usize = usize::try_from(len).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let slice = mem
        .get_slice(addr, len_usize)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let guard = slice.ptr_guard_mut();
    // SAFETY: the pointer and length are a page-aligned sub-range (free_pages aligned both
    // ends, regions start page-aligned) of a mapping `mem` owns and keeps alive across the
    // call. MADV_REMOVE frees the pages of the shared memfd behind it; the mapping itself stays
    // valid and reads zeros. Nothing in this process holds Rust references into guest memory
    // (it is only accessed through volatile copies), so no reference sees its bytes change.
    let rc = unsafe { libc::madvise(guard.as_ptr().cast(), len_usize, libc::MADV_REMOVE) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EACCES) {
        return Err(err);
    }
    // A VM restored from a snapshot maps its memory MAP_PRIVATE from the file, and MADV_REMOVE
    // refuses private mappings. There MADV_DONTNEED drops the VM's own copies, and the range
    // reads the snapshot's pages again, shared with every VM restored from it: what a free
    // page holds does not matter to the guest.
    // SAFETY: as above; the same range.
    if unsafe { libc::madvise(guard.as_ptr().cast(), len_usize, libc::MADV_DONTNEED) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    /// Guest memory size: no report can name more.
    mem_size: u64,
}

pub struct BalloonDevice {
    queue_events: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    /// The driver's `actual` (pages it holds in the balloon), which it writes to config space.
    actual: u32,
    active: Option<Active>,
    /// Bytes discarded so far, logged now and then.
    discarded: u64,
    malformed: LogBudget,
}

impl BalloonDevice {
    pub fn new(interrupt: Arc<Interrupt>) -> std::io::Result<Self> {
        let queue_events =
            (0..QUEUE_SIZES.len()).map(|_| EventFd::new(libc::EFD_NONBLOCK)).collect::<std::io::Result<Vec<_>>>()?;
        Ok(BalloonDevice {
            queue_events,
            interrupt,
            actual: 0,
            active: None,
            discarded: 0,
            malformed: LogBudget::new(16),
        })
    }

    /// Bytes of guest memory given back so far.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    fn process_queue(&mut self, index: usize) {
        let Self { active: Some(active), queue_events, interrupt, malformed, discarded, .. } = self else { return };
        let Active { mem, queues, mem_size } = active;
        let before = *discarded;
        super::drain_tx_queue(&mut queues[index], mem, BUDGET, &queue_events[index], interrupt, |chain| {
            if index != REPORTING {
                return;
            }
            let problem = match Chain::parse(mem, chain, *mem_size) {
                // Every block is tried; the first failure is the one reported.
                Ok(c) => {
                    free_pages(&c.writable).into_iter().fold(None, |first, (addr, len)| match discard(mem, addr, len) {
                        Ok(()) => {
                            *discarded += len;
                            first
                        }
                        Err(e) => first.or(Some(format!("discarding {len} bytes at {:#x}: {e}", addr.0))),
                    })
                }
                Err(e) => Some(e.to_string()),
            };
            if let Some(p) = problem {
                if malformed.allow() {
                    tracing::warn!("balloon: a free page report was not applied: {p} ({} so far)", malformed.seen());
                }
            }
        });
        // About one line per 256 MiB given back, so a long run shows the device at work.
        if *discarded >> 28 != before >> 28 {
            tracing::info!("balloon: {} MiB of free guest memory given back so far", *discarded >> 20);
        }
    }
}

impl VirtioDevice for BalloonDevice {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_BALLOON_F_REPORTING
    }
    fn set_acked_features(&mut self, _features: u64) {}
    /// `num_pages` (always 0: never inflate), then `actual`.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 8];
        config[4..].copy_from_slice(&self.actual.to_le_bytes());
        super::read_config_bytes(&config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` is the driver's to write.
        if offset == 4 {
            if let Ok(bytes) = <[u8; 4]>::try_from(data) {
                self.actual = u32::from_le_bytes(bytes);
            }
        }
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }
    fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }
    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        // A driver that did not take free page reporting sets up two queues; the transport only
        // activates once every queue is ready, so such a driver never gets here.
        super::expect_queues(&queues, QUEUE_SIZES.len())?;
        let mem_size = mem.iter().map(vm_memory::GuestMemoryRegion::len).sum();
        self.active = Some(Active { mem, queues, mem_size });
        Ok(())
    }
    fn reset(&mut self) -> bool {
        self.active = None;
        self.actual = 0;
        true
    }
}

impl MutEventSubscriber for BalloonDevice {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if let Some(index) = self.queue_events.iter().position(|e| e.as_raw_fd() == fd) {
            let _ = self.queue_events[index].read();
            self.process_queue(index);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for e in &self.queue_events {
            if let Err(err) = ops.add(Events::new(e, EventSet::IN)) {
                tracing::error!("balloon: cannot watch a queue: {err:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::chain::tests::queue_with;
    use std::os::unix::fs::MetadataExt;
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestMemoryRegion};

    const WRITE: u16 = 2;
    const NEXT: u16 = 1;

    fn seg(addr: u64, len: u32) -> Segment {
        Segment { addr: GuestAddress(addr), len }
    }

    #[test]
    fn only_whole_pages_are_freed() {
        assert_eq!(free_pages(&[seg(0x20_0000, 0x20_0000)]), vec![(GuestAddress(0x20_0000), 0x20_0000)]);
        // Ragged ends shrink to the pages inside; less than a page frees nothing.
        assert_eq!(free_pages(&[seg(0x1001, 0x3000)]), vec![(GuestAddress(0x2000), 0x2000)]);
        assert_eq!(free_pages(&[seg(0x1001, 0x1000)]), vec![]);
        assert_eq!(free_pages(&[seg(0x5000, 0)]), vec![]);
        // An end past the address space does not wrap.
        assert_eq!(free_pages(&[seg(u64::MAX - 0x1000, u32::MAX)]), vec![]);
    }

    /// Bytes the memfd behind guest memory holds.
    fn allocated(mem: &GuestMemoryMmap) -> u64 {
        let region = mem.iter().next().unwrap();
        region.file_offset().unwrap().file().metadata().unwrap().blocks() * 512
    }

    fn device_on(mem: &GuestMemoryMmap, descs: &[(u64, u32, u16, u16)]) -> BalloonDevice {
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let mut dev = BalloonDevice::new(interrupt).unwrap();
        let queues = vec![Queue::new(16).unwrap(), Queue::new(16).unwrap(), queue_with(mem, descs, 0)];
        dev.activate(mem.clone(), queues).unwrap();
        dev
    }

    #[test]
    fn a_report_gives_the_pages_back_and_they_read_zero() {
        let mem = crate::memory::create(16).unwrap();
        let block = 0x40_0000u64;
        mem.write_slice(&vec![0xaa; 0x20_0000], GuestAddress(block)).unwrap();
        mem.write_slice(b"keep", GuestAddress(0x80_0000)).unwrap();
        // One report of two segments; the second covers no whole page, so the page it touches stays.
        let mut dev = device_on(&mem, &[(block, 0x20_0000, WRITE | NEXT, 1), (0x80_0000 - 1, 0x1000, WRITE, 0)]);
        // The used ring's page is written while the report is served: allocate it first.
        mem.write_obj(0u64, GuestAddress(crate::virtio::chain::tests::USED)).unwrap();
        let before = allocated(&mem);
        dev.process_queue(REPORTING);
        assert_eq!(dev.discarded(), 0x20_0000);
        let after = allocated(&mem);
        assert!(before - after >= 0x20_0000, "the memfd still holds the reported block: {before} then {after}");
        let mut back = vec![1u8; 0x20_0000];
        mem.read_slice(&mut back, GuestAddress(block)).unwrap();
        assert!(back.iter().all(|&b| b == 0));
        let mut kept = [0u8; 4];
        mem.read_slice(&mut kept, GuestAddress(0x80_0000)).unwrap();
        assert_eq!(&kept, b"keep");
        // The chain went back to the guest.
        assert_eq!(mem.read_obj::<u16>(GuestAddress(crate::virtio::chain::tests::USED + 2)).unwrap(), 1);
    }

    #[test]
    fn hostile_reports_free_nothing() {
        let mem = crate::memory::create(16).unwrap();
        mem.write_slice(&[0xaa; 4096], GuestAddress(0x10_0000)).unwrap();
        for descs in [
            // Beyond guest memory; running off its end; device-readable instead of writable.
            vec![(1u64 << 40, 0x20_0000u32, WRITE, 0u16)],
            vec![((16 << 20) - 0x1000, 0x2000, WRITE, 0)],
            vec![(0x10_0000, 0x1000, 0, 0)],
        ] {
            let mut dev = device_on(&mem, &descs);
            dev.process_queue(REPORTING);
            assert_eq!(dev.discarded(), 0, "{descs:?}");
        }
        let mut b = [0u8; 1];
        mem.read_slice(&mut b, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(b[0], 0xaa);
    }

    #[test]
    fn inflation_is_never_acted_on() {
        let mem = crate::memory::create(16).unwrap();
        mem.write_slice(&[0xaa; 4096], GuestAddress(0x10_0000)).unwrap();
        // A page-frame-number array, as an inflate request carries it (readable by the device).
        mem.write_obj(0x100u32, GuestAddress(0x5000)).unwrap();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let mut dev = BalloonDevice::new(interrupt).unwrap();
        let queues = vec![queue_with(&mem, &[(0x5000, 4, 0, 0)], 0), Queue::new(16).unwrap(), Queue::new(16).unwrap()];
        dev.activate(mem.clone(), queues).unwrap();
        dev.process_queue(0); // inflateq
        dev.process_queue(1); // deflateq
        let mut b = [0u8; 1];
        mem.read_slice(&mut b, GuestAddress(0x10_0000)).unwrap();
        assert_eq!((b[0], dev.discarded()), (0xaa, 0));
        let mut num_pages = [0xffu8; 4];
        dev.read_config(0, &mut num_pages);
        assert_eq!(num_pages, [0; 4]);
    }
}
