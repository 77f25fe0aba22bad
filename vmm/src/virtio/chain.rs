//! Descriptor chains as the guest hands them over, checked before any byte is touched. The
//! guest controls every field: a chain may point outside RAM, loop, claim gigabytes, or put
//! device-readable buffers after device-writable ones. [`Chain::parse`] rejects all of that, so
//! device code only ever sees in-range segments with bounded totals. A rejected chain fails that
//! one request (it is returned to the guest with nothing written), never the VMM.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

/// No device here needs more descriptors per request; Linux uses at most a few dozen.
pub const MAX_DESCRIPTORS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor {index}: {len} bytes at {addr:#x} are not inside guest memory")]
    OutOfRange { index: usize, addr: u64, len: u32 },
    #[error("chain has more than {0} descriptors")]
    TooManyDescriptors(usize),
    #[error("chain carries more than {max} {dir} bytes")]
    TooLarge { dir: &'static str, max: u64 },
    #[error("device-readable descriptor {0} follows a device-writable one")]
    ReadAfterWrite(usize),
    #[error("chain is broken (bad index, loop or indirect table)")]
    Broken,
}

/// A validated chain: the device-readable segments, then the device-writable ones.
#[derive(Debug, Default)]
pub struct Chain {
    pub readable: Vec<Segment>,
    pub writable: Vec<Segment>,
    pub readable_len: u64,
    pub writable_len: u64,
}

impl Chain {
    /// Walk and check `chain`; neither direction may exceed `max_bytes`.
    pub fn parse<M>(mem: &impl GuestMemory, chain: DescriptorChain<M>, max_bytes: u64) -> Result<Chain, ChainError>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        Chain::parse_long(mem, chain, max_bytes, MAX_DESCRIPTORS)
    }

    /// [`parse`](Self::parse) with room for `max_descriptors`: a full-size FUSE request is a
    /// descriptor per page (256 of them for 1 MiB) plus its headers.
    pub fn parse_long<M>(
        mem: &impl GuestMemory,
        chain: DescriptorChain<M>,
        max_bytes: u64,
        max_descriptors: usize,
    ) -> Result<Chain, ChainError>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        let mut out = Chain::default();
        let mut checked = Vec::new();
        // The iterator stops quietly on a bad next index, a loop longer than the queue or a
        // malformed indirect table; a chain whose last descriptor still claims a successor is
        // one of those.
        let mut dangling = false;
        for (index, desc) in chain.enumerate() {
            if index >= max_descriptors {
                return Err(ChainError::TooManyDescriptors(max_descriptors));
            }
            let seg = Segment { addr: desc.addr(), len: desc.len() };
            if seg.len > 0 && !mem.check_range(seg.addr, seg.len as usize) {
                return Err(ChainError::OutOfRange { index, addr: seg.addr.0, len: seg.len });
            }
            dangling = desc.has_next();
            checked.push((index, seg, desc.is_write_only()));
        }
        if dangling {
            return Err(ChainError::Broken);
        }
        for (index, seg, write_only) in checked {
            if write_only {
                out.writable_len += u64::from(seg.len);
                if out.writable_len > max_bytes {
                    return Err(ChainError::TooLarge { dir: "device-writable", max: max_bytes });
                }
                out.writable.push(seg);
            } else {
                if !out.writable.is_empty() {
                    return Err(ChainError::ReadAfterWrite(index));
                }
                out.readable_len += u64::from(seg.len);
                if out.readable_len > max_bytes {
                    return Err(ChainError::TooLarge { dir: "device-readable", max: max_bytes });
                }
                out.readable.push(seg);
            }
        }
        Ok(out)
    }

    /// Copy up to `buf.len()` device-readable bytes starting at `offset`; returns the count.
    pub fn read_at(&self, mem: &GuestMemoryMmap, mut offset: u64, buf: &mut [u8]) -> usize {
        copy_segments(&self.readable, &mut offset, buf.len(), |seg_addr, done, n| {
            mem.read_slice(&mut buf[done..done + n], seg_addr).is_ok()
        })
    }

    /// Copy `buf` into the device-writable segments starting at `offset`; returns the count.
    pub fn write_at(&self, mem: &GuestMemoryMmap, mut offset: u64, buf: &[u8]) -> usize {
        copy_segments(&self.writable, &mut offset, buf.len(), |seg_addr, done, n| {
            mem.write_slice(&buf[done..done + n], seg_addr).is_ok()
        })
    }
}

fn copy_segments(
    segments: &[Segment],
    offset: &mut u64,
    len: usize,
    mut copy: impl FnMut(GuestAddress, usize, usize) -> bool,
) -> usize {
    let mut done = 0usize;
    for seg in segments {
        if done == len {
            break;
        }
        let seg_len = u64::from(seg.len);
        if *offset >= seg_len {
            *offset -= seg_len;
            continue;
        }
        let n = ((seg_len - *offset) as usize).min(len - done);
        // parse() checked the whole segment is in memory, so the addition cannot leave it.
        if !copy(GuestAddress(seg.addr.0 + *offset), done, n) {
            break;
        }
        done += n;
        *offset = 0;
    }
    done
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::Address;

    pub const DESC: u64 = 0x1000;
    pub const AVAIL: u64 = 0x2000;
    pub const USED: u64 = 0x3000;

    /// Lay out a queue of 16 whose first avail entry is descriptor `head`.
    pub fn queue_with(mem: &GuestMemoryMmap, descs: &[(u64, u32, u16, u16)], head: u16) -> Queue {
        for (i, (addr, len, flags, next)) in descs.iter().enumerate() {
            let base = GuestAddress(DESC + 16 * i as u64);
            mem.write_obj(*addr, base).unwrap();
            mem.write_obj(*len, base.unchecked_add(8)).unwrap();
            mem.write_obj(*flags, base.unchecked_add(12)).unwrap();
            mem.write_obj(*next, base.unchecked_add(14)).unwrap();
        }
        mem.write_obj(0u16, GuestAddress(AVAIL)).unwrap();
        mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
        mem.write_obj(head, GuestAddress(AVAIL + 4)).unwrap();
        let mut q = Queue::new(16).unwrap();
        q.set_size(16);
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        q
    }

    const NEXT: u16 = 1;
    const WRITE: u16 = 2;

    fn parse(descs: &[(u64, u32, u16, u16)]) -> Result<Chain, ChainError> {
        let mem = crate::memory::create(16).unwrap();
        let mut q = queue_with(&mem, descs, 0);
        let chain = q.pop_descriptor_chain(&mem).expect("a chain");
        Chain::parse(&mem, chain, 1 << 20)
    }

    #[test]
    fn a_good_chain_reads_and_writes() {
        let mem = crate::memory::create(16).unwrap();
        mem.write_slice(b"hello", GuestAddress(0x5000)).unwrap();
        let mut q = queue_with(&mem, &[(0x5000, 5, NEXT, 1), (0x6000, 8, WRITE, 0)], 0);
        let c = Chain::parse(&mem, q.pop_descriptor_chain(&mem).unwrap(), 64).unwrap();
        assert_eq!((c.readable_len, c.writable_len), (5, 8));
        let mut buf = [0u8; 16];
        assert_eq!(c.read_at(&mem, 1, &mut buf), 4);
        assert_eq!(&buf[..4], b"ello");
        assert_eq!(c.write_at(&mem, 0, b"0123456789"), 8);
    }

    #[test]
    fn hostile_chains_are_refused() {
        // Address beyond guest memory.
        assert!(matches!(parse(&[(1 << 40, 16, 0, 0)]), Err(ChainError::OutOfRange { .. })));
        // Length running off the end.
        assert!(matches!(parse(&[((16 << 20) - 8, 16, 0, 0)]), Err(ChainError::OutOfRange { .. })));
        // Absurd length.
        assert!(matches!(parse(&[(0x5000, u32::MAX, 0, 0)]), Err(ChainError::OutOfRange { .. })));
        // A loop: descriptor 0 -> 1 -> 0 ...
        assert_eq!(parse(&[(0x5000, 8, NEXT, 1), (0x6000, 8, NEXT, 0)]).unwrap_err(), ChainError::Broken);
        // A next index beyond the queue.
        assert_eq!(parse(&[(0x5000, 8, NEXT, 99)]).unwrap_err(), ChainError::Broken);
        // Readable after writable.
        assert_eq!(
            parse(&[(0x5000, 8, NEXT | WRITE, 1), (0x6000, 8, 0, 0)]).unwrap_err(),
            ChainError::ReadAfterWrite(1)
        );
        // More than the device allows in total.
        let big = parse(&[(0x10_0000, 1 << 20, NEXT, 1), (0x20_0000, 8, 0, 0)]);
        assert!(matches!(big, Err(ChainError::TooLarge { .. })));
    }
}
