//! Room in the bounce memory for requests in flight: first fit over a sorted list of free
//! extents, merged again as requests complete. A request that does not fit waits for one that
//! completes; one larger than the whole area can never be served and is refused up front.

/// Extents are handed out in multiples of this, so each starts cache-line aligned.
const ALIGN: u64 = 64;

#[derive(Debug)]
pub struct Extents {
    /// Free (offset, length) pairs, sorted by offset, never adjacent (merged on release).
    free: Vec<(u64, u64)>,
    total: u64,
}

impl Extents {
    /// Manage `len` bytes starting at `start`.
    pub fn new(start: u64, len: u64) -> Extents {
        let end = (start + len) / ALIGN * ALIGN;
        let start = start.next_multiple_of(ALIGN);
        let len = end.saturating_sub(start);
        Extents { free: vec![(start, len)], total: len }
    }

    /// The most one request can ever get.
    pub fn capacity(&self) -> u64 {
        self.total
    }

    /// An extent of at least `len` bytes (a zero-length request still takes one unit, so every
    /// request owns a distinct offset), or None while there is no room.
    pub fn alloc(&mut self, len: u64) -> Option<(u64, u64)> {
        let want = len.max(1).checked_next_multiple_of(ALIGN)?;
        let i = self.free.iter().position(|&(_, l)| l >= want)?;
        let (off, l) = self.free[i];
        if l == want {
            self.free.remove(i);
        } else {
            self.free[i] = (off + want, l - want);
        }
        Some((off, want))
    }

    /// Give back an extent [`alloc`](Self::alloc) returned.
    pub fn release(&mut self, off: u64, len: u64) {
        let i = self.free.partition_point(|&(o, _)| o < off);
        self.free.insert(i, (off, len));
        // Merge with the next extent, then with the previous one.
        if i + 1 < self.free.len() && off + len == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == off {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
    }

    /// Bytes free now.
    pub fn available(&self) -> u64 {
        self.free.iter().map(|&(_, l)| l).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_disjoint_aligned_and_come_back_whole() {
        let mut e = Extents::new(100, 4096);
        assert_eq!(e.capacity(), 4032, "start rounded up to 128, end (4196) down to 4160");
        let a = e.alloc(1).unwrap();
        let b = e.alloc(100).unwrap();
        let c = e.alloc(0).unwrap();
        assert_eq!((a, b, c), ((128, 64), (192, 128), (320, 64)));
        assert!(e.alloc(4096).is_none(), "more than is free");
        // Out of order, as virtiofsd completes requests.
        e.release(b.0, b.1);
        let d = e.alloc(128).unwrap();
        assert_eq!(d, b, "first fit reuses the hole");
        e.release(a.0, a.1);
        e.release(c.0, c.1);
        e.release(d.0, d.1);
        assert_eq!(e.free, vec![(128, 4032)], "every extent merged back into one");
        assert_eq!(e.alloc(4032), Some((128, 4032)));
        assert_eq!(e.available(), 0);
    }

    #[test]
    fn absurd_sizes_are_refused_not_wrapped() {
        let mut e = Extents::new(0, 1 << 20);
        assert!(e.alloc(u64::MAX).is_none());
        assert!(e.alloc((1 << 20) + 1).is_none());
        assert_eq!(e.available(), 1 << 20);
    }
}
