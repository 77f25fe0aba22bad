//! One virtqueue as virtiofsd sees it: a split ring in the bounce memory, whose descriptors
//! point only into the bounce memory. A guest request is copied in (its device-readable bytes),
//! posted here, and when virtiofsd marks it used, its reply is copied out into the guest's
//! device-writable buffers and the guest's own chain completes. virtiofsd never sees a guest
//! address.
//!
//! What virtiofsd writes back (the used ring: ids and lengths) is checked too: an id that is
//! not in flight is ignored, and no reply is copied past the writable bytes the guest gave.

use std::collections::VecDeque;
use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

use super::bounce::Extents;
use crate::virtio::chain::Chain;

const NEXT: u16 = 1;
const WRITE: u16 = 2;

/// Bytes a split ring of `size` entries takes (descriptor table, avail ring, used ring), each
/// part aligned as the spec asks, the whole rounded to a page.
pub fn ring_bytes(size: u16) -> u64 {
    let n = u64::from(size);
    let desc = 16 * n;
    let avail = (6 + 2 * n).next_multiple_of(4);
    let used = 6 + 8 * n;
    (desc + avail + used).next_multiple_of(4096)
}

struct Inflight {
    guest_head: u16,
    chain: Chain,
    /// Where the request's bytes are in the bounce memory, and how many.
    extent: (u64, u64),
    /// The shadow descriptors it holds (the head first).
    descs: Vec<u16>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Requests now on the shadow ring (the backend needs a kick).
    pub posted: usize,
    /// Guest chains completed (the guest may need an interrupt).
    pub completed: usize,
    /// The budget ran out with guest requests maybe left: serve the queue again on a later
    /// turn of the event loop (the guest does not notify again for requests it posted).
    pub budget_spent: bool,
    /// A request waits for bounce room: a completion brings it back, not a kick.
    pub waiting: bool,
}

/// An extent this large has its pages dropped when its request completes, so a burst of big
/// requests does not leave the bounce memory resident for the VM's lifetime; small requests
/// reuse the same first extents and stay cheap.
const DROP_PAGES_FROM: u64 = 256 << 10;
/// FUSE's reply header, and the error a request the VMM cannot serve gets.
const FUSE_OUT_HEADER: u64 = 16;
const EIO: i32 = 5;

pub struct ShadowQueue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    extents: Extents,
    free_descs: Vec<u16>,
    /// Indexed by the shadow head descriptor.
    inflight: Vec<Option<Inflight>>,
    next_avail: Wrapping<u16>,
    next_used: Wrapping<u16>,
    /// A parsed guest request that did not fit yet; it goes first next time.
    waiting: VecDeque<(u16, Chain)>,
    /// The most descriptors one guest request may have (its queue's size).
    max_descriptors: usize,
    bad_used: hull_protocol::LogBudget,
}

impl ShadowQueue {
    /// A ring of `size` (a power of two) at `base` in `bounce`, with the data extents
    /// `data` (offset, length) for its requests, serving a guest queue whose requests have up
    /// to `max_descriptors`. The ring memory is zeroed.
    pub fn new(
        bounce: &GuestMemoryMmap,
        base: u64,
        size: u16,
        data: (u64, u64),
        max_descriptors: usize,
    ) -> ShadowQueue {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4);
        let _ = bounce.write_slice(&vec![0u8; ring_bytes(size) as usize], GuestAddress(base));
        ShadowQueue {
            size,
            desc,
            avail,
            used,
            extents: Extents::new(data.0, data.1),
            free_descs: (0..size).rev().collect(),
            inflight: (0..size).map(|_| None).collect(),
            next_avail: Wrapping(0),
            next_used: Wrapping(0),
            waiting: VecDeque::new(),
            max_descriptors,
            bad_used: hull_protocol::LogBudget::new(8),
        }
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// Descriptor table, avail ring and used ring, as addresses in the bounce memory.
    pub fn rings(&self) -> (u64, u64, u64) {
        (self.desc, self.avail, self.used)
    }

    /// Move up to `budget` guest requests from `queue` onto the shadow ring.
    pub fn submit(
        &mut self,
        guest: &GuestMemoryMmap,
        queue: &mut Queue,
        bounce: &GuestMemoryMmap,
        budget: usize,
    ) -> Progress {
        let mut progress = Progress::default();
        for _ in 0..budget {
            let (head, chain) = match self.waiting.pop_front() {
                Some(w) => w,
                None => {
                    let Some(c) = queue.pop_descriptor_chain(guest) else { return self.publish(bounce, progress) };
                    let head = c.head_index();
                    match Chain::parse_long(guest, c, self.extents.capacity(), self.max_descriptors) {
                        Ok(chain) if chain.readable_len + chain.writable_len <= self.extents.capacity() => {
                            (head, chain)
                        }
                        // More than the bounce memory could ever hold: FUSE gets an error
                        // reply (a reply left empty would read as success).
                        Ok(chain) => {
                            let written = fail_request(guest, &chain);
                            let _ = queue.add_used(guest, head, written);
                            progress.completed += 1;
                            continue;
                        }
                        // Malformed: returned with nothing written, as every device does.
                        Err(_) => {
                            let _ = queue.add_used(guest, head, 0);
                            progress.completed += 1;
                            continue;
                        }
                    }
                }
            };
            let need = usize::from(chain.readable_len > 0) + usize::from(chain.writable_len > 0);
            let extent = if self.free_descs.len() >= need.max(1) {
                self.extents.alloc(chain.readable_len + chain.writable_len)
            } else {
                None
            };
            let Some(extent) = extent else {
                self.waiting.push_front((head, chain));
                progress.waiting = true;
                return self.publish(bounce, progress);
            };
            self.post(guest, bounce, head, chain, extent);
            progress.posted += 1;
        }
        progress.budget_spent = true;
        self.publish(bounce, progress)
    }

    fn post(&mut self, guest: &GuestMemoryMmap, bounce: &GuestMemoryMmap, head: u16, chain: Chain, extent: (u64, u64)) {
        copy_in(guest, &chain, bounce, extent.0);
        let mut parts = Vec::with_capacity(2);
        if chain.readable_len > 0 {
            parts.push((extent.0, chain.readable_len, 0));
        }
        if chain.writable_len > 0 || parts.is_empty() {
            parts.push((extent.0 + chain.readable_len, chain.writable_len, WRITE));
        }
        let descs: Vec<u16> = parts.iter().map(|_| self.free_descs.pop().expect("counted above")).collect();
        for (i, &(addr, len, flags)) in parts.iter().enumerate() {
            let at = self.desc + 16 * u64::from(descs[i]);
            let (flags, next) = match descs.get(i + 1) {
                Some(&next) => (flags | NEXT, next),
                None => (flags, 0),
            };
            let _ = bounce.write_obj(addr, GuestAddress(at));
            let _ = bounce.write_obj(len as u32, GuestAddress(at + 8));
            let _ = bounce.write_obj(flags, GuestAddress(at + 12));
            let _ = bounce.write_obj(next, GuestAddress(at + 14));
        }
        let slot = self.avail + 4 + 2 * u64::from(self.next_avail.0 % self.size);
        let first = descs[0];
        let _ = bounce.write_obj(first, GuestAddress(slot));
        self.next_avail += 1;
        self.inflight[usize::from(first)] = Some(Inflight { guest_head: head, chain, extent, descs });
    }

    /// Make posted entries visible: the index store releases the ring writes before it.
    fn publish(&self, bounce: &GuestMemoryMmap, progress: Progress) -> Progress {
        if progress.posted > 0 {
            let _ = bounce.store(self.next_avail.0, GuestAddress(self.avail + 2), Ordering::Release);
        }
        progress
    }

    /// Take what the backend has answered back to the guest's chains.
    pub fn complete(&mut self, guest: &GuestMemoryMmap, queue: &mut Queue, bounce: &GuestMemoryMmap) -> usize {
        let Ok(used_idx) = bounce.load::<u16>(GuestAddress(self.used + 2), Ordering::Acquire) else { return 0 };
        let mut completed = 0;
        // More entries than the ring holds would be the backend lying about its index.
        let mut left = self.size;
        while self.next_used.0 != used_idx && left > 0 {
            left -= 1;
            let elem = self.used + 4 + 8 * u64::from(self.next_used.0 % self.size);
            self.next_used += 1;
            let id: u32 = bounce.read_obj(GuestAddress(elem)).unwrap_or(u32::MAX);
            let len: u32 = bounce.read_obj(GuestAddress(elem + 4)).unwrap_or(0);
            let Some(done) = self.inflight.get_mut(id as usize).and_then(Option::take) else {
                if self.bad_used.allow() {
                    tracing::warn!("virtio-fs: the backend completed descriptor {id}, which is not in flight");
                }
                continue;
            };
            let n = u64::from(len).min(done.chain.writable_len);
            let written = copy_out(bounce, done.extent.0 + done.chain.readable_len, n, guest, &done.chain);
            let _ = queue.add_used(guest, done.guest_head, written as u32);
            if done.extent.1 >= DROP_PAGES_FROM {
                drop_pages(bounce, done.extent);
            }
            self.extents.release(done.extent.0, done.extent.1);
            self.free_descs.extend(done.descs);
            completed += 1;
        }
        completed
    }

    /// Requests the backend holds now.
    pub fn in_flight(&self) -> usize {
        self.inflight.iter().filter(|i| i.is_some()).count()
    }
}

/// Copy the request's device-readable bytes to `to` in the bounce memory, slice to slice.
fn copy_in(guest: &GuestMemoryMmap, chain: &Chain, bounce: &GuestMemoryMmap, to: u64) {
    let mut at = to;
    for seg in &chain.readable {
        // Chain::parse checked each segment lies in guest memory, and the extent holds them all.
        if let (Ok(from), Ok(dst)) =
            (guest.get_slice(seg.addr, seg.len as usize), bounce.get_slice(GuestAddress(at), seg.len as usize))
        {
            from.copy_to_volatile_slice(dst);
        }
        at += u64::from(seg.len);
    }
}

/// Copy `n` reply bytes from `from` in the bounce memory into the request's device-writable
/// segments; returns how many landed.
fn copy_out(bounce: &GuestMemoryMmap, from: u64, n: u64, guest: &GuestMemoryMmap, chain: &Chain) -> u64 {
    let mut done = 0u64;
    for seg in &chain.writable {
        if done == n {
            break;
        }
        let len = u64::from(seg.len).min(n - done) as usize;
        match (bounce.get_slice(GuestAddress(from + done), len), guest.get_slice(seg.addr, len)) {
            (Ok(src), Ok(dst)) => src.copy_to_volatile_slice(dst),
            _ => break,
        }
        done += len as u64;
    }
    done
}

/// Answer a FUSE request the VMM cannot serve with EIO: a reply header naming the request's
/// `unique` (bytes 8..16 of its in-header). Returns the bytes written.
fn fail_request(guest: &GuestMemoryMmap, chain: &Chain) -> u32 {
    let mut unique = [0u8; 8];
    if chain.writable_len < FUSE_OUT_HEADER || chain.read_at(guest, 8, &mut unique) != 8 {
        return 0;
    }
    let mut header = [0u8; FUSE_OUT_HEADER as usize];
    header[..4].copy_from_slice(&(FUSE_OUT_HEADER as u32).to_le_bytes());
    header[4..8].copy_from_slice(&(-EIO).to_le_bytes());
    header[8..].copy_from_slice(&unique);
    chain.write_at(guest, 0, &header) as u32
}

/// Give the whole pages of a completed request's extent back to the host.
fn drop_pages(bounce: &GuestMemoryMmap, (off, len): (u64, u64)) {
    let start = off.next_multiple_of(4096);
    let end = (off + len) / 4096 * 4096;
    if end > start {
        let _ = crate::virtio::balloon::discard(bounce, GuestAddress(start), end - start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::chain::tests::{queue_with, USED};

    const GUEST_NEXT: u16 = 1;
    const GUEST_WRITE: u16 = 2;

    /// Play virtiofsd on the shadow ring: answer every posted request with its readable bytes
    /// reversed, written at the start of its writable buffer; report `claim` bytes written
    /// (or the true count).
    fn backend_answers(bounce: &GuestMemoryMmap, q: &ShadowQueue, seen: &mut u16, claim: Option<u32>) {
        let (desc, avail, used) = q.rings();
        let avail_idx: u16 = bounce.load(GuestAddress(avail + 2), Ordering::Acquire).unwrap();
        let mut used_idx: u16 = bounce.read_obj(GuestAddress(used + 2)).unwrap();
        while *seen != avail_idx {
            let head: u16 = bounce.read_obj(GuestAddress(avail + 4 + 2 * u64::from(*seen % q.size()))).unwrap();
            *seen = seen.wrapping_add(1);
            let (mut request, mut reply_at, mut reply_room) = (Vec::new(), 0u64, 0u32);
            let mut d = head;
            loop {
                let at = desc + 16 * u64::from(d);
                let addr: u64 = bounce.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = bounce.read_obj(GuestAddress(at + 8)).unwrap();
                let flags: u16 = bounce.read_obj(GuestAddress(at + 12)).unwrap();
                if flags & WRITE != 0 {
                    (reply_at, reply_room) = (addr, len);
                } else {
                    let mut b = vec![0u8; len as usize];
                    bounce.read_slice(&mut b, GuestAddress(addr)).unwrap();
                    request.extend(b);
                }
                if flags & NEXT == 0 {
                    break;
                }
                d = bounce.read_obj(GuestAddress(at + 14)).unwrap();
            }
            request.reverse();
            request.truncate(reply_room as usize);
            bounce.write_slice(&request, GuestAddress(reply_at)).unwrap();
            let elem = used + 4 + 8 * u64::from(used_idx % q.size());
            bounce.write_obj(u32::from(head), GuestAddress(elem)).unwrap();
            bounce.write_obj(claim.unwrap_or(request.len() as u32), GuestAddress(elem + 4)).unwrap();
            used_idx = used_idx.wrapping_add(1);
        }
        bounce.store(used_idx, GuestAddress(used + 2), Ordering::Release).unwrap();
    }

    fn setup(descs: &[(u64, u32, u16, u16)]) -> (GuestMemoryMmap, Queue, GuestMemoryMmap, ShadowQueue) {
        let guest = crate::memory::create(16).unwrap();
        let q = queue_with(&guest, descs, 0);
        let bounce = crate::memory::create(16).unwrap();
        let shadow = ShadowQueue::new(&bounce, 0, 16, (ring_bytes(16), 1 << 20), 1024);
        (guest, q, bounce, shadow)
    }

    #[test]
    fn a_request_goes_through_and_its_reply_lands_in_the_guests_buffers() {
        // Readable "hello" split over two guest buffers, then two writable ones.
        let (guest, mut q, bounce, mut shadow) = setup(&[
            (0x5000, 3, GUEST_NEXT, 1),
            (0x6000, 2, GUEST_NEXT, 2),
            (0x7000, 2, GUEST_NEXT | GUEST_WRITE, 3),
            (0x8000, 8, GUEST_WRITE, 0),
        ]);
        guest.write_slice(b"hel", GuestAddress(0x5000)).unwrap();
        guest.write_slice(b"lo", GuestAddress(0x6000)).unwrap();
        let p = shadow.submit(&guest, &mut q, &bounce, 64);
        assert_eq!((p.posted, p.completed, p.waiting), (1, 0, false));
        assert_eq!(shadow.in_flight(), 1);
        let mut seen = 0;
        backend_answers(&bounce, &shadow, &mut seen, None);
        assert_eq!(shadow.complete(&guest, &mut q, &bounce), 1);
        let mut a = [0u8; 2];
        let mut b = [0u8; 3];
        guest.read_slice(&mut a, GuestAddress(0x7000)).unwrap();
        guest.read_slice(&mut b, GuestAddress(0x8000)).unwrap();
        assert_eq!((&a, &b), (b"ol", b"leh"));
        assert_eq!(guest.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 1, "the guest's chain is used");
        assert_eq!(guest.read_obj::<u32>(GuestAddress(USED + 8)).unwrap(), 5, "with the reply's length");
        assert_eq!((shadow.in_flight(), shadow.extents.available()), (0, 1 << 20), "everything given back");
    }

    #[test]
    fn a_lying_backend_cannot_write_past_the_guests_buffer_or_complete_twice() {
        let (guest, mut q, bounce, mut shadow) = setup(&[(0x5000, 4, GUEST_NEXT, 1), (0x7000, 2, GUEST_WRITE, 0)]);
        guest.write_slice(b"abcd", GuestAddress(0x5000)).unwrap();
        guest.write_slice(b"zzzz", GuestAddress(0x7000)).unwrap();
        shadow.submit(&guest, &mut q, &bounce, 64);
        let mut seen = 0;
        backend_answers(&bounce, &shadow, &mut seen, Some(1 << 30));
        assert_eq!(shadow.complete(&guest, &mut q, &bounce), 1);
        let mut out = [0u8; 4];
        guest.read_slice(&mut out, GuestAddress(0x7000)).unwrap();
        assert_eq!(&out, b"dczz", "two bytes written, as the guest's buffer holds, not 1 GiB");
        assert_eq!(guest.read_obj::<u32>(GuestAddress(USED + 8)).unwrap(), 2);
        // The same id again, and one never posted, through a used index moved by 2.
        let used = shadow.rings().2;
        bounce.write_obj(0u32, GuestAddress(used + 4 + 8)).unwrap();
        bounce.write_obj(9u32, GuestAddress(used + 4 + 16)).unwrap();
        bounce.store(3u16, GuestAddress(used + 2), Ordering::Release).unwrap();
        assert_eq!(shadow.complete(&guest, &mut q, &bounce), 0);
        assert_eq!(guest.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 1, "no extra completion");
    }

    #[test]
    fn requests_wait_for_room_and_impossible_ones_fail_at_once() {
        // A 1.5 MiB request against 1 MiB of bounce memory fails at once, with FUSE's EIO
        // for its `unique` (an empty reply would read as success)...
        let (guest, mut q, bounce, mut shadow) =
            setup(&[(0x10_0000, 0xc_0000, GUEST_NEXT, 1), (0x20_0000, 0xc_0000, GUEST_WRITE, 0)]);
        guest.write_obj(0x1234_5678_9abc_u64, GuestAddress(0x10_0008)).unwrap();
        let p = shadow.submit(&guest, &mut q, &bounce, 64);
        assert_eq!((p.posted, p.completed), (0, 1));
        assert_eq!(guest.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 1);
        assert_eq!(guest.read_obj::<u32>(GuestAddress(USED + 8)).unwrap(), 16);
        assert_eq!(guest.read_obj::<u32>(GuestAddress(0x20_0000)).unwrap(), 16);
        assert_eq!(guest.read_obj::<i32>(GuestAddress(0x20_0004)).unwrap(), -5);
        assert_eq!(guest.read_obj::<u64>(GuestAddress(0x20_0008)).unwrap(), 0x1234_5678_9abc);
        // ...and one that fits only once another is done waits for it.
        let (guest, mut q, bounce, mut shadow) =
            setup(&[(0x10_0000, 0x8_0000, GUEST_NEXT, 1), (0x20_0000, 16, GUEST_WRITE, 0)]);
        let hog = shadow.extents.alloc(0xc_0000).unwrap();
        let p = shadow.submit(&guest, &mut q, &bounce, 64);
        assert_eq!((p.posted, p.waiting), (0, true));
        shadow.extents.release(hog.0, hog.1);
        let p = shadow.submit(&guest, &mut q, &bounce, 64);
        assert_eq!((p.posted, p.waiting), (1, false));
    }

    #[test]
    fn a_full_size_fuse_request_of_260_descriptors_goes_through() {
        // 1 MiB of data is a descriptor per page plus FUSE's headers: 260 in an indirect table.
        const INDIRECT: u16 = 4;
        let table = 0x40_0000u64;
        let guest = crate::memory::create(16).unwrap();
        for i in 0..260u64 {
            let (addr, flags) = if i < 259 { (0x50_0000 + 64 * i, GUEST_NEXT) } else { (0x60_0000, GUEST_WRITE) };
            let at = GuestAddress(table + 16 * i);
            guest.write_obj(addr, at).unwrap();
            guest.write_obj(64u32, GuestAddress(at.0 + 8)).unwrap();
            guest.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
            guest.write_obj((i + 1) as u16, GuestAddress(at.0 + 14)).unwrap();
        }
        let mut q = queue_with(&guest, &[(table, 260 * 16, INDIRECT, 0)], 0);
        let bounce = crate::memory::create(16).unwrap();
        let mut shadow = ShadowQueue::new(&bounce, 0, 16, (ring_bytes(16), 1 << 20), 1024);
        let p = shadow.submit(&guest, &mut q, &bounce, 64);
        assert_eq!((p.posted, p.completed), (1, 0), "refused: more than the 256 descriptors other devices take");
        let mut seen = 0;
        backend_answers(&bounce, &shadow, &mut seen, None);
        assert_eq!(shadow.complete(&guest, &mut q, &bounce), 1);
        assert_eq!(guest.read_obj::<u32>(GuestAddress(USED + 8)).unwrap(), 64);
    }

    #[test]
    fn a_spent_budget_says_so_and_the_rest_is_served_next_time() {
        let (guest, mut q, bounce, mut shadow) = setup(&[(0x5000, 4, GUEST_NEXT, 1), (0x7000, 4, GUEST_WRITE, 0)]);
        // Two requests on the guest's ring (the same chain twice).
        guest.write_obj(0u16, GuestAddress(crate::virtio::chain::tests::AVAIL + 6)).unwrap();
        guest.write_obj(2u16, GuestAddress(crate::virtio::chain::tests::AVAIL + 2)).unwrap();
        let p = shadow.submit(&guest, &mut q, &bounce, 1);
        assert_eq!((p.posted, p.budget_spent), (1, true));
        let p = shadow.submit(&guest, &mut q, &bounce, 64);
        assert_eq!((p.posted, p.budget_spent), (1, false));
    }
}
